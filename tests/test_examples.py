"""The shipped examples do what their comments say: every run of examples/quick.yaml converges
(status ok: R-hat ≤ 1.01, bulk ESS ≥ 400) and, on each target, every two samplers agree within 3
combined standard errors, |λ̂₁ − λ̂₂| < 3·√(sem₁² + sem₂²)."""

import itertools
import math
from pathlib import Path

import pytest

QUICK = Path(__file__).resolve().parent.parent / "examples" / "quick.yaml"


@pytest.mark.slow
def test_quick_example_converges_and_its_samplers_agree():
    from lambda_hat.ids import target_id
    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import RunSpec
    from lambda_hat.sweep import load_sweep

    sweep = load_sweep(QUICK)
    assert len(sweep.targets) == 2 and len(sweep.samplers) >= 2
    for target in sweep.targets:
        arrays = build_target(target)
        runs = {}
        for s in sweep.samplers:
            run = RunSpec(target_id=target_id(target), sampler=s.sampler, posterior=s.posterior, seed=s.seed)
            m = sample_run(run, target, arrays).metrics
            runs[s.sampler.name] = m
            info = {k: m[k] for k in ("llc_mean", "llc_sem", "r_hat", "ess_bulk", "status", "status_reason")}
            print(target.seed, s.sampler.name, info)
            assert m["status"] == "ok", info
        for (a, ma), (b, mb) in itertools.combinations(runs.items(), 2):
            gap = abs(ma["llc_mean"] - mb["llc_mean"])
            assert gap < 3 * math.hypot(ma["llc_sem"], mb["llc_sem"]), (target.seed, a, b, ma["llc_mean"], mb["llc_mean"])
