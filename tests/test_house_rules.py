"""Rules a user relies on, each checked through the real CLI in child processes (issue 22, "tests
that can fail"): a run's status is the one decided at sampling time under the sweep's
`diagnostics:` thresholds, wherever it is displayed; `lh gc --older-than` removes only what is
older; `lh execute --retries N` tries a failing job N more times; a version-1 manifest (lambda-hat
0.1: no manifest_version, no self-checksum) is read as stored; a driver killed while it samples
leaves a job the next driver takes over and finishes with the numbers of an uninterrupted run
(slow). `execute --results` inside the store is tests/test_output_safety.py's.

One tiny sweep is executed once for the module; the tests that change a store work on a copy."""

import hashlib
import json
import os
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from lhproc import TARGET, lh, processes_left, sgld_sweep, start

# Lax thresholds: the tiny runs (2 chains, 20 draws each: R-hat ~1.1, bulk ESS ~10-16) pass them,
# and would fail the fixed defaults (R-hat > 1.01, ESS < 100 per chain) were those re-applied.
LAX = "diagnostics: {r_hat_max: 1.5, ess_bulk_min: 5}\n"
# One longer run (300k SGLD steps: a few seconds of sampling in 50 segments), long enough for a
# driver to be killed while it samples.
LONG = "  - {name: sgld, chains: 2, grid: {seed: [9]}, overrides: {steps: 300000, warmup: 100, eval_every: 500}}\n"
LONG_SWEEP = LAX + "store_root: store\ntargets:\n" + TARGET + "samplers:\n" + LONG


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    d = tmp_path_factory.mktemp("swept")
    (d / "s.yaml").write_text(LAX + sgld_sweep([1, 2]))
    lh(d, "execute", "s.yaml", "--workers", "1")
    return d


@pytest.fixture(scope="module")
def long_run(tmp_path_factory):
    """The longer run, uninterrupted."""
    d = tmp_path_factory.mktemp("long")
    (d / "s.yaml").write_text(LONG_SWEEP)
    lh(d, "execute", "s.yaml", "--workers", "1")
    return d


def runs_table(cwd, store) -> list[dict]:
    out = lh(cwd, "query", "select run_id, status, status_reason, r_hat, ess_bulk, draws, manifest_version, "
             "metrics->>'$.r_hat_max' as r_hat_max, metrics->>'$.ess_bulk_min' as ess_bulk_min from runs order by run_id",
             "--format", "json", "--store", str(store))
    return json.loads(out.stdout)


