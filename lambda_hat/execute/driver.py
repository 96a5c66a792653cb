"""`lh execute`: carry a plan out, and leave the store saying exactly what is done.

The flow: load the sweep → open and reconcile the store → plan against its snapshot →
claim each missing artifact (a second driver on the same store waits for what the first
has in flight, then takes over only what the first did not finish) → submit the claimed
jobs to Parsl → record each finished manifest in the index within a second or two (a
timer thread; a busy index keeps the records and retries) → release claims → export
results. SIGINT and SIGTERM end the run cleanly; a reaper process ends the worker pool
and SLURM blocks even if the driver itself is killed with SIGKILL.

The driver makes no decisions about *what* to run (the planner does) and exits nowhere: it
returns an `ExecuteResult` whose `exit_code` (1 for failed jobs, 130/143 for SIGINT/SIGTERM) the
CLI exits with. The jobs are scheduled in
phases by `schedule.py` (claim, submit, wait); what is printed meanwhile is `view.py`'s.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import sys
import stat
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape as rich_escape

from lambda_hat.errors import BadInput, ExecutorStartError, IndexBusy, LhError
from lambda_hat.execute.schedule import JobApps, Scheduler, failure_reason
from lambda_hat.files import read_regular_text
from lambda_hat.ids import is_artifact_id
from lambda_hat.execute.view import ExecuteView, sampling_progress  # noqa: F401 (sampling_progress: imported from here)
from lambda_hat.text import plural, shown as shown_text
from lambda_hat.logs import FOLDERS
from lambda_hat.output_paths import check_execute_outputs
from lambda_hat.planner import Plan, describe_same_computations, load, plan, same_computations
from lambda_hat.store import HEARTBEAT_S, resolve_store_root
from lambda_hat.sweep import results_file

STAGES_FILE = "lh-stages.json"  # in the Parsl run directory (parsl_runinfo/NNN/)


@dataclass(frozen=True)
class ExecuteRequest:
    sweep_path: Path
    store: str | None = None
    backend: str = "local"
    workers: int | None = None
    logs: Path = Path("logs")
    results: Path | None = None  # None: the sweep's own file, results/NAME.parquet (sweep.results_file)
    profile: Path | None = None  # lh.toml-style [slurm] table (or the older YAML --slurm-config)
    slurm_flags: dict = field(default_factory=dict)  # SlurmSettings fields given on the command line
    parsl_config: Path | None = None  # a Python file defining `config` or `make_config()`
    retries: int = 0  # more tries for a job that raised (its own error)
    lost_retries: int = 2  # more tries for a job lost with its worker, manager or block (parsl_config.LOST_RETRIES)
    max_runs: int = 1_000_000
    parsl_run_dir: Path = Path("parsl_runinfo")
    verbose: bool = False  # a line per submitted job, and per completed job at any scale
    # Sample runs of one target that differ only in seed, β, γ or runtime scalars as one vmapped
    # job (`pipeline.sample_runs`), at most planner.BATCH_RUNS_MAX runs a job (`planner.batches`).
    batch_runs: bool = False


@dataclass
class ExecuteResult:
    exit_code: int = 0
    completed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, Path]] = field(default_factory=list)  # (id, reason, err log)
    done_elsewhere: list[str] = field(default_factory=list)
    flagged: list[tuple[str, str, str]] = field(default_factory=list)  # (run id, status, reason)
    retried: list[tuple[str, list[str]]] = field(default_factory=list)  # (id, what ended each earlier try)
    rebuilt: list[tuple[str, str]] = field(default_factory=list)  # (damaged target rebuilt here, the run that found it)
    # (id, why): held by another lh execute past the wait's bound (claims.wait_bound_s), not done here
    not_waited: list[tuple[str, str]] = field(default_factory=list)
    interrupted: str | None = None  # the signal's name
    # When each stage of the run ended (epoch seconds) and the driver's seconds spent recording;
    # written next to Parsl's log as STAGES_FILE, for benchmarks/startup.py and slow-start questions.
    stages: dict[str, Any] = field(default_factory=dict)


class Interrupted(BaseException):
    def __init__(self, signame: str):
        self.signame = signame


def _load(req: ExecuteRequest):
    sweep, expanded = load(req.sweep_path, max_runs=req.max_runs)
    return sweep, expanded, resolve_store_root(req.store, sweep.store_root)


class Recorder:
    """Puts finished manifests into the index from a timer thread, within about a second of
    each completion; also heartbeats the driver's claims. A reader holding the index only
    delays records (they are retried)."""

    def __init__(self, store, claims, console: Console, period_s: float = 1.0):
        self.store, self.claims, self.console, self.period_s = store, claims, console, period_s
        self.pending: list = []
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.busy_told = False
        self.recorded = 0
        self.record_sec = 0.0  # time spent writing the index
        self.thread = threading.Thread(target=self._loop, name="lh-recorder", daemon=True)
        self.last_heartbeat = 0.0

    def start(self) -> None:
        self.thread.start()

    def add(self, record) -> None:
        with self.lock:
            self.pending.append(record)

    def flush(self, timeout_s: float = 0.5) -> bool:
        with self.lock:
            batch, self.pending = self.pending, []
        if not batch:
            return True
        try:
            t0 = time.perf_counter()
            self.store.record(batch, timeout_s=timeout_s)
            self.record_sec += time.perf_counter() - t0
            self.recorded += len(batch)
            if self.busy_told:
                self.console.print(f"  index free again: {len(batch)} waiting records written")
                self.busy_told = False
            return True
        except IndexBusy:
            with self.lock:
                self.pending = batch + self.pending
            if not self.busy_told:
                self.console.print(
                    f"  [yellow]the index is held by another process[/yellow] ({self.store.layout.index_path}); "
                    f"{len(batch)} records wait in memory and are retried every second (the manifests are safe)"
                )
                self.busy_told = True
            return False

    def _loop(self) -> None:
        while not self.stop.wait(self.period_s):
            try:
                self.flush()
                if time.monotonic() - self.last_heartbeat > HEARTBEAT_S:
                    self.claims.heartbeat()
                    self.last_heartbeat = time.monotonic()
            except Exception as err:  # the recorder must never die silently
                self.console.print(f"  [red]recorder:[/red] {failure_reason(err)}")

    def close(self, final_wait_s: float = 30.0) -> int:
        """Stop the thread, then try to write what is left for up to `final_wait_s`.
        Returns the number of records that are still not in the index."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=10)
        deadline = time.monotonic() + final_wait_s
        while not self.flush(timeout_s=1.0) and time.monotonic() < deadline:
            time.sleep(0.5)
        with self.lock:
            return len(self.pending)


