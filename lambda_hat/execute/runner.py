"""Carry a Plan out on Parsl: submit missing builds and runs, track futures, record manifests.

The runner makes no decisions about *what* to run (that is the planner's job); it only
submits `plan.targets_to_build` and `plan.runs_to_sample`, each run depending on its
target's future when that target is built in the same call.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lambda_hat.planner import Plan, PlannedRun, describe_target
from lambda_hat.store import index
from lambda_hat.store.layout import StoreLayout


@dataclass(frozen=True)
class LogPaths:
    root: Path

    def target(self, tid: str) -> tuple[Path, Path]:
        base = self.root / "build_target" / tid
        return base.with_suffix(".log"), base.with_suffix(".err")

    def run(self, r: PlannedRun) -> tuple[Path, Path]:
        base = self.root / "run_sampler" / f"{r.spec.target_id}_{r.spec.sampler.name}_{r.run_id}"
        return base.with_suffix(".log"), base.with_suffix(".err")


@dataclass
class Outcome:
    completed: list[str] = field(default_factory=list)
    failed: list[tuple[str, str, Path]] = field(default_factory=list)  # (id, reason, err log)
    interrupted: bool = False


class _Recorder:
    """Batches manifests into the index: one short write transaction per second at most."""

    def __init__(self, layout: StoreLayout, period_s: float = 1.0):
        self.layout, self.period_s = layout, period_s
        self.pending: list[dict] = []
        self.last = time.monotonic()

    def add(self, manifest: dict) -> None:
        self.pending.append(manifest)
        if time.monotonic() - self.last >= self.period_s:
            self.flush()

    def flush(self) -> None:
        if self.pending:
            index.record(self.layout, self.pending)
            self.pending = []
        self.last = time.monotonic()


def _reason(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def run_plan(plan: Plan, layout: StoreLayout, parsl_config, logs: LogPaths, console: Console) -> Outcome:
    import parsl
    from parsl import python_app

    from lambda_hat.execute import apps

    layout.targets_dir.mkdir(parents=True, exist_ok=True)
    layout.runs_dir.mkdir(parents=True, exist_ok=True)
    store_root = str(layout.root.resolve())

    try:
        dfk = parsl.load(parsl_config)
    except Exception as err:
        raise ExecutorStartError(f"could not start Parsl: {_reason(err)}") from err
    build_app = python_app(apps.build_target_job, data_flow_kernel=dfk)
    sample_app = python_app(apps.run_sampler_job, data_flow_kernel=dfk)
    outcome = Outcome()
    recorder = _Recorder(layout)
    try:
        futures = {}  # future -> (kind, id, err log)
        target_futures = {}
        console.print("\n[bold]=== Stage A: Building Targets ===[/bold]")
        if not plan.targets_to_build:
            console.print(f"  all {len(plan.targets_cached)} targets already in the store")
        for t in plan.targets_to_build:
            log, err = logs.target(t.target_id)
            console.print(f"  Submitting build for {t.target_id} ({describe_target(t)})")
            fut = build_app(t.spec.model_dump(mode="json"), store_root, str(log), str(err))
            target_futures[t.target_id] = fut
            futures[fut] = ("target", t.target_id, err)

        console.print("\n[bold]=== Stage B: Running Samplers ===[/bold]")
        for r in plan.runs_to_sample:
            log, err = logs.run(r)
            dep = target_futures.get(r.spec.target_id)
            console.print(f"  Submitting {r.spec.sampler.name} for {r.spec.target_id} (run_id={r.run_id})")
            fut = sample_app(
                r.spec.model_dump(mode="json"), store_root, str(log), str(err), inputs=[dep] if dep else []
            )
            futures[fut] = ("run", r.run_id, err)

        total = len(futures)
        console.print(f"\n[bold]=== Waiting for {total} jobs to complete ===[/bold]")
        with Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            console=console, transient=True,
        ) as progress:
            task = progress.add_task("jobs", total=total)
            for k, fut in enumerate(as_completed(futures), start=1):
                kind, job_id, err = futures[fut]
                exc = fut.exception()
                if exc is None:
                    manifest = fut.result()
                    recorder.add(manifest)
                    outcome.completed.append(job_id)
                    extra = ""
                    if kind == "run":
                        llc = manifest.get("metrics", {}).get("llc_mean")
                        extra = f" llc_mean={llc:.4g}" if isinstance(llc, (int, float)) else ""
                        if manifest.get("status") != "ok":
                            extra += f" [yellow]status={manifest.get('status')}[/yellow]"
                    progress.console.print(f"  [{k}/{total}] completed {job_id}{extra}")
                else:
                    reason = _reason(exc)
                    if "Dependency" in type(exc).__name__:
                        reason = "its target failed to build"
                    outcome.failed.append((job_id, reason, err))
                    progress.console.print(f"  [{k}/{total}] [red]FAILED[/red] {job_id}: {reason}")
                progress.advance(task)
    except KeyboardInterrupt:
        outcome.interrupted = True
    finally:
        recorder.flush()
        _shutdown(dfk, force=outcome.interrupted)
    return outcome


class ExecutorStartError(RuntimeError):
    pass


def _shutdown(dfk, force: bool) -> None:
    """Stop Parsl. After Ctrl-C the terminal has signalled Parsl's own interchange and
    workers too, and a polite cleanup would wait forever on the dead interchange; so kill
    the blocks and the interchange first, and give cleanup a bounded time."""
    import parsl

    if force:
        for ex in dfk.executors.values():
            try:
                job_ids = list(getattr(ex, "blocks_to_job_id", {}).values())
                if job_ids:
                    ex.provider.cancel(job_ids)
            except Exception:  # best effort: we are shutting down anyway
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
