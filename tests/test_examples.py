"""The shipped examples do what their comments say: examples/quick.yaml (the README's first
command), run through the real `lh execute` into a fresh store, finishes every run with status ok
(R-hat ≤ 1.01, bulk ESS ≥ 400, at most 1 % divergent transitions) and, on each target, every two
samplers agree within 3 combined standard errors, |λ̂₁ − λ̂₂| < 3·√(sem₁² + sem₂²)."""

import itertools
import json
import math
from pathlib import Path

import pytest

from lhproc import lh

QUICK = Path(__file__).resolve().parent.parent / "examples" / "quick.yaml"


@pytest.mark.slow
def test_quick_example_runs_ok_and_its_samplers_agree(tmp_path):
    store = str(tmp_path / "runs")
    lh(tmp_path, "execute", str(QUICK), "--store", store, timeout=900)
    out = lh(tmp_path, "query", "select target_id, sampler, status, status_reason, llc_mean, llc_sem, r_hat, "
             "ess_bulk, divergence_rate from runs order by target_id, sampler", "--format", "json", "--store", store)
    runs = json.loads(out.stdout)
    for r in runs:
        print(r)
    assert len(runs) == 4 and len({r["target_id"] for r in runs}) == 2, runs
    assert [r for r in runs if r["status"] != "ok"] == [], "flagged runs"
    for target in {r["target_id"] for r in runs}:
        mine = [r for r in runs if r["target_id"] == target]
        assert {r["sampler"] for r in mine} == {"hmc", "nuts"}, mine
        for a, b in itertools.combinations(mine, 2):
            gap = abs(a["llc_mean"] - b["llc_mean"])
            assert gap < 3 * math.hypot(a["llc_sem"], b["llc_sem"]), (a, b)