def execute(req: ExecuteRequest, console: Console) -> ExecuteResult:
    t_start = time.perf_counter()
    from lambda_hat import results as results_io

    sweep, expanded, root = _load(req)
    if req.results is None:
        req = replace(req, results=results_file(sweep, req.sweep_path))
    # Every path the command writes, checked before anything is submitted (output_paths.py).
    from lambda_hat.sweep import files_read

    read = [("the sweep", req.sweep_path), ("the cluster profile", req.profile), ("the Parsl configuration", req.parsl_config),
            *files_read(sweep.targets)]
    check_execute_outputs(req.logs, req.results, root, req.parsl_run_dir, inputs=[(w, p) for w, p in read if p is not None])
    owner_note = _results_owner_note(req.results, req.sweep_path)  # said once the file is written
    settings = _backend_settings(req)
    store, rep = _open_store(root, console)
    # The reconcile has just listed and stat'ed every artifact: the snapshot reuses that.
    snapshot = store.snapshot([t.target_id for t in expanded.targets], [r.run_id for r in expanded.runs],
                              complete=rep.complete)
    p = plan(expanded, snapshot)
    result = ExecuteResult()
    if p.nothing_to_do:
        n = _results_in_step(req.results, store, snapshot, expanded)
        _remember_owner(req.results, req.sweep_path, owner_note, console)
        console.print(
            f"nothing to do: {plural(len(p.targets_cached), 'target')} and {plural(len(p.runs_cached), 'run')} "
            f"already in the store ({store.root})\n{plural(n, 'row')} in {req.results} ({time.perf_counter() - t_start:.2f}s)"
        )
        return result
    console.print(f"store {store.root}: {p.summary()}")
    to_do = {r.run_id for r in p.runs_to_sample} | {t.target_id for t in p.targets_to_build}
    for line in describe_same_computations([pair for pair in same_computations(expanded) if pair[1] in to_do]):
        console.print(line, markup=False, highlight=False)
    if rep.pending:
        console.print(f"  {len(rep.pending)} artifacts not yet indexed (index busy); they will be recorded")
    _run(req, settings, store, p, console, result, rep.pending, sweep.diagnostics.model_dump())
    n = results_io.export_runs(store, [r.run_id for r in expanded.runs], req.results, check_files=False).rows
    _remember_owner(req.results, req.sweep_path, owner_note, console)
    _report(req, result, n, t_start, console)
    return result


