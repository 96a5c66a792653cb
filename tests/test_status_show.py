"""`lh status` and `lh show` on real stores (fake but valid artifacts, real index, real logs)."""

import json
import re
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
    """Two targets × (hmc, sgld); one run stored unconverged, one stored ok under lenient
    thresholds (R-hat 1.03, bulk ESS 150: flagged by the default rules, not by its sweep's),
    one more not yet indexed."""
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    import shutil

    bad, lenient = ex.runs[1], ex.runs[3]
    shutil.rmtree(st.layout.run_dir(bad.run_id))
    m = fake_manifest("run", bad.run_id, resolved_spec(bad.spec), r_hat=1.2, ess_bulk=900.0,
                      status_reason="r_hat 1.200 > 1.01")
    write_artifact(st.layout.run_dir(bad.run_id), {"traces/llc": [[0.0, 1.0]]}, m.model_copy(update={"status": "unconverged"}))
    shutil.rmtree(st.layout.run_dir(lenient.run_id))
    write_artifact(st.layout.run_dir(lenient.run_id), {"traces/llc": [[0.0, 1.0]]},
                   fake_manifest("run", lenient.run_id, resolved_spec(lenient.spec), r_hat=1.03, ess_bulk=150.0))
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
    assert "targets  2 (2 ok)" in out and "runs     4 (3 ok, 1 unconverged)" in out
    assert "not in the index yet: 1 runs" in out
    # The stored decisions, displayed: the unconverged run with its stored reason; the run its
    # sweep judged ok is not re-flagged by other thresholds.
    flagged = out.split("flagged runs: ")[1].split("failed jobs")[0]
    assert flagged.startswith("1 ") and f"{ex.runs[1].run_id[:8]}" in flagged
    assert "unconverged (r_hat 1.200 > 1.01)" in flagged and ex.runs[3].run_id[:8] not in flagged
    assert f"failed jobs: 1" in out and str(err) in out and "RuntimeError: training diverged" in out
    assert ex.runs[2].run_id not in out.split("failed jobs")[1]
    assert "in flight: 1 job claimed" in out and "run_feedfeedfeed" in out
    claims.release_all()
    assert all(len(line) <= 80 for line in out.splitlines() if str(tmp_path) not in line)


