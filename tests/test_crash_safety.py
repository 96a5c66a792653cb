"""Crash safety and concurrency through the real CLI, real Parsl, real processes (slow): fixed crash
points, SIGTERM, a reader holding the index (random kills and concurrent drivers:
tests/test_crash_random.py).

Each check ends the same way: a clean re-run of the sweep, then every run present exactly
once, nothing left in temporary directories, `lh verify` clean, index == manifests, and
no process of ours left alive."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lhproc import assert_store_exact, lh, processes_left, sgld_sweep
from lhproc import start as start_lh

pytestmark = pytest.mark.slow

def sweep_text(seeds) -> str:
    return sgld_sweep(seeds)


def start(cwd, sweep, *args, **extra_env):
    return start_lh(cwd, "execute", sweep, "--workers", "2", *args, **extra_env)


# Fixed crash points (lambda_hat/faults.py), one per phase of a write -> how the execute that
# reaches them ends. A crash point fires on every try: a worker killed before its artifact is in
# place is lost on each of its tries, and its job fails once the lost-job retries are spent; one
# killed just after the rename is retried and the retry finds its artifact complete, so that
# execute ends well. (artifact:before_manifest is not here: it leaves a dead writer's temporary
# directory as before_rename does, with less in it, and reconcile removes such a directory by its
# name alone; tests/test_store.py and test_artifacts_io.py stop a write there in-process.)
CRASH_POINTS = {
    "index:in_transaction": -signal.SIGKILL,  # the driver itself
    "artifact:before_rename": 1,  # a complete-looking temporary directory, manifest and all
    "artifact:after_rename": 0,
}
# The pool's manager looks for dead workers once a heartbeat period (30 s by default): 1 s here,
# so that each lost try is noticed at once. The threshold for a lost manager stays the default.
NOTICE_LOST_WORKERS = {"LH_HEARTBEAT_PERIOD_S": "1"}


def crash_at(tmp_path: Path, name: str, how: str) -> None:
    """`lh execute name` with the crash point `how`: it ends as CRASH_POINTS says, and leaves
    no process behind; an execute that ends well has every artifact of its sweep complete."""
    proc = start(tmp_path, name, LH_CRASH_AT=how, **NOTICE_LOST_WORKERS)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == CRASH_POINTS[how], (how, proc.returncode, out)
    if proc.returncode == 0:
        assert "retried after WorkerLost" in out and "0 failed" in out, out
        plan = json.loads(lh(tmp_path, "plan", name, "--json").stdout)
        assert plan["runs_to_sample"] == [] and plan["targets_to_build"] == [], plan
    left = processes_left(tmp_path, within_s=20)
    assert not left, (how, left)  # no worker outlives a dead driver


@pytest.mark.parametrize("how", CRASH_POINTS)
def test_a_crash_point_then_a_clean_rerun(tmp_path, how):
    """A SIGKILL at a fixed crash point, in the driver or in its workers, then a clean re-run:
    an exact store."""
    (tmp_path / "s.yaml").write_text(sweep_text([1, 2]))
    crash_at(tmp_path, "s.yaml", how)
    lh(tmp_path, "execute", "s.yaml", "--workers", "2")
    assert_store_exact(tmp_path, ["s.yaml"])


def test_sigterm_cancels_workers_and_rerun_finishes(tmp_path):
    (tmp_path / "s.yaml").write_text(sweep_text([1, 2, 3, 4]))
    proc = start(tmp_path, "s.yaml")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(tmp_path.glob("logs/*/*.log")):
        time.sleep(0.2)  # a job has started
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGTERM)  # what `timeout` and SLURM send
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143, out
    assert "interrupted (SIGTERM)" in out
    assert not processes_left(tmp_path, within_s=15)
    lh(tmp_path, "execute", "s.yaml", "--workers", "2")
    assert_store_exact(tmp_path, ["s.yaml"])


HOLD = (
    "import duckdb, os, sys, time\n"
    "c = duckdb.connect(sys.argv[1], read_only=True)\n"
    "print('held', flush=True)\n"
    "deadline = time.time() + 300\n"
    "while not os.path.exists(sys.argv[2]) and time.time() < deadline:\n"
    "    time.sleep(0.1)\n"
)


def test_reader_holding_the_index_does_not_break_execute(tmp_path):
    (tmp_path / "s0.yaml").write_text(sweep_text([1]))
    lh(tmp_path, "execute", "s0.yaml", "--workers", "2")  # creates the index
    (tmp_path / "s.yaml").write_text(sweep_text([2, 3]))
    release = tmp_path / "release"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path / "store" / "index.duckdb"), str(release)],
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    proc = start(tmp_path, "s.yaml")
    lines = []
    for line in proc.stdout:  # the reader holds on until execute has said it is waiting
        lines.append(line)
        if "held by another process" in line:
            break
    release.touch()
    rest, _ = proc.communicate(timeout=300)
    holder.wait(timeout=60)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "held by another process" in out and "2 jobs completed, 0 failed" in out, out
    assert_store_exact(tmp_path, ["s0.yaml", "s.yaml"])
