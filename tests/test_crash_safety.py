"""Crash safety and concurrency through the real CLI, real Parsl, real processes (slow).

Each check ends the same way: a clean re-run of the sweep, then every run present exactly
once, nothing left in temporary directories, `lh verify` clean, index == manifests, and
no process of ours left alive."""

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from lhproc import lh, processes_left, sgld_sweep
from lhproc import start as start_lh

pytestmark = pytest.mark.slow

def sweep_text(seeds) -> str:
    return sgld_sweep(seeds)


def start(cwd, sweep, *args, **extra_env):
    return start_lh(cwd, "execute", sweep, "--workers", "2", *args, **extra_env)


def assert_store_exact(cwd: Path, sweeps: list[str]) -> None:
    """Every run of these sweeps present exactly once and complete; nothing else."""
    from lambda_hat.planner import expand
    from lambda_hat.sweep import load_sweep

    expected = set()
    for s in sweeps:
        expected |= {r.run_id for r in expand(load_sweep(cwd / s)).runs}
    plan = json.loads(lh(cwd, "plan", sweeps[-1], "--json").stdout)
    assert plan["runs_to_sample"] == [] and plan["targets_to_build"] == [], plan
    store = cwd / "store"
    runs = sorted(os.listdir(store / "runs"))
    assert set(runs) == expected and len(runs) == len(expected), runs
    for parent in (store / "targets", store / "runs"):
        assert not [p for p in os.listdir(parent) if p.startswith(".tmp-")], os.listdir(parent)
    v = lh(cwd, "verify", "--store", "store", check=False)
    assert v.returncode == 0, v.stdout
    q = lh(cwd, "query", "select count(*) as n from runs", "--store", "store", "--format", "csv")
    assert q.stdout.splitlines()[1] == str(len(expected))


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


RANDOM_KILLS = 5  # 8 cost ~210 s of CI's slow suite, a re-run and a full store check each


def test_kill_at_random_moments(tmp_path):
    """SIGKILLs of the driver at seeded random moments (the fixed crash points, each once, are
    test_a_crash_point_then_a_clean_rerun). After each, a clean re-run must leave an exact store,
    the earlier sweeps' runs included. The moments are stratified: kill k falls at a random point
    of the k-th of RANDOM_KILLS equal slices of the run, so that no stretch of it wider than two
    slices goes untried (14 uniform draws left an expected widest gap of 0.22 of the run; 5
    stratified ones leave at most 0.4, typically 0.2: a slice of ~2.3 s of a 12-s run, still one
    in each stage of it, start-up, Parsl's start, the jobs, their index writes, the shut-down).
    A moment that comes after its run has
    finished kills nothing and does not count; the slices are then cut from that run's length."""
    rng = random.Random(20261125)
    sweeps = []
    # Warm the compile cache and build the target once, so kills land in sampling too.
    (tmp_path / "s0.yaml").write_text(sweep_text([1000]))
    lh(tmp_path, "execute", "s0.yaml", "--workers", "2")
    sweeps.append("s0.yaml")
    kills, upper, i, max_cases = 0, 12.0, 0, RANDOM_KILLS + 12
    moments = []
    while kills < RANDOM_KILLS:
        i += 1
        assert i <= max_cases, "too many random moments came after their run had finished"
        name = f"s{i}.yaml"
        (tmp_path / name).write_text(sweep_text([3 * i, 3 * i + 1, 3 * i + 2]))
        sweeps.append(name)
        delay = 0.5 + (upper - 0.5) * (kills + rng.random()) / RANDOM_KILLS
        proc = start(tmp_path, name)
        t_start = time.monotonic()
        while proc.poll() is None and time.monotonic() - t_start < delay:
            time.sleep(0.05)
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            kills += 1
            moments.append(round(delay, 1))
        else:  # the whole run was shorter than the delay: cut the slices from its length from now on
            upper = max(1.0, 0.9 * (time.monotonic() - t_start))
        proc.wait(timeout=60)  # not its stdout: a leaked child could hold that open
        proc.stdout.close()
        left = processes_left(tmp_path, within_s=20)
        assert not left, (delay, left)  # no worker outlives a dead driver
        lh(tmp_path, "execute", name, "--workers", "2")
        assert_store_exact(tmp_path, sweeps)  # `lh verify` clean after every re-run
    print(f"kills at {moments} s (runs up to {upper:.1f} s)")


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


def test_two_drivers_on_one_store_do_each_job_once(tmp_path):
    """Two `lh execute` of one sweep and a third of an overlapping one, at once."""
    (tmp_path / "a.yaml").write_text(sweep_text([1, 2, 3, 4]))
    (tmp_path / "b.yaml").write_text(sweep_text([3, 4, 5]))
    procs = [start(tmp_path, "a.yaml"), start(tmp_path, "a.yaml"), start(tmp_path, "b.yaml")]
    outs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], outs
    completed = [line.split()[2] for out in outs for line in out.splitlines() if "] completed " in line]
    # Every job ran in exactly one driver; the others waited and reported it done elsewhere.
    assert len(completed) == len(set(completed)) == 1 + 5, outs
    elsewhere = sum(out.count("completed by another lh execute") for out in outs)
    assert elsewhere >= 1, outs
    for log in (tmp_path / "logs").rglob("*.log"):
        text = log.read_text()
        assert text.count("sampling ") + text.count("building ") == 1, (log, text)  # no clobbered logs
    assert_store_exact(tmp_path, ["a.yaml", "b.yaml"])
    assert not processes_left(tmp_path, within_s=15)


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
