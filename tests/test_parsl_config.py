"""Parsl configurations are plain objects built from typed settings (no cluster needed here)."""

import shutil
import sys

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.errors import BadInput
from lambda_hat.execute.parsl_config import SlurmSettings, load_slurm_settings, local_config, slurm_config


def test_local_config_uses_this_interpreter(tmp_path):
    cfg = local_config(tmp_path / "ri", workers=3)
    (ex,) = cfg.executors
    assert ex.max_workers_per_node == 3
    assert ex.launch_cmd.startswith(sys.executable + " -m parsl.executors.high_throughput.process_worker_pool")
    assert list(ex.interchange_launch_cmd)[:2] == [sys.executable, "-c"]


def test_heartbeats_default_to_parsls_and_the_environment_overrides_them(tmp_path, monkeypatch):
    from lambda_hat.execute.parsl_config import heartbeat

    for name in ("LH_HEARTBEAT_PERIOD_S", "LH_HEARTBEAT_THRESHOLD_S"):
        monkeypatch.delenv(name, raising=False)
    (ex,) = local_config(tmp_path / "ri").executors
    assert (ex.heartbeat_period, ex.heartbeat_threshold) == (30, 120)  # a 28 s machine pause is survived
    monkeypatch.setenv("LH_HEARTBEAT_PERIOD_S", "1")
    monkeypatch.setenv("LH_HEARTBEAT_THRESHOLD_S", "3")
    (ex,) = slurm_config(tmp_path / "ri", SlurmSettings()).executors
    assert (ex.heartbeat_period, ex.heartbeat_threshold) == (1, 3)
    monkeypatch.setenv("LH_HEARTBEAT_THRESHOLD_S", "soon")
    with pytest.raises(BadInput, match="LH_HEARTBEAT_THRESHOLD_S='soon': must be a whole number"):
        heartbeat()


def test_lost_jobs_are_retried_and_their_own_errors_are_not(tmp_path):
    """Parsl's DFK retries a try while the costs so far stay within `Config.retries`."""
    from parsl.dataflow.errors import DependencyError
    from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

    from lambda_hat.execute.parsl_config import ExecutorGaveUp, RetryPolicy, retried_after

    cfg = local_config(tmp_path / "ri")
    policy = cfg.retry_handler
    assert isinstance(policy, RetryPolicy) and cfg.retries == policy.budget == 2

    def tries(errors, policy):
        """How many of these failures in a row Parsl retries, as its DFK adds up the costs."""
        record, cost = {}, 0
        for n, exc in enumerate(errors):
            cost += policy(exc, record)
            if cost > policy.budget:
                return n, record
        return len(errors), record

    lost = [ManagerLost(b"m", "host"), WorkerLost(1, "host"), ManagerLost(b"m", "host")]
    assert tries(lost, policy)[0] == 2  # two resubmissions, the third loss is final
    assert tries([RuntimeError("boom")], policy)[0] == 0  # the job's own error fails at once
    assert tries([ValueError("user code"), ManagerLost(b"m", "h")], RetryPolicy(lost=2, failed=1))[0] == 2
    assert tries([ExecutorGaveUp("no block"), DependencyError([], 1)], policy)[0] == 0
    n, record = tries([WorkerLost(1, "h"), ManagerLost(b"m", "h")], policy)

    class Done:
        task_record = record

    assert retried_after(Done()) == ["WorkerLost", "ManagerLost"]


def test_slurm_settings_from_yaml_reach_the_provider(tmp_path):
    f = tmp_path / "slurm.yaml"
    f.write_text("partition: gpu\nwalltime: '01:00:00'\nmax_blocks: 7\nmem_per_node: 32\n"
                 "worker_init: module load cuda/12.1\nscheduler_options: '#SBATCH --gres=gpu:1'\n")
    settings = load_slurm_settings(f)
    assert settings == SlurmSettings(partition="gpu", walltime="01:00:00", max_blocks=7, mem_per_node=32,
                                     worker_init="module load cuda/12.1", scheduler_options="#SBATCH --gres=gpu:1")
    (ex,) = slurm_config(tmp_path / "ri", settings).executors
    p = ex.provider
    assert (p.partition, p.walltime, p.max_blocks, p.mem_per_node) == ("gpu", "01:00:00", 7, 32)
    assert p.worker_init.strip().endswith("module load cuda/12.1") and "export PATH=" in p.worker_init


def test_unknown_slurm_setting_is_bad_input(tmp_path):
    f = tmp_path / "slurm.yaml"
    f.write_text("partiton: gpu\n")
    with pytest.raises(BadInput) as info:
        load_slurm_settings(f)
    assert info.value.exit_code == 2 and "partiton" in str(info.value)


