"""examples/byo/sweep.yaml end to end through the real CLI (docs/byo.md). Its own file so that
CI's slow suite (one test file per xdist worker) runs it beside tests/test_byo.py's transformer
test, not after it: the two are the slow suite's heaviest."""

import json
from pathlib import Path

import pytest

from lhproc import lh

BYO = Path(__file__).resolve().parents[1] / "examples" / "byo"


@pytest.mark.slow
def test_the_byo_examples_run_end_to_end(tmp_path):
    # examples/byo/sweep.yaml through the real CLI, run from another directory: every run
    # finishes with a finite λ̂; the regular model handed over from w_star.npz (d = 4) gives
    # λ = d/2 = 2 within 4 standard errors (or 0.3).
    store = str(tmp_path / "runs")
    lh(tmp_path, "execute", str(BYO / "sweep.yaml"), "--store", store, timeout=1800)
    out = lh(tmp_path, "query", "--store", store, "--format", "json",
             "select json_extract_string(t.spec, '$.model.factory') as factory, r.sampler, r.llc_mean, r.llc_sem, r.status, t.w_star_status "
             "from runs r join targets t using (target_id) order by factory, r.sampler")
    rows = json.loads(out.stdout)
    for r in rows:
        print(r)
    assert len(rows) == 8 and all(r["llc_mean"] is not None for r in rows), rows
    (hmc,) = [r for r in rows if r["factory"] == "from_checkpoint:make" and r["sampler"] == "hmc"]
    assert hmc["w_star_status"] == "ok" and abs(hmc["llc_mean"] - 2.0) < max(4 * hmc["llc_sem"], 0.3), hmc