def tree(root: Path) -> dict:
    """{relative path: sha256 of a file, or 'dir'} for everything under root."""
    found = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        found[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return found


def copy_store(swept, tmp_path) -> Path:
    shutil.copytree(swept / "store", tmp_path / "store", symlinks=True)
    shutil.copy(swept / "s.yaml", tmp_path / "s.yaml")
    return tmp_path / "store"


def test_status_and_show_display_the_status_stored_under_the_sweeps_thresholds(swept):
    rows = runs_table(swept, swept / "store")
    assert len(rows) == 2, rows
    for row in rows:
        # stored ok under the lax thresholds, which are stored with the decision
        assert row["status"] == "ok" and row["status_reason"] == "", row
        assert (float(row["r_hat_max"]), float(row["ess_bulk_min"])) == (1.5, 5.0), row
    # ...and the fixed defaults would flag every one of them: a re-flagging would show.
    assert all(row["r_hat"] > 1.01 or row["ess_bulk"] < 200 for row in rows), rows
    status = lh(swept, "status", "--store", "store", "--logs", "logs").stdout
    assert re.search(r"^\s*runs\s+2 \(2 ok\)\s*$", status, re.M) and "flagged runs: 0" in status, status
    assert "unconverged" not in status, status
    for row in rows:
        show = lh(swept, "show", row["run_id"], "--store", "store").stdout
        assert re.search(r"^status\s+ok\s*$", show, re.M), show
        assert "unconverged" not in show and "flag" not in show.lower(), show
        shown = json.loads(lh(swept, "show", row["run_id"], "--store", "store", "--json").stdout)
        assert shown["status"] == "ok", shown


def _age(path: Path, seconds: float) -> None:
    """Set the mtime of path and everything under it `seconds` into the past."""
    t = time.time() - seconds
    for p in [path, *(path.rglob("*") if path.is_dir() else [])]:
        os.utime(p, (t, t), follow_symlinks=False)


def test_gc_older_than_removes_only_what_is_older(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    run_ids = sorted(p.name for p in (store / "runs").iterdir())
    quarantine, claims, work = store / ".quarantine", store / ".claims", store / ".work"
    for d in (quarantine, claims, work):
        d.mkdir(exist_ok=True)
    planted = {}
    for age, tag in ((7200, "old"), (0, "young")):
        q = quarantine / f"run_{tag}00000000-20240101T000000-abcdef"
        q.mkdir()
        (q / "manifest.json").write_text("{}")
        lease = claims / f"run_{tag}11111111.lease"
        lease.write_text("")  # a writer died between create and write: judged by its heartbeat
        # the work dir of a finished run (its artifact is in runs/): gc removes it when old enough
        w = work / (run_ids[0] if tag == "old" else run_ids[1])
        w.mkdir()
        (w / "checkpoint.npz").write_bytes(b"x" * 100)
        for p in (q, lease, w):
            _age(p, age)
        planted[tag] = [q, lease, w]
    kept_before = {k: tree(store / k) for k in ("runs", "targets")}

    dry = lh(tmp_path, "gc", "--store", "store", "--older-than", "1h", "--dry-run")
    assert all(p.exists() for ps in planted.values() for p in ps), dry.stdout
    done = lh(tmp_path, "gc", "--store", "store", "--older-than", "1h")
    assert [p for p in planted["old"] if p.exists()] == [], done.stdout
    assert [p for p in planted["young"] if not p.exists()] == [], done.stdout
    assert {k: tree(store / k) for k in ("runs", "targets")} == kept_before
    assert lh(tmp_path, "verify", "--store", "store").returncode == 0
    # without --older-than the young ones go too (they were kept for their age, not their kind)
    lh(tmp_path, "gc", "--store", "store")
    assert not planted["young"][0].exists() and not planted["young"][2].exists()
    assert {k: tree(store / k) for k in ("runs", "targets")} == kept_before


FLAKY = '''
import os
from pathlib import Path

import numpy as np


def make(seed, n=50):
    # the sweep loader calls this in the driver to resolve the target; in a worker it always fails
    if "PARSL_WORKER_RANK" in os.environ:
        with open(Path(__file__).with_name("tries.log"), "a") as f:
            f.write(f"{os.getpid()}\\n")
        raise RuntimeError("this build always fails in a worker")
    x = np.random.default_rng(seed).normal(size=(n, 2))
    return {"params": {"w": np.zeros(2)}, "predict": lambda p, x: x @ p["w"], "loss": "mse",
            "data": {"x": x, "y": x[:, 0]}}
'''

FLAKY_SWEEP = """store_root: store
targets:
  - model: {kind: python, factory: "flaky:make", kwargs: {n: 50}}
    seed: 1
samplers:
  - {name: sgld, chains: 2, overrides: {steps: 200, warmup: 50, eval_every: 10}}
"""


def test_retries_tries_a_failing_build_that_many_more_times(tmp_path):
    (tmp_path / "flaky.py").write_text(FLAKY)
    (tmp_path / "s.yaml").write_text(FLAKY_SWEEP)
    result = lh(tmp_path, "execute", "s.yaml", "--workers", "1", "--retries", "2", check=False)
    assert result.returncode == 1, result.stdout + result.stderr
    tries = (tmp_path / "tries.log").read_text().splitlines()
    assert len(tries) == 3, tries  # the first try and 2 retries, no more
    assert "0 jobs completed, 2 failed" in result.stdout, result.stdout
    assert "(its earlier tries: BadInput, BadInput)" in " ".join(result.stdout.split()), result.stdout
    assert "its target failed to build" in result.stdout, result.stdout


def _as_version_1(manifest: Path) -> None:
    """Rewrite a manifest as lambda-hat 0.1 wrote it: no manifest_version, no self-checksum, no
    thresholds beside the status (sorted keys, indent 2, as its write_json_atomic did)."""
    data = json.loads(manifest.read_text())
    for key in ("manifest_version", "manifest_sha256"):
        data.pop(key)
    for key in ("r_hat_max", "ess_bulk_min"):
        data["metrics"].pop(key, None)
    manifest.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=True))


