"""How good a minimum w* is: recorded for every target, and a flag when it is not one.

The LLC is defined at a local minimum of L_n. λ̂ = nβ·(E[L_n(w)] − L0) measured at a point that
is not one comes out wrong: below a descent direction the chains find lower loss than L0 (λ̂
biased low by about nβ·ΔL, ΔL the loss a descent from w* would still gain), and along negative
curvature they drift away from w*. So every target records

  grad_norm      ‖∇L_n(w*)‖ over the full training data
  hess_min_eig   smallest and largest eigenvalues of the Hessian of L_n at w*: exact (dense
  hess_max_eig   Hessian, numpy `eigvalsh`) for d ≤ DENSE_HESSIAN_MAX parameters, else Lanczos
                 (ARPACK via `scipy.sparse.linalg.eigsh`) on Hessian-vector products
                 (forward-over-reverse), which never forms the d × d matrix
  hess_method    "dense" or "lanczos" (with "unconverged" appended when ARPACK ran out of
                 iterations: the eigenvalue is then NaN); "skipped" when L0 or the gradient is
                 not finite (status "nonfinite")
  descent_gap    L0 − L_n(w') with w' = `train.refine(w*)`: full-batch L-BFGS down to the
                 nearest minimum (the descent test). Its predicted effect on λ̂ is nβ·descent_gap.
                 Once the descent's pace (over its last 10 iterations) could no longer bring the
                 gap past the flag in its remaining budget, it stops: below the flag the gap is
                 then a lower bound, above it the full measure.

The descent test measures the bias the gradient causes directly (in λ units), which a raw
gradient-norm threshold cannot: how much a given ‖∇L_n‖ costs depends on the curvature around
it. A descent cannot see an exact saddle (zero gradient), hence the curvature test beside it.

The descent test is judged against the default localized posterior (β₀ = 1/log n: `PosteriorSpec()`),
the one most runs use; the raw numbers are kept for any other:

  w_star_status  "not_stationary" when nβ₀·descent_gap > shift_tol(d) = LLC_SHIFT_RTOL · d/2:
                                  λ̂ would move by more than 1 % of the regular value d/2, an
                                  upper bound on λ (an absolute bound would flag every large
                                  regular model, whose noise-fit gap grows like β·σ²·d);
                 "not_minimum"    when hess_min_eig < −NEG_CURVATURE_RTOL · hess_max_eig: negative
                                  curvature a sizeable fraction of the steepest, a saddle;
                 else "ok".  `w_star_reason` says why (empty when ok).

Past QUALITY_MAX_WORK (n·d, the rows times the parameters) the Hessian and descent tests are
skipped: ARPACK may need thousands of Hessian-vector products and L-BFGS hundreds of gradients,
each a full pass over the data (hours at n = 1e5, d = 1e6 on 2 cores). Such a target records L0 and
the gradient norm (accumulated chunk by chunk, so memory stays bounded in n), hess_method "skipped",
NaN eigenvalues and descent_gap, and w_star_status "unchecked".

The curvature test is relative, not against the localizer γ: a noisy teacher on a DLN has
eigenvalues of −0.1 % of the largest (σ = 0.1, [5,3,5]) that a descent exploits for a λ̂ shift of
only 0.03, well inside the samplers' accuracy, while a rank-0 teacher (all weights zero: an exact
saddle of L_n, where the gradient vanishes and a descent cannot move) has |λ_min| = λ_max and is
where the samplers are known to fail (tests/test_calibration.py's strict xfails).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Parameters up to which the Hessian is formed and diagonalised exactly (8 MB at float64).
DENSE_HESSIAN_MAX = 1024
# Lanczos: ARPACK's relative tolerance and its cap on restarts (each restart is ≤ 20 products).
LANCZOS_TOL = 1e-4
LANCZOS_MAXITER = 50
# A w* whose descent test predicts a λ̂ shift larger than this share of d/2 (at the default β) is flagged.
LLC_SHIFT_RTOL = 0.01


def shift_tol(n_params: int) -> float:
    """The largest predicted λ̂ shift nβ₀·ΔL a w* may carry: LLC_SHIFT_RTOL · d/2."""
    return LLC_SHIFT_RTOL * n_params / 2


# A w* with a Hessian eigenvalue below −NEG_CURVATURE_RTOL × the largest is flagged a saddle.
NEG_CURVATURE_RTOL = 0.01
# n·d past which only L0 and the gradient norm are measured (see the module doc).
QUALITY_MAX_WORK = 2**30


def too_large(n: int, d: int) -> bool:
    """Whether the Hessian and descent tests are skipped for n rows and d parameters."""
    return n * d > QUALITY_MAX_WORK


@lru_cache(maxsize=8)
def _chunked_value_and_grad(model, layout: tuple, loss_name: str = "mse"):
    """Jitted (L_n, ∇L_n) summed over chunks of rows (`lax.scan`), so no pass holds more than one
    chunk's activations: the gradient of `lax.map` would keep every chunk's for the backward pass."""
    import jax
    import jax.numpy as jnp

    from .losses import per_example
    from .posterior import chunk_rows, flat_model, n_rows

    per_example_loss = per_example(loss_name)

    _, predict = flat_model({k: jnp.zeros(shape, dtype) for k, shape, dtype in layout}, model)

    def value_and_grad(w, X, Y):
        n = n_rows(X)
        Xc, Yc, mask = chunk_rows(X, Y)

        def body(acc, c):
            v, g = jax.value_and_grad(lambda u: jnp.sum(c[2] * per_example_loss(predict(u, c[0]), c[1])))(w)
            return (acc[0] + v, acc[1] + g), None

        (v, g), _ = jax.lax.scan(body, (jnp.zeros((), w.dtype), jnp.zeros_like(w)), (Xc, Yc, mask))
        return v / n, g / n

    return jax.jit(value_and_grad)


@lru_cache(maxsize=32)
def _jitted(model, layout: tuple, loss_name: str = "mse"):
    """Jitted (value_and_grad, hessian, hvp) of the flat L_n(w, X, Y) for a model key and a
    parameter layout ((name, shape, dtype), ...): data are arguments, so targets of the same
    shapes share the executables."""
    import jax
    import jax.numpy as jnp

    from .posterior import flat_model, make_full_loss

    _, predict = flat_model({k: jnp.zeros(shape, dtype) for k, shape, dtype in layout}, model)

    def loss(w, X, Y):
        return make_full_loss(predict, X, Y, loss_name=loss_name)(w)

    def hvp(w, v, X, Y):
        return jax.jvp(lambda u: jax.grad(loss)(u, X, Y), (w,), (v,))[1]

    return jax.jit(jax.value_and_grad(loss)), jax.jit(jax.hessian(loss)), jax.jit(hvp)


def _extreme_eigs(hvp, d: int, dtype) -> tuple[float, float, str]:
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigsh

    op = LinearOperator((d, d), matvec=lambda v: np.asarray(hvp(np.asarray(v, dtype)), np.float64), dtype=np.float64)
    out, method = [], "lanczos"
    for which in ("SA", "LA"):
        try:
            out.append(float(eigsh(op, k=1, which=which, tol=LANCZOS_TOL, maxiter=LANCZOS_MAXITER,
                                   v0=np.ones(d), return_eigenvectors=False)[0]))
        except ArpackNoConvergence:
            out.append(float("nan"))
            method = "lanczos unconverged"
    return out[0], out[1], method


def quality(params, X, Y, model, *, n_beta: float | None = None, loss_name: str = "mse") -> dict:
    """The w* quality metrics of the module doc for `params` on (X, Y). `model`: a
    `models.model_key`; `loss_name`: the per-example loss's name. `n_beta` defaults to n/log n (β₀ = 1/log n)."""
    import jax.numpy as jnp

    from .posterior import n_rows
    from .train import refine

    n = n_rows(X)
    n_beta = n / math.log(n) if n_beta is None else float(n_beta)
    from jax.flatten_util import ravel_pytree

    w, _ = ravel_pytree(params)
    d, dtype = int(w.size), w.dtype
    layout = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(params.items()))
    if too_large(n, d):
        L0, g = _chunked_value_and_grad(model, layout, loss_name)(w, X, Y)
        grad_norm, nan = float(jnp.linalg.norm(g)), float("nan")
        finite = math.isfinite(float(L0)) and math.isfinite(grad_norm)
        return {"grad_norm": grad_norm, "hess_min_eig": nan, "hess_max_eig": nan, "hess_method": "skipped",
                "descent_gap": nan, "refine_iters": 0, "w_star_status": "unchecked" if finite else "nonfinite",
                "w_star_reason": (f"n·d = {n * d:.3g} > {QUALITY_MAX_WORK:.3g}: Hessian and descent tests skipped"
                                  if finite else f"L0 = {float(L0)}, gradient norm {grad_norm}")}
    value_and_grad, hessian, hvp = _jitted(model, layout, loss_name)
    L0, g = value_and_grad(w, X, Y)
    grad_norm = float(jnp.linalg.norm(g))
    if not (math.isfinite(float(L0)) and math.isfinite(grad_norm)):
        # Training diverged: there is no w* to judge (the worker refuses the target on L0).
        nan = float("nan")
        return {"grad_norm": grad_norm, "hess_min_eig": nan, "hess_max_eig": nan, "hess_method": "skipped",
                "descent_gap": nan, "refine_iters": 0, "w_star_status": "nonfinite",
                "w_star_reason": f"L0 = {float(L0)}, gradient norm {grad_norm}"}
    if d <= DENSE_HESSIAN_MAX:
        H = np.asarray(hessian(w, X, Y), np.float64)
        eigs = np.linalg.eigvalsh((H + H.T) / 2)
        hmin, hmax, method = float(eigs[0]), float(eigs[-1]), "dense"
    else:
        hmin, hmax, method = _extreme_eigs(lambda v: hvp(w, jnp.asarray(v, dtype), X, Y), d, dtype)
    # Past the level that flags w*, the gap is measured in full (nβ·gap is λ̂'s bias); short of it,
    # a descent whose pace can no longer reach it is stopped (hundreds of stalled float32 L-BFGS
    # iterations on a 16k-parameter transformer took a minute).
    _, info = refine(params, X, Y, model, loss_name=loss_name, stop_above=float(L0) - shift_tol(d) / n_beta)
    gap = max(float(L0) - info["refined_loss"], 0.0)
    reasons, status = [], "ok"
    if n_beta * gap > shift_tol(d):
        status = "not_stationary"
        reasons.append(f"descent from w* lowers L_n by {gap:.3g}: nβ·ΔL = {n_beta * gap:.3g} > {shift_tol(d):.3g} (1 % of d/2)")
    if math.isfinite(hmin) and math.isfinite(hmax) and hmin < -NEG_CURVATURE_RTOL * abs(hmax):
        status = "not_minimum" if status == "ok" else status
        reasons.append(f"Hessian eigenvalue {hmin:.3g} < -{NEG_CURVATURE_RTOL} x largest {hmax:.3g}: a saddle")
    return {
        "grad_norm": grad_norm,
        "hess_min_eig": hmin,
        "hess_max_eig": hmax,
        "hess_method": method,
        "descent_gap": gap,
        "refine_iters": info["refine_iters"],
        "w_star_status": status,
        "w_star_reason": "; ".join(reasons),
    }
