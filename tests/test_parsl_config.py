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
    assert list(ex.interchange_launch_cmd)[:2] == [sys.executable, "-m"]


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
    with pytest.raises(RuntimeError, match="not visible on .*file system the compute nodes share"):
        build_target_job({}, str(tmp_path / "node-local" / "store"), str(log), str(log.with_suffix(".err")))
