"""A sweep's `diagnostics:` thresholds decide a run's status, end to end (sweep file → driver →
worker → manifest → index), without changing any ID."""

import json

import pytest

from lhproc import lh, sgld_sweep, start


def _statuses(tmp_path, *sweeps):
    """`lh execute` each (name, text) sweep into its own store, all at once (separate stores and
    drivers: nothing shared), then each store's runs as rows."""
    procs = []
    for name, text in sweeps:
        (tmp_path / name).write_text(text)
        procs.append(start(tmp_path, "execute", name, "--workers", "1", "--store", str(tmp_path / name.replace(".yaml", ""))))
    for (name, _), proc in zip(sweeps, procs):
        out, _ = proc.communicate(timeout=600)
        assert proc.returncode == 0, (name, out)
    rows = []
    for name, _ in sweeps:
        out = lh(tmp_path, "query", "select run_id, status, status_reason, r_hat, ess_bulk, "
                 "metrics->>'$.r_hat_max' as r, metrics->>'$.ess_bulk_min' as e from runs",
                 "--format", "json", "--store", str(tmp_path / name.replace(".yaml", "")))
        rows.append(json.loads(out.stdout))
    return rows


def test_thresholds_from_the_sweep_reach_the_worker(tmp_path):
    base = sgld_sweep([1], steps=300)  # 2 chains, 200 recorded steps: far below an ESS of 400
    strict, lax = _statuses(tmp_path, ("strict.yaml", base),
                            ("lax.yaml", "diagnostics: {r_hat_max: 10, ess_bulk_min: 0}\n" + base))
    assert len(strict) == len(lax) == 1
    s, x = strict[0], lax[0]
    assert s["run_id"] == x["run_id"]  # thresholds are not part of the run's ID
    assert (s["r_hat"], s["ess_bulk"]) == pytest.approx((x["r_hat"], x["ess_bulk"]))  # same numbers
    assert s["status"] == "unconverged" and "< 400" in s["status_reason"], s
    assert x["status"] == "ok" and x["status_reason"] == "", x
    # The thresholds are stored beside the decision, and lh status displays it: the lax run,
    # bulk ESS far under 400, is not flagged there.
    assert (x["r"], x["e"]) == ("10.0", "0.0"), x
    status = lh(tmp_path, "status", "--store", str(tmp_path / "lax"), "--logs", str(tmp_path / "nologs")).stdout
    assert "flagged runs: 0" in status, status
    strict_status = lh(tmp_path, "status", "--store", str(tmp_path / "strict"), "--logs", str(tmp_path / "nologs")).stdout
    assert "flagged runs: 1" in strict_status and "unconverged (" in strict_status, strict_status


def test_bad_thresholds_are_refused_with_the_field(tmp_path):
    (tmp_path / "s.yaml").write_text("diagnostics: {ess_bulk_min: -1}\n" + sgld_sweep([1]))
    r = lh(tmp_path, "plan", "s.yaml", check=False)
    assert r.returncode == 2
    assert "s.yaml: diagnostics: ess_bulk_min" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
