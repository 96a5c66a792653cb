"""Calibration: λ̂ against the exact learning coefficient of deep linear networks.

Setting (the issue's): n = 10,000, σ = 0.1, γ = 1, β = 1/log n, 4 chains, float64; teachers with
every layer of rank r; LLC at the teacher's weights; λ from Aoyagi (2024). Seed-to-seed spread
of data and teacher (about ±2 %) exceeds a 4-chain standard error, so each tolerance is a
relative error, written per sampler below, not a z-score.
"""

import pytest

from lambda_hat.ids import target_id
from lambda_hat.specs import RunSpec, TargetSpec

CASES = [([5, 3, 5], 1), ([4, 3, 8], 0), ([3, 8, 4], 2), ([2, 2, 2, 2], 2)]

SGLD = {"name": "sgld", "steps": 30000, "warmup": 5000, "eval_every": 20, "batch_size": 256}
HMC = {"name": "hmc", "draws": 500, "warmup": 300}
MAX_DIVERGENT_SHARE = 0.05  # of HMC/NUTS draws; observed ≤ 3.3 % (one HMC chain of four at 13 %)

_targets: dict = {}


def _target(widths, rank):
    key = (tuple(widths), rank)
    if key not in _targets:
        from lambda_hat.science import build_target

        spec = TargetSpec(model={"kind": "dln", "widths": widths}, teacher={"rank": rank},
                          data={"n_data": 10_000, "noise_scale": 0.1}, seed=0)
        _targets[key] = (spec, build_target(spec))
    return _targets[key]


def _rel_error(widths, rank, sampler):
    from lambda_hat.science import sample_run

    spec, arrays = _target(widths, rank)
    run = RunSpec(target_id=target_id(spec), sampler={**sampler, "chains": 4}, seed=1)
    m = sample_run(run, spec, arrays).metrics
    llc_true = arrays.metrics["llc_true"]
    info = {k: m.get(k) for k in ("status", "status_reason", "divergence_rate", "r_hat", "ess_bulk", "llc_mean", "llc_sem")}
    # A run above 1 % divergent draws is flagged "divergent" but keeps its numbers; the deep
    # narrow [2,2,2,2] case diverges on 1-2.5 % of NUTS draws even at target_acceptance 0.95.
    # One with R-hat > 1.01 or bulk ESS < 400 is "unconverged" and keeps them too. Accuracy is
    # what is tested here, with the divergence rate and R-hat bounded.
    assert m["status"] in ("ok", "divergent", "unconverged") and (m.get("divergence_rate") or 0.0) < MAX_DIVERGENT_SHARE, info
    assert m["r_hat"] < 1.1, info
    print(widths, rank, sampler["name"], info, "llc_true", llc_true)
    return (m["llc_mean"] - llc_true) / llc_true, m["llc_mean"], llc_true


@pytest.mark.slow
@pytest.mark.parametrize("widths,rank", CASES)
def test_hmc_within_10_percent(widths, rank):
    rel, est, true = _rel_error(widths, rank, HMC)
    assert abs(rel) < 0.10, f"λ̂={est:.3f} λ={true}"


# RMSProp SGLD on all four cases; plain SGLD on two of them (rank 0, where the loss is quartic,
# and the deep narrow [2,2,2,2]). The other two plain runs cost ~12 s each at load 0 on 2 cores
# (more in CI at load 3-4), and plain SGLD is checked against theory more tightly elsewhere:
# within 4 SEs of the exact discrete-time value on a quadratic (tests/test_science.py), within
# 3 SEs + 3 % of the exact finite-n value on a regular DLN (tests/test_large_models.py), float32
# against float64 on the [5,3,5] rank-1 DLN (tests/test_dtypes.py); RMSProp gets only a loose
# 30 % quadratic check there, so its DLN calibration stays whole. benchmarks/accuracy.py
# measures both on all four (docs/accuracy.md).
SGLD_CASES = [pytest.param(precond, *CASES[i], id=f"{precond}-widths{i}-{CASES[i][1]}")
              for precond, cases in (("none", (1, 3)), ("rmsprop", (0, 1, 2, 3))) for i in cases]


@pytest.mark.slow
@pytest.mark.parametrize("precond,widths,rank", SGLD_CASES)
def test_sgld_within_20_percent(widths, rank, precond):
    sampler = {**SGLD, "precond": precond}
    if precond == "rmsprop" and rank == 0:
        # At a rank-0 DLN's w* = 0 the loss is quartic and frozen-RMSProp SGLD mixes slowly: with
        # 30k steps it is flagged unconverged (R-hat 1.05, ESS 72, λ̂ 8.3 ± 0.9 for λ = 6); with 4x
        # the steps R-hat is 1.011 and λ̂ 6.31 ± 0.15 (measured).
        sampler.update(steps=4 * SGLD["steps"], warmup=4 * SGLD["warmup"])
    rel, est, true = _rel_error(widths, rank, sampler)
    assert abs(rel) < 0.20, f"λ̂={est:.3f} λ={true}"


@pytest.mark.slow
@pytest.mark.parametrize("widths,rank", [CASES[1], CASES[3]])
def test_nuts_within_10_percent(widths, rank):
    # NUTS builds deep trees on these near-singular posteriors (on [5,3,5] with 10 doublings a
    # 1,500-iteration run took 26 min on 2 cores, for -1.6 %); 6 doublings keeps CI bounded.
    # Two of the four cases (rank 0, and the deep narrow one where NUTS diverges most): the
    # other two took 107 s and 176 s of CI (at load 3-4), and HMC and SGLD still cover all four;
    # NUTS on all four (and more) is measured by benchmarks/accuracy.py (docs/accuracy.md).
    rel, est, true = _rel_error(widths, rank, {"name": "nuts", "draws": 400, "warmup": 300, "max_num_doublings": 6})
    assert abs(rel) < 0.10, f"λ̂={est:.3f} λ={true}"


@pytest.mark.slow
@pytest.mark.parametrize("widths,rank", CASES)
def test_mclmc_within_15_percent(widths, rank):
    # shipped tuner settings (desired_energy_var 5e-5, 2000 tuning steps)
    rel, est, true = _rel_error(widths, rank, {"name": "mclmc", "draws": 1000})
    assert abs(rel) < 0.15, f"λ̂={est:.3f} λ={true}"
