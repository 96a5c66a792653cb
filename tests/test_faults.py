"""Failure paths of a running `lh execute`, through the real CLI, real Parsl and real processes
(the local backend).

Faults injected into the worker pool: its manager paused (SIGSTOP) past the heartbeat
threshold, as a paused machine does; a worker killed (SIGKILL) mid-build; the whole block
(manager and workers) killed. Each time the execute must complete every job exactly once (a
lost job is retried, a lost block replaced) and `lh verify` must be clean. The heartbeat is
shortened through the environment so that a loss is noticed in seconds, not minutes.

Also: Ctrl-C and SIGTERM end an execute with one line and no traceback, and a SLURM submission
that fails (a fake `sbatch`: the scheduler is not what is under test) ends the execute with the
scheduler's own words, the submit script and the command, and `lh status` counts the jobs failed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import stat
import time
from pathlib import Path

import pytest
from lhproc import lh, processes_in, processes_left, sgld_sweep, start

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the pool's processes through /proc")

# A 1 s heartbeat; a manager silent for 6 s is lost. (3 s lost a live manager once on a loaded
# 2-core machine; the pauses below are measured against the threshold, so a longer one costs
# seconds, not strength.)
FAST_HEARTBEAT = {"LH_HEARTBEAT_PERIOD_S": "1", "LH_HEARTBEAT_THRESHOLD_S": "6"}
THRESHOLD_S = int(FAST_HEARTBEAT["LH_HEARTBEAT_THRESHOLD_S"])


def wait_for(predicate, timeout_s: float, what: str, proc=None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = predicate()
        if found:
            return found
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"lh execute ended before {what}:\n{proc.stdout.read()}")
        time.sleep(0.05)
    raise AssertionError(f"no {what} within {timeout_s}s")


def writing_to(log: Path) -> int | None:
    """The process whose stdout is `log`: the worker running that job (apps.job_logs)."""
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.readlink(f"/proc/{entry}/fd/1") == str(log):
                    return int(entry)
            except OSError:
                continue
    return None


def parent_of(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def children_of(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if parent_of(int(entry)) == pid:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def running_job(cwd: Path, pattern: str, proc) -> tuple[int, int]:
    """(worker, manager) of a job of this execute that is running now: the worker writes the
    job's log; its parent is the pool's manager (process_worker_pool.py)."""
    def find():
        for log in cwd.glob(pattern):
            worker = writing_to(log)
            if worker is not None:
                return worker
        return None

    worker = wait_for(find, 240, f"running job ({pattern})", proc)
    manager = parent_of(worker)
    assert b"process_worker_pool" in Path(f"/proc/{manager}/cmdline").read_bytes()
    return worker, manager


def signal_all(pids, sig) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass  # a short-lived helper (a shell) already gone


def assert_each_job_once(cwd: Path, out: str, jobs: int) -> None:
    """All `jobs` completed, each reported once, none failed; the store complete and sound."""
    assert f"{jobs} jobs completed, 0 failed" in out, out
    completed = re.findall(r"\] completed (\S+)", out)
    assert len(completed) == len(set(completed)) == jobs, out
    plan = json.loads(lh(cwd, "plan", "s.yaml", "--json").stdout)
    assert plan["targets_to_build"] == [] and plan["runs_to_sample"] == [], plan
    assert sorted(os.listdir(cwd / "store" / "runs")) == sorted(c for c in completed if c.startswith("run_"))
    verify = lh(cwd, "verify", "--store", "store", check=False)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not processes_left(cwd, 20)


def execute(cwd: Path, seeds=(1,)):
    """One target and its runs: the build runs first, the runs wait for it."""
    (cwd / "s.yaml").write_text(sgld_sweep(list(seeds)))
    return start(cwd, "execute", "s.yaml", "--workers", "2", **FAST_HEARTBEAT)


def managers_lost(cwd: Path) -> int:
    """How many managers the interchange has removed for missed heartbeats (its own log)."""
    return sum(log.read_text(errors="replace").count("Too many heartbeats missed for manager")
               for log in cwd.glob("parsl_runinfo/*/*/interchange.log"))


@pytest.mark.slow
def test_manager_paused_past_the_heartbeat_threshold(tmp_path):
    """SIGSTOP of the pool's manager until the interchange has counted it lost (past the
    threshold, however loaded the machine), then SIGCONT: the interchange reports ManagerLost,
    the woken manager finds itself cut off and exits, a new block takes the retried jobs. (Its
    workers ran on while it slept: a job they finished is found complete by its retry.)"""
    proc = execute(tmp_path)
    _, manager = running_job(tmp_path, "logs/build_target/*.log", proc)
    assert managers_lost(tmp_path) == 0
    os.kill(manager, signal.SIGSTOP)
    try:
        wait_for(lambda: managers_lost(tmp_path), 120, "manager counted lost by the interchange", proc)
    finally:
        os.kill(manager, signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert re.search(r"tgt_\w+: retried after ManagerLost", out), out
    assert_each_job_once(tmp_path, out, jobs=2)


@pytest.mark.slow
def test_machine_paused_past_the_heartbeat_threshold(tmp_path):
    """A whole machine paused (a VM fork or migration, a closed laptop lid): the driver, the
    interchange, the pool and the reaper all stopped for 2x the threshold, then woken. On waking
    the interchange and the pool each find the other's last heartbeat old; whichever notices
    first, the build must be done once and the sweep finish (the failure seen in issue 21)."""
    proc = execute(tmp_path)
    running_job(tmp_path, "logs/build_target/*.log", proc)
    everything = [int(p.split(":")[0]) for p in processes_in(tmp_path)]
    assert proc.pid in everything and len(everything) >= 5  # driver, reaper, interchange, manager, workers
    signal_all(everything, signal.SIGSTOP)
    time.sleep(2 * THRESHOLD_S)  # nothing runs meanwhile, so no load can shorten the pause
    signal_all(everything, signal.SIGCONT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert_each_job_once(tmp_path, out, jobs=2)


@pytest.mark.slow
def test_worker_killed_mid_build(tmp_path):
    proc = execute(tmp_path)
    worker, _ = running_job(tmp_path, "logs/build_target/*.log", proc)
    os.kill(worker, signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert re.search(r"tgt_\w+: retried after WorkerLost", out), out
    assert_each_job_once(tmp_path, out, jobs=2)


@pytest.mark.slow
def test_whole_block_killed_mid_sampling(tmp_path):
    """SIGKILL of the manager and its workers while runs sample: the runs are lost with their
    manager and the block is replaced."""
    proc = execute(tmp_path)
    _, manager = running_job(tmp_path, "logs/run_sampler/*.log", proc)
    signal_all([manager, *children_of(manager)], signal.SIGKILL)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out
    assert re.search(r"run_\w+: retried after ManagerLost", out), out
    assert_each_job_once(tmp_path, out, jobs=2)


@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_ctrl_c_and_sigterm_print_one_line_and_no_traceback(tmp_path, sig, code):
    """The signal goes to the whole process group, as a terminal's Ctrl-C does: the driver and
    Parsl's interchange both get it (the interchange printed a 23-line traceback)."""
    proc = execute(tmp_path, seeds=[1])
    wait_for(lambda: list(tmp_path.glob("logs/*/*.log")), 240, "job log", proc)
    os.killpg(proc.pid, sig)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == code, out
    assert "Traceback" not in out and "Error" not in out, out
    assert out.count(f"interrupted ({sig.name})") == 1, out
    assert not processes_left(tmp_path, 20)


