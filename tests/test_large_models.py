"""What keeps large models affordable and bounded in memory (issue 13, benchmarks/large_dln.py):
SGLD's minibatch loss trace, the chains' start on a subset of rows, the w* checks skipped past
wstar.QUALITY_MAX_WORK, and the start's tighter λ̂ cap for large d. The size thresholds are
lowered here (monkeypatch) so that small targets take the large-model paths, which are then
checked against the exact values and against the full-data paths."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from lambda_hat.ids import hashed_spec, run_id
from lambda_hat.specs import RunSpec, TargetSpec

# The regular model of tests/test_regular.py: a single linear layer, exactly quadratic loss, whose
# finite-n expectation of λ̂ is known exactly (49.86 at these settings).
REGULAR = TargetSpec(model={"kind": "dln", "widths": [10, 10]}, data={"n_data": 10_000, "noise_scale": 0.1}, seed=0)
SGLD = {"name": "sgld", "chains": 4, "steps": 8000, "warmup": 2000, "batch_size": 256, "eval_every": 20}


@pytest.fixture(scope="module")
def regular(jax64):
    import jax
    import jax.numpy as jnp

    from lambda_hat.science import build_target
    from lambda_hat.science.posterior import flat_model, make_full_loss
    from lambda_hat.science.theory import quadratic_expected_llc_at

    arrays = build_target(REGULAR)
    w_star, predict = flat_model({k: jnp.asarray(v) for k, v in arrays.params.items()}, "identity")
    loss = make_full_loss(predict, jnp.asarray(arrays.X), jnp.asarray(arrays.Y))
    n = arrays.X.shape[0]
    expected = quadratic_expected_llc_at(jax.hessian(loss)(w_star), jax.grad(loss)(w_star), n / np.log(n), 1.0)
    return arrays, float(expected)


def test_loss_trace_is_an_added_field():
    base = RunSpec(target_id="tgt_x", sampler=SGLD)
    full = RunSpec(target_id="tgt_x", sampler={**SGLD, "loss_trace": "full"})
    mini = RunSpec(target_id="tgt_x", sampler={**SGLD, "loss_trace": "minibatch"})
    assert "loss_trace" not in json.dumps(hashed_spec(base))
    assert run_id(full) == run_id(base)  # the neutral value keeps every published SGLD ID
    assert run_id(mini) != run_id(base)


def _sample(spec_sampler, arrays, seed=1, traces=False):
    from lambda_hat.science import sample_run

    run = RunSpec(target_id="t", sampler=spec_sampler, seed=seed)
    res = sample_run(run, REGULAR, arrays)
    return res if traces else res.metrics


@pytest.mark.slow
def test_minibatch_loss_trace_against_the_exact_value(regular):
    """The mean of each block's minibatch losses estimates L_n without bias: λ̂ from it agrees with
    the exact finite-n value as the full-data trace does (same moves, same keys). SGLD at ε·nβ = 0.02
    carries a small step-size bias (docs/accuracy.md: within a few % on DLNs): tolerance 3 sem + 3 %.
    The minibatch trace records no full-data passes, which its cost accounting shows."""
    arrays, expected = regular
    full = _sample(SGLD, arrays)
    mini = _sample({**SGLD, "loss_trace": "minibatch"}, arrays)
    for m in (full, mini):
        info = {k: m[k] for k in ("llc_mean", "llc_sem", "r_hat", "status")}
        assert m["llc_sem"] < 0.03 * expected, info  # the test has power
        assert abs(m["llc_mean"] - expected) < 3 * m["llc_sem"] + 0.03 * expected, (info, expected)
    assert mini["fge_recording"] == 0.0 < full["fge_recording"]
    assert mini["total_fge"] < full["total_fge"]


@pytest.mark.slow
def test_start_on_a_subset_of_rows(regular, monkeypatch):
    """Past START_MAX_WORK the dispersed start reads `start_rows` rows: the run still lands on the
    exact value, and the start costs rows/n of the full-data start."""
    import lambda_hat.science.posterior as posterior

    arrays, expected = regular
    spec = {**SGLD, "loss_trace": "minibatch"}
    # No warmup, so that the first draw still remembers where the chains started (on this quadratic,
    # chains driven by the same noise forget their start to the last bit within 2,000 steps).
    early = {**spec, "steps": 200, "warmup": 0}
    whole, whole_early = _sample(spec, arrays), _sample(early, arrays, traces=True)
    monkeypatch.setattr(posterior, "START_MAX_WORK", 0)
    rows = posterior.start_rows(10_000, 100)
    assert rows == posterior.START_MIN_ROWS
    sub, sub_early = _sample(spec, arrays), _sample(early, arrays, traces=True)
    assert not np.array_equal(sub_early.traces["loss"][:, 0], whole_early.traces["loss"][:, 0])
    assert abs(sub["llc_mean"] - expected) < 3 * sub["llc_sem"] + 0.03 * expected, (sub["llc_mean"], expected)
    start_saving = 4 * posterior.INIT_FGE * (1 - rows / 10_000)
    assert whole["fge_warmup"] - sub["fge_warmup"] == pytest.approx(start_saving)


def test_w_star_checks_skipped_past_the_work_limit(monkeypatch, jax64):
    """Past QUALITY_MAX_WORK a target gets L0 and a gradient norm accumulated chunk by chunk (equal
    to the full-data one), no Hessian or descent test, and status 'unchecked'. A DLN teacher keeps
    its exact λ only when L0 itself bounds the descent gap (noise-free data)."""
    import lambda_hat.science.wstar as wstar
    from lambda_hat.science import build_target

    def dln(noise):  # n > posterior.CHUNK: the chunked gradient sums three chunks
        return TargetSpec(model={"kind": "dln", "widths": [5, 3, 5]}, teacher={"rank": 1},
                          data={"n_data": 10_000, "noise_scale": noise}, seed=0)

    from lambda_hat.science.theory import dln_lambda

    exact = dln_lambda([5, 3, 5], 1)
    checked = build_target(dln(0.1)).metrics
    monkeypatch.setattr(wstar, "QUALITY_MAX_WORK", 0)
    skipped = build_target(dln(0.1)).metrics
    assert checked["w_star_status"] == "ok" and checked["llc_true"] == exact
    assert skipped["w_star_status"] == "unchecked" and "skipped" in skipped["w_star_reason"]
    assert skipped["hess_method"] == "skipped" and math.isnan(skipped["hess_max_eig"])
    assert math.isnan(skipped["descent_gap"]) and math.isnan(skipped["L0_refined"])
    assert skipped["grad_norm"] == pytest.approx(checked["grad_norm"], rel=1e-6)
    assert skipped["L0"] == pytest.approx(checked["L0"], rel=1e-12)
    assert skipped["llc_true"] is None  # σ = 0.1: nβ₀·L0 ≈ 54 cannot vouch for the minimum
    clean = build_target(dln(0.0)).metrics
    assert clean["w_star_status"] == "unchecked" and clean["llc_true"] == exact and clean["L0"] < 1e-20


def test_start_cap_for_large_d(jax64):
    """For d > START_LARGE_D the start's λ̂ is capped at START_LLC_CAP_LARGE·d. On L = Σw⁴ at w* = 0
    (tr H = 0: the scale falls back to 1/√γ) with nβ = 100 the halvings give λ̂ ≈ 3nβ·d/16^k:
    18.8·d, 1.17·d, 0.07·d. The old cap (10·d) took 1.17·d; the large-d cap must take 0.07·d."""
    from lambda_hat.science.posterior import START_LARGE_D, START_LLC_CAP_LARGE, dispersed_start

    jnp = jax64.numpy
    d, n_beta, gamma = START_LARGE_D + 1, 100.0, 1.0
    w_star = jnp.zeros(d)

    def loss(w):
        return jnp.sum(w**4)

    keys = jax64.random.split(jax64.random.PRNGKey(0), 3)
    starts = jax64.jit(jax64.vmap(lambda k: dispersed_start(k, loss, w_star, n_beta, gamma)))(keys)
    llc0 = n_beta * np.asarray(jnp.sum(starts**4, axis=1))
    assert np.all(llc0 <= START_LLC_CAP_LARGE * d), llc0 / d
    assert np.all(llc0 > START_LLC_CAP_LARGE * d / 16 / 4), llc0 / d  # the widest passing halving
