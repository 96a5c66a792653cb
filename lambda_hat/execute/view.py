"""What `lh execute` prints while it schedules: stage headers, a line per submitted or finished
job, and the progress bar over every job of the execute. The scheduler (`schedule.py`) says what
happened; this module decides how that reads on the terminal."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from rich.console import Console

from lambda_hat.planner import describe_target
from lambda_hat.text import plural, significant

if TYPE_CHECKING:
    from lambda_hat.planner import PlannedRun, PlannedTarget
    from lambda_hat.store import Manifest

# Above this many jobs a completed job gets no line of its own unless asked (-v): at 10^4 jobs
# the terminal would be the bottleneck. The progress bar, failures and the summary stay.
JOB_LINES_MAX = 50
# The progress bar's draw count: how often, and over how many of the oldest pending jobs (the
# running ones are among them: jobs start in submission order as workers free up).
PROGRESS_PERIOD_S = 1.0
PROGRESS_JOBS_MAX = 512


def _num(v) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def describe_run(manifest: Manifest) -> str:
    """λ̂ ± SEM, R-hat, bulk ESS and a status that is not `ok`, for a progress line."""
    m = manifest.metrics
    llc, sem, r_hat, ess = (_num(m.get(k)) for k in ("llc_mean", "llc_sem", "r_hat", "ess_bulk"))
    parts = []
    if llc is not None:
        parts.append(f"λ̂={significant(llc, 4)}" + (f" ± {significant(sem, 2)}" if sem is not None else ""))
    if r_hat is not None:
        parts.append(f"R-hat={r_hat:.3f}")
    if ess is not None:
        parts.append(f"ESS={ess:.0f}")
    if manifest.status != "ok":
        why = m.get("status_reason")
        # on a line of its own under the job's: the reasons would take the line past 80 columns
        parts.append(f"\n      [yellow]{manifest.status}[/yellow]" + (f" ({why})" if why else ""))
    return " ".join(parts)



def sampling_progress(store, running) -> str:
    """' · draws done/total' over the sampling jobs in `running` ((kind, job_id, _) tuples) that
    have reported progress (`Store.sampling_progress`); '' when none has."""
    done = total = 0
    for kind, job_id, _ in running:
        seen = store.sampling_progress(job_id) if kind == "run" else None
        if seen is not None:
            done, total = done + seen[0], total + seen[1]
    return f" · draws {done:,}/{total:,}" if total else ""


class ExecuteView:
    """The terminal of one execute. Jobs are counted as they end (`[k/total]`); `total` grows
    when a damaged target is rebuilt."""

    def __init__(self, console: Console, verbose: bool):
        self.console, self.verbose = console, verbose
        self.bar = self.task = None
        self.k = self.total = 0
        self.job_lines = True
        self.last_draw = 0.0

    def _line(self, text: str) -> None:
        self.console.print(text, soft_wrap=True, highlight=False)

    # ---- before the wait

    def waiting_on_others(self, n: int, holders: str, bound_s: float) -> None:
        self._line(f"  {plural(n, 'job')} {'is' if n == 1 else 'are'} in progress in another lh execute ({holders}): waiting for them, at most {bound_s:.0f}s")

    def submitting_target(self, t: PlannedTarget) -> None:
        if self.verbose:
            self.console.print(f"  Submitting build for {t.target_id} ({describe_target(t)})")

    def submitting_runs(self, group: list[PlannedRun]) -> None:
        if not self.verbose:
            return
        first = group[0]
        if len(group) == 1:
            self.console.print(f"  Submitting {first.setting.sampler.name} for {first.target_id} (run_id={first.run_id})")
        else:
            self.console.print(f"  Submitting {len(group)} {first.setting.sampler.name} runs as one batch for "
                               f"{first.target_id} ({', '.join(r.run_id for r in group)})")

    def stage_targets(self, n_mine: int, n_cached: int, n_elsewhere: int = 0) -> None:
        self.console.print("\n[bold]=== Stage A: Building Targets ===[/bold]")
        if not n_mine:
            elsewhere = f", {plural(n_elsewhere, 'target')} being built by another lh execute" if n_elsewhere else ""
            self.console.print(f"  no targets to build here ({plural(n_cached, 'target')} already in the store{elsewhere})")

    def targets_submitted(self, n: int) -> None:
        if n:
            self.console.print(f"  submitted {plural(n, 'target build')}")

    def stage_runs(self) -> None:
        self.console.print("\n[bold]=== Stage B: Running Samplers ===[/bold]")

    def runs_submitted(self, n: int, waiting: int) -> None:
        if n:
            self.console.print(f"  submitted {plural(n - waiting, 'sampler run')}"
                               + (f" ({waiting} more once another lh execute has built their targets)" if waiting else ""))

    # ---- the wait

    @contextmanager
    def progress(self, total: int) -> Iterator[ExecuteView]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.total, self.k = total, 0
        self.job_lines = self.verbose or total <= JOB_LINES_MAX
        self.console.print(f"\n[bold]=== Waiting for {plural(total, 'job')} to complete ===[/bold]")
        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                      console=self.console, transient=True) as bar:
            self.bar, self.task = bar, bar.add_task("jobs", total=total)
            yield self

    def _ended(self, line: str | None) -> None:
        """One more job ended, with its line after the count (None: no line)."""
        self.k += 1
        if line is not None:
            self.console.print(f"  [{self.k}/{self.total}] {line}", highlight=False)
        self.bar.advance(self.task)

    def completed(self, job_id: str, run: Manifest | None, retried: list[str]) -> None:
        """A job recorded; `run`: a sampling job's manifest."""
        extra = "" if run is None else " " + describe_run(run)
        if retried:
            extra += f" (retried after {', '.join(retried)})"
        self._ended(f"completed {job_id}{extra}" if self.job_lines else None)

    def failed(self, job_id: str, reason: str) -> None:
        self._ended(f"[red]FAILED[/red] {job_id}: {reason}")

    def done_elsewhere(self, job_id: str) -> None:
        self._ended(f"{job_id} completed by another lh execute")

    def not_waited(self, why: str, n_jobs: int) -> None:
        """A foreign job and the runs waiting on it, given up: not done here."""
        self._line(f"  [red]not waited for[/red]: {why}")
        for _ in range(n_jobs):
            self._ended(None)

    def taking_over(self, job_id: str) -> None:
        self.console.print(f"  {job_id}: the other lh execute did not finish it; running it here")
        self.bar.update(self.task, total=self.total)

    def rebuilding(self, run_id: str, why: str) -> None:
        self._line(f"  {run_id}: {why}; rebuilding it now and running its runs again")

    def more_jobs(self, n: int) -> None:
        self.total += n
        self.bar.update(self.task, total=self.total)

    def draws(self, store, pending) -> None:
        """The bar's draw count over the oldest `pending` jobs ((kind, job_id, _) tuples), throttled:
        once per finished job over every pending one would be quadratic in the sweep (10⁴ jobs:
        ~10⁸ file reads)."""
        if time.monotonic() - self.last_draw >= PROGRESS_PERIOD_S:
            self.last_draw = time.monotonic()
            oldest = itertools.islice(pending, PROGRESS_JOBS_MAX)
            self.bar.update(self.task, description=f"jobs{sampling_progress(store, oldest)}")

    # ---- after the wait

    def records_left(self, n: int) -> None:
        if n:
            self.console.print(f"  [yellow]{n} records are not in the index yet[/yellow] (it stayed busy); their manifests "
                               "are complete and the next lh execute or `lh index rebuild` records them")
