"""Deep linear network (DLN) targets: a rank-r teacher, its data, and w*.

Model. `DLNSpec.widths` = [H_0 (input), ..., H_L (output)]; the parameters are the dict
{"W_0", ..., "W_{L-1}"} with W_l of shape (H_l, H_{l+1}) and no biases, and
f(x) = x @ W_0 @ W_1 @ ... @ W_{L-1} — the conventions of `models.py` (so `mlp_apply(params,
X, "identity")` is the forward pass and `train.train(..., "identity")` trains it).

Teacher (`make_dln_teacher`). Rank r = `spec.teacher.rank` (already resolved to an int by
`TargetSpec`). For every layer boundary l = 0..L, U_l is an (H_l, r) matrix with orthonormal
columns (numpy reduced QR of a standard Gaussian matrix, drawn by a numpy Generator seeded
from the teacher key); the end-to-end singular values
s_1..s_r are drawn i.i.d. Uniform[0.5, 2] (SINGULAR_VALUE_RANGE); and

    W_l = U_l · diag(s^{1/L}) · U_{l+1}ᵀ,

so the product is U_0 diag(s) U_Lᵀ (rank exactly r, singular values s), every factor has rank
exactly r, and the factors are balanced (W_lᵀW_l = W_{l+1}W_{l+1}ᵀ) and aligned. r = 0 gives
all-zero weights. At these weights the exact learning coefficient is
`theory.dln_lambda(widths, r)` (Aoyagi 2024): any true parameter of the model has the same
λ, as λ depends only on the widths and the rank of the true map.

Data. X from `data.make_x_sampler` (every `data.x_dist`), Y = X @ (teacher product) + noise
from `data.sample_noise` (every `data.noise_model`), train (n_data) and test (n_test) sets.

PRNG keys, as in `pipeline.build_target`: PRNGKey(spec.seed) → (data, student init, training);
data → (distribution, teacher, X, X_test, noise, noise_test).

w* (`spec.w_star`).
  "teacher"  the teacher's own weights (a true parameter): train_steps = 0,
             final_train_loss = L0 = L_n(teacher) (≈ noise variance · out_dim), and
             metrics["llc_true"] = dln_lambda(widths, r) under the llc_true rule below (None
             for a rank-deficient `lowdim_manifold` input distribution).
  "refined"  the teacher refined by full-batch L-BFGS (`train.refine`, down to ‖∇L_n‖ ≤
             REFINE_GRAD_TOL) to the nearest minimum of L_n. With noisy data the teacher is
             not a minimum of L_n: it sits above the nearby minimum by ΔL0 ≈ (noise variance ·
             the number of directions the noise can be fitted along)/n, and λ̂ measured there
             comes out low by about nβ·ΔL0. The refined point is the minimum of L_n next to the
             true parameter, where the learning coefficient is the true parameter's:
             metrics["llc_true"] = dln_lambda(widths, r). train_steps counts L-BFGS iterations.
  "trained"  a student initialised with `model.init` (normal, `models.init_std`) and trained
             with `train.train` (optax; full batch or minibatch, early stopping, per
             `spec.training`). It gets llc_true only when its loss comes within
             the llc_true rule's tolerance of the refined teacher's (it found that minimum's
             loss); otherwise None.

llc_true rule (docs/accuracy.md): attached only where w* is known to sit at a true parameter's
minimum of L_n, tested by loss: |L_n(w*) − L_n(refined teacher)| · nβ₀ ≤ wstar.shift_tol(d)
(β₀ = 1/log n, the default posterior), i.e. measuring λ̂ at w* instead of at that minimum would
move it by at most 1 % of d/2. This holds exactly for the teacher on noise-free data (it is
the minimum) and for the refined teacher, to tolerance for a teacher on mildly noisy data, and
for a trained w* when it found that minimum's loss. A teacher on data noisy enough to shift λ̂
(σ = 1 on [5,3,5]: nβ·ΔL0 ≈ 4) gets none: refine it.

Every w* also gets the quality metrics of `wstar.quality` (gradient norm, Hessian extremes,
descent test, w_star_status).

dtype: `spec.dtype`, computed in the x64 mode it needs (`models.precision`, as `pipeline` does).
"""

from __future__ import annotations

import math

import numpy as np

from .theory import dln_lambda

__all__ = ["SINGULAR_VALUE_RANGE", "make_dln_teacher", "dln_apply", "build_dln_target", "llc_true"]

SINGULAR_VALUE_RANGE = (0.5, 2.0)
# `w_star: refined` stops L-BFGS at this full-data gradient norm (or after train.REFINE_MAX_ITERS).
REFINE_GRAD_TOL = 1e-9


def _check_dln(spec) -> None:
    if spec.model.kind != "dln":
        raise ValueError(f"build_dln_target needs model.kind 'dln', got {spec.model.kind!r}")
    r = spec.teacher.rank
    if r is None:  # pragma: no cover - TargetSpec resolves it
        raise ValueError("teacher.rank must be resolved to an int for a dln target")
    if not 0 <= r <= min(spec.model.widths):
        raise ValueError(f"teacher.rank {r} is outside [0, {min(spec.model.widths)}]")


