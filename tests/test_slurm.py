"""`lh execute --backend slurm` on a real SLURM cluster: the one-node cluster that
`scripts/slurm-local.sh start` runs on this machine (CI starts it). Marked `slurm`.

The walltime test (two 1-minute walltimes, about half of this) is tests/test_slurm_walltime.py,
so that CI's two workers (`pytest -m slurm -n 2`, a file to each) run it beside these: the node
has a CPU per worker and a block takes one, so each test must count only its own jobs
(`our_jobs`), never the queue's."""

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from lhproc import lh, sgld_sweep, start

pytestmark = [
    pytest.mark.slurm,
    pytest.mark.skipif(shutil.which("sbatch") is None, reason="no SLURM here (scripts/slurm-local.sh start)"),
]

sweep = sgld_sweep
# SGLD steps on the small target: ~15-40 s on 2 cores (half of 2e6's 30-80 s; 100 s measured at load 5),
# long past the scancel 2 s into the job; the retried job runs them all again
MINUTE_OR_SO = 1_000_000
FOREVER = 20_000_000
SLURM_ARGS = ["--backend", "slurm", "--partition", "debug", "--mem-per-node", "2", "--max-blocks", "1"]
# A lost block's jobs are noticed after the heartbeat threshold (120 s by default): seconds here.
QUICK_HEARTBEAT = {"LH_HEARTBEAT_PERIOD_S": "2", "LH_HEARTBEAT_THRESHOLD_S": "10"}


def our_jobs(cwd: Path, states="PD,R,CG,CF") -> list[str]:
    """SLURM jobs whose submit script lies under this test's directory."""
    out = subprocess.run(["squeue", "-h", "-t", states, "-o", "%i %o"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if str(cwd) in line]


def no_jobs_left(cwd: Path, within_s: float = 30) -> bool:
    """True once nothing of ours is pending or running (a cancelled job takes a moment)."""
    deadline = time.monotonic() + within_s
    while our_jobs(cwd, "PD,R,CG") and time.monotonic() < deadline:
        time.sleep(0.5)
    return not our_jobs(cwd, "PD,R,CG")


def test_sweep_on_slurm_matches_local_and_a_second_call_submits_nothing(tmp_path):
    (tmp_path / "s.yaml").write_text(sweep([1, 2]))
    proc = start(tmp_path, "execute", "s.yaml", *SLURM_ARGS)
    seen_in_squeue = False
    while proc.poll() is None:
        seen_in_squeue |= bool(our_jobs(tmp_path, "R"))
        time.sleep(0.5)
    out = proc.stdout.read()
    assert proc.returncode == 0, out
    assert seen_in_squeue, "no job of ours was ever running in squeue"
    assert "3 jobs completed, 0 failed" in out and "submit_scripts" in out
    # The same sweep on the local backend, in another store: same IDs, bit-identical λ̂.
    local = tmp_path / "local"
    local.mkdir()
    (local / "s.yaml").write_text(sweep([1, 2]))
    lh(local, "execute", "s.yaml", "--workers", "2")
    q = "select run_id, llc_mean, r_hat from runs order by run_id"
    on_slurm = lh(tmp_path, "query", q, "--store", "store", "--format", "json").stdout
    on_local = lh(local, "query", q, "--store", "store", "--format", "json").stdout
    assert json.loads(on_slurm) == json.loads(on_local) and len(json.loads(on_slurm)) == 2
    before = our_jobs(tmp_path, "all")
    again = lh(tmp_path, "execute", "s.yaml", *SLURM_ARGS)
    assert "nothing to do" in again.stdout
    # no SLURM job submitted (ours: CI runs tests/test_slurm_walltime.py's jobs beside these)
    assert our_jobs(tmp_path, "all") == before
    assert no_jobs_left(tmp_path)  # and nothing left queued or running


def wait_for_log(cwd: Path, pattern: str, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if list(cwd.glob(pattern)):
            return
        time.sleep(0.5)
    raise AssertionError(f"no {pattern} within {timeout_s}s")


def test_block_scancelled_mid_run_is_replaced_and_the_run_retried(tmp_path):
    """A block that ends under a running job (scancel here; a node failure or preemption alike):
    the job is lost with its manager, resubmitted, and a new block runs it."""
    (tmp_path / "s.yaml").write_text(sweep([1], steps=MINUTE_OR_SO))
    proc = start(tmp_path, "execute", "s.yaml", *SLURM_ARGS, **QUICK_HEARTBEAT)
    wait_for_log(tmp_path, "logs/run_sampler/*.log")
    time.sleep(2)
    jobs = our_jobs(tmp_path, "R")
    assert jobs
    subprocess.run(["scancel", *jobs], check=True)
    out, _ = proc.communicate(timeout=400)
    assert proc.returncode == 0, out
    assert "2 jobs completed, 0 failed" in out and "retried after ManagerLost" in out, out
    assert set(our_jobs(tmp_path, "all")) - set(jobs), "no new block was submitted"
    plan = json.loads(lh(tmp_path, "plan", "s.yaml", "--json").stdout)
    assert plan["runs_to_sample"] == [] and plan["targets_to_build"] == []
    assert no_jobs_left(tmp_path)


def test_sigterm_to_the_driver_leaves_no_job_queued(tmp_path):
    (tmp_path / "s.yaml").write_text(sweep([1, 2, 3], steps=FOREVER))
    proc = start(tmp_path, "execute", "s.yaml", *SLURM_ARGS)
    wait_for_log(tmp_path, "logs/*/*.log")
    assert our_jobs(tmp_path)
    os.kill(proc.pid, signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out
    assert no_jobs_left(tmp_path)


def test_kill_9_of_the_driver_leaves_no_job_queued(tmp_path):
    (tmp_path / "s.yaml").write_text(sweep([1, 2], steps=FOREVER))
    proc = start(tmp_path, "execute", "s.yaml", *SLURM_ARGS)
    wait_for_log(tmp_path, "logs/*/*.log")
    assert our_jobs(tmp_path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert no_jobs_left(tmp_path)  # the reaper scancelled it


def test_gpu_profile_sbatch_script_and_flags_override_it(tmp_path):
    """The script a GPU profile generates, submitted to the real sbatch on a cluster without
    GPUs: SLURM refuses the GRES, but the script is written and can be read."""
    from parsl.providers.errors import SubmitException

    from lambda_hat.execute.parsl_config import resolve_slurm_settings, slurm_config

    (tmp_path / "lh.toml").write_text(
        '[slurm]\npartition = "debug"\ngpus_per_node = 1\nwalltime = "02:00:00"\nmem_per_node = 2\n'
        'worker_init = "module load cuda/12.1 || true"\n'
    )
    settings = resolve_slurm_settings(None, {"walltime": "00:30:00"}, cwd=tmp_path)
    (ex,) = slurm_config(tmp_path / "ri", settings).executors
    provider = ex.provider
    provider.script_dir = str(tmp_path)
    with pytest.raises(SubmitException):
        provider.submit("echo worker", 1)
    (script,) = [p for p in tmp_path.iterdir() if p.name.startswith("parsl.") and p.suffix not in (".stdout", ".stderr")]
    text = script.read_text()
    assert "#SBATCH --gpus-per-node=1" in text and "#SBATCH --partition=debug" in text
    assert "#SBATCH --time=30" in text  # the flag overrode the profile's 02:00:00
    assert "--exclusive" not in text
    assert "export JAX_PLATFORMS=cuda" in text and "module load cuda/12.1" in text
    assert ex.max_workers_per_node == 1  # one worker per GPU