def _open_store(root: Path, console: Console):
    """The store at `root`, reconciled (what that found said), and the reconcile's report."""
    from lambda_hat.store import Store

    store = Store.open(root, create=True)
    rep = store.reconcile()
    for where, why in rep.quarantined:
        name = where.name.rsplit("-", 2)[0]  # quarantine() appends -<time>-<random>
        redone = "; it will be redone" if is_artifact_id(name) else f"; in {where.parent.name}/ until lh gc"
        console.print(f"  [yellow]quarantined[/yellow] {rich_escape(name)} ({rich_escape(why)}){redone}")
    for p in rep.removed_tmp:
        console.print(f"  removed unfinished {p.name} (its writer is gone)")
    if rep.foreign:  # someone's notes or folders: left where they are, said once per execute
        shown = ", ".join(rich_escape(shown_text(f"{p.parent.name}/{p.name}")) for p in rep.foreign[:3])
        more = f" and {len(rep.foreign) - 3} more" if len(rep.foreign) > 3 else ""
        console.print(f"  left alone, not lambda-hat's: {shown}{more} (lh verify lists them; move them out of the store)")
    if rep.index_moved_aside:
        console.print(f"  [yellow]the index was not readable[/yellow]: moved to {rep.index_moved_aside.name}, rebuilt from the manifests")
    return store, rep


def _report(req: ExecuteRequest, result: ExecuteResult, n: int, t_start: float, console: Console) -> None:
    """The summary after the jobs, and the exit code it implies."""
    if result.interrupted:
        console.print(
            f"\n[yellow]interrupted[/yellow] ({result.interrupted}): {plural(len(result.completed), 'job')} completed and recorded;\n"
            "run the same command again to do only what is missing."
        )
        result.exit_code = 130 if result.interrupted == "SIGINT" else 143
        return
    elsewhere = f", {len(result.done_elsewhere)} done by another lh execute" if result.done_elsewhere else ""
    console.print(
        f"\n{plural(len(result.completed), 'job')} completed, {len(result.failed)} failed{elsewhere}; "
        f"{plural(n, 'row')} in {req.results} ({time.perf_counter() - t_start:.1f}s)"
    )
    if result.retried:
        _listed(console, f"{plural(len(result.retried), 'job')} retried after a lost worker, manager or block (each recorded once):",
                result.retried, lambda job_id, causes: f"  {job_id}: retried after {', '.join(causes)}")
    if result.rebuilt:
        _listed(console, f"{plural(len(result.rebuilt), 'damaged target')} found by their runs, quarantined and rebuilt in this execute:",
                result.rebuilt, lambda tid, found_by: f"  {tid} (found by {found_by})", limit=None)
    if result.flagged:
        nonfinite = sum(1 for _, status, _ in result.flagged if status == "nonfinite")
        kept = ("numbers kept" if not nonfinite else "no numbers: non-finite draws" if nonfinite == len(result.flagged)
                else "numbers kept, none for the nonfinite ones")
        _listed(console, f"[yellow]{plural(len(result.flagged), 'run')} finished but flagged[/yellow] ({kept}; "
                "lh status lists them):",
                result.flagged, lambda job_id, status, why: f"  {job_id}: {status}" + (f" ({why})" if why else ""))
    if result.not_waited:
        _listed(console, f"[red]{plural(len(result.not_waited), 'job')} not done[/red]: another lh execute held them past the "
                "wait's\nbound (LH_CLAIM_WAIT_S); run lh execute again once it is done:",
                # the header says what was not waited for and what to do: each line, only who holds it
                result.not_waited, lambda job_id, why: f"  {job_id}: {why.split('; not waited for')[0].removeprefix(job_id + ' ')}")
    if result.failed:
        _listed(console, "[red]failed jobs[/red] (see their logs):",
                result.failed, lambda job_id, reason, err: f"  {job_id}: {reason}\n    {err}", limit=None)
    if result.not_waited or result.failed:
        result.exit_code = 1