def test_status_of_a_missing_store_exits_2(runner, tmp_path):
    result = lh(runner, "status", "--store", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "no such store" in result.stderr


def test_show_in_a_missing_store_says_so(runner, tmp_path):
    result = lh(runner, "show", "run_0123", "--store", str(tmp_path / "nothing"))
    assert result.exit_code == 2 and "nothing: no such store" in result.stderr, result.output


def test_show_by_unique_prefix(runner, store):
    root, ex, late = store
    run = ex.runs[1]
    result = lh(runner, "show", run.run_id[:9], "--store", str(root))
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert out.startswith(f"run {run.run_id}") and f"target      {run.spec.target_id}" in out
    assert "flagged     unconverged (r_hat 1.200 > 1.01)" in out
    assert re.search(r"^    traces/llc +\S+ \S+  1 × 2$", out, re.M), out  # an array in the zip, with its shape
    assert json.loads(out.split("\nspec\n", 1)[1]) == resolved_spec(run.spec)

    target = ex.targets[0]
    out = lh(runner, "show", target.target_id, "--store", str(root)).stdout
    n_runs = sum(r.spec.target_id == target.target_id for r in ex.runs) + (late.spec.target_id == target.target_id)
    assert out.startswith(f"target {target.target_id}") and f"runs        {n_runs}" in out
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


def _damage(root, run_id, how):
    import os

    d = root / "runs" / run_id
    if how == "edited manifest":
        text = (d / "manifest.json").read_text()
        (d / "manifest.json").write_text(text.replace('"draws": 10', '"draws": 11', 1))
        return run_id
    if how == "deleted manifest":
        (d / "manifest.json").unlink()
        return run_id
    if how == "renamed directory":
        d.rename(d.with_name("run_ffffffffffff"))
        return "run_ffffffffffff"
    if how == "0-byte zip":
        (d / "arrays.zarr.zip").write_bytes(b"")
        return run_id
    if how == "a symbolic link":
        d.rename(root.parent / "moved")
        os.symlink(root.parent / "moved", d)
        return run_id
    raise AssertionError(how)


@pytest.mark.parametrize("how", ["edited manifest", "deleted manifest", "renamed directory", "0-byte zip", "a symbolic link"])
@pytest.mark.parametrize("as_json", [False, True])
def test_show_of_a_damaged_artifact_is_one_line_never_a_traceback(runner, store, how, as_json):
    """Issue 28, item 12: these were tracebacks (exit 1)."""
    root, ex, _ = store
    shown = _damage(root, ex.runs[2].run_id, how)
    result = lh(runner, "show", shown, "--store", str(root), *(["--json"] if as_json else []))
    assert isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 1 and result.stdout == "", result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"run {shown} is damaged" in lines[0], result.stderr


def _job_logs(logs, kind, target_id, sampler, artifact_id, log_lines, err_text):
    if kind == "target":
        base = logs / "build_target" / artifact_id
    else:
        base = logs / "run_sampler" / f"{target_id}_{sampler}_{artifact_id}"
    base.parent.mkdir(parents=True, exist_ok=True)
    base.with_suffix(".log").write_text("".join(line + "\n" for line in log_lines))
    base.with_suffix(".err").write_text(err_text)
    return base.with_suffix(".err")


def test_status_lists_only_this_stores_failed_jobs_from_a_shared_logs_folder(runner, tmp_path, store):
    """Issue 28, item 14: with the default logs/ shared by two stores, another store's
    finished jobs were listed as this store's failures. The worker's lines are those of
    execute/apps.py."""
    root, ex, _ = store
    other_root = tmp_path / "other"
    other = expand(sweep_from_dict({**SWEEP, "targets": [{**SWEEP["targets"][0], "grid": {"seed": [99]}}]}))
    logs = tmp_path / "logs"
    mine_t, theirs_t = ex.targets[0].target_id, other.targets[0].target_id
    assert theirs_t not in {t.target_id for t in ex.targets}
    warning = "UserWarning: something harmless\n"
    # The other store's jobs: a target and a run that finished (warnings on stderr), a run that failed.
    _job_logs(logs, "target", None, None, theirs_t, [f"building {theirs_t} on h (pid 1)",
                                                     f"wrote {other_root}/targets/{theirs_t}: {{'L0': 0.1}} in 1.00s"], warning)
    done, failed_there = other.runs[0], other.runs[1]
    _job_logs(logs, "run", theirs_t, "hmc", done.run_id, [f"sampling {done.run_id} (hmc) on {theirs_t} on h",
                                                         f"{done.run_id}: llc_mean=2.0 llc_std=0.1 r_hat=1.0 status=ok"], warning)
    _job_logs(logs, "run", theirs_t, "sgld", failed_there.run_id, [f"sampling {failed_there.run_id} (sgld) on {theirs_t} on h"],
              "Traceback (most recent call last):\nRuntimeError: theirs\n")
    # This store's failures: a run of one of its targets, and a target build.
    my_failed_run = _job_logs(logs, "run", mine_t, "hmc", "run_0123456789ab", ["sampling run_0123456789ab (hmc) on x on h"],
                              "Traceback (most recent call last):\nRuntimeError: mine\n")
    my_failed_target = _job_logs(logs, "target", None, None, "tgt_0123456789ab", ["building tgt_0123456789ab on h (pid 2)"],
                                 "Traceback (most recent call last):\nRuntimeError: training diverged\n")
    result = lh(runner, "status", "--store", str(root), "--logs", str(logs))
    assert result.exit_code == 0, result.output
    failed = result.stdout.split("failed jobs: ")[1]
    assert failed.startswith("2 "), result.stdout
    assert str(my_failed_run) in failed and str(my_failed_target) in failed
    assert theirs_t not in failed and done.run_id not in failed and failed_there.run_id not in failed


def test_status_names_a_skewed_heartbeat_instead_of_a_negative_age(runner, tmp_path, store):
    """A lease of another host stamped a day ahead (clock skew): never "heartbeat -86336s ago"."""
    import os
    import time

    from lambda_hat.store.claims import Claims, Owner

    root, ex, late = store
    other = Claims(Store(root).layout.claims_dir, Owner("otherhost", 4242, "tok", boot_id="b", pid_ns="n"))
    assert other.acquire("run_feedfeedfeed") is None
    ahead = time.time() + 86400
    os.utime(Store(root).layout.claims_dir / "run_feedfeedfeed.lease", (ahead, ahead))
    out = lh(runner, "status", "--store", str(root), "--logs", str(tmp_path / "nologs")).stdout
    line = next(x for x in out.splitlines() if "run_feedfeedfeed" in x)
    assert "otherhost pid 4242" in line and "ahead (clock skew)" in line and "-" not in line.split("pid")[1], line


def test_a_failure_the_driver_records_is_listed_under_its_own_store_only(runner, tmp_path, store):
    """Two stores holding the same target share a logs folder; a run job of that target never
    reached a worker in one of them (its worker was lost), so only the driver wrote its logs.
    Judged by names it was listed as a failure of both stores; the driver now names its store."""
    import shutil

    from lambda_hat.execute.schedule import _note_failure
    from lambda_hat.logs import job_logs

    root, ex, _ = store
    other_root = tmp_path / "other"
    shutil.copytree(root, other_root)
    logs = tmp_path / "logs"
    target_id = ex.targets[0].target_id
    _, err = job_logs(logs, "run", "run_0123456789ab", target_id, "hmc")
    _note_failure(err, "its worker was lost", other_root)
    listed = {}
    for name, where in (("this", root), ("other", other_root)):
        result = lh(runner, "status", "--store", str(where), "--logs", str(logs))
        assert result.exit_code == 0, result.output
        listed[name] = "run_0123456789ab" in result.stdout
    assert listed == {"this": False, "other": True}
