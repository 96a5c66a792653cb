"""Parsl configurations, as plain objects built from a few typed settings.

Local: one HighThroughputExecutor block on this machine; JAX runs in its worker processes,
never in the driver. SLURM: the same executor with a SlurmProvider, one block per sbatch
job. Settings come from, lowest precedence first: a profile (`lh.toml` in the working
directory, or `--profile FILE`, table `[slurm]`; the older `--slurm-config FILE.yaml` is a
profile too), then command-line flags. `--parsl-config FILE.py` replaces all of it.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError

from lambda_hat.errors import BadInput

PROFILE_NAME = "lh.toml"
WALLTIME_PATTERN = r"^(\d+-)?\d{1,3}:\d{2}(:\d{2})?$"


LOCAL_STRATEGY_PERIOD_S = 0.1


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def _this_interpreter_launch_cmd() -> tuple[str, list[str]]:
    """Worker pool and interchange started with this very interpreter, so they find
    lambda_hat and JAX whatever PATH the job has (`.venv/bin` need not be on it)."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    launch = DEFAULT_LAUNCH_CMD.replace(
        "process_worker_pool.py", f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool", 1
    )
    return launch, [sys.executable, "-m", "parsl.executors.high_throughput.interchange"]


def local_config(run_dir: Path, workers: int | None = None, retries: int = 0):
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    launch_cmd, interchange_cmd = _this_interpreter_launch_cmd()
    return Config(
        executors=[
            HighThroughputExecutor(
                label="local",
                max_workers_per_node=workers or default_workers(),
                cores_per_worker=1,
                # A pool whose interchange is gone (its driver was killed) exits after this
                # many seconds without a heartbeat, a second line of defence behind the reaper.
                heartbeat_period=5,
                heartbeat_threshold=30,
                launch_cmd=launch_cmd,
                interchange_launch_cmd=interchange_cmd,
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        run_dir=str(run_dir),
        strategy="none",
        # Parsl starts the init_blocks at the strategy's first poll, one period after `parsl.load`:
        # at its default of 5 s every local execute waited 5 s for its workers. A poll here checks
        # a clock (the provider is asked for block status only every few seconds), so it costs nothing.
        strategy_period=LOCAL_STRATEGY_PERIOD_S,
        retries=retries,
    )


class SlurmSettings(BaseModel):
    """The SLURM knobs Lambda-Hat users set. Memory is in GB. `exclusive` defaults to
    False (Parsl's True would ask for a whole node per 1-core block on a shared cluster)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = Field("04:00:00", pattern=WALLTIME_PATTERN)
    nodes_per_block: PositiveInt = 1
    cores_per_node: PositiveInt = 1
    mem_per_node: PositiveInt | None = 8
    gpus_per_node: NonNegativeInt | None = None
    workers_per_node: PositiveInt | None = None  # default: one per GPU, else one
    max_blocks: PositiveInt = 50
    exclusive: bool = False
    worker_init: str = ""
    scheduler_options: str = ""
    launcher: Literal["srun", "single"] = "srun"
    # Where workers reach the driver's interchange; default: Parsl's choice (this host's
    # address). Set it when compute nodes cannot resolve the login node's name.
    address: str | None = None
    cmd_timeout: PositiveInt = 30

    @property
    def workers(self) -> int:
        if self.workers_per_node is not None:
            return self.workers_per_node
        return self.gpus_per_node or 1


def _one_line(source: str, err: ValidationError, prefix: str = "") -> BadInput:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"]
    if first["type"] == "string_pattern_mismatch":
        msg = "must look like HH:MM:SS, MM:SS or D-HH:MM:SS"
    return BadInput(f"{source}: {prefix}{loc}: {msg}")


def load_profile(path: Path) -> dict[str, Any]:
    """The `[slurm]` table of a TOML profile, or a YAML mapping (the older --slurm-config)."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(f"{path}: cannot read profile ({getattr(err, 'strerror', None) or err})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as err:
            raise BadInput(f"{path}: cannot read SLURM settings: {' '.join(str(err).split())}") from None
        if not isinstance(data, dict):
            raise BadInput(f"{path}: must be a mapping of SLURM settings")
        return data
    import tomllib

    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise BadInput(f"{path}: malformed TOML ({err})") from None
    unknown = sorted(set(doc) - {"slurm"})
    if unknown:
        raise BadInput(f"{path}: {unknown[0]}: unknown table (a profile has one table, [slurm])")
    slurm = doc.get("slurm", {})
    if not isinstance(slurm, dict):
        raise BadInput(f"{path}: slurm: must be a table")
    return slurm


def load_slurm_settings(path: Path) -> SlurmSettings:
    """Settings from one profile file alone (YAML or TOML)."""
    prefix = "" if path.suffix.lower() in (".yaml", ".yml") else "slurm."
    try:
        return SlurmSettings.model_validate(load_profile(path))
    except ValidationError as err:
        raise _one_line(str(path), err, prefix) from None


def resolve_slurm_settings(profile: Path | None, flags: dict[str, Any], cwd: Path | None = None) -> SlurmSettings:
    """Profile (given, else ./lh.toml if present), then flags that were given (not None)."""
    cwd = cwd or Path.cwd()
    if profile is None and (cwd / PROFILE_NAME).is_file():
        profile = cwd / PROFILE_NAME
    merged: dict[str, Any] = {}
    if profile is not None:
        base = load_slurm_settings(profile)
        merged = base.model_dump(exclude_unset=True)
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return SlurmSettings.model_validate({**merged, **given})
    except ValidationError as err:
        first = err.errors()[0]
        field = str(first["loc"][0]) if first["loc"] else ""
        if field in given:
            raise _one_line("--" + field.replace("_", "-"), err) from None
        raise _one_line(str(profile), err, "slurm.") from None


def worker_init_lines(s: SlurmSettings) -> str:
    """What every SLURM block runs before its workers: the platform JAX should use, then the
    user's own set-up (modules, venvs; it may override the former)."""
    platform = "cuda" if s.gpus_per_node else "cpu"
    return "\n".join([
        f"export PATH={Path(sys.executable).parent}:$PATH",
        f"export JAX_PLATFORMS={platform}",
        s.worker_init,
    ]).strip()


def slurm_config(run_dir: Path, s: SlurmSettings, retries: int = 0):
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher, SrunLauncher
    from parsl.providers import SlurmProvider

    launch_cmd, interchange_cmd = _this_interpreter_launch_cmd()
    executor_kw: dict[str, Any] = {}
    if s.address:
        executor_kw["address"] = s.address
    return Config(
        executors=[
            HighThroughputExecutor(
                label="slurm",
                max_workers_per_node=s.workers,
                cores_per_worker=max(1, s.cores_per_node // s.workers),
                launch_cmd=launch_cmd,
                interchange_launch_cmd=interchange_cmd,
                provider=SlurmProvider(
                    partition=s.partition,
                    account=s.account,
                    qos=s.qos,
                    walltime=s.walltime,
                    nodes_per_block=s.nodes_per_block,
                    cores_per_node=s.cores_per_node,
                    mem_per_node=s.mem_per_node,
                    gpus_per_node=s.gpus_per_node or None,
                    init_blocks=0,
                    min_blocks=0,
                    max_blocks=s.max_blocks,
                    exclusive=s.exclusive,
                    scheduler_options=s.scheduler_options,
                    worker_init=worker_init_lines(s),
                    cmd_timeout=s.cmd_timeout,
                    launcher=SrunLauncher() if s.launcher == "srun" else SingleNodeLauncher(),
                ),
                **executor_kw,
            )
        ],
        run_dir=str(run_dir),
        retries=retries,
        strategy_period=2,
    )


def load_parsl_config_file(path: Path):
    """A Python file defining `config` (a parsl Config) or `make_config()` returning one."""
    from parsl.config import Config

    if not path.is_file():
        raise BadInput(f"--parsl-config {path}: no such file")
    spec = importlib.util.spec_from_file_location(f"lh_parsl_config_{abs(hash(str(path)))}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    except Exception as err:
        raise BadInput(f"--parsl-config {path}: failed to load: {type(err).__name__}: {err}") from None
    config = getattr(module, "config", None)
    if config is None and callable(getattr(module, "make_config", None)):
        config = module.make_config()
    if not isinstance(config, Config):
        raise BadInput(f"--parsl-config {path}: must define `config` (a parsl.config.Config) or `make_config()` returning one")
    return config