def _listed(console: Console, heading: str, rows: list[tuple], line, limit: int | None = 20) -> None:
    """`heading`, then a line per row (`line(*row)`), the first `limit` rows only (None: all)."""
    console.print(heading)
    for row in rows[:limit]:
        console.print(line(*row), soft_wrap=True, highlight=False)
    if limit is not None and len(rows) > limit:
        console.print(f"  ... and {len(rows) - limit} more")


# --------------------------------------------------------------------------- results in step

def _results_in_step(out_path: Path, store, snapshot, expanded) -> int:
    """The rows of the results file of a sweep with nothing to do: as they are when the file is
    in step with the store (`_results_rows_in_step`), else written again."""
    from lambda_hat import results as results_io

    source = _results_source(snapshot, out_path)
    n = _results_rows_in_step(out_path, source)
    if n is None:
        written = results_io.export_runs(store, [r.run_id for r in expanded.runs], out_path, check_files=False)
        _remember_results(out_path, source, written)
        n = written.rows
    return n


def _results_source(snapshot, out_path: Path) -> str:
    """What a results file written now would be made of: the artifacts (IDs, in order, with
    their manifests' size and mtime), the columns of the `runs` view, and the format."""
    from lambda_hat import results

    h = hashlib.sha256(snapshot.state.encode())
    h.update(out_path.suffix.lower().encode())
    for sql in results.view_sql("lh_index").values():
        h.update(sql.encode())
    return h.hexdigest()


