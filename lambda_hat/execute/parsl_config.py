"""Parsl configurations, as plain objects built from a few typed settings.

Local: one HighThroughputExecutor block on this machine; JAX runs in its worker processes,
never in the driver. SLURM: the same executor with a SlurmProvider, one block per sbatch job.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

from parsl.config import Config
from parsl.executors import HighThroughputExecutor
from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD
from parsl.launchers import SrunLauncher
from parsl.providers import LocalProvider, SlurmProvider


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


def local_config(run_dir: Path, workers: int | None = None) -> Config:
    # Start the interchange and workers with this very interpreter, so they find lambda_hat
    # and JAX whatever PATH the user has (`.venv/bin` need not be on it).
    launch_cmd = DEFAULT_LAUNCH_CMD.replace(
        "process_worker_pool.py", f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool", 1
    )
    return Config(
        executors=[
            HighThroughputExecutor(
                label="local",
                max_workers_per_node=workers or default_workers(),
                cores_per_worker=1,
                launch_cmd=launch_cmd,
                interchange_launch_cmd=[sys.executable, "-m", "parsl.executors.high_throughput.interchange"],
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
            )
        ],
        run_dir=str(run_dir),
        strategy="none",
    )


@dataclass(frozen=True)
class SlurmSettings:
    """The SLURM knobs Lambda-Hat users set, with its defaults."""

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    walltime: str = "04:00:00"
    nodes_per_block: int = 1
    cores_per_node: int = 1
    mem_per_node: int = 8  # GB
    gpus_per_node: int | None = None
    max_blocks: int = 50
    workers_per_node: int = 1
    scheduler_options: str = ""
    worker_init: str = ""


def slurm_config(run_dir: Path, s: SlurmSettings) -> Config:
    return Config(
        executors=[
            HighThroughputExecutor(
                label="slurm",
                max_workers_per_node=s.workers_per_node,
                cores_per_worker=max(1, s.cores_per_node // max(1, s.workers_per_node)),
                provider=SlurmProvider(
                    partition=s.partition,
                    account=s.account,
                    qos=s.qos,
                    walltime=s.walltime,
                    nodes_per_block=s.nodes_per_block,
                    cores_per_node=s.cores_per_node,
                    mem_per_node=s.mem_per_node,
                    gpus_per_node=s.gpus_per_node,
                    init_blocks=0,
                    min_blocks=0,
                    max_blocks=s.max_blocks,
                    scheduler_options=s.scheduler_options,
                    # The driver's environment first (a shared file system is assumed, as on
                    # every cluster we know), then the user's own set-up (modules, conda, ...).
                    worker_init="\n".join(
                        [f"export PATH={Path(sys.executable).parent}:$PATH", s.worker_init]
                    ).strip(),
                    launcher=SrunLauncher(),
                ),
            )
        ],
        run_dir=str(run_dir),
    )


def load_slurm_settings(path: Path) -> SlurmSettings:
    """SLURM settings from a YAML mapping; unknown keys and unreadable files are BadInput."""
    import dataclasses

    import yaml

    from lambda_hat.errors import BadInput

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise BadInput(f"{path}: cannot read SLURM settings: {' '.join(str(err).split())}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path}: must be a mapping of SLURM settings")
    known = {f.name for f in dataclasses.fields(SlurmSettings)}
    for k in data:
        if k not in known:
            raise BadInput(f"{path}: {k}: unknown SLURM setting (known: {', '.join(sorted(known))})")
    return SlurmSettings(**data)
