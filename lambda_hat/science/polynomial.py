"""Normal-crossing targets: y = x·∏ wᵢ^pᵢ + noise at the true parameter w* = 0.

Model (`polynomial_apply`): one scalar input x, params {"w": (len(powers),)}. The truth
is the zero function (every w with some wᵢ = 0, pᵢ > 0, is a true parameter); the data are
X from `data.make_x_sampler` with in_dim 1 and Y = noise (`data.sample_noise`, every noise
model). w* = 0, the point where the coordinate hyperplanes of true parameters cross, where
λ = 1/(2·max p) with multiplicity #{i: pᵢ = max p} (`theory.normal_crossing_lambda`).
devinterp's accuracy tests use these with x ~ N(0, 2²), σ = 0.25, n = 1,000.

A run on such a target also gets the exact finite-n expectation λ̂ estimates, `llc_ref` (with
`llc_ref_se`, its numerical error, and `llc_ref_method`; `finite_n_reference`): it depends on the
run's nβ and γ, so it belongs to the run, not to the target, and `rel_error` is measured against it.
At n = 1,000-10,000 it lies 5-50 % below λ (more for multiplicity > 1), which is the asymptote.

llc_true is attached by the llc_true rule of `dln.py`/docs/accuracy.md: w* = 0 is a true
parameter, and it is attached when nβ₀·(L_n(0) − L_n(refined)) ≤ wstar.shift_tol(d), the refined
point being L-BFGS from a point next to 0 (from 0 itself a power ≥ 2 has zero gradient). The
noise's least-squares fit moves the minimum of L_n off 0 by O(σ/√n), worth about β·σ² in λ̂.
"""

from __future__ import annotations

import math

import numpy as np

# L-BFGS for the loss test starts this far from 0 along every coordinate (0 is a critical point
# when every positive power is ≥ 2).
REFINE_START = 1e-3


def polynomial_apply(params: dict, x, powers: tuple[int, ...]):
    """Normal-crossing model: x (..., 1) -> x·∏ wᵢ^pᵢ with params {"w": (len(powers),)}.
    Integer powers (`lax.integer_pow`), and pᵢ = 0 factors left out, so the gradient is exact
    at w = 0 (a float power 0 would give 0·w⁻¹ = NaN there)."""
    import jax.numpy as jnp

    w = params["w"]
    prod = jnp.ones((), w.dtype)
    for i, p in enumerate(powers):
        if p:
            prod = prod * w[i] ** p
    return x * prod


def forward(key: tuple):
    """The pass for a model key ("polynomial", powers) (the kind's `forward`)."""
    powers = tuple(int(p) for p in key[1])
    return lambda params, x: polynomial_apply(params, x, powers)


def exact_lambda(spec) -> float:
    """λ = 1/(2·max p) at w* = 0 (the kind's `exact_lambda`; a build attaches it only after the
    loss test of the module doc)."""
    from .theory import normal_crossing_lambda

    return normal_crossing_lambda(spec.model.powers)[0]


def finite_n_reference(spec, arrays, n_beta: float, gamma: float) -> dict:
    """{llc_ref, llc_ref_se, llc_ref_method} for a run with this nβ and γ on the target `spec` with
    data `arrays`: E[nβ·(L_n(w) − L_n(0))] under the run's posterior exp(−nβ·L_n(w) − (γ/2)‖w‖²)
    (`posterior.py` at w* = 0), computed exactly from the data's two moments
    (`theory.normal_crossing_reference`). {} where it does not exist (γ = 0 with more than one
    coordinate: an improper posterior) or the target is not at w* = 0."""
    from .theory import NORMAL_CROSSING_REF_METHOD, normal_crossing_reference

    if any(np.any(np.asarray(v) != 0) for v in arrays.params.values()):
        return {}
    x = np.asarray(arrays.X, np.float64).reshape(-1)
    y = np.asarray(arrays.Y, np.float64).reshape(-1)
    try:
        value, err = normal_crossing_reference(spec.model.powers, n_beta, gamma, float(np.mean(x * x)),
                                               float(np.mean(x * y)))
    except ValueError:
        return {}
    return {"llc_ref": value, "llc_ref_se": err, "llc_ref_method": NORMAL_CROSSING_REF_METHOD}


def build_polynomial_target(spec):
    from .models import precision

    with precision(spec.dtype):
        return _build(spec)


def _data(spec, dtype):
    """(X, Y, X_test, Y_test) of a polynomial target: inputs from the spec's distribution, Y pure noise."""
    import jax

    from .data import make_x_sampler, sample_noise

    d = spec.data
    k_data, _, _ = jax.random.split(jax.random.PRNGKey(spec.seed), 3)
    k_dist, _, k_x, k_xt, k_n, k_nt = jax.random.split(k_data, 6)
    sample_x = make_x_sampler(k_dist, d, 1, dtype)
    X = sample_x(k_x, d.n_data).astype(dtype)
    X_test = sample_x(k_xt, d.n_test).astype(dtype)
    Y = sample_noise(k_n, X, 1, d, dtype).astype(dtype)
    Y_test = sample_noise(k_nt, X_test, 1, d, dtype).astype(dtype)
    return X, Y, X_test, Y_test


def heldout(spec):
    """The target's test set (n_test rows), drawn from the keys its build drew it from."""
    import numpy as np

    from .models import jnp_dtype

    _, _, X_test, Y_test = _data(spec, jnp_dtype(spec.dtype))
    return np.asarray(X_test), np.asarray(Y_test)


def _build(spec):
    import jax.numpy as jnp

    from . import TargetArrays
    from .losses import mean_loss
    from .models import forward, jnp_dtype, model_key
    from .theory import normal_crossing_lambda
    from .train import refine
    from .wstar import quality, shift_tol

    m, d = spec.model, spec.data
    dtype = jnp_dtype(spec.dtype)
    key = model_key(m)
    apply = forward(key)
    X, Y, X_test, Y_test = _data(spec, dtype)
    params = {"w": jnp.zeros((len(m.powers),), dtype)}
    L0 = float(mean_loss(apply(params, X), Y))
    refined, _ = refine({"w": jnp.full((len(m.powers),), REFINE_START, dtype)}, X, Y, key)
    L0_refined = min(float(mean_loss(apply(refined, X), Y)), L0)
    n_beta0 = d.n_data / math.log(d.n_data)
    lam, mult = normal_crossing_lambda(m.powers)
    metrics = {
        "L0": L0,
        "train_steps": 0,
        "final_train_loss": L0,
        "test_loss": float(mean_loss(apply(params, X_test), Y_test)),
        "n_params": int(m.n_params),
        "n_data": int(d.n_data),
        "n_test": int(d.n_test),
        "L0_refined": L0_refined,
        "llc_true": lam if n_beta0 * (L0 - L0_refined) <= shift_tol(m.n_params) else None,
        "llc_multiplicity": mult,
    }
    metrics.update(quality(params, X, Y, key))
    return TargetArrays(params={"w": np.asarray(params["w"])}, X=np.asarray(X), Y=np.asarray(Y), metrics=metrics)
