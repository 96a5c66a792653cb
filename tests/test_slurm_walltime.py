"""`lh execute` on the real SLURM cluster (as tests/test_slurm.py) past its walltime. Its own file
because it is half of the `slurm` tests' time, two 1-minute walltimes: CI's two workers (`pytest
-m slurm -n 2`, a file to each) run it beside tests/test_slurm.py's, each test counting only
its own jobs. Marked `slurm`."""

# pytestmark: `slurm`, and skipped where there is no sbatch
from test_slurm import FOREVER, QUICK_HEARTBEAT, no_jobs_left, pytestmark, sweep  # noqa: F401

from lhproc import start

# `lh execute --backend slurm --walltime 00:01:00 ...` as a --parsl-config file: the same settings
# and the same slurm_config, but lost jobs retried once instead of LOST_RETRIES (2) times.
ONE_LOST_RETRY_CONFIG = """\
from pathlib import Path

from lambda_hat.execute.parsl_config import resolve_slurm_settings, slurm_config


def make_config():
    flags = dict(partition="debug", mem_per_node=2, max_blocks=1, walltime="00:01:00")
    return slurm_config(Path("parsl_runinfo").resolve(), resolve_slurm_settings(None, flags), lost_retries=1)
"""


def test_walltime_is_reported_as_timeout(tmp_path):
    """A job longer than the walltime is lost with each block: retried (a job cut short because
    it started late in its block finishes in the next one), then reported as SLURM's TIMEOUT.
    By default a lost job is retried twice; on the cluster each try costs a whole walltime (about
    110 s with SLURM's kill and a new block's start), so the cluster run retries once, through a
    --parsl-config file holding lambda-hat's own SLURM config with lost_retries=1: the retry after
    a walltime, the count kept to the budget, and the final TIMEOUT are all checked there, and
    the default budget of 2 on the SLURM path is checked below without the cluster (how Parsl
    spends that budget: tests/test_parsl_config.py)."""
    from lambda_hat.execute.driver import ExecuteRequest, _parsl_config
    from lambda_hat.execute.parsl_config import LOST_RETRIES, resolve_slurm_settings

    settings = resolve_slurm_settings(None, {"partition": "debug", "walltime": "00:01:00"}, cwd=tmp_path)
    default = _parsl_config(ExecuteRequest(sweep_path=tmp_path / "s.yaml", backend="slurm"), settings)
    assert LOST_RETRIES == 2 and default.retry_handler.lost == 2 and default.retries == 2

    (tmp_path / "s.yaml").write_text(sweep([1], steps=FOREVER))  # longer than the 1-minute walltime
    (tmp_path / "one_lost_retry.py").write_text(ONE_LOST_RETRY_CONFIG)
    proc = start(tmp_path, "execute", "s.yaml", "--parsl-config", "one_lost_retry.py", **QUICK_HEARTBEAT)
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 1, out
    flat = " ".join(out.split())
    assert "ended: TIMEOUT" in flat and "its earlier tries: ManagerLost)" in flat, out
    assert no_jobs_left(tmp_path)