def test_a_version_1_manifest_is_read_as_stored(swept, tmp_path):
    store = copy_store(swept, tmp_path)
    before = runs_table(tmp_path, store)
    v1 = before[0]["run_id"]
    _as_version_1(store / "runs" / v1 / "manifest.json")
    for target in (store / "targets").iterdir():
        _as_version_1(target / "manifest.json")
    assert lh(tmp_path, "verify", "--store", "store").returncode == 0
    plan = json.loads(lh(tmp_path, "plan", "s.yaml", "--json").stdout)
    assert plan["runs_to_sample"] == [] and plan["targets_to_build"] == [], plan
    lh(tmp_path, "index", "rebuild", "--store", "store")
    after = {row["run_id"]: row for row in runs_table(tmp_path, store)}
    assert set(after) == {row["run_id"] for row in before}
    assert after[v1]["manifest_version"] == 1 and after[v1]["status"] == "ok", after[v1]
    assert (after[v1]["r_hat"], after[v1]["ess_bulk"]) == (before[0]["r_hat"], before[0]["ess_bulk"])
    other = before[1]["run_id"]
    assert after[other]["manifest_version"] == 2
    shown = json.loads(lh(tmp_path, "show", v1, "--store", "store", "--json").stdout)
    assert shown["status"] == "ok", shown
    # A v1 manifest has no self-checksum, but its arrays' checksums are still checked.
    (store / "runs" / v1 / "arrays.zarr.zip").write_bytes(b"not a zip")
    damaged = lh(tmp_path, "verify", "--store", "store", check=False)
    assert damaged.returncode == 1 and v1 in damaged.stdout, damaged.stdout


TRACE_COLUMNS = "chain, draw, loss, llc, cumulative_fge, step_size"  # all but walltime
RESULT_COLUMNS = "status, status_reason, draws, llc_mean, llc_std, llc_sem, r_hat, ess_bulk, ess_tail, total_fge"


def _result(cwd, rid) -> tuple[list, list]:
    run = lh(cwd, "query", f"select {RESULT_COLUMNS} from runs where run_id = '{rid}'", "--format", "json", "--store", "store")
    traces = lh(cwd, "query", f"select {TRACE_COLUMNS} from traces where run_id = '{rid}' order by chain, draw",
                "--format", "json", "--store", "store")
    return json.loads(run.stdout), json.loads(traces.stdout)


@pytest.mark.slow  # about a minute: three drivers' start-ups and a few seconds of sampling each
def test_a_driver_killed_while_sampling_is_taken_over_by_the_next(long_run, tmp_path):
    """`lh execute` killed with SIGKILL while its worker samples (a checkpoint on disk, no
    artifact yet): its workers end with it, and a second `lh execute` takes the abandoned job
    over (the dead driver's claim is stale), resumes it from the checkpoint and stores the same
    numbers as the uninterrupted run of the module's sweep."""
    [rid] = [row["run_id"] for row in runs_table(long_run, long_run / "store")]
    store = tmp_path / "store"
    store.mkdir()
    for name in ("targets", ".jax_cache"):  # its target built and its compiled code cached: only sampling is left
        shutil.copytree(long_run / "store" / name, store / name)
    (tmp_path / "s.yaml").write_text(LONG_SWEEP)
    checkpoint = store / ".work" / rid / "checkpoint.npz"
    first = start(tmp_path, "execute", "s.yaml", "--workers", "1", LH_CHECKPOINT_SEC="0")
    try:
        deadline = time.monotonic() + 180
        while not checkpoint.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert checkpoint.exists(), (first.poll(), first.stdout.read() if first.poll() is not None else "")
        os.kill(first.pid, signal.SIGKILL)
        assert first.wait(timeout=30) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
        first.stdout.close()
    assert processes_left(tmp_path, within_s=30) == []  # its workers did not outlive it
    assert checkpoint.exists() and not (store / "runs" / rid).exists()  # killed mid-run
    second = lh(tmp_path, "execute", "s.yaml", "--workers", "1")
    assert "1 job completed, 0 failed" in second.stdout, second.stdout
    [log] = (tmp_path / "logs" / "run_sampler").glob(f"*{rid}.log")
    assert "resuming" in log.read_text(), log.read_text()
    assert not checkpoint.parent.exists()
    assert lh(tmp_path, "verify", "--store", "store").returncode == 0
    assert _result(tmp_path, rid) == _result(long_run, rid)
