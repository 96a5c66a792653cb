"""`lh execute`'s scheduling, in phases over one `Scheduler`: claim the plan's jobs (what another
driver holds is waited for), submit the claimed ones to Parsl, then wait: each finished job is
recorded and its claim released; a job another driver finished is counted as done elsewhere; one
whose driver stopped without finishing it is taken over; a target a run found damaged is rebuilt
once and its runs resubmitted. What is printed is `view.ExecuteView`'s; the driver (`driver.py`)
starts and stops Parsl around these phases."""

from __future__ import annotations

import concurrent.futures
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from lambda_hat.errors import BadInput, TargetDamaged
from lambda_hat.files import lstat_or_none, open_log
from lambda_hat.logs import STORE_LINE, job_logs
from lambda_hat.planner import Plan, PlannedRun, PlannedTarget, batches
from lambda_hat.store import Manifest

if TYPE_CHECKING:
    from lambda_hat.execute.view import ExecuteView

# Parsl's exceptions for a task whose worker or whole block went away.
LOST_WORKER_ERRORS = frozenset({"WorkerLost", "ManagerLost", "BadStateException", "ExecutorError"})
# The executor gave up on its blocks (parsl_config.give_up_after_failed_blocks): the reason is the blocks'.
GAVE_UP_ERRORS = frozenset({"BadStateException", "ExecutorGaveUp"})
FOREIGN_POLL_S = 2.0  # how often the claims of jobs another driver holds are looked at


def failure_reason(exc: BaseException) -> str:
    """An exception as one line of at most 300 characters."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


@dataclass(frozen=True)
class JobApps:
    """Parsl's apps for the three kinds of job, and what every job is given with its spec."""

    build: Any
    sample: Any
    batch: Any
    logs: Path  # resolved, its folders made
    store_root: str
    diagnostics: dict


class EndedJob(NamedTuple):
    """One finished job (a batch's runs are one each, `_unbatch`) and the tries before it."""

    fut: concurrent.futures.Future
    kind: str
    job_id: str
    err: Path  # its error log
    retried: list[str]  # what ended each earlier try


