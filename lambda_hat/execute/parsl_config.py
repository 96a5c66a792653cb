"""Parsl configurations, as plain objects built from a few typed settings.

Local: one HighThroughputExecutor block on this machine; JAX runs in its worker processes,
never in the driver. SLURM: the same executor with a SlurmProvider, one block per sbatch
job. Settings come from, lowest precedence first: a profile (`lh.toml` in the working
directory, or `--profile FILE`, table `[slurm]`; the older `--slurm-config FILE.yaml` is a
profile too), then command-line flags. `--parsl-config FILE.py` replaces all of it.

Failures: a job lost with its worker, manager or block (Parsl's WorkerLost, ManagerLost: a
killed worker, a machine paused past the heartbeat threshold, a SLURM node failure,
preemption or walltime) is resubmitted up to `LOST_RETRIES` times; a job that raised in
lambda-hat's or the user's code is not (unless `--retries`): `RetryPolicy`. A lost block is
replaced (the "simple" strategy keeps a block for queued work); once the last
`BLOCK_FAILURES_MAX` blocks have all failed the executor gives up and every job fails with
the last block's own error (`give_up_after_failed_blocks`) instead of waiting forever.
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt, ValidationError, field_validator

from lambda_hat.errors import BadInput
from lambda_hat.files import read_input_text

PROFILE_NAME = "lh.toml"
# HH:MM:SS, MM:SS or D-HH:MM:SS; minutes and seconds below 60 (sbatch refuses 99:99:99 only
# once the block is submitted), and not all zero (`SlurmSettings._some_time`)
WALLTIME_PATTERN = r"^(\d+-)?\d{1,3}:[0-5]\d(:[0-5]\d)?$"


LOCAL_STRATEGY_PERIOD_S = 0.1

# Parsl's defaults. A busy machine, or one paused for a while (a VM fork or migration, a closed
# laptop lid: both the interchange and the pool stop, and on waking each finds the other's last
# heartbeat old), must not lose its pool: a 30 s threshold lost whole sweeps to a 28 s pause.
# Orphaned pools are the reaper's to end, not the heartbeat's.
HEARTBEAT_PERIOD_S = 30
HEARTBEAT_THRESHOLD_S = 120
HEARTBEAT_ENV = ("LH_HEARTBEAT_PERIOD_S", "LH_HEARTBEAT_THRESHOLD_S")  # the fault tests use 1 and 3

LOST_RETRIES = 2  # resubmissions of a job whose worker, manager or block was lost
BLOCK_FAILURES_MAX = 3  # blocks failed in a row before the executor gives up
RETRIED_KEY = "lh_retried_after"  # in Parsl's task record: why each earlier try of the job ended


def default_workers() -> int:
    return min(os.cpu_count() or 1, 8)


# Local workers per core at most: each is a process with its own JAX (hundreds of MB) and the
# cores are shared; past this a sweep only thrashes (400 workers on 2 cores: load 87, nothing done).
WORKERS_PER_CORE_MAX = 4


def check_local_workers(workers: int, cpus: int | None = None) -> None:
    cpus = cpus or os.cpu_count() or 1
    if workers > WORKERS_PER_CORE_MAX * cpus:
        raise BadInput(f"--workers {workers}: at most {WORKERS_PER_CORE_MAX * cpus} on this machine's {cpus} "
                       f"core{'s' if cpus > 1 else ''} ({WORKERS_PER_CORE_MAX} per core: each worker is a process "
                       "with its own JAX)")


def cores_per_worker(workers: int, cpus: int | None = None) -> float:
    """The share of a core each of `workers` local workers gets. Parsl's worker pool starts at most
    floor(cores / cores_per_worker) workers, so `--workers 4` on 2 cores with a whole core each was
    silently 2 workers: more workers than cores get a fraction of a core each (Parsl allows it)."""
    cpus = cpus or os.cpu_count() or 1
    if workers <= cpus:
        return 1.0
    share = cpus / workers
    while math.floor(cpus / share) < workers:  # a share rounded up would cost a worker
        share = math.nextafter(share, 0.0)
    return share


def _this_interpreter_launch_cmd() -> tuple[str, list[str]]:
    """Worker pool and interchange started with this very interpreter, so they find
    lambda_hat and JAX whatever PATH the job has (`.venv/bin` need not be on it); the
    interchange deaf to Ctrl-C (INTERCHANGE_IGNORING_SIGINT)."""
    from parsl.executors.high_throughput.executor import DEFAULT_LAUNCH_CMD

    launch = DEFAULT_LAUNCH_CMD.replace(
        "process_worker_pool.py", f"{sys.executable} -m parsl.executors.high_throughput.process_worker_pool", 1
    )
    return launch, [sys.executable, "-c", INTERCHANGE_IGNORING_SIGINT]


HEARTBEAT_MAX_S = 86_400  # a day: past it Parsl's timers overflow (10^20 s hung every execute)


def heartbeat() -> tuple[int, int]:
    """(period, threshold) in seconds for the worker pools and the interchange: whole seconds
    from 1 to a day, the threshold above the period (a manager is declared lost when no
    heartbeat came within the threshold: below the period, every manager is lost at once)."""
    values = []
    for name, default in zip(HEARTBEAT_ENV, (HEARTBEAT_PERIOD_S, HEARTBEAT_THRESHOLD_S)):
        text = os.environ.get(name, "").strip()
        if not text:
            values.append(default)
        elif text.isascii() and text.isdigit() and 0 < int(text) <= HEARTBEAT_MAX_S:
            values.append(int(text))
        else:
            raise BadInput(f"{name}={text!r}: must be a whole number of seconds from 1 to {HEARTBEAT_MAX_S}")
    if values[1] <= values[0]:
        raise BadInput(f"{HEARTBEAT_ENV[1]}={values[1]}: must be above {HEARTBEAT_ENV[0]} ({values[0]} s), "
                       "else every worker pool is declared lost between two heartbeats")
    return values[0], values[1]


class RetryPolicy:
    """Parsl's `retry_handler`: the cost of one failed try, against a budget (`Config.retries`)
    of `lost + failed`. A try lost with its worker, manager or block costs 1 while the job has
    been lost fewer than `lost` times; an error raised by the job itself (lambda-hat's or the
    user's code) costs 1 while it has raised fewer than `failed` times (the --retries flag).
    Anything else costs more than the budget: the job fails now, with its log. Why each retried
    try ended is kept in the task record (`RETRIED_KEY`), for the driver's summary."""

    def __init__(self, lost: int = LOST_RETRIES, failed: int = 0):
        self.lost, self.failed = lost, failed

    @property
    def budget(self) -> int:
        return self.lost + self.failed

    def __call__(self, exc: BaseException, task_record) -> float:
        from parsl.dataflow.errors import DependencyError
        from parsl.executors.errors import BadStateException
        from parsl.executors.high_throughput.errors import ManagerLost, WorkerLost

        if isinstance(exc, (DependencyError, BadStateException, ExecutorGaveUp)):
            return self.budget + 1  # nothing to gain from another try
        lost = isinstance(exc, (ManagerLost, WorkerLost))
        retried = task_record.setdefault(RETRIED_KEY, [])
        used = sum(1 for _, was_lost in retried if was_lost == lost)
        if used >= (self.lost if lost else self.failed):
            return self.budget + 1
        retried.append((type(exc).__name__, lost))
        return 1


def retried_after(future) -> list[str]:
    """The errors that ended a finished Parsl future's earlier tries, oldest first."""
    record = getattr(future, "task_record", None) or {}
    return [name for name, _ in record.get(RETRIED_KEY, [])]


class ExecutorGaveUp(Exception):
    """No block of the executor could start or stay up: every job fails with this."""


def give_up_after_failed_blocks(executor, status: dict) -> None:
    """Parsl's `block_error_handler`: once the last BLOCK_FAILURES_MAX blocks have all failed
    (sbatch refused them, they exited at once, or each died in turn), fail every job with the
    last block's own error instead of submitting blocks forever. A lost block before that is
    simply replaced by the strategy, and its jobs retried."""
    from parsl.jobs.states import JobState

    if executor.bad_state_is_set:
        return
    recent = sorted(status, key=int)[-BLOCK_FAILURES_MAX:]
    if len(recent) < BLOCK_FAILURES_MAX or any(status[b].state not in (JobState.FAILED, JobState.MISSING) for b in recent):
        return
    last = status[recent[-1]]
    # The block's own last words if it left any, else Parsl's (a failed sbatch: SbatchFailed's).
    said = [line.strip() for line in (last.stderr_summary or "").splitlines() if line.strip()]
    detail = said[-1] if said else re.sub(r"^Failed to start block \d+: ", "", last.message or "")
    if last.exit_code is not None:
        detail = f"exit code {last.exit_code}" + (f": {detail}" if detail else "")
    if last.stderr_path:
        detail += f" (its stderr: {last.stderr_path})"
    executor.set_bad_state_and_fail_all(ExecutorGaveUp(
        f"{BLOCK_FAILURES_MAX} blocks failed in a row, giving up; the last: {detail or 'no message'}"))


# The interchange, run with Ctrl-C ignored: it shares the terminal's process group with the
# driver, and a SIGINT there printed its traceback before the driver's one clean line. The
# driver stops it itself.
INTERCHANGE_IGNORING_SIGINT = (
    "import runpy, signal; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "runpy.run_module('parsl.executors.high_throughput.interchange', run_name='__main__', alter_sys=True)"
)


def _executor_kw() -> dict[str, Any]:
    """What the local and the SLURM executor share: this interpreter, the heartbeats, giving up."""
    launch_cmd, interchange_cmd = _this_interpreter_launch_cmd()
    period, threshold = heartbeat()
    return dict(launch_cmd=launch_cmd, interchange_launch_cmd=interchange_cmd, heartbeat_period=period,
                heartbeat_threshold=threshold, block_error_handler=give_up_after_failed_blocks)


def local_config(run_dir: Path, workers: int | None = None, retries: int = 0, lost_retries: int = LOST_RETRIES):
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.providers import LocalProvider

    policy = RetryPolicy(lost=lost_retries, failed=retries)
    workers = workers or default_workers()
    return Config(
        executors=[
            HighThroughputExecutor(
                label="local",
                max_workers_per_node=workers,
                cores_per_worker=cores_per_worker(workers),
                provider=LocalProvider(init_blocks=1, min_blocks=1, max_blocks=1),
                **_executor_kw(),
            )
        ],
        run_dir=str(run_dir),
        # "simple" starts a block whenever jobs wait and none is running or pending: a lost
        # block is replaced ("none" only ever started the first).
        strategy="simple",
        # Parsl starts the init_blocks at the strategy's first poll, one period after `parsl.load`:
        # at its default of 5 s every local execute waited 5 s for its workers. A poll here checks
        # a clock (the provider is asked for block status only every few seconds), so it costs nothing.
        strategy_period=LOCAL_STRATEGY_PERIOD_S,
        retries=policy.budget,
        retry_handler=policy,
    )


SLURM_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.,+@-]*")


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

    @field_validator("partition", "account", "qos")
    @classmethod
    def _one_name(cls, v: str | None) -> str | None:
        # written into the sbatch script as `#SBATCH --partition=…`: a newline there would end
        # the directive and run the rest as a command on the cluster
        if v is not None and not SLURM_NAME.fullmatch(v):
            raise ValueError("must be a SLURM name (letters, digits, '_', '-', '.', ',' for a list; no spaces)")
        return v

    @field_validator("address")
    @classmethod
    def _ip_address(cls, v: str | None) -> str | None:
        """Parsl takes an IP address: a host name is resolved here, once, or refused."""
        import ipaddress
        import socket

        if v is None:
            return v
        try:
            ip = ipaddress.ip_address(v)
        except ValueError:
            pass
        else:
            # an IPv6 scope (`fe80::1%eth0`) is any text to ipaddress; Parsl writes it unquoted into
            # the job script: an interface name only
            if getattr(ip, "scope_id", None) is not None and not SLURM_NAME.fullmatch(ip.scope_id):
                raise ValueError("an IPv6 address's scope (after %) must be an interface name")
            return str(ip)
        if not SLURM_NAME.fullmatch(v):
            raise ValueError("must be an IP address (or a host name) of this host that compute nodes reach")
        try:
            return socket.gethostbyname(v)
        except OSError:
            raise ValueError(f"{v!r} is not an IP address, nor a host name this machine resolves") from None

    @field_validator("walltime")
    @classmethod
    def _some_time(cls, v: str) -> str:
        if not any(c not in "0:-" for c in v):
            raise ValueError("must be longer than zero (HH:MM:SS, MM:SS or D-HH:MM:SS)")
        return v

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
        msg = "must look like HH:MM:SS, MM:SS or D-HH:MM:SS (minutes and seconds below 60)"
    msg = msg.removeprefix("Value error, ")
    return BadInput(f"{source}: {prefix}{loc}: {msg}")