FAKE_SBATCH = "#!/bin/sh\necho 'sbatch: error: Unable to contact slurm controller (connect failure)' >&2\nexit 1\n"


def test_failed_sbatch_says_why_where_and_what_and_status_counts_the_jobs(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(stat.S_IRWXU)
    (tmp_path / "s.yaml").write_text(sgld_sweep([1, 2]))
    proc = start(tmp_path, "execute", "s.yaml", "--backend", "slurm", "--max-blocks", "1",
                 PATH=f"{bin_dir}:{os.environ['PATH']}")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    flat = " ".join(out.split())
    assert "Traceback" not in out and "Error 1:" not in out, out
    said = re.search(r"sbatch: error: Unable to contact slurm controller \(connect failure\) \(`sbatch (\S+)` exited 1\)",
                     flat)
    assert said, out
    script = Path(said.group(1))
    assert script.is_absolute() and "#SBATCH" in script.read_text()
    assert "0 jobs completed, 3 failed" in out, out
    status = lh(tmp_path, "status", "--store", "store").stdout
    assert "failed jobs: 1" in status, status  # the target (its runs wait for it, they did not fail)
    assert "Unable to contact slurm controller" in status, status
    assert not processes_left(tmp_path, 20)


BLOCKS_THAT_CANNOT_START = """
from pathlib import Path
from lambda_hat.execute.parsl_config import local_config

config = local_config(Path("parsl_runinfo").resolve(), workers=1)
config.executors[0].launch_cmd = "echo 'no worker pool here' >&2; exit 3"
"""


def test_blocks_that_cannot_start_end_the_execute_with_their_error(tmp_path):
    """Every block exits at once: after three the execute gives up with the block's own words
    (it used to wait forever for a block)."""
    (tmp_path / "s.yaml").write_text(sgld_sweep([1]))
    (tmp_path / "cfg.py").write_text(BLOCKS_THAT_CANNOT_START)
    proc = start(tmp_path, "execute", "s.yaml", "--parsl-config", "cfg.py")
    out, _ = proc.communicate(timeout=180)
    assert proc.returncode == 1, out
    flat = " ".join(out.split())
    assert "3 blocks failed in a row, giving up; the last: exit code 3: no worker pool here" in flat, out
    assert "0 jobs completed, 2 failed" in out and "Traceback" not in out, out
    assert not processes_left(tmp_path, 20)