def llc_true(spec, *, at_refined_minimum: bool | None = None) -> float | None:
    """The exact learning coefficient at w*, dln_lambda(widths, rank), where w* is known to
    sit at a true parameter's minimum of L_n (`at_refined_minimum`: the outcome of the loss
    test of the module doc, which needs the data; None: judge from the spec alone, which
    vouches for the teacher and the refined teacher, never for a trained w*), else None. Also None for `lowdim_manifold` inputs with
    x_dim_latent < in_dim: the theorem assumes a positive-definite input covariance (every
    other x_dist has one). The noise model does not enter: for every supported one the noise
    has conditional mean zero, so K(w) = E‖f_w(x) − f_teacher(x)‖² is the same."""
    _check_dln(spec)
    if at_refined_minimum is None:
        at_refined_minimum = spec.w_star in ("teacher", "refined")
    if not at_refined_minimum:
        return None
    d = spec.data
    if d.x_dist == "lowdim_manifold" and d.x_dim_latent < spec.model.in_dim:
        # Singular input covariance: Aoyagi's theorem assumes a positive-definite one.
        return None
    return dln_lambda(list(spec.model.widths), int(spec.teacher.rank))


def make_dln_teacher(key, widths, rank: int, dtype) -> dict:
    """Balanced, aligned teacher whose every layer, and product, has rank exactly `rank`.

    The random draws use numpy (`np.random.default_rng` seeded with the bits of the JAX
    `key`, float64, LAPACK QR) rather than jax.random: per-shape XLA compilation of QR made
    building a small target take seconds. Still a pure function of `key`; the weights are
    cast to `dtype` at the end.
    """
    import jax
    import jax.numpy as jnp

    widths = [int(w) for w in widths]
    L = len(widths) - 1
    if L < 1:
        raise ValueError(f"widths needs at least 2 entries, got {widths}")
    r = int(rank)
    if not 0 <= r <= min(widths):
        raise ValueError(f"rank {r} is outside [0, {min(widths)}]")
    if r == 0:
        return {f"W_{l}": jnp.zeros((widths[l], widths[l + 1]), dtype) for l in range(L)}
    rng = np.random.default_rng([int(b) for b in np.asarray(jax.random.key_data(key)).ravel()])
    lo, hi = SINGULAR_VALUE_RANGE
    s = rng.uniform(lo, hi, size=r)
    U = [np.linalg.qr(rng.standard_normal((h, r)), mode="reduced")[0] for h in widths]
    root = s ** (1.0 / L)
    return {f"W_{l}": jnp.asarray((U[l] * root) @ U[l + 1].T, dtype) for l in range(L)}


def dln_apply(params: dict, X):
    """f(x) = x @ W_0 @ ... @ W_{L-1}."""
    h = X
    for l in range(sum(1 for k in params if k.startswith("W_"))):
        h = h @ params[f"W_{l}"]
    return h


def build_dln_target(spec):
    """Teacher, data and w* for a `TargetSpec` whose model is a `DLNSpec` (see module doc)."""
    from .models import precision

    with precision(spec.dtype):
        return _build_dln_target(spec)


def _data(spec, dtype):
    """(teacher, X, Y, X_test, Y_test, student init key, training key) of a dln target."""
    import jax

    from .data import make_x_sampler, sample_noise

    m, d = spec.model, spec.data
    k_data, k_init, k_train = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    k_dist, k_teacher, k_x, k_xt, k_n, k_nt = jax.random.split(k_data, 6)
    teacher = make_dln_teacher(k_teacher, list(m.widths), spec.teacher.rank, dtype)
    sample_x = make_x_sampler(k_dist, d, m.in_dim, dtype)
    X = sample_x(k_x, d.n_data).astype(dtype)
    X_test = sample_x(k_xt, d.n_test).astype(dtype)
    Y = (dln_apply(teacher, X) + sample_noise(k_n, X, m.out_dim, d, dtype)).astype(dtype)
    Y_test = (dln_apply(teacher, X_test) + sample_noise(k_nt, X_test, m.out_dim, d, dtype)).astype(dtype)
    return teacher, X, Y, X_test, Y_test, k_init, k_train


def heldout(spec):
    """The target's test set (n_test rows), drawn from the keys its build drew it from."""
    import numpy as np

    from .models import jnp_dtype

    _, _, _, X_test, Y_test, _, _ = _data(spec, jnp_dtype(spec.dtype))
    return np.asarray(X_test), np.asarray(Y_test)


