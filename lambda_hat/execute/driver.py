"""`lh execute`: carry a plan out, and leave the store saying exactly what is done.

The flow: load the sweep → open and reconcile the store → plan against its snapshot →
claim each missing artifact (a second driver on the same store waits for what the first
has in flight, then takes over only what the first did not finish) → submit the claimed
jobs to Parsl → record each finished manifest in the index within a second or two (a
timer thread; a busy index keeps the records and retries) → release claims → export
results. SIGINT and SIGTERM end the run cleanly; a reaper process ends the worker pool
and SLURM blocks even if the driver itself is killed with SIGKILL.

The driver makes no decisions about *what* to run (the planner does) and turns no errors
into exit codes (the CLI does); it returns an `ExecuteResult`.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import itertools
import json
import os
import signal
import stat
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from lambda_hat.errors import BadInput, ExecutorStartError, IndexBusy, LhError, TargetDamaged
from lambda_hat.logs import FOLDERS, job_logs
from lambda_hat.output_paths import check_execute_outputs
from lambda_hat.planner import Plan, PlannedRun, PlannedTarget, batches, describe_target, load, plan
from lambda_hat.store import HEARTBEAT_S, Manifest, resolve_store_root

# Above this many jobs a completed job gets no line of its own unless asked (-v): at 10^4 jobs
# the terminal would be the bottleneck. The progress bar, failures and the summary stay.
JOB_LINES_MAX = 50
STAGES_FILE = "lh-stages.json"  # in the Parsl run directory (parsl_runinfo/NNN/)


@dataclass(frozen=True)
class ExecuteRequest:
    sweep_path: Path
    store: str | None = None
    backend: str = "local"
    workers: int | None = None
    logs: Path = Path("logs")
    results: Path = Path("results/llc_runs.parquet")
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


def _check_output_paths(req: ExecuteRequest) -> None:
    """Every path the command writes, checked before anything is submitted (output_paths.py)."""
    sweep_root = None
    if req.store is None and not os.environ.get("LH_STORE"):  # the sweep is read only when it names the store
        from lambda_hat.sweep import load_sweep

        sweep_root = load_sweep(req.sweep_path, max_runs=req.max_runs).store_root
    check_execute_outputs(req.logs, req.results, resolve_store_root(req.store, sweep_root))


def _load(req: ExecuteRequest):
    sweep, expanded = load(req.sweep_path, max_runs=req.max_runs)
    return sweep, expanded, resolve_store_root(req.store, sweep.store_root)


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def describe_run(manifest: Manifest) -> str:
    """λ̂ ± SEM, R-hat, bulk ESS and a status that is not `ok`, for a progress line."""
    m = manifest.metrics
    llc, sem, r_hat, ess = (_num(m.get(k)) for k in ("llc_mean", "llc_sem", "r_hat", "ess_bulk"))
    parts = []
    if llc is not None:
        parts.append(f"λ̂={llc:.4g}" + (f" ± {sem:.2g}" if sem is not None else ""))
    if r_hat is not None:
        parts.append(f"R-hat={r_hat:.3f}")
    if ess is not None:
        parts.append(f"ESS={ess:.0f}")
    if manifest.status != "ok":
        why = m.get("status_reason")
        parts.append(f"[yellow]{manifest.status}[/yellow]" + (f" ({why})" if why else ""))
    return " ".join(parts)


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


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
                self.console.print(f"  [red]recorder:[/red] {_reason(err)}")

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


class _Jobs:
    """Submitted futures and the artifacts other drivers hold, for one execute."""

    def __init__(self):
        self.futures: dict[Any, tuple[str, Any, Path]] = {}  # future -> (kind, id (a batch: its run ids), err log)
        self.target_futures: dict[str, Any] = {}
        self.foreign: dict[str, tuple[str, Any]] = {}  # id -> (kind, planned item)
        self.runs_waiting_on: dict[str, list[PlannedRun]] = {}  # foreign target -> runs
        self.rebuilt: set[str] = set()  # targets found damaged by a run and rebuilt in this execute


def execute(req: ExecuteRequest, console: Console) -> ExecuteResult:
    t_start = time.perf_counter()
    from lambda_hat import results as results_io
    from lambda_hat.store import Store

    sweep, expanded, root = _load(req)
    _check_output_paths(req)
    settings = _backend_settings(req)
    store = Store.open(root, create=True)
    rep = store.reconcile()
    for where, why in rep.quarantined:
        console.print(f"  [yellow]quarantined[/yellow] {where.name.split('-')[0]} ({why}); it will be redone")
    for p in rep.removed_tmp:
        console.print(f"  removed unfinished {p.name} (its writer is gone)")
    if rep.index_moved_aside:
        console.print(f"  [yellow]the index was not readable[/yellow]: moved to {rep.index_moved_aside.name}, rebuilt from the manifests")
    # The reconcile has just listed and stat'ed every artifact: the snapshot reuses that.
    snapshot = store.snapshot([t.target_id for t in expanded.targets], [r.run_id for r in expanded.runs],
                              complete=rep.complete)
    p = plan(expanded, snapshot)
    result = ExecuteResult()
    if p.nothing_to_do:
        source = _results_source(snapshot, req.results)
        n = _results_rows_in_step(req.results, source)
        if n is None:
            written = results_io.export_runs(store, [r.run_id for r in expanded.runs], req.results)
            _remember_results(req.results, source, written)
            n = written.rows
        console.print(
            f"nothing to do: {len(p.targets_cached)} targets and {len(p.runs_cached)} runs already in the store "
            f"({store.root}); {n} rows in {req.results} ({time.perf_counter() - t_start:.2f}s)"
        )
        return result
    console.print(f"store {store.root}: {p.summary()}")
    if rep.pending:
        console.print(f"  {len(rep.pending)} artifacts not yet indexed (index busy); they will be recorded")
    _run(req, settings, store, p, console, result, rep.pending, sweep.diagnostics.model_dump())
    n = results_io.export_runs(store, [r.run_id for r in expanded.runs], req.results).rows
    if result.interrupted:
        console.print(
            f"\n[yellow]interrupted[/yellow] ({result.interrupted}): {len(result.completed)} jobs completed and recorded; "
            "run the same command again to do only what is missing."
        )
        result.exit_code = 130 if result.interrupted == "SIGINT" else 143
        return result
    elsewhere = f", {len(result.done_elsewhere)} done by another lh execute" if result.done_elsewhere else ""
    console.print(
        f"\n{len(result.completed)} jobs completed, {len(result.failed)} failed{elsewhere}; "
        f"{n} rows in {req.results} ({time.perf_counter() - t_start:.1f}s)"
    )
    if result.retried:
        console.print(f"{len(result.retried)} jobs retried after a lost worker, manager or block (each recorded once):")
        for job_id, causes in result.retried[:20]:
            console.print(f"  {job_id}: retried after {', '.join(causes)}", soft_wrap=True, highlight=False)
        if len(result.retried) > 20:
            console.print(f"  ... and {len(result.retried) - 20} more")
    if result.rebuilt:
        console.print(f"{len(result.rebuilt)} damaged targets found by their runs, quarantined and rebuilt in this execute:")
        for tid, found_by in result.rebuilt:
            console.print(f"  {tid} (found by {found_by})", soft_wrap=True, highlight=False)
    if result.flagged:
        console.print(f"[yellow]{len(result.flagged)} runs finished but are flagged[/yellow] (numbers kept; "
                      "lh query \"select run_id, status, status_reason from runs where status != 'ok'\"):")
        for job_id, status, why in result.flagged[:20]:
            console.print(f"  {job_id}: {status}" + (f" ({why})" if why else ""), soft_wrap=True, highlight=False)
        if len(result.flagged) > 20:
            console.print(f"  ... and {len(result.flagged) - 20} more")
    if result.not_waited:
        console.print(f"[red]{len(result.not_waited)} jobs not done[/red]: another lh execute held them past the wait's "
                      "bound (LH_CLAIM_WAIT_S); run lh execute again once it is done:")
        for job_id, why in result.not_waited[:20]:
            console.print(f"  {job_id}: {why}", soft_wrap=True, highlight=False)
        if len(result.not_waited) > 20:
            console.print(f"  ... and {len(result.not_waited) - 20} more")
        result.exit_code = 1
    if result.failed:
        console.print("[red]failed jobs[/red] (see their logs):")
        for job_id, reason, err in result.failed:
            console.print(f"  {job_id}: {reason}\n    {err}", soft_wrap=True, highlight=False)
        result.exit_code = 1
    return result


# --------------------------------------------------------------------------- results in step

def _results_source(snapshot, out_path: Path) -> str:
    """What a results file written now would be made of: the artifacts (IDs, in order, with
    their manifests' size and mtime), the columns of the `runs` view, and the format."""
    from lambda_hat import results

    h = hashlib.sha256(snapshot.state.encode())
    h.update(out_path.suffix.lower().encode())
    for sql in results.view_sql("lh_index").values():
        h.update(sql.encode())
    return h.hexdigest()


def _sidecar(out_path: Path) -> Path:
    return out_path.parent / f".{out_path.name}.lh-source"


def _results_rows_in_step(out_path: Path, source: str) -> int | None:
    """The row count of `out_path` if it is the file `lh execute` last wrote from `source`
    and its bytes are still the ones written (their sha256, recorded then: a size and mtime
    kept by an edit or by bit rot prove nothing), else None. A no-op execute then writes
    nothing: rewriting 1,000 rows from their manifests costs more than reading the file."""
    try:
        seen = json.loads(_sidecar(out_path).read_text())
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

    heartbeat()  # a bad LH_HEARTBEAT_* value is bad input now, not after the claims
    _claim_wait_bound()
    if req.parsl_config is not None:
        if not req.parsl_config.is_file():
            raise BadInput(f"--parsl-config {req.parsl_config}: no such file")
        return None
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
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    stages = result.stages
    stages["run_start"] = time.time()
    claims = store.claims()
    jobs = _Jobs()
    mine_t: list[PlannedTarget] = []
    mine_r: list[PlannedRun] = []
    waiting_since: dict[str, float] = {}  # foreign job -> when we began to wait on it (time.monotonic())
    for kind, items, mine in (("target", p.targets_to_build, mine_t), ("run", p.runs_to_sample, mine_r)):
        for item in items:
            job_id = item.target_id if kind == "target" else item.run_id
            if claims.acquire(job_id) is not None:
                jobs.foreign[job_id] = (kind, item)
                waiting_since[job_id] = time.monotonic()
            elif store.is_complete(kind, job_id):
                # Finished by another driver between our plan and our claim.
                claims.release(job_id)
                result.done_elsewhere.append(job_id)
            else:
                mine.append(item)
    if jobs.foreign:
        from lambda_hat.store import wait_bound_s

        holders = {h.owner.token: h for h in map(claims.holder, jobs.foreign) if h is not None}
        who = "; ".join(sorted(h.describe() for h in holders.values())) or "another driver"
        console.print(f"  {len(jobs.foreign)} jobs are in progress in another lh execute ({who}): "
                      f"waiting for them, at most {wait_bound_s():.0f}s", soft_wrap=True, highlight=False)

    recorder = Recorder(store, claims, console)
    for rec in pending:
        recorder.add(rec)
    previous = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def on_term(signum, frame):
        raise Interrupted(signal.Signals(signum).name)

    signal.signal(signal.SIGTERM, on_term)
    recorder.start()
    dfk = None
    reaper = None
    try:
        if not mine_t and not mine_r and not jobs.foreign:
            return
        from lambda_hat.execute.parsl_config import retried_after
        from lambda_hat.execute.reaper import Reaper

        reaper = Reaper()
        reaper.mark_descendants()
        config = _parsl_config(req, settings)
        reaper.follow(config.executors)
        stages["parsl_start_begin"] = time.time()
        dfk, build_app, sample_app, batch_app = _start_parsl(req, config)
        stages["parsl_started"] = time.time()
        _print_where(dfk, console)
        slurm_reasons = SlurmJobReasons(dfk)
        logs = req.logs.resolve()
        for sub in FOLDERS.values():
            (logs / sub).mkdir(parents=True, exist_ok=True)
        store_root = str(store.root.resolve())
        verbose = req.verbose

        def submit_target(t: PlannedTarget) -> None:
            log, err = job_logs(logs, "target", t.target_id)
            if verbose:
                console.print(f"  Submitting build for {t.target_id} ({describe_target(t)})")
            # a checkpoint's build waits for the one before it, when this execute builds that too
            dep = jobs.target_futures.get(t.earlier[-1]) if t.earlier else None
            fut = build_app(t.spec.model_dump(mode="json"), store_root, str(log), str(err),
                            inputs=[dep] if dep else [], earlier=list(t.earlier))
            jobs.target_futures[t.target_id] = fut
            jobs.futures[fut] = ("target", t.target_id, err)

        def submit_run(r: PlannedRun) -> None:
            log, err = job_logs(logs, "run", r.run_id, r.target_id, r.setting.sampler.name)
            dep = jobs.target_futures.get(r.target_id)
            if verbose:
                console.print(f"  Submitting {r.setting.sampler.name} for {r.target_id} (run_id={r.run_id})")
            fut = sample_app(r.spec.model_dump(mode="json"), store_root, str(log), str(err), inputs=[dep] if dep else [],
                             diagnostics=diagnostics)
            jobs.futures[fut] = ("run", r.run_id, err)

        def submit_batch(group: list[PlannedRun]) -> None:
            log, err = job_logs(logs, "run", group[0].run_id, group[0].target_id, group[0].setting.sampler.name)
            dep = jobs.target_futures.get(group[0].target_id)
            if verbose:
                console.print(f"  Submitting {len(group)} {group[0].setting.sampler.name} runs as one batch for "
                              f"{group[0].target_id} ({', '.join(r.run_id for r in group)})")
            fut = batch_app([r.spec.model_dump(mode="json") for r in group], store_root, str(log), str(err),
                            inputs=[dep] if dep else [], diagnostics=diagnostics)
            jobs.futures[fut] = ("batch", [r.run_id for r in group], err)

        console.print("\n[bold]=== Stage A: Building Targets ===[/bold]")
        if not mine_t:
            console.print(f"  no targets to build here ({len(p.targets_cached)} already in the store)")
        # a checkpoint after the ones it resumes from (entries of one trajectory may interleave)
        for t in sorted(mine_t, key=lambda t: -1 if t.spec.step is None else t.spec.step):
            submit_target(t)
        if mine_t:
            console.print(f"  submitted {len(mine_t)} target builds")
        console.print("\n[bold]=== Stage B: Running Samplers ===[/bold]")
        ready = []
        for r in mine_r:
            tid = r.target_id
            if tid in jobs.foreign:
                jobs.runs_waiting_on.setdefault(tid, []).append(r)
            else:
                ready.append(r)
        for group in (batches(ready) if req.batch_runs else [[r] for r in ready]):
            if len(group) == 1:
                submit_run(group[0])
            else:
                submit_batch(group)
        if mine_r:
            waiting = sum(map(len, jobs.runs_waiting_on.values()))
            console.print(f"  submitted {len(mine_r) - waiting} sampler runs"
                          + (f" ({waiting} more once another lh execute has built their targets)" if waiting else ""))

        planned_targets = {t.target_id: t for t in [*p.targets_cached, *p.targets_to_build]}
        planned_runs = {r.run_id: r for r in p.runs_to_sample}
        resubmitted: set[str] = set()  # runs resubmitted once after their target was found damaged

        def rebuild_damaged(kind: str, job_id, exc: BaseException) -> bool:
            """A run (or batch) that found its target damaged (the worker quarantined it): its
            target rebuilt here, once per execute, and the run resubmitted once, on the new build;
            the run keeps its claim. False where that is not done (the run fails as usual)."""
            nonlocal total
            tid = getattr(exc, "target_id", None)
            run_ids = job_id if kind == "batch" else [job_id]
            if (not isinstance(exc, TargetDamaged) or tid not in planned_targets
                    or any(rid in resubmitted or rid not in planned_runs for rid in run_ids)):
                return False
            if tid not in jobs.rebuilt:
                jobs.rebuilt.add(tid)
                progress.console.print(f"  {run_ids[0]}: {str(exc).removesuffix('; it is rebuilt on the next execute')}; "
                                       "rebuilding it now and running its runs again", soft_wrap=True, highlight=False)
                result.rebuilt.append((tid, run_ids[0]))
                if claims.acquire(tid) is not None:  # another driver rebuilds it: wait for it as for any foreign job
                    jobs.foreign[tid] = ("target", planned_targets[tid])
                    waiting_since[tid] = time.monotonic()
                    total += 1
                elif store.is_complete("target", tid):  # rebuilt elsewhere already
                    claims.release(tid)
                else:
                    submit_target(planned_targets[tid])
                    total += 1
                progress.update(task, total=total)
            resubmitted.update(run_ids)
            group = [planned_runs[rid] for rid in run_ids]
            if tid in jobs.foreign:
                jobs.runs_waiting_on.setdefault(tid, []).extend(group)
            elif len(group) == 1:
                submit_run(group[0])
            else:
                submit_batch(group)
            return True

        stages["submitted"] = time.time()
        total = len(mine_t) + len(mine_r) + len(jobs.foreign)
        job_lines = verbose or total <= JOB_LINES_MAX
        console.print(f"\n[bold]=== Waiting for {total} jobs to complete ===[/bold]")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=console, transient=True) as progress:
            task = progress.add_task("jobs", total=total)
            k = 0
            last_poll = last_progress = 0.0
            while jobs.futures or jobs.foreign:
                done, _ = concurrent.futures.wait(list(jobs.futures), timeout=0.5,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    kind, job_id, err = jobs.futures.pop(fut)
                    if kind != "target" and fut.exception() is not None and rebuild_damaged(kind, job_id, fut.exception()):
                        continue
                    retried = retried_after(fut)
                    per_job = _unbatch(fut, job_id) if kind == "batch" else [(kind, job_id, fut)]
                    for one_kind, one_id, one_fut in per_job:
                        k += 1
                        _finish(one_fut, one_kind, one_id, err, store, claims, recorder, result, progress, k, total,
                                slurm_reasons, job_lines, retried)
                        progress.advance(task)
                if time.monotonic() - last_progress >= PROGRESS_PERIOD_S:
                    # Throttled, and over the oldest pending jobs only: once per finished job over
                    # every pending one would be quadratic in the sweep (10⁴ jobs: ~10⁸ file reads).
                    last_progress = time.monotonic()
                    oldest = itertools.islice(jobs.futures.values(), PROGRESS_JOBS_MAX)
                    progress.update(task, description=f"jobs{sampling_progress(store, oldest)}")
                if jobs.foreign and time.monotonic() - last_poll > 2.0:
                    last_poll = time.monotonic()
                    for job_id, (kind, item) in list(jobs.foreign.items()):
                        if claims.holder(job_id) is not None:
                            late = claims.overdue(job_id, waiting_since[job_id])
                            if late is not None:  # not waited for any longer: not done here, and said why
                                del jobs.foreign[job_id]
                                progress.console.print(f"  [red]not waited for[/red]: {late}", soft_wrap=True,
                                                       highlight=False)
                                result.not_waited.append((job_id, late))
                                for r in jobs.runs_waiting_on.pop(job_id, []):
                                    result.not_waited.append((r.run_id, f"its target {job_id} was not waited for"))
                                    claims.release(r.run_id)
                                    k += 1
                                    progress.advance(task)
                                k += 1
                                progress.advance(task)
                            continue
                        if store.is_complete(kind, job_id):
                            del jobs.foreign[job_id]
                            k += 1
                            result.done_elsewhere.append(job_id)
                            progress.console.print(f"  [{k}/{total}] {job_id} completed by another lh execute")
                            progress.advance(task)
                            for r in jobs.runs_waiting_on.pop(job_id, []):
                                submit_run(r)
                        elif claims.acquire(job_id) is None:
                            if store.is_complete(kind, job_id):  # finished just before its claim went
                                claims.release(job_id)
                                continue
                            # Its holder stopped without finishing it: ours now.
                            del jobs.foreign[job_id]
                            progress.console.print(f"  {job_id}: the other lh execute did not finish it; running it here")
                            if kind == "target":
                                submit_target(item)
                                for r in jobs.runs_waiting_on.pop(job_id, []):
                                    submit_run(r)
                            else:
                                submit_run(item)
                            progress.update(task, total=total)
        stages["jobs_done"] = time.time()
    except (KeyboardInterrupt, Interrupted) as err:
        result.interrupted = err.signame if isinstance(err, Interrupted) else "SIGINT"
    finally:
        # From here on a second signal (or Ctrl-C) must not cut the clean-up short.
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if dfk is not None:
            _shutdown(dfk, force=result.interrupted is not None)
            stages["parsl_stopped"] = time.time()
        if reaper is not None:
            # After a clean finish Parsl has already stopped its blocks; the reaper (its own
            # session) sees the rest out without holding the user's prompt (~1.4 s of workers
            # exiting). After a signal, wait for it, so that nothing runs on once we return.
            reaper.close(wait_s=10.0 if result.interrupted is not None else 0.0)
        left = recorder.close()
        stages["recorded"] = time.time()
        stages["record_sec"] = recorder.record_sec
        if dfk is not None:
            _write_stages(Path(dfk.run_dir), stages)
        claims.release_all()
        for s, h in previous.items():
            signal.signal(s, h)
        if left:
            console.print(f"  [yellow]{left} records are not in the index yet[/yellow] (it stayed busy); their manifests "
                          "are complete and the next lh execute or `lh index rebuild` records them")


# The progress bar's draw count: how often, and over how many of the oldest pending jobs (the
# running ones are among them: jobs start in submission order as workers free up).
PROGRESS_PERIOD_S = 1.0
PROGRESS_JOBS_MAX = 512

def _unbatch(fut, run_ids: list[str]) -> list[tuple[str, str, concurrent.futures.Future]]:
    """A batched job's future as one finished future per run: its manifest, or the batch's error."""
    exc = fut.exception()
    out = []
    for i, rid in enumerate(run_ids):
        f: concurrent.futures.Future = concurrent.futures.Future()
        if exc is None:
            f.set_result(fut.result()[i])
        else:
            f.set_exception(exc)
        out.append(("run", rid, f))
    return out


def _write_stages(run_dir: Path, stages: dict) -> None:
    try:
        (run_dir / STAGES_FILE).write_text(json.dumps(stages, indent=1))
    except OSError:
        pass  # a diagnostic only


def sampling_progress(store, running) -> str:
    """' · draws done/total' over the sampling jobs in `running` ((kind, job_id, _) tuples) that
    have reported progress (`Store.sampling_progress`); '' when none has."""
    done = total = 0
    for kind, job_id, _ in running:
        seen = store.sampling_progress(job_id) if kind == "run" else None
        if seen is not None:
            done, total = done + seen[0], total + seen[1]
    return f" · draws {done:,}/{total:,}" if total else ""


def _note_failure(err: Path, reason: str) -> None:
    """The driver's word on a job that failed other than by its own error, as the last line of
    its error log: `lh status` lists failed jobs by their logs and shows that line (a job that
    never reached a worker had no log at all)."""
    try:
        err.parent.mkdir(parents=True, exist_ok=True)
        with open(err, "a") as f:
            f.write(f"lh execute: {reason}\n")
    except OSError:
        pass  # the driver's own summary still says it


def _finish(fut, kind, job_id, err, store, claims, recorder, result, progress, k, total, slurm_reasons,
            job_lines: bool = True, retried: list[str] | tuple = ()) -> None:
    exc = fut.exception()
    result.stages.setdefault("job_done_at", {})[job_id] = time.time()
    if exc is None:
        manifest = Manifest.model_validate(fut.result())
        try:
            t0 = time.perf_counter()
            recorder.add(store.record_manifest(kind, job_id))
            result.stages["read_manifest_sec"] = result.stages.get("read_manifest_sec", 0.0) + time.perf_counter() - t0
        except Exception as bad:  # the artifact the worker reported is not readable here
            result.failed.append((job_id, f"its artifact is not readable from the driver: {_reason(bad)}", err))
            progress.console.print(f"  [{k}/{total}] [red]FAILED[/red] {job_id}: {_reason(bad)}")
            claims.release(job_id)
            return
        claims.release(job_id)
        result.completed.append(job_id)
        extra = ""
        if kind == "run":
            extra = " " + describe_run(manifest)
            if manifest.status != "ok":
                result.flagged.append((job_id, manifest.status, manifest.metrics.get("status_reason") or ""))
        if retried:
            result.retried.append((job_id, list(retried)))
            extra += f" (retried after {', '.join(retried)})"
        if job_lines:
            progress.console.print(f"  [{k}/{total}] completed {job_id}{extra}")
    else:
        claims.release(job_id)
        reason = _reason(exc)
        name = type(exc).__name__
        own_error = False
        if "Dependency" in name:
            reason = "its target failed to build"
        elif name in GAVE_UP_ERRORS:  # no block could start: say why once, in the scheduler's words
            reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:600]
        elif name in LOST_WORKER_ERRORS:
            reason = slurm_reasons.explain(reason)
        else:
            own_error = True
        if retried:
            reason += f" (its earlier tries: {', '.join(retried)})"
        if "Dependency" not in name and (not own_error or not err.is_file() or err.stat().st_size == 0):
            _note_failure(err, reason)
        result.failed.append((job_id, reason, err))
        progress.console.print(f"  [{k}/{total}] [red]FAILED[/red] {job_id}: {reason}")


