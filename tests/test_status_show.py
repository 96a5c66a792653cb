"""`lh status` and `lh show` on real stores (fake but valid artifacts, real index, real logs)."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.store.artifacts import write_artifact
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict
from tests.test_store import SWEEP, fake_manifest, fill_store


@pytest.fixture
def runner():
    return CliRunner()


def lh(runner, *args):
    return runner.invoke(app, list(args), env={"COLUMNS": "80"})


@pytest.fixture
def store(tmp_path):
    """Two targets × (hmc, sgld); one run with a bad R-hat, one more not yet indexed."""
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    bad = ex.runs[1]
    d = st.layout.run_dir(bad.run_id)
    import shutil

    shutil.rmtree(d)
    m = fake_manifest("run", bad.run_id, resolved_spec(bad.spec), r_hat=1.2, ess_bulk=900.0)
    write_artifact(d, {"traces/llc": [[0.0, 1.0]]}, m)
    st.reconcile()
    more = expand(sweep_from_dict({**SWEEP, "samplers": [{"name": "nuts"}]}))
    late = more.runs[0]
    write_artifact(st.layout.run_dir(late.run_id), {"traces/llc": [[0.0, 1.0]]},
                   fake_manifest("run", late.run_id, resolved_spec(late.spec), ess_bulk=1000.0, r_hat=1.0))
    return root, ex, late


def test_status_counts_flags_failures_and_claims(runner, tmp_path, store, monkeypatch):
    root, ex, late = store
    logs = tmp_path / "logs"
    failed_run = "run_0123456789ab"
    (logs / "run_sampler").mkdir(parents=True)
    err = logs / "run_sampler" / f"{ex.targets[0].target_id}_hmc_{failed_run}.err"
    err.write_text("Traceback (most recent call last):\n  ...\nRuntimeError: training diverged\n")
    ok_err = logs / "run_sampler" / f"{ex.targets[0].target_id}_hmc_{ex.runs[2].run_id}.err"
    ok_err.write_text("a warning on a run that finished\n")
    claims = Store(root).claims()
    assert claims.acquire("run_feedfeedfeed") is None
    result = lh(runner, "status", "--store", str(root), "--logs", str(logs))
    out = result.stdout
    assert result.exit_code == 0, result.output
    assert "targets  2 (2 ok)" in out and "runs     4 (4 ok)" in out
    assert "not in the index yet: 1 runs" in out
    flagged = out.split("flagged runs: ")[1].split("failed jobs")[0]
    assert flagged.startswith("1 ") and f"{ex.runs[1].run_id[:8]}" in flagged and "R-hat 1.200 > 1.01" in flagged
    assert f"failed jobs: 1" in out and str(err) in out and "RuntimeError: training diverged" in out
    assert ex.runs[2].run_id not in out.split("failed jobs")[1]
    assert "in flight: 1 jobs" in out and "run_feedfeedfeed" in out
    claims.release_all()
    assert all(len(line) <= 80 for line in out.splitlines() if str(tmp_path) not in line)


def test_status_of_a_missing_store_exits_2(runner, tmp_path):
    result = lh(runner, "status", "--store", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no such store" in result.stderr


def test_show_by_unique_prefix(runner, store):
    root, ex, late = store
    run = ex.runs[1]
    result = lh(runner, "show", run.run_id[:9], "--store", str(root))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"run {run.run_id}") and f"target     {run.spec.target_id}" in out
    assert "flagged    R-hat 1.200 > 1.01" in out and "traces/llc" in out and "array 1 × 2" in out
    assert json.loads(out.split("\nspec\n", 1)[1]) == resolved_spec(run.spec)

    target = ex.targets[0]
    out = lh(runner, "show", target.target_id, "--store", str(root)).stdout
    n_runs = sum(r.spec.target_id == target.target_id for r in ex.runs) + (late.spec.target_id == target.target_id)
    assert out.startswith(f"target {target.target_id}") and f"runs       {n_runs}" in out
    assert all(r.run_id in out for r in ex.runs if r.spec.target_id == target.target_id)

    as_json = json.loads(lh(runner, "show", run.run_id, "--store", str(root), "--json").stdout)
    assert as_json["id"] == run.run_id and as_json["metrics"]["r_hat"] == 1.2


@pytest.mark.parametrize("prefix, says", [("run_", "IDs start with it"), ("run_zzzz", "no target or run"), ("", "an empty ID")])
def test_show_refuses_ambiguous_or_unknown_ids(runner, store, prefix, says):
    root, _, _ = store
    result = lh(runner, "show", prefix, "--store", str(root))
    assert result.exit_code == 2 and says in result.stderr and result.stderr.count("\n") == 1


def test_the_prefix_query_prints_is_enough_for_show(runner, store):
    root, ex, _ = store
    table = lh(runner, "query", "select run_id from runs order by run_id", "--store", str(root)).stdout
    prefix = table.splitlines()[2].strip()
    assert len(prefix) < 16
    assert lh(runner, "show", prefix, "--store", str(root)).stdout.startswith(f"run {sorted(r.run_id for r in ex.runs)[0]}")


def test_status_and_show_do_not_import_jax_parsl_or_zarr(store):
    root, ex, _ = store
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lambda_hat.cli import app\n"
        "r = CliRunner()\n"
        f"assert r.invoke(app, ['status', '--store', {str(root)!r}]).exit_code == 0\n"
        f"assert r.invoke(app, ['show', {ex.runs[0].run_id!r}, '--store', {str(root)!r}]).exit_code == 0\n"
        "heavy = [m for m in ('jax', 'parsl', 'blackjax', 'zarr', 'matplotlib') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
