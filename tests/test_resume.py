"""A sampling job killed (SIGKILL) mid-run resumes from its last checkpoint on the next execute
and stores the same traces and metrics, bit for bit, as a job never interrupted. Each job runs
in its own process, through the worker entry point (`execute/apps.run_sampler_job`)."""

import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lambda_hat.specs import HMCSpec, MCLMCSpec, NUTSSpec, RunSpec, SGLDSpec, TargetSpec

TARGET = TargetSpec.model_validate({"model": {"in_dim": 3, "depth": 1, "widths": [4]},
                                    "data": {"n_data": 200, "n_test": 50},
                                    "training": {"steps": 300, "learning_rate": 0.01}, "seed": 3})
SAMPLERS = {
    "sgld": SGLDSpec(chains=2, steps=1100, warmup=100, eval_every=10, batch_size=50, precond="adam"),
    "hmc": HMCSpec(chains=2, draws=100, warmup=60, num_integration_steps=5),
    "nuts": NUTSSpec(chains=2, draws=100, warmup=60, max_num_doublings=5),
    "mclmc": MCLMCSpec(chains=2, draws=100, num_steps=100),
}
TIMING = {"walltime_sec", "compile_sec", "sample_sec", "compile_cache_hit"}

JOB = """
import json, sys
from lambda_hat.execute.apps import build_target_job, run_sampler_job
kind, spec, store, logs = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4]
job = build_target_job if kind == "target" else run_sampler_job
print(json.dumps(job(spec, store, f"{logs}/{kind}.log", f"{logs}/{kind}.err")))
"""


def job(tmp: Path, kind: str, spec, store: Path, **env) -> subprocess.CompletedProcess:
    import os

    logs = tmp / f"logs-{len(list(tmp.glob('logs-*')))}"
    logs.mkdir()
    e = {**os.environ, "JAX_PLATFORMS": "cpu", "LH_CHECKPOINT_SEC": "0", **env}
    return subprocess.run([sys.executable, "-c", JOB, kind, json.dumps(spec.model_dump(mode="json")), str(store),
                           str(logs)], env=e, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def target_store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("target")
    store = tmp / "store"
    (store / "targets").mkdir(parents=True)
    assert job(tmp, "target", TARGET, store).returncode == 0
    return store


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, target_store):
    """`uninterrupted(run)`: a copy of the target's store holding `run` sampled by a job never
    interrupted, in its own process (its own compile, its own JAX cache). Sampled once per run and
    shared by the tests that compare a resumed job with it: a sampler's two crash points, and the
    discarded work dir below (the same SGLD run), each still killed and resumed in its own store
    and processes. Nothing writes to it."""
    from lambda_hat.ids import run_id

    stores = {}

    def get(run: RunSpec) -> Path:
        rid = run_id(run)
        if rid not in stores:
            tmp = tmp_path_factory.mktemp("clean")
            store = tmp / "store"
            shutil.copytree(target_store, store)
            assert job(tmp, "run", run, store).returncode == 0
            stores[rid] = store
        return stores[rid]

    return get


def _stored(store: Path, rid: str):
    from lambda_hat.store.artifacts import read_arrays, read_manifest, verify

    d = store / "runs" / rid
    assert verify(d, "run") == []
    m = read_manifest(d)
    return read_arrays(d, list(m.arrays)), {k: v for k, v in m.metrics.items() if k not in TIMING}


# Killed after a segment was computed and before any of it was persisted, or between writing a
# segment's traces and the checkpoint that counts them. One case runs by default, the rest are slow.
CASES = [(name, crash) for name in SAMPLERS for crash in ("sample:segment-3", "sample:before_checkpoint-5")]


@pytest.mark.parametrize("name,crash_at", [
    pytest.param(*c, marks=() if c == ("sgld", "sample:segment-3") else pytest.mark.slow) for c in CASES])
def test_killed_run_resumes_bit_identical(tmp_path, target_store, uninterrupted, name, crash_at):
    from lambda_hat.ids import target_id

    # the default case also records per-example losses: a (chain, draw, example) array resumed too
    record = {"per_example": {"subset": 64, "seed": 2}} if (name, crash_at) == ("sgld", "sample:segment-3") else None
    run = RunSpec(target_id=target_id(TARGET), sampler=SAMPLERS[name], seed=5, record=record)
    from lambda_hat.ids import run_id

    rid = run_id(run)
    stores = {"clean": uninterrupted(run), "killed": tmp_path / "killed" / "store"}
    shutil.copytree(target_store, stores["killed"])
    killed = job(tmp_path, "run", run, stores["killed"], LH_CRASH_AT=crash_at)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = stores["killed"] / ".work" / rid
    assert (work / "checkpoint.npz").is_file() and not (stores["killed"] / "runs" / rid).exists()
    resumed = job(tmp_path, "run", run, stores["killed"])
    assert resumed.returncode == 0, resumed.stderr
    log = sorted(tmp_path.glob("logs-*"))[-1] / "run.log"
    assert "resuming" in log.read_text()
    assert not work.exists()  # the work dir goes once the artifact is in place
    (ta, ma), (tb, mb) = _stored(stores["clean"], rid), _stored(stores["killed"], rid)
    assert set(ta) == set(tb)
    if record:
        assert ta["examples/loss"].shape == (2, SAMPLERS[name].draws, 64) and "nu" in ma
    for k in ta:
        if k != "traces/walltime":
            np.testing.assert_array_equal(tb[k], ta[k], err_msg=k)
    assert json.dumps(mb, sort_keys=True) == json.dumps(ma, sort_keys=True)