@pytest.mark.skipif(shutil.which("sbatch") is not None, reason="a SLURM cluster is here")
def test_slurm_backend_without_sbatch_exits_2(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("targets: [{model: small}]\nsamplers: [{name: hmc}]\n")
    result = CliRunner().invoke(app, ["execute", "s.yaml", "--backend", "slurm"])
    assert result.exit_code == 2 and "sbatch not found" in result.stderr


def test_profile_then_flags(tmp_path):
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    (tmp_path / "lh.toml").write_text('[slurm]\npartition = "gpu"\nwalltime = "02:00:00"\nmax_blocks = 7\n')
    s = resolve_slurm_settings(None, {"walltime": "00:10:00", "partition": None}, cwd=tmp_path)
    assert (s.partition, s.walltime, s.max_blocks, s.exclusive) == ("gpu", "00:10:00", 7, False)
    (ex,) = slurm_config(tmp_path / "ri", s).executors
    assert ex.provider.exclusive is False and "--exclusive" not in ex.provider.scheduler_options
    assert "export JAX_PLATFORMS=cpu" in ex.provider.worker_init


@pytest.mark.parametrize(
    "toml,flags,message",
    [
        ('[slurm]\nwalltime = "four hours"\n', {}, "lh.toml: slurm.walltime: must look like HH:MM:SS"),
        ('[slurm]\npartiton = "gpu"\n', {}, "lh.toml: slurm.partiton: Extra inputs are not permitted"),
        ('[slurm]\nmax_blocks = 0\n', {}, "lh.toml: slurm.max_blocks: Input should be greater than 0"),
        ('[slurm\n', {}, "lh.toml: malformed TOML"),
        ('[cluster]\n', {}, "lh.toml: cluster: unknown table"),
        ('[slurm]\n', {"walltime": "99"}, "--walltime: walltime: must look like"),
    ],
)
def test_bad_profile_or_flag_is_one_line(tmp_path, toml, flags, message):
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    (tmp_path / "lh.toml").write_text(toml)
    with pytest.raises(BadInput) as info:
        resolve_slurm_settings(None, flags, cwd=tmp_path)
    assert message in str(info.value).replace(str(tmp_path) + "/", "") and "\n" not in str(info.value)


def test_slurm_flag_without_slurm_backend_is_bad_input(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("targets: [{model: small}]\nsamplers: [{name: hmc}]\n")
    result = CliRunner().invoke(app, ["execute", "s.yaml", "--partition", "gpu"])
    assert result.exit_code == 2 and "--partition: a SLURM setting needs --backend slurm" in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]  # nothing written


def test_parsl_config_file(tmp_path):
    from lambda_hat.execute.parsl_config import load_parsl_config_file

    good = tmp_path / "cfg.py"
    good.write_text("from parsl.config import Config\nfrom parsl.executors import ThreadPoolExecutor\n"
                    "def make_config():\n    return Config(executors=[ThreadPoolExecutor(label='mine')])\n")
    assert load_parsl_config_file(good).executors[0].label == "mine"
    bad = tmp_path / "bad.py"
    bad.write_text("config = 42\n")
    with pytest.raises(BadInput, match="must define `config`"):
        load_parsl_config_file(bad)
    broken = tmp_path / "broken.py"
    broken.write_text("import nonexistent_module_xyz\n")
    with pytest.raises(BadInput, match="failed to load: ModuleNotFoundError"):
        load_parsl_config_file(broken)


def test_worker_that_cannot_see_the_store_says_so(tmp_path):
    from lambda_hat.execute.apps import build_target_job

    log = tmp_path / "logs" / "build_target" / "t.log"
    log.parent.mkdir(parents=True)
    from lambda_hat.errors import StoreError

    with pytest.raises(StoreError, match="not visible on .*file system the compute nodes share"):
        build_target_job({}, str(tmp_path / "node-local" / "store"), str(log), str(log.with_suffix(".err")))


@pytest.mark.slow  # a real worker pool: ~25 s at load 4 on 2 cores
def test_more_workers_than_cores_all_start(tmp_path):
    """`--workers` above the core count is honoured: Parsl's pool started floor(cores / cores per
    worker) workers, 2 for `--workers 4` on 2 cores. A real pool, as many jobs as workers, each
    waiting until all have started: each names its worker process (the shell's parent)."""
    import os
    import subprocess
    import time

    import parsl
    from parsl import python_app

    workers = 2 * (os.cpu_count() or 1)
    seen = tmp_path / "seen"
    seen.mkdir()
    wait_all = (f'touch {seen}/$PPID; for i in $(seq 200); do [ $(ls {seen} | wc -l) -ge {workers} ] && exit 0; '
                'sleep 0.1; done; exit 1')
    dfk = parsl.load(local_config(tmp_path / "ri", workers=workers))
    try:
        t0 = time.monotonic()
        job = python_app(subprocess.call, data_flow_kernel=dfk)
        codes = [f.result(timeout=120) for f in [job(["sh", "-c", wait_all]) for _ in range(workers)]]
        assert len(list(seen.iterdir())) == workers and codes == [0] * workers, (codes, list(seen.iterdir()))
        assert time.monotonic() - t0 < 60
        (manager,) = dfk.executors["local"].connected_managers()
        assert manager["worker_count"] == workers, manager
    finally:
        dfk.cleanup()
        parsl.clear()


def test_two_drivers_starting_at_once_in_one_directory_each_get_a_run_directory(tmp_path, monkeypatch):
    """Parsl numbers run directories by listing them; a driver whose listing is taken just before
    another driver creates 000 picks 000 too (the fresh-clone CI failure: 'File exists: parsl_runinfo/...').
    The listing is made stale here, the other driver's directory real; the driver must take 001."""
    import parsl
    from parsl.config import Config
    from parsl.dataflow import rundirs
    from parsl.executors import ThreadPoolExecutor

    from lambda_hat.execute.driver import _load_parsl

    run_dir = tmp_path / "parsl_runinfo"
    (run_dir / "000").mkdir(parents=True)  # the other driver's, made after our listing
    real_glob, stale = rundirs.glob, [True]

    def listing_taken_before_the_other_driver(pattern):
        if stale.pop() if stale else False:
            return []
        return real_glob(pattern)

    monkeypatch.setattr(rundirs, "glob", listing_taken_before_the_other_driver)
    dfk = _load_parsl(parsl, Config(executors=[ThreadPoolExecutor()], run_dir=str(run_dir)))
    try:
        assert dfk.run_dir == str(run_dir / "001")
    finally:
        dfk.cleanup()