def _start_parsl(req: ExecuteRequest, config):
    import parsl
    from parsl import python_app

    from lambda_hat.execute import apps

    try:
        dfk = parsl.load(config)
    except Exception as err:
        raise ExecutorStartError(f"could not start Parsl: {_reason(err)} (Parsl logs: {req.parsl_run_dir})") from err
    return (dfk, python_app(apps.build_target_job, data_flow_kernel=dfk),
            python_app(apps.run_sampler_job, data_flow_kernel=dfk),
            python_app(apps.run_sampler_batch_job, data_flow_kernel=dfk))


def _is_slurm(provider) -> bool:
    # A subclass too (parsl_config's LhSlurmProvider): its name is not "SlurmProvider".
    from parsl.providers import SlurmProvider

    return isinstance(provider, SlurmProvider)


def _print_where(dfk, console: Console) -> None:
    """Where a cluster user looks when something goes wrong (as in Lambda-Hat's guide)."""
    run_dir = Path(dfk.run_dir)
    console.print(f"  Parsl run directory: {run_dir} (parsl.log)")
    for ex in dfk.executors.values():
        provider = getattr(ex, "provider", None)
        if _is_slurm(provider):
            console.print(f"  SLURM submit scripts and job stdout/stderr: {provider.script_dir}")
            console.print(f"  worker pool logs: {run_dir / ex.label}  (watch the jobs with: squeue -u $USER)")


# Parsl's exceptions for a task whose worker or whole block went away.
LOST_WORKER_ERRORS = frozenset({"WorkerLost", "ManagerLost", "BadStateException", "ExecutorError"})
# The executor gave up on its blocks (parsl_config.give_up_after_failed_blocks): the reason is the blocks'.
GAVE_UP_ERRORS = frozenset({"BadStateException", "ExecutorGaveUp"})
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