def load_profile(path: Path) -> dict[str, Any]:
    """The `[slurm]` table of a TOML profile, or a YAML mapping (the older --slurm-config)."""
    text = read_input_text(path, "profile")
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


def _slurm_provider_class():
    """Parsl's SlurmProvider, whose failed `sbatch` says what the scheduler said, the command and
    the submit script (Parsl's own message was cut to `… Error 1:` on the driver's screen)."""
    from parsl.providers import SlurmProvider
    from parsl.providers.errors import SubmitException

    class SbatchFailed(SubmitException):
        def __str__(self) -> str:
            return self.message

    class LhSlurmProvider(SlurmProvider):
        def submit(self, command: str, tasks_per_node: int, job_name: str = "parsl.slurm") -> str:
            try:
                return super().submit(command, tasks_per_node, job_name)
            except SubmitException as err:
                script = os.path.abspath(os.path.join(self.script_dir or "", err.job_name))
                said = " ".join((err.stderr or err.stdout or "").split()) or "(no output)"
                raise SbatchFailed(err.job_name, f"{said} (`sbatch {script}` exited {err.retcode})",
                                   err.stdout, err.stderr, err.retcode) from None

    return LhSlurmProvider


def slurm_config(run_dir: Path, s: SlurmSettings, retries: int = 0, lost_retries: int = LOST_RETRIES):
    from parsl.config import Config
    from parsl.executors import HighThroughputExecutor
    from parsl.launchers import SingleNodeLauncher, SrunLauncher

    executor_kw: dict[str, Any] = _executor_kw()
    if s.address:
        executor_kw["address"] = s.address
    policy = RetryPolicy(lost=lost_retries, failed=retries)
    return Config(
        executors=[
            HighThroughputExecutor(
                label="slurm",
                max_workers_per_node=s.workers,
                cores_per_worker=max(1, s.cores_per_node // s.workers),
                provider=_slurm_provider_class()(
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
        strategy="simple",  # a block is submitted whenever jobs wait and none is running or pending
        strategy_period=2,
        retries=policy.budget,
        retry_handler=policy,
    )


def check_parsl_config_file(path: Path) -> None:
    """`path` is a regular file (or a link to one), else BadInput saying what it is."""
    from lambda_hat.files import file_type

    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadInput(f"--parsl-config {path}: no such file") from None
    except OSError as err:
        raise BadInput(f"--parsl-config {path}: {err.strerror}") from None
    if not stat.S_ISREG(st.st_mode):
        raise BadInput(f"--parsl-config {path}: {file_type(st)}, not a Python file")


def load_parsl_config_file(path: Path):
    """A Python file defining `config` (a parsl Config) or `make_config()` returning one."""
    from parsl.config import Config

    check_parsl_config_file(path)
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