def test_gc_keeps_checkpoints_of_unfinished_runs_only(tmp_path):
    """A finished run (a complete, valid artifact) no longer needs its work directory; any
    other run's checkpoint is kept."""
    from lambda_hat.store.store import Store
    from test_store import fill_store

    fill_store(tmp_path)
    store = Store(tmp_path)
    done = sorted(p.name for p in (tmp_path / "runs").iterdir())[0]
    for rid in ("run_0123456789ab", done):
        (tmp_path / ".work" / rid).mkdir(parents=True)
        (tmp_path / ".work" / rid / "checkpoint.npz").write_bytes(b"x")
    report = store.gc()
    assert [p.name for p, _ in report.removed if p.parent.name == ".work"] == [done]
    assert (tmp_path / ".work" / "run_0123456789ab" / "checkpoint.npz").is_file()
    assert not (tmp_path / ".work" / done).exists()


def test_driver_shows_draws_done_of_running_jobs(tmp_path, monkeypatch):
    from lambda_hat.store import worker as apps
    from lambda_hat.store.worker import SegmentStore
    from lambda_hat.execute.driver import sampling_progress
    from lambda_hat.science.pipeline import Checkpoint
    from lambda_hat.store.layout import StoreLayout

    from lambda_hat.store import Store

    layout = StoreLayout(tmp_path)
    store = Store(tmp_path)
    running = [("run", "run_a", None), ("run", "run_b", None), ("target", "tgt_c", None)]
    # A run's first segments, within PROGRESS_SEC of its start, write nothing (short runs make no work dir).
    SegmentStore(layout.work_dir("run_a"), 3600, draws=8000).on_segment(Checkpoint(10, [], 0.0, 0.0, 0.0), {})
    assert sampling_progress(store, running) == "" and not layout.work_dir("run_a").exists()
    monkeypatch.setattr(apps, "PROGRESS_SEC", 0.0)  # as if the runs had sampled for a while
    SegmentStore(layout.work_dir("run_a"), 3600, draws=8000).on_segment(Checkpoint(1200, [], 0.0, 0.0, 0.0), {})
    SegmentStore(layout.work_dir("run_b"), 3600, draws=2000).on_segment(Checkpoint(40, [], 0.0, 0.0, 0.0), {})
    assert sampling_progress(store, running) == " · draws 1,240/10,000"
    assert sampling_progress(store, running[1:]) == " · draws 40/2,000"


@pytest.mark.slow  # three worker processes (~25 s on 2 busy cores); the discard itself: test_damage_on_read
def test_another_runs_work_dir_is_discarded_not_resumed(tmp_path, target_store, uninterrupted):
    """A run's `.work/<id>/` replaced by another run's (same target and sampler, another seed):
    resuming from it would store that run's λ̂ under this run's ID. The worker discards it, says
    why in one line, and starts over: the artifact is the one an uninterrupted run stores."""
    from lambda_hat.ids import run_id, target_id

    mine = RunSpec(target_id=target_id(TARGET), sampler=SAMPLERS["sgld"], seed=5)
    other = RunSpec(target_id=target_id(TARGET), sampler=SAMPLERS["sgld"], seed=6)
    rid, other_rid = run_id(mine), run_id(other)
    stores = {"clean": uninterrupted(mine), "copied": tmp_path / "copied" / "store"}
    shutil.copytree(target_store, stores["copied"])
    killed = job(tmp_path, "run", other, stores["copied"], LH_CRASH_AT="sample:segment-3")
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    work = stores["copied"] / ".work"
    shutil.copytree(work / other_rid, work / rid)
    assert job(tmp_path, "run", mine, stores["copied"]).returncode == 0
    log = (sorted(tmp_path.glob("logs-*"))[-1] / "run.log").read_text()
    assert "resuming" not in log and log.count("discarding") == 1, log
    assert f"run {other_rid}'s, not {rid}'s" in log and "starting over" in log, log
    (ta, ma), (tb, mb) = _stored(stores["clean"], rid), _stored(stores["copied"], rid)
    for k in ta:
        if k != "traces/walltime":
            np.testing.assert_array_equal(tb[k], ta[k], err_msg=k)
    assert json.dumps(mb, sort_keys=True) == json.dumps(ma, sort_keys=True)