def _owner_file(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.lh-sweep"


def _results_owner_note(out_path: Path, sweep_path: Path) -> str | None:
    """Two sweeps with one file stem (and no `name:`) share results/NAME.parquet: what to say
    once this execute has replaced the other sweep's file, instead of replacing it silently."""
    theirs = (read_regular_text(_owner_file(out_path)) or "").strip()
    if theirs and theirs != str(sweep_path.resolve()) and out_path.is_file():
        return (f"  [yellow]note[/yellow]: {out_path} held the runs of {theirs};\n"
                "  it now holds this sweep's (a name: in either sweep gives each its own file)")
    return None


def _remember_owner(out_path: Path, sweep_path: Path, note: str | None = None, console: Console | None = None) -> None:
    """The results file now holds this sweep's runs: say so if it held another's, and note it."""
    from lambda_hat.files import write_atomic

    if note is not None and console is not None:
        console.print(note)
    try:
        write_atomic(_owner_file(out_path), str(sweep_path.resolve()).encode())
    except (OSError, LhError):
        pass  # only for the note above


def _sidecar(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.lh-source"


def _results_rows_in_step(out_path: Path, source: str) -> int | None:
    """The row count of `out_path` if it is the file `lh execute` last wrote from `source`
    and its bytes are still the ones written (their sha256, recorded then: a size and mtime
    kept by an edit or by bit rot prove nothing), else None. A no-op execute then writes
    nothing: rewriting 1,000 rows from their manifests costs more than reading the file."""
    try:
        seen = json.loads(read_regular_text(_sidecar(out_path)) or "null")
        if seen["source"] != source:
            return None
        fd = os.open(out_path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
        with os.fdopen(fd, "rb") as f:
            if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):  # a FIFO or device is never our results
                return None
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest == seen["sha256"]:
            return int(seen["rows"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return None


def _remember_results(out_path: Path, source: str, written) -> None:
    """Beside `out_path`: where it came from and the sha256 of the bytes written (`written`,
    results.Exported), for the next no-op execute to check it against."""
    from lambda_hat.files import write_atomic

    try:
        write_atomic(_sidecar(out_path), json.dumps(
            {"source": source, "sha256": written.sha256, "rows": written.rows}).encode())
    except (OSError, LhError):
        pass  # only a cache: the next no-op execute writes the results again


def _backend_settings(req: ExecuteRequest):
    """Check the backend's settings before anything is written; returns the SLURM settings
    (None for local or a --parsl-config file)."""
    import shutil

    from lambda_hat.execute.parsl_config import heartbeat

    from lambda_hat.execute.apps import checkpoint_interval_s
    from lambda_hat.execute.parsl_config import check_local_workers, check_parsl_config_file

    heartbeat()  # a bad LH_HEARTBEAT_* value is bad input now, not after the claims
    _claim_wait_bound()
    checkpoint_interval_s()  # read by every sampling job: a bad value would fail each of them
    if req.workers is not None and req.parsl_config is None and req.backend == "local":
        check_local_workers(req.workers)
    if req.parsl_config is not None:
        check_parsl_config_file(req.parsl_config)
        return None
    if not SHELL_SAFE_PATH.fullmatch(sys.executable):  # the workers' command line, run by a shell as the run dir is
        raise BadInput(f"the Python interpreter {shown_text(sys.executable)} has a space or a shell character in its "
                       "path, which Parsl passes to a shell unquoted in the workers' command; install lambda-hat "
                       "under a path of letters, digits and _ . / + - , : @ =")
    run_dir = str(req.parsl_run_dir.resolve())
    if not SHELL_SAFE_PATH.fullmatch(run_dir):
        # Parsl writes this path unquoted into the command lines a shell runs (the local block
        # script, sbatch and its job script): a space loses every job, a `$(…)` runs on this host
        raise BadInput(f"the Parsl run directory {shown_text(run_dir)} has a space or a shell character in its path, "
                       "which Parsl passes to a shell unquoted; run lh execute from a directory whose path has only "
                       "letters, digits and _ . / + - , : @ =")
    if req.backend != "slurm":
        if req.slurm_flags and any(v is not None for v in req.slurm_flags.values()):
            given = sorted("--" + k.replace("_", "-") for k, v in req.slurm_flags.items() if v is not None)
            raise BadInput(f"{given[0]}: a SLURM setting needs --backend slurm")
        return None
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    settings = resolve_slurm_settings(req.profile, req.slurm_flags)
    if shutil.which("sbatch") is None:
        raise BadInput("--backend slurm: sbatch not found on PATH (run lh execute on a SLURM login node)")
    return settings


SHELL_SAFE_PATH = re.compile(r"[A-Za-z0-9_./+,:@=-]+")


def _claim_wait_bound() -> float:
    """How long to wait on another driver's claim (claims.wait_bound_s); a bad LH_CLAIM_WAIT_S
    is bad input before anything is written, not a traceback once a wait begins."""
    from lambda_hat.store import WAIT_BOUND_ENV, wait_bound_s

    try:
        bound = wait_bound_s()
        if not 0 < bound < float("inf"):
            raise ValueError
    except ValueError:
        raise BadInput(f"{WAIT_BOUND_ENV}={os.environ.get(WAIT_BOUND_ENV)!r}: must be a number of seconds above 0") from None
    return bound


def _parsl_config(req: ExecuteRequest, settings):
    from lambda_hat.execute import parsl_config as pc

    run_dir = req.parsl_run_dir.resolve()
    if req.parsl_config is not None:
        config = pc.load_parsl_config_file(req.parsl_config)
        if config.retry_handler is None:  # theirs, if they wrote one; else lost jobs retried as ours are
            policy = pc.RetryPolicy(lost=req.lost_retries, failed=max(config.retries, req.retries))
            config.retries, config.retry_handler = policy.budget, policy
        else:
            config.retries = max(config.retries, req.retries)
        return config
    if req.backend == "local":
        return pc.local_config(run_dir, req.workers, req.retries, req.lost_retries)
    return pc.slurm_config(run_dir, settings, req.retries, req.lost_retries)


def _run(req: ExecuteRequest, settings, store, p: Plan, console: Console, result: ExecuteResult, pending: list,
         diagnostics: dict) -> None:
    """The plan's jobs, in phases (schedule.py): claim, then (with work to do) start Parsl, submit,
    wait; whatever happened, clean up (`_clean_up`)."""
    result.stages["run_start"] = time.time()
    ui = ExecuteView(console, req.verbose)
    sched = Scheduler(store, store.claims(), p, result, ui)
    sched.claim()
    if sched.foreign:
        from lambda_hat.store import wait_bound_s

        ui.waiting_on_others(len(sched.foreign), sched.holders(), wait_bound_s())
    sched.recorder = Recorder(store, sched.claims, console)
    for rec in pending:
        sched.recorder.add(rec)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    signal.signal(signal.SIGTERM, _on_term)
    sched.recorder.start()
    started = _Started()
    try:
        if sched.has_work():
            apps = started.start(req, settings, result.stages, console)
            sched.slurm_reasons = SlurmJobReasons(started.dfk)
            sched.submit(JobApps(*apps, logs=_log_folders(req.logs), store_root=str(store.root.resolve()),
                                 diagnostics=diagnostics), req.batch_runs)
            result.stages["submitted"] = time.time()
            sched.wait()
            result.stages["jobs_done"] = time.time()
    except (KeyboardInterrupt, Interrupted) as err:
        result.interrupted = err.signame if isinstance(err, Interrupted) else "SIGINT"
    finally:
        _clean_up(sched, started, previous)


def _on_term(signum, frame):
    raise Interrupted(signal.Signals(signum).name)


def _log_folders(logs: Path) -> Path:
    logs = logs.resolve()
    for sub in FOLDERS.values():
        (logs / sub).mkdir(parents=True, exist_ok=True)
    return logs


@dataclass
class _Started:
    """What an execute started, for `_clean_up` to stop: each part is set as it starts, so a
    start that fails half way leaves the parts already running."""

    reaper: Any = None
    dfk: Any = None

    def start(self, req: ExecuteRequest, settings, stages: dict, console: Console) -> tuple:
        """The reaper, then Parsl; returns Parsl's (build, sample, batch) apps."""
        from lambda_hat.execute.reaper import Reaper

        self.reaper = Reaper()
        self.reaper.mark_descendants()
        config = _parsl_config(req, settings)
        self.reaper.follow(config.executors)
        stages["parsl_start_begin"] = time.time()
        self.dfk, *apps = _start_parsl(req, config)
        stages["parsl_started"] = time.time()
        _print_where(self.dfk, console)
        return tuple(apps)


def _clean_up(sched: Scheduler, started: _Started, previous: dict) -> None:
    """Stop Parsl and the reaper, write what the recorder holds, release every claim, restore
    the signal handlers."""
    # From here on a second signal (or Ctrl-C) must not cut the clean-up short.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    stages, interrupted = sched.result.stages, sched.result.interrupted is not None
    if started.dfk is not None:
        _shutdown(started.dfk, force=interrupted)
        stages["parsl_stopped"] = time.time()
    if started.reaper is not None:
        # After a clean finish Parsl has already stopped its blocks; the reaper (its own
        # session) sees the rest out without holding the user's prompt (~1.4 s of workers
        # exiting). After a signal, wait for it, so that nothing runs on once we return.
        started.reaper.close(wait_s=10.0 if interrupted else 0.0)
    left = sched.recorder.close()
    stages["recorded"] = time.time()
    stages["record_sec"] = sched.recorder.record_sec
    if started.dfk is not None:
        _write_stages(Path(started.dfk.run_dir), stages)
    sched.claims.release_all()
    for s, h in previous.items():
        signal.signal(s, h)
    sched.ui.records_left(left)

def _write_stages(run_dir: Path, stages: dict) -> None:
    from lambda_hat.files import write_atomic

    try:
        write_atomic(run_dir / STAGES_FILE, json.dumps(stages, indent=1).encode())
    except (OSError, LhError):
        pass  # a diagnostic only


def _start_parsl(req: ExecuteRequest, config):
    import parsl
    from parsl import python_app

    from lambda_hat.execute import apps

    try:
        dfk = _load_parsl(parsl, config)
    except Exception as err:
        raise ExecutorStartError(f"could not start Parsl: {failure_reason(err)} (Parsl logs: {req.parsl_run_dir})") from err
    return (dfk, python_app(apps.build_target_job, data_flow_kernel=dfk),
            python_app(apps.run_sampler_job, data_flow_kernel=dfk),
            python_app(apps.run_sampler_batch_job, data_flow_kernel=dfk))


RUN_DIR_TRIES = 20


def _load_parsl(parsl, config):
    """parsl.load, again when another driver took the run directory's number first. Parsl numbers
    its run directories (000, 001, ...) by listing them, so two drivers starting at once in one
    directory can pick the same number; its first step, so nothing is started when it fails."""
    Path(config.run_dir).mkdir(parents=True, exist_ok=True)  # the parent: Parsl's own check-then-create races too
    for attempt in range(RUN_DIR_TRIES):
        try:
            return parsl.load(config)
        except FileExistsError as err:
            if attempt == RUN_DIR_TRIES - 1 or not _is_under(err.filename, config.run_dir):
                raise
            time.sleep(0.05 * (attempt + 1))


def _is_under(path, parent) -> bool:
    try:
        return path is not None and Path(path).resolve().is_relative_to(Path(parent).resolve())
    except (OSError, ValueError):
        return False


def _is_slurm(provider) -> bool:
    # A subclass too (parsl_config's LhSlurmProvider): its name is not "SlurmProvider".
    from parsl.providers import SlurmProvider

    return isinstance(provider, SlurmProvider)


def _print_where(dfk, console: Console) -> None:
    """Where a cluster user looks when something goes wrong (as in Lambda-Hat's guide)."""
    run_dir = Path(dfk.run_dir)
    if run_dir.is_relative_to(Path.cwd()):  # as the user named it (parsl_runinfo/ under here): short
        run_dir = run_dir.relative_to(Path.cwd())
    console.print(f"  Parsl run directory: {run_dir} (parsl.log)")
    for ex in dfk.executors.values():
        provider = getattr(ex, "provider", None)
        if _is_slurm(provider):
            console.print(f"  SLURM submit scripts and job stdout/stderr: {provider.script_dir}")
            console.print(f"  worker pool logs: {run_dir / ex.label}  (watch the jobs with: squeue -u $USER)")


ABNORMAL_SLURM_STATES = ("TIMEOUT", "CANCELLED", "FAILED", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL", "DEADLINE")


class SlurmJobReasons:
    """Turns a lost worker into words ("SLURM job 123 ended: TIMEOUT") by asking SLURM how
    this driver's blocks ended."""

    def __init__(self, dfk):
        self.dfk = dfk

    def _job_ids(self) -> list[str]:
        ids = []
        for ex in self.dfk.executors.values():
            if _is_slurm(getattr(ex, "provider", None)):
                ids += [str(j) for j in getattr(ex, "blocks_to_job_id", {}).values() if j is not None]
        return ids

    def explain(self, reason: str) -> str:
        import subprocess

        ended = []
        for job_id in self._job_ids():
            try:
                out = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True,
                                     timeout=20).stdout
            except (OSError, subprocess.SubprocessError):
                continue
            fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
            state = fields.get("JobState", "")
            if state in ABNORMAL_SLURM_STATES:
                why = fields.get("Reason", "")
                ended.append(f"SLURM job {job_id} ended: {state}" + (f" ({why})" if why and why != "None" else ""))
        return "; ".join(ended) if ended else reason


def _shutdown(dfk, force: bool) -> None:
    """Stop Parsl. After a signal the interchange and workers may be gone or going, and a
    polite cleanup would wait forever on a dead interchange; so cancel the blocks and stop
    the interchange first, and give cleanup a bounded time."""
    import parsl

    if force:
        for ex in dfk.executors.values():
            try:
                job_ids = list(getattr(ex, "blocks_to_job_id", {}).values())
                if job_ids:
                    ex.provider.cancel(job_ids)
            except Exception:  # best effort: the reaper ends whatever is left
                pass
            proc = getattr(ex, "interchange_proc", None)
            if proc is not None and proc.poll() is None:
                proc.terminate()
    done = threading.Event()

    def cleanup() -> None:
        try:
            dfk.cleanup()
        except Exception:
            pass
        finally:
            done.set()

    threading.Thread(target=cleanup, name="lh-parsl-cleanup", daemon=True).start()
    done.wait(timeout=3 if force else 120)
    parsl.clear()
