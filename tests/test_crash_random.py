"""Crash safety and concurrency through the real CLI, real Parsl, real processes (slow): the
driver killed at random moments, and three drivers on one store at once. The fixed crash points,
SIGTERM and a reader holding the index are tests/test_crash_safety.py; the two files are apart
so that pytest-xdist (a file to each worker) can run them side by side.

Each check ends the same way: a clean re-run of the sweep, then every run present exactly
once, nothing left in temporary directories, `lh verify` clean, index == manifests, and
no process of ours left alive."""

import os
import random
import signal
import time

import pytest
from lhproc import assert_store_exact, lh, processes_left, sgld_sweep
from lhproc import start as start_lh

pytestmark = pytest.mark.slow


def start(cwd, sweep, *args, **extra_env):
    return start_lh(cwd, "execute", sweep, "--workers", "2", *args, **extra_env)


RANDOM_KILLS = 5  # 8 cost ~210 s of CI's slow suite, a re-run and a full store check each


def test_kill_at_random_moments(tmp_path):
    """SIGKILLs of the driver at seeded random moments (the fixed crash points, each once, are
    tests/test_crash_safety.py's test_a_crash_point_then_a_clean_rerun). After each, a clean re-run must leave an exact store,
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
    (tmp_path / "s0.yaml").write_text(sgld_sweep([1000]))
    lh(tmp_path, "execute", "s0.yaml", "--workers", "2")
    sweeps.append("s0.yaml")
    kills, upper, i, max_cases = 0, 12.0, 0, RANDOM_KILLS + 12
    moments = []
    while kills < RANDOM_KILLS:
        i += 1
        assert i <= max_cases, "too many random moments came after their run had finished"
        name = f"s{i}.yaml"
        (tmp_path / name).write_text(sgld_sweep([3 * i, 3 * i + 1, 3 * i + 2]))
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


def test_two_drivers_on_one_store_do_each_job_once(tmp_path):
    """Two `lh execute` of one sweep and a third of an overlapping one, at once."""
    (tmp_path / "a.yaml").write_text(sgld_sweep([1, 2, 3, 4]))
    (tmp_path / "b.yaml").write_text(sgld_sweep([3, 4, 5]))
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