class Scheduler:
    """The jobs of one execute and where each stands. `recorder` and `slurm_reasons` are the
    driver's, set before `wait`."""

    def __init__(self, store, claims, p: Plan, result, ui: ExecuteView):
        self.store, self.claims, self.plan, self.result, self.ui = store, claims, p, result, ui
        self.recorder = None
        self.slurm_reasons = None
        self.apps: JobApps | None = None
        self.mine_targets: list[PlannedTarget] = []
        self.mine_runs: list[PlannedRun] = []
        self.futures: dict[Any, tuple[str, Any, Path]] = {}  # future -> (kind, id (a batch: its run ids), err log)
        self.target_futures: dict[str, Any] = {}
        self.foreign: dict[str, tuple[str, Any]] = {}  # id -> (kind, planned item): held by another driver
        self.waiting_since: dict[str, float] = {}  # foreign id -> when we began to wait on it (time.monotonic())
        self.runs_waiting_on: dict[str, list[PlannedRun]] = {}  # foreign target -> runs
        self.rebuilt: set[str] = set()  # targets found damaged by a run and rebuilt in this execute
        self.resubmitted: set[str] = set()  # runs resubmitted once after their target was found damaged
        self.planned_targets: dict[str, PlannedTarget] = {}  # by ID, cached or not (set by `submit`)
        self.planned_runs: dict[str, PlannedRun] = {}

    # ------------------------------------------------------------------ claim

    def claim(self) -> None:
        """Claim every job of the plan; a job another driver holds is waited for."""
        p = self.plan
        for kind, items, mine in (("target", p.targets_to_build, self.mine_targets),
                                  ("run", p.runs_to_sample, self.mine_runs)):
            for item in items:
                job_id = item.target_id if kind == "target" else item.run_id
                if self.claims.acquire(job_id) is not None:
                    self._wait_for(job_id, kind, item)
                elif self.store.is_complete(kind, job_id):
                    # Finished by another driver between our plan and our claim.
                    self.claims.release(job_id)
                    self.result.done_elsewhere.append(job_id)
                else:
                    mine.append(item)

    def _wait_for(self, job_id: str, kind: str, item) -> None:
        self.foreign[job_id] = (kind, item)
        self.waiting_since[job_id] = time.monotonic()

    def holders(self) -> str:
        """The drivers holding the foreign jobs, in words."""
        holders = {h.owner.token: h for h in map(self.claims.holder, self.foreign) if h is not None}
        return "; ".join(sorted(h.describe() for h in holders.values())) or "another driver"

    def has_work(self) -> bool:
        return bool(self.mine_targets or self.mine_runs or self.foreign)

    # ------------------------------------------------------------------ submit

    def submit(self, apps: JobApps, batch_runs: bool) -> None:
        """Targets first, a checkpoint after those it resumes from; then the runs whose targets
        are not another driver's (those wait for it), grouped into batches with `batch_runs`."""
        self.apps = apps
        p = self.plan
        self.planned_targets = {t.target_id: t for t in [*p.targets_cached, *p.targets_to_build]}
        self.planned_runs = {r.run_id: r for r in p.runs_to_sample}
        self.ui.stage_targets(len(self.mine_targets), len(p.targets_cached),
                              sum(1 for kind, _ in self.foreign.values() if kind == "target"))
        # entries of one trajectory may interleave in the plan
        for t in sorted(self.mine_targets, key=lambda t: -1 if t.spec.step is None else t.spec.step):
            self.submit_target(t)
        self.ui.targets_submitted(len(self.mine_targets))
        self.ui.stage_runs()
        ready = []
        for r in self.mine_runs:
            if r.target_id in self.foreign:
                self.runs_waiting_on.setdefault(r.target_id, []).append(r)
            else:
                ready.append(r)
        for group in (batches(ready) if batch_runs else [[r] for r in ready]):
            self.submit_runs(group)
        self.ui.runs_submitted(len(self.mine_runs), sum(map(len, self.runs_waiting_on.values())))

    def submit_target(self, t: PlannedTarget) -> None:
        log, err = job_logs(self.apps.logs, "target", t.target_id)
        self.ui.submitting_target(t)
        # a checkpoint's build waits for the one before it, when this execute builds that too
        dep = self.target_futures.get(t.earlier[-1]) if t.earlier else None
        fut = self.apps.build(t.spec.model_dump(mode="json"), self.apps.store_root, str(log), str(err),
                              inputs=[dep] if dep else [], earlier=list(t.earlier))
        self.target_futures[t.target_id] = fut
        self.futures[fut] = ("target", t.target_id, err)

    def submit_runs(self, group: list[PlannedRun]) -> None:
        """Runs of one target: one job, or with more than one run, one batched job."""
        first = group[0]
        log, err = job_logs(self.apps.logs, "run", first.run_id, first.target_id, first.setting.sampler.name)
        dep = self.target_futures.get(first.target_id)
        self.ui.submitting_runs(group)
        given = dict(inputs=[dep] if dep else [], diagnostics=self.apps.diagnostics)
        if len(group) == 1:
            fut = self.apps.sample(first.spec.model_dump(mode="json"), self.apps.store_root, str(log), str(err), **given)
            self.futures[fut] = ("run", first.run_id, err)
        else:
            fut = self.apps.batch([r.spec.model_dump(mode="json") for r in group], self.apps.store_root, str(log),
                                  str(err), **given)
            self.futures[fut] = ("batch", [r.run_id for r in group], err)

    # ------------------------------------------------------------------ wait

    def wait(self) -> None:
        """Until every job submitted or waited for has ended (or was given up on)."""
        total = len(self.mine_targets) + len(self.mine_runs) + len(self.foreign)
        with self.ui.progress(total):
            last_poll = 0.0
            while self.futures or self.foreign:
                done, _ = concurrent.futures.wait(list(self.futures), timeout=0.5,
                                                  return_when=concurrent.futures.FIRST_COMPLETED)
                for fut in done:
                    self._collect(fut)
                self.ui.draws(self.store, self.futures.values())
                if self.foreign and time.monotonic() - last_poll > FOREIGN_POLL_S:
                    last_poll = time.monotonic()
                    self._poll_foreign()

    def _collect(self, fut) -> None:
        from lambda_hat.execute.parsl_config import retried_after

        kind, job_id, err = self.futures.pop(fut)
        if kind != "target" and fut.exception() is not None and self._rebuild_damaged(kind, job_id, fut.exception()):
            return
        retried = retried_after(fut)
        per_job = _unbatch(fut, job_id) if kind == "batch" else [(kind, job_id, fut)]
        for one_kind, one_id, one_fut in per_job:
            self._job_ended(EndedJob(one_fut, one_kind, one_id, err, retried))

    def _job_ended(self, job: EndedJob) -> None:
        self.result.stages.setdefault("job_done_at", {})[job.job_id] = time.time()
        if job.fut.exception() is None:
            self._succeeded(job)
        else:
            self._failed(job)

    def _succeeded(self, job: EndedJob) -> None:
        manifest = Manifest.model_validate(job.fut.result())
        stages = self.result.stages
        try:
            t0 = time.perf_counter()
            self.recorder.add(self.store.record_manifest(job.kind, job.job_id))
            stages["read_manifest_sec"] = stages.get("read_manifest_sec", 0.0) + time.perf_counter() - t0
        except Exception as bad:  # the artifact the worker reported is not readable here
            self.result.failed.append((job.job_id, f"its artifact is not readable from the driver: {failure_reason(bad)}",
                                       job.err))
            self.ui.failed(job.job_id, failure_reason(bad))
            self.claims.release(job.job_id)
            return
        self.claims.release(job.job_id)
        self.result.completed.append(job.job_id)
        if job.kind == "run" and manifest.status != "ok":
            self.result.flagged.append((job.job_id, manifest.status, manifest.metrics.get("status_reason") or ""))
        if job.retried:
            self.result.retried.append((job.job_id, list(job.retried)))
        self.ui.completed(job.job_id, manifest if job.kind == "run" else None, job.retried)

    def _failed(self, job: EndedJob) -> None:
        self.claims.release(job.job_id)
        exc = job.fut.exception()
        reason = failure_reason(exc)
        name = type(exc).__name__
        own_error = False
        if "Dependency" in name:
            reason = "its target failed to build"
        elif name in GAVE_UP_ERRORS:  # no block could start: say why once, in the scheduler's words
            reason = " ".join(str(getattr(exc, "reason", None) or exc).split())[:600]
        elif name in LOST_WORKER_ERRORS:
            reason = self.slurm_reasons.explain(reason)
        else:
            own_error = True
        if job.retried:
            reason += f" (its earlier tries: {', '.join(job.retried)})"
        err = job.err
        if "Dependency" not in name and (not own_error or not err.is_file() or err.stat().st_size == 0):
            _note_failure(err, reason, self.store.root)
        self.result.failed.append((job.job_id, reason, err))
        self.ui.failed(job.job_id, reason)

    # ------------------------------------------------------------------ take-over and rebuilds

    def _poll_foreign(self) -> None:
        """Each job another driver holds: still held (given up past the wait's bound), finished
        there, or left unfinished by a driver that stopped: then ours."""
        for job_id, (kind, item) in list(self.foreign.items()):
            # Complete first, held or not: the holder's worker may have written it while the
            # holder itself is stopped or slow to release its claim.
            if self.store.is_complete(kind, job_id):
                del self.foreign[job_id]
                self.result.done_elsewhere.append(job_id)
                self.ui.done_elsewhere(job_id)
                for r in self.runs_waiting_on.pop(job_id, []):
                    self.submit_runs([r])
                continue
            if self.claims.holder(job_id) is not None:
                late = self.claims.overdue(job_id, self.waiting_since[job_id])
                if late is not None:  # not waited for any longer: not done here, and said why
                    self._give_up_on(job_id, late)
                continue
            if self.claims.acquire(job_id) is None:
                if self.store.is_complete(kind, job_id):  # finished just before its claim went
                    self.claims.release(job_id)
                    continue
                self._take_over(job_id, kind, item)

    def _give_up_on(self, job_id: str, late: str) -> None:
        del self.foreign[job_id]
        self.ui.not_waited(late, len(self.runs_waiting_on.get(job_id, [])) + 1)
        self.result.not_waited.append((job_id, late))
        for r in self.runs_waiting_on.pop(job_id, []):
            self.result.not_waited.append((r.run_id, f"its target {job_id} was not waited for"))
            self.claims.release(r.run_id)

    def _take_over(self, job_id: str, kind: str, item) -> None:
        """Its holder stopped without finishing it: ours now (we hold its claim)."""
        del self.foreign[job_id]
        self.ui.taking_over(job_id)
        if kind == "target":
            self.submit_target(item)
            for r in self.runs_waiting_on.pop(job_id, []):
                self.submit_runs([r])
        else:
            self.submit_runs([item])

    def _rebuild_damaged(self, kind: str, job_id, exc: BaseException) -> bool:
        """A run (or batch) that found its target damaged (the worker quarantined it): its
        target rebuilt here, once per execute, and the run resubmitted once, on the new build;
        the run keeps its claim. False where that is not done (the run fails as usual)."""
        planned_targets, planned_runs = self.planned_targets, self.planned_runs
        tid = getattr(exc, "target_id", None)
        run_ids = job_id if kind == "batch" else [job_id]
        if (not isinstance(exc, TargetDamaged) or tid not in planned_targets
                or any(rid in self.resubmitted or rid not in planned_runs for rid in run_ids)):
            return False
        if tid not in self.rebuilt:
            self._rebuild(planned_targets[tid], run_ids[0], exc)
        self.resubmitted.update(run_ids)
        group = [planned_runs[rid] for rid in run_ids]
        if tid in self.foreign:
            self.runs_waiting_on.setdefault(tid, []).extend(group)
        else:
            self.submit_runs(group)
        return True

    def _rebuild(self, target: PlannedTarget, found_by: str, exc: BaseException) -> None:
        tid = target.target_id
        self.rebuilt.add(tid)
        self.ui.rebuilding(found_by, str(exc).removesuffix("; it is rebuilt on the next execute"))
        self.result.rebuilt.append((tid, found_by))
        if self.claims.acquire(tid) is not None:  # another driver rebuilds it: wait for it as for any foreign job
            self._wait_for(tid, "target", target)
            self.ui.more_jobs(1)
        elif self.store.is_complete("target", tid):  # rebuilt elsewhere already
            self.claims.release(tid)
        else:
            self.submit_target(target)
            self.ui.more_jobs(1)


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


def _note_failure(err: Path, reason: str, store_root: Path) -> None:
    """The driver's word on a job that failed other than by its own error, as the last line of
    its error log: `lh status` lists failed jobs by their logs and shows that line (a job that
    never reached a worker had no log at all). Its .log, if the job never wrote one, starts
    with the store's line as a worker's would: a logs folder shared by several stores then
    lists this failure under this store only, not under another that holds the same target."""
    try:
        err.parent.mkdir(parents=True, exist_ok=True)
        log = err.with_suffix(".log")
        st = lstat_or_none(log, str(log))
        if st is None or (stat.S_ISREG(st.st_mode) and st.st_size == 0):
            with open_log(log, append=True) as f:
                f.write(f"{STORE_LINE}{Path(store_root).resolve()}\n")
        with open_log(err, append=True) as f:
            f.write(f"lh execute: {reason}\n")
    except (OSError, BadInput):
        pass  # the driver's own summary still says it
