"""NUTS and MCLMC against the exact quadratic theory, end-to-end `sample_run` smoke tests
for every sampler's metrics, the compile cache (data are arguments, not constants), and
the jitted diagnostics.

Quadratic theory (as in test_science.py): L(w) = ½(w − w*)ᵀH(w − w*) + L0, diagonal H, so
the localized tempered posterior is Gaussian with precision nβH + γI and
E[llc] = ½ Σ_i nβ·h_i / (nβ·h_i + γ) exactly (3.669 here).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from lambda_hat.specs import (
    DataSpec,
    HMCSpec,
    MCLMCSpec,
    MLPSpec,
    NUTSSpec,
    RunSpec,
    SGLDSpec,
    TargetSpec,
    TrainingSpec,
)

from quadratic import D, GAMMA, L0, N_BETA, _quadratic, _run, _theory  # noqa: E402,F401

from lambda_hat.science.pipeline import LOSS_EVAL_FGE
from lambda_hat.science.posterior import INIT_FGE


def test_nuts_matches_quadratic_theory(jax64):
    from lambda_hat.science.samplers.nuts import build_nuts

    h, w_star, loss = _quadratic(jax64)
    expected = _theory(h)
    fn = build_nuts(loss_fn=loss, w_star=w_star, n_beta=N_BETA, gamma=GAMMA, draws=1000, warmup=300,
                    max_num_doublings=10, step_size=0.01, target_acceptance=0.8,
                    adapt_step_size=True, adapt_mass_matrix=True, chains=4)
    traces, s = _run(jax64, fn)
    assert s["status"] == "ok"
    assert s["llc_sem"] < 0.05 * expected  # the test has power
    # observed (seeds 0-3 of the run key): relative error −0.9 % … +0.8 %, |z| ≤ 0.8, sem ≈ 0.045
    assert abs(s["llc_mean"] - expected) < 3 * s["llc_sem"]
    assert abs(s["llc_mean"] - expected) < 0.05 * expected
    assert s["r_hat"] < 1.05
    assert not traces["diverging"].any()
    assert traces["num_grad_evals"].shape == (4, 1000) and (traces["num_grad_evals"] >= 1).all()
    assert (traces["num_grad_evals"] <= 2**10).all()
    assert traces["warmup_grad_evals"].shape == (4,) and (traces["warmup_grad_evals"] >= 300).all()


def test_mclmc_matches_quadratic_theory(jax64):
    """MCLMC is unadjusted, so E[llc] carries an O(step_size²) bias, set by the tuner's
    desired_energy_var. At the shipped default (5e-5, num_steps 2000), run seeds 0-3 gave
    −1.2 %, −0.6 %, +0.1 %, −1.8 % (z = −1.6 … +0.1, sem ≈ 0.04); at the old 5e-4, z reached −2.1."""
    from lambda_hat.science.samplers.mclmc import build_mclmc
    from lambda_hat.specs import MCLMCSpec

    d = MCLMCSpec()
    assert (d.desired_energy_var, d.num_steps) == (5e-5, 2000)
    h, w_star, loss = _quadratic(jax64)
    expected = _theory(h)
    fn = build_mclmc(loss_fn=loss, w_star=w_star, n_beta=N_BETA, gamma=GAMMA, draws=2000, L=1.0, step_size=0.1,
                     tune=True, num_steps=d.num_steps, frac_tune1=0.1, frac_tune2=0.1, frac_tune3=0.1,
                     desired_energy_var=d.desired_energy_var, trust_in_estimate=1.5, num_effective_samples=150,
                     diagonal_preconditioning=False, integrator="isokinetic_mclachlan", chains=4)
    traces, s = _run(jax64, fn)
    assert s["status"] == "ok"
    assert s["llc_sem"] < 0.05 * expected
    err = abs(s["llc_mean"] - expected)
    assert err < 0.05 * expected
    assert err < 3 * s["llc_sem"]
    assert s["r_hat"] < 1.05
    # the tuner moved L and step size away from the given (1.0, 0.1), per chain, constant over draws
    assert np.all(traces["L"] == traces["L"][:, :1]) and np.all(traces["L"][:, 0] != 1.0)
    assert np.all(traces["step_size"][:, 0] != 0.1)
    assert (traces["warmup_grad_evals"] == 2 * 600).all()  # 3 × 200 tuning steps × 2 gradients


def test_mclmc_fixed_parameters_without_tuning(jax64):
    from lambda_hat.science.samplers.mclmc import build_mclmc

    h, w_star, loss = _quadratic(jax64)
    fn = build_mclmc(loss_fn=loss, w_star=w_star, n_beta=N_BETA, gamma=GAMMA, draws=50, L=0.7, step_size=0.05,
                     tune=False, num_steps=500, frac_tune1=0.1, frac_tune2=0.1, frac_tune3=0.1,
                     desired_energy_var=5e-4, trust_in_estimate=1.5, num_effective_samples=150,
                     diagonal_preconditioning=False, integrator="isokinetic_leapfrog", chains=2)
    traces, s = _run(jax64, fn)
    assert np.all(traces["L"] == 0.7) and np.all(traces["step_size"] == 0.05)
    assert (traces["warmup_grad_evals"] == 0).all()
    assert np.isfinite(traces["energy_change"]).all() and np.isfinite(s["llc_mean"])
    assert s["status"] == "unconverged"  # 2 × 50 draws cannot reach 400 effective ones


def test_recorded_loss_from_the_log_density_is_the_loss(jax64):
    """HMC/NUTS/MCLMC record L_n from their state's log density instead of a data pass: it is
    the loss itself, to rounding, at any point."""
    from lambda_hat.science.posterior import loss_from_logdensity, make_logdensity

    h, w_star, loss = _quadratic(jax64)
    logdensity = make_logdensity(loss, w_star, N_BETA, GAMMA)
    for w in jax64.random.normal(jax64.random.PRNGKey(0), (5, D)):
        got = loss_from_logdensity(logdensity(w), w, w_star, N_BETA, GAMMA)
        assert float(got) == pytest.approx(float(loss(w)), rel=1e-12)


def test_summarize_is_jitted_once_and_rhat_falls_back(jax64, monkeypatch):
    from blackjax import diagnostics

    from lambda_hat.science import llc

    x = np.random.default_rng(0).normal(size=(3, 17))
    s = llc.summarize(x)
    assert np.isfinite(s["r_hat"]) and s["ess_bulk"] > 0
    assert llc._diagnostics_fn(True, (3, 17)) is llc._diagnostics_fn(True, (3, 17))  # compiled once per shape

    def boom(*a, **k):
        raise AssertionError("too few draws")

    monkeypatch.setattr(diagnostics, "rhat", boom)
    s2 = llc.summarize(np.random.default_rng(1).normal(size=(3, 19)))  # new shape: traces again
    assert math.isnan(s2["r_hat"]) and s2["ess_bulk"] > 0
    assert s2["status"] == "unconverged" and s2["flags"][0] == "r_hat unavailable"


# --------------------------------------------------------------------------- end to end

TINY = TargetSpec(model=MLPSpec(in_dim=3, depth=1, widths=[4]), data=DataSpec(n_data=200, n_test=50),
                  training=TrainingSpec(steps=300, learning_rate=0.01), seed=3)
TINY_B = TINY.model_copy(update={"seed": 4})  # same shapes, different data and w*


@pytest.fixture(scope="module")
def tiny_targets():
    from lambda_hat.science import build_target

    return build_target(TINY), build_target(TINY_B)


RUNS = {
    "nuts": NUTSSpec(chains=2, draws=40, warmup=60, max_num_doublings=6),
    "mclmc": MCLMCSpec(chains=2, draws=40, num_steps=100),
    "mclmc_fixed_f32": MCLMCSpec(chains=2, draws=20, tune=False, L=0.5, step_size=0.05, dtype="float32",
                                 integrator="isokinetic_yoshida"),
}


@pytest.mark.parametrize("name", ["nuts", "mclmc", pytest.param("mclmc_fixed_f32", marks=pytest.mark.slow)])
def test_sample_run_end_to_end(tiny_targets, name):
    from lambda_hat.science import sample_run

    spec = RUNS[name]
    run = RunSpec(target_id="t", sampler=spec, seed=1)
    r = sample_run(run, TINY, tiny_targets[0])
    for k, v in r.traces.items():
        assert v.shape == (spec.chains, spec.draws), k
    assert {"loss", "llc", "step_size"} <= set(r.traces)
    for k in ("llc_mean", "ess_bulk", "ess_tail", "r_hat", "step_size", "total_fge", "fge_warmup", "compile_sec", "sample_sec",
              "walltime_sec", "status"):
        assert k in r.metrics, k
    # tiny budgets: far below 400 effective draws, so flagged, with the numbers kept
    assert r.metrics["status"] == "unconverged" and np.isfinite(r.traces["llc"]).all()
    assert any(f.startswith("ess_bulk") for f in r.metrics["flags"])
    assert r.metrics["walltime_sec"] == pytest.approx(r.metrics["compile_sec"] + r.metrics["sample_sec"])
    _check_cost_traces(r)
    if spec.name == "nuts":
        assert {"accept_rate", "energy", "diverging", "num_grad_evals"} <= set(r.traces)
        assert r.metrics["total_fge"] == r.metrics["fge_warmup"] + r.traces["num_grad_evals"].sum()
        assert 0 < r.metrics["accept_rate_mean"] <= 1 and "divergences" in r.metrics
    else:
        assert {"energy_change", "L"} <= set(r.traces)
        per_step = {"isokinetic_mclachlan": 2, "isokinetic_yoshida": 3}[spec.integrator]
        tune = (3 * 10 if spec.tune else 0) * spec.chains
        assert r.metrics["total_fge"] == per_step * (tune + spec.chains * spec.draws) + spec.chains * INIT_FGE
        assert r.metrics["L"] == pytest.approx(float(np.mean(r.traces["L"][:, 0])))
        if not spec.tune:
            assert r.metrics["L"] == pytest.approx(spec.L) and r.metrics["step_size"] == pytest.approx(spec.step_size)
    if spec.dtype == "float32":
        assert r.traces["loss"].dtype == np.float32
        return
    again = sample_run(run, TINY, tiny_targets[0])  # determinism, and the in-process compile cache
    np.testing.assert_array_equal(again.traces["llc"], r.traces["llc"])
    assert again.metrics["compile_cache_hit"] == 1


def _check_cost_traces(r):
    """cumulative_fge ends at total_fge; walltime rises to the measured sampling time."""
    fge, wall = r.traces["cumulative_fge"], r.traces["walltime"]
    assert (np.diff(fge, axis=1) > 0).all() and (fge[:, 0] > 0).all()
    assert fge[:, -1].sum() == pytest.approx(r.metrics["total_fge"])
    assert (fge[:, 0] > r.metrics["fge_warmup"] / fge.shape[0] - 1e-9).all()
    assert (np.diff(wall, axis=1) >= 0).all() and (wall > 0).all()
    assert wall[:, -1] == pytest.approx(r.metrics["sample_sec"])


def test_compiled_sampler_is_reused_across_targets(tiny_targets):
    """Data and w* are arguments of the compiled sampler, not constants: a second target of
    the same shapes reuses the executable and still gets its own numbers."""
    from lambda_hat.science import sample_run

    run = RunSpec(target_id="t", sampler=HMCSpec(chains=2, draws=20, warmup=20, num_integration_steps=3), seed=2)
    a = sample_run(run, TINY, tiny_targets[0])
    b = sample_run(run, TINY_B, tiny_targets[1])
    assert b.metrics["compile_cache_hit"] == 1
    assert b.metrics["L0"] == pytest.approx(tiny_targets[1].metrics["L0"], rel=1e-10)
    assert a.metrics["L0"] != b.metrics["L0"] and not np.array_equal(a.traces["loss"], b.traces["loss"])
    # HMC FGE: (warmup + draws) × num_integration_steps per chain, and each chain's dispersed start
    assert a.metrics["total_fge"] == 2 * (20 + 20) * 3 + 2 * INIT_FGE
    assert a.metrics["fge_warmup"] == 2 * 20 * 3 + 2 * INIT_FGE


def test_sgld_total_fge(tiny_targets):
    from lambda_hat.science import sample_run

    spec = SGLDSpec(chains=2, steps=205, warmup=100, eval_every=10, batch_size=32)
    r = sample_run(RunSpec(target_id="t", sampler=spec, seed=0), TINY, tiny_targets[0])
    # 100 warmup + 10 blocks × 10 steps run (the 5 remainder steps are not), each 32/200 of a full
    # gradient, each chain's dispersed start, and the full-data loss of each of the 10 recorded draws
    assert r.metrics["total_fge"] == pytest.approx(2 * 200 * 32 / 200 + 2 * INIT_FGE + 2 * 10 * LOSS_EVAL_FGE)
    assert r.metrics["fge_warmup"] == pytest.approx(2 * 100 * 32 / 200 + 2 * INIT_FGE)
    assert r.metrics["fge_recording"] == pytest.approx(2 * 10 * LOSS_EVAL_FGE)
    _check_cost_traces(r)
    # per draw: one block of 10 minibatch steps, each 32/200 of a full gradient, and the recorded loss
    np.testing.assert_allclose(np.diff(r.traces["cumulative_fge"], axis=1), 10 * 32 / 200 + LOSS_EVAL_FGE)
    assert (r.traces["step_size"] == r.metrics["step_size"]).all() and r.traces["step_size"].shape == (2, 10)


def test_gamma_and_beta_sweeps_reuse_the_compiled_sampler(tiny_targets):
    """nβ, γ and ε are arguments of the executable: changing them is a cache hit, and the
    numbers still follow them (a stiffer localization pulls λ̂ down)."""
    from lambda_hat.science import sample_run

    spec = SGLDSpec(chains=2, steps=300, warmup=100, eval_every=10, batch_size=32)
    loose = sample_run(RunSpec(target_id="t", sampler=spec, posterior={"gamma": 1.0}, seed=0), TINY, tiny_targets[0])
    stiff = sample_run(RunSpec(target_id="t", sampler=spec, posterior={"gamma": 100.0}, seed=0), TINY, tiny_targets[0])
    assert stiff.metrics["compile_cache_hit"] == 1 and stiff.metrics["gamma"] == 100.0
    assert stiff.metrics["llc_mean"] < loose.metrics["llc_mean"]
    hot = sample_run(RunSpec(target_id="t", sampler=spec.model_copy(update={"step_size_nbeta": 0.05}),
                             posterior={"beta_mode": "fixed", "beta0": 0.5}, seed=0), TINY, tiny_targets[0])
    assert hot.metrics["compile_cache_hit"] == 1 and hot.metrics["beta"] == 0.5


def test_hmc_run_with_many_divergences_is_flagged(tiny_targets):
    """A step size far too large for the posterior: most transitions diverge, and the run is
    recorded as 'divergent' with its count and rate, never as a plain 'ok' number."""
    from lambda_hat.science import sample_run
    from lambda_hat.science.pipeline import MAX_DIVERGENCE_RATE

    bad = HMCSpec(chains=2, draws=20, warmup=0, step_size=5.0, num_integration_steps=3)
    r = sample_run(RunSpec(target_id="t", sampler=bad, seed=0), TINY, tiny_targets[0])
    assert r.metrics["divergences"] == int(r.traces["diverging"].sum()) > MAX_DIVERGENCE_RATE * 40
    assert r.metrics["divergence_rate"] == r.metrics["divergences"] / 40
    # divergent takes precedence over unconverged; both reasons are kept
    assert r.metrics["status"] == "divergent"
    assert r.metrics["flags"][-1] == f"divergence_rate {r.metrics['divergence_rate']:.3f} > {MAX_DIVERGENCE_RATE}"
    assert any(f.startswith("ess_bulk") for f in r.metrics["flags"])
    good = HMCSpec(chains=2, draws=20, warmup=50, num_integration_steps=3)
    r = sample_run(RunSpec(target_id="t", sampler=good, seed=0), TINY, tiny_targets[0])
    assert r.metrics["divergence_rate"] <= MAX_DIVERGENCE_RATE and r.metrics["status"] == "unconverged"
    assert not any(f.startswith("divergence") for f in r.metrics["flags"])
