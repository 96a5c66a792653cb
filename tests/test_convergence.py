"""Convergence status and dispersed chain starts.

A run whose R-hat exceeds llc.R_HAT_MAX (1.01) or whose bulk ESS is below llc.ESS_BULK_MIN (400)
keeps its numbers but is 'unconverged', with the reasons in `flags` / `status_reason`;
'nonfinite' and 'divergent' take precedence. Chains start at w* + δ, δ ~ N(0, s²I),
s = 1/√(γ + nβ·tr H/d) (`posterior.dispersed_start`), so that R-hat compares chains that began apart.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lambda_hat.science.llc import ESS_BULK_MIN, R_HAT_MAX, summarize
from lambda_hat.specs import RunSpec, TargetSpec

from quadratic import D, GAMMA, L0, N_BETA, _quadratic  # noqa: E402


def test_dispersed_start_scale_and_starting_llc(jax64):
    """On the diagonal quadratic Hutchinson's trace is exact, so s = 1/√(γ + nβ·mean h) to
    rounding, and the starting λ̂ = nβ·(L(w*+δ) − L0) has mean ½·nβ·s²·Σh exactly."""
    from lambda_hat.science.posterior import INIT_JITTER, dispersed_start, init_scale

    jnp = jax64.numpy
    h, w_star, loss = _quadratic(jax64)
    s = float(init_scale(jax64.random.PRNGKey(0), loss, w_star, N_BETA, GAMMA))
    expected_s = INIT_JITTER / math.sqrt(GAMMA + N_BETA * float(jnp.mean(h)))
    assert s == pytest.approx(expected_s, rel=1e-10)
    keys = jax64.random.split(jax64.random.PRNGKey(1), 4000)
    starts = jax64.jit(jax64.vmap(lambda k: dispersed_start(k, loss, w_star, N_BETA, GAMMA)))(keys)
    llc0 = N_BETA * (np.asarray(jax64.vmap(loss)(starts)) - L0)
    mean0 = 0.5 * N_BETA * s**2 * float(jnp.sum(h))
    assert abs(llc0.mean() - mean0) < 4 * llc0.std() / math.sqrt(llc0.size), (llc0.mean(), mean0)
    assert 0.4 * D < mean0 < 0.5 * D  # ≈ d/2 (nβ·mean h ≫ γ here): above the posterior's λ̂ (3.67)
    # distinct starts per chain key, centred on w*
    assert np.all(np.std(np.asarray(starts), axis=0) > 0.5 * s)
    np.testing.assert_allclose(np.asarray(starts).mean(axis=0), np.asarray(w_star), atol=5 * s / math.sqrt(4000))


def test_dispersed_start_at_a_degenerate_w_star_is_pulled_in(jax64):
    """At w* = 0 of L(w) = Σ w⁴ (tr H = 0) the curvature scale falls back to the prior width 1/√γ,
    where the starting λ̂ would be ~nβ·3d/γ² (about 1e5 here); the start is halved until its λ̂ is at
    most START_LLC_CAP·d, and stays dispersed (not collapsed onto w*)."""
    from lambda_hat.science.posterior import START_LLC_CAP, dispersed_start, init_scale

    jnp = jax64.numpy
    d, n_beta, gamma = 10, 1000.0, 1.0
    w_star = jnp.zeros(d)

    def loss(w):
        return jnp.sum(w**4)

    s = float(init_scale(jax64.random.PRNGKey(0), loss, w_star, n_beta, gamma))
    assert s == pytest.approx(1 / math.sqrt(gamma))
    keys = jax64.random.split(jax64.random.PRNGKey(1), 200)
    starts = np.asarray(jax64.jit(jax64.vmap(lambda k: dispersed_start(k, loss, w_star, n_beta, gamma)))(keys))
    llc0 = n_beta * np.sum(starts**4, axis=1)
    assert np.all(llc0 <= START_LLC_CAP * d), llc0.max()
    # the widest passing halving: one halving wider would have exceeded the cap (16x per halving)
    assert np.median(llc0) > START_LLC_CAP * d / 16 / 4, np.median(llc0)
    assert np.all(np.std(starts, axis=0) > 0.05)


def test_convergence_flags_from_the_thresholds():
    """iid draws pass; chains that disagree fail R-hat; too few draws fail bulk ESS."""
    rng = np.random.default_rng(0)
    ok = summarize(rng.normal(size=(4, 1000)))
    assert ok["status"] == "ok" and ok["flags"] == [] and ok["status_reason"] == ""
    assert ok["r_hat"] <= R_HAT_MAX and ok["ess_bulk"] >= ESS_BULK_MIN
    apart = summarize(rng.normal(size=(4, 1000)) + np.arange(4)[:, None] * 0.5)
    assert apart["status"] == "unconverged" and apart["r_hat"] > R_HAT_MAX
    assert apart["flags"][0] == f"r_hat {apart['r_hat']:.3f} > {R_HAT_MAX}"
    short = summarize(rng.normal(size=(4, 60)))
    assert short["status"] == "unconverged" and short["ess_bulk"] < ESS_BULK_MIN
    assert f"ess_bulk {short['ess_bulk']:.0f} < {ESS_BULK_MIN}" in short["flags"]
    assert math.isfinite(short["llc_mean"])  # numbers are kept
    bad = summarize(np.where(np.arange(4000).reshape(4, 1000) == 7, np.nan, 1.0))
    assert bad["status"] == "nonfinite" and bad["flags"] == ["1 non-finite draws"]


REGULAR = TargetSpec(model={"kind": "dln", "widths": [4, 4]}, data={"n_data": 1000, "noise_scale": 0.1}, seed=0)


@pytest.fixture(scope="module")
def regular(jax64):
    from lambda_hat.science import build_target

    return build_target(REGULAR)


def test_tiny_budget_run_is_unconverged_and_keeps_its_numbers(regular):
    """HMC without warmup at a step size far too small: the dispersed chains never meet."""
    from lambda_hat.science import sample_run

    spec = {"name": "hmc", "chains": 4, "draws": 30, "warmup": 0, "step_size": 0.001, "num_integration_steps": 3}
    m = sample_run(RunSpec(target_id="t", sampler=spec, seed=1), REGULAR, regular).metrics
    assert m["status"] == "unconverged", m
    assert m["r_hat"] > R_HAT_MAX and m["ess_bulk"] < ESS_BULK_MIN
    assert m["flags"] == [f"r_hat {m['r_hat']:.3f} > {R_HAT_MAX}", f"ess_bulk {m['ess_bulk']:.0f} < {ESS_BULK_MIN}"]
    assert m["status_reason"] == "; ".join(m["flags"])
    assert math.isfinite(m["llc_mean"]) and math.isfinite(m["llc_sem"])


def test_well_converged_regular_run_is_ok_and_exact(regular, jax64):
    """A regular model ([4, 4], d = 16, λ = 8), exactly quadratic: NUTS from dispersed starts
    converges (status ok) and lands within 3 sem of the exact finite-n expectation."""
    import jax.numpy as jnp

    from lambda_hat.science import sample_run
    from lambda_hat.science.posterior import flat_model, make_full_loss
    from lambda_hat.science.theory import quadratic_expected_llc_at

    w_star, predict = flat_model({k: jnp.asarray(v) for k, v in regular.params.items()}, "identity")
    loss = make_full_loss(predict, jnp.asarray(regular.X), jnp.asarray(regular.Y))
    n = regular.X.shape[0]
    expected = quadratic_expected_llc_at(jax64.hessian(loss)(w_star), jax64.grad(loss)(w_star), n / np.log(n), 1.0)
    spec = {"name": "nuts", "chains": 4, "draws": 1000, "warmup": 200}
    m = sample_run(RunSpec(target_id="t", sampler=spec, seed=1), REGULAR, regular).metrics
    assert m["status"] == "ok" and m["flags"] == [], m
    assert m["llc_sem"] < 0.02 * expected  # the test has power
    assert abs(m["llc_mean"] - expected) < 3 * m["llc_sem"], (m["llc_mean"], expected, m["llc_sem"])