def training_problem(spec):
    """A dln checkpoint's training (`science/trajectory.py`): the student of w_star "trained",
    and the llc_true rule of the module doc applied at each checkpoint (exact λ only where the
    checkpoint sits at the minimum next to the true parameter)."""
    import jax

    from .losses import mean_loss
    from .models import init_mlp, jnp_dtype
    from .train import refine
    from .trajectory import TrainingProblem
    from .wstar import shift_tol, too_large

    _check_dln(spec)
    dtype = jnp_dtype(spec.dtype)
    m, d = spec.model, spec.data
    teacher, X, Y, X_test, Y_test, k_init, k_train = _data(spec, dtype)
    params0 = init_mlp(k_init, list(m.widths), init=m.init, bias=False, dtype=dtype)

    def exact(params, L0: float) -> dict:
        n_beta0 = d.n_data / math.log(d.n_data)
        if too_large(d.n_data, m.n_params):
            return {"llc_true": llc_true(spec, at_refined_minimum=n_beta0 * L0 <= shift_tol(m.n_params))}
        refined, _ = refine(teacher, X, Y, "identity", grad_tol=REFINE_GRAD_TOL)
        L0_refined = float(mean_loss(dln_apply(jax.tree.map(lambda a: a.astype(dtype), refined), X), Y))
        at_minimum = n_beta0 * abs(L0 - L0_refined) <= shift_tol(m.n_params)
        return {"L0_refined": L0_refined, "llc_true": llc_true(spec, at_refined_minimum=at_minimum)}

    return TrainingProblem(X=X, Y=Y, X_test=X_test, Y_test=Y_test, params0=params0, model="identity",
                           k_train=k_train, extra_metrics=exact)


def _build_dln_target(spec):
    import jax

    from . import TargetArrays
    from .losses import mean_loss
    from .models import init_mlp, jnp_dtype
    from .train import refine, train
    from .wstar import quality, shift_tol, too_large

    _check_dln(spec)
    dtype = jnp_dtype(spec.dtype)
    m, d = spec.model, spec.data
    widths = list(m.widths)
    teacher, X, Y, X_test, Y_test, k_init, k_train = _data(spec, dtype)

    # The minimum of L_n next to the true parameter: w* for "refined", the yardstick for llc_true otherwise.
    # Past wstar.QUALITY_MAX_WORK that yardstick is not computed (hundreds of full-data gradients):
    # L_n ≥ 0 bounds it instead (below), which vouches for a teacher on noise-free data.
    large = too_large(d.n_data, m.n_params)
    if large and spec.w_star != "refined":
        refined, refine_info, L0_refined = None, None, float("nan")
    else:
        refined, refine_info = refine(teacher, X, Y, "identity", grad_tol=REFINE_GRAD_TOL)
        refined = jax.tree.map(lambda a: a.astype(dtype), refined)
        L0_refined = float(mean_loss(dln_apply(refined, X), Y))
    if spec.w_star == "teacher":
        params = teacher
        train_steps = 0
        final_train_loss = None
    elif spec.w_star == "refined":
        params = refined
        train_steps = int(refine_info["refine_iters"])
        final_train_loss = None
    elif spec.w_star == "trained":
        params0 = init_mlp(k_init, widths, init=m.init, bias=False, dtype=dtype)
        params, info = train(k_train, params0, X, Y, spec.training, "identity")
        params = jax.tree.map(lambda a: a.astype(dtype), params)
        train_steps = int(info["train_steps"])
        final_train_loss = float(info["final_train_loss"])
    else:  # pragma: no cover - the spec's Literal forbids this
        raise NotImplementedError(f"w_star={spec.w_star!r} is not implemented")

    if large:  # chunked passes: bounded memory
        from .posterior import flat_model, make_full_loss

        w_flat, predict = flat_model(params, "identity")
        L0 = float(jax.jit(make_full_loss(predict, X, Y))(w_flat))
        test_loss = float(jax.jit(make_full_loss(predict, X_test, Y_test))(w_flat))
    else:
        L0 = float(mean_loss(dln_apply(params, X), Y))
        test_loss = float(mean_loss(dln_apply(params, X_test), Y_test))
    n_beta0 = d.n_data / math.log(d.n_data)  # the default posterior's nβ, as in `wstar.quality`
    if large and spec.w_star != "refined":
        # L_n ≥ 0, so no minimum lies more than L0 below w*: the llc_true rule with the yardstick
        # replaced by that bound (it holds for a teacher on noise-free data, L0 ≈ 0).
        at_minimum = n_beta0 * L0 <= shift_tol(m.n_params)
    else:
        at_minimum = n_beta0 * abs(L0 - L0_refined) <= shift_tol(m.n_params)
    metrics = {
        "L0": L0,
        "train_steps": train_steps,
        "final_train_loss": L0 if final_train_loss is None else final_train_loss,
        "test_loss": test_loss,
        "n_params": int(m.n_params),
        "n_data": int(d.n_data),
        "n_test": int(d.n_test),
        "L0_refined": L0_refined,
        "llc_true": llc_true(spec, at_refined_minimum=at_minimum),
    }
    metrics.update(quality(params, X, Y, "identity"))
    return TargetArrays(
        params={k: np.asarray(v) for k, v in params.items()},
        X=np.asarray(X),
        Y=np.asarray(Y),
        metrics=metrics,
    )
