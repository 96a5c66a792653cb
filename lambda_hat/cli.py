"""`lh`: plan, execute, query and maintain LLC sweeps.

Each command parses, calls one function, prints. JAX and Parsl are imported only by
`lh execute`, and only when there is something to run, so `lh --help`, `lh plan` and
`lh query` stay fast.
"""

from __future__ import annotations

import enum
import errno
import functools
import itertools
import json
import os
import sys
import time
import typing
import warnings
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.markup import escape as rich_escape
from typer.core import TyperArgument, TyperCommand, TyperGroup, TyperOption

from lambda_hat.errors import BadInput, LhError
from lambda_hat.text import plural, shown
from lambda_hat.files import atomic_file, write_atomic
from lambda_hat.output_paths import check_not_input, check_output_path



class _Argument(TyperArgument):
    """A positional argument shown as a user types it: SWEEP, [SWEEP], [ID]... (its help says
    what it is; Typer would add <path> or <list[str]> and write a required one as {sweep})."""

    def display_type_rich(self, ctx):
        return None

    def _usage_display_name(self) -> str:
        name = self.display_name_raw.removesuffix("...")
        name = name if self.required else f"[{name}]"
        return name + ("..." if self.nargs != 1 else "")


class _PlainHelp:
    """Help that reads at 80 columns as a user would type the command: flags take no value
    (Typer shows them as <bool>), arguments are SWEEP or [SWEEP], and a command's one-line
    summary in `lh --help` is its docstring's first paragraph on one line."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for param in self.params:
            _plain_param(param)
        if self.help and self.short_help is None:
            self.short_help = " ".join(self.help.split("\n\n")[0].split())

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            _plain_param(option)
        return option


def _plain_param(param) -> None:
    if isinstance(param, TyperOption) and param.is_flag:
        param.metavar = ""
    elif isinstance(param, TyperArgument) and not isinstance(param, _Argument):
        if param.metavar is None:
            param.metavar = param.name.upper()
        if param.nargs != 1 and not param.metavar.endswith("..."):
            param.metavar += "..."
        param.__class__ = _Argument  # the same object, displayed as above


def _takes_a_path(param) -> bool:
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    return annotation is Path or Path in typing.get_args(annotation)


class _Command(_PlainHelp, TyperCommand):
    def parse_args(self, ctx, args):
        # An empty path (`-o "$OUT"` with OUT unset) would be read as `.`: the current directory
        # written into as a gallery or a log folder. Refused before any other check.
        paths = {opt for p in self.params if _takes_a_path(p) for opt in p.opts}
        for i, arg in enumerate(args):
            name, eq, value = arg.partition("=")
            if (eq and name in paths and value == "") or (not eq and arg in paths and i + 1 < len(args)
                                                          and args[i + 1] == ""):
                err_console.print(f"[red]error:[/red] {name}: an empty path (read as the current directory); "
                                  "name a file or directory", soft_wrap=True, highlight=False)
                raise typer.Exit(2)
        return super().parse_args(ctx, args)


class _Group(_PlainHelp, TyperGroup):
    pass


app = typer.Typer(
    cls=_Group,
    name="lh",
    help="lambda-hat: reproducible Local Learning Coefficient sweeps over a content-addressed store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(cls=_Group, help="Maintain the store's DuckDB index.", no_args_is_help=True)
app.add_typer(index_app, name="index")

# soft_wrap: rich never breaks a line itself. Lines are written to fit 80 columns where they can;
# the terminal wraps what cannot (a long path), and a log file keeps every line whole.
# highlight=False: rich's highlighter would colour pieces of numbers and IDs (R-hat=1.076 in three colours).
console = Console(soft_wrap=True, highlight=False)
err_console = Console(stderr=True, soft_wrap=True, highlight=False)

StoreOpt = Annotated[
    Optional[str],
    typer.Option("--store", metavar="DIR", help="Store directory. Default: $LH_STORE, else the sweep's store_root, else ./runs."),
]


def _print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        sys.stdout.write(f"lh {version('lambda-hat')}\n")
        raise typer.Exit()


@app.callback()
def _lh(
    show_version: Annotated[bool, typer.Option("--version", help="Print lh's version and exit.", is_eager=True,
                                               callback=_print_version)] = False,
) -> None:
    pass


class Backend(str, enum.Enum):
    local = "local"
    slurm = "slurm"


def _domain_errors(fn):
    """Turn the core's domain errors into one line on stderr and their exit code."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except LhError as err:
            err_console.print(f"[red]error:[/red] {rich_escape(shown(str(err)))}", soft_wrap=True, highlight=False)
            raise typer.Exit(err.exit_code) from None
        except OSError as err:
            if err.errno not in (errno.ENOSPC, errno.EDQUOT):  # anything else is a defect: its traceback
                raise
            where = f"{err.filename}: " if err.filename else ""
            err_console.print(f"[red]error:[/red] {rich_escape(shown(where))}{err.strerror}; free space and run the "
                              "command again (only what is missing is done)", soft_wrap=True, highlight=False)
            raise typer.Exit(1) from None

    return wrapper


def _store_for_reading(store: str | None, sweep_store_root: str | None = None):
    """The store a read-only command looks at; it need not exist yet."""
    from lambda_hat.store import Store, resolve_store_root

    root = resolve_store_root(store, sweep_store_root)
    if root.exists():
        return Store.open(root)
    Store.check_placement(root)
    return Store(root)


def _load(sweep_path: Path, store: str | None, max_runs: int = 1_000_000):
    from lambda_hat.planner import load

    sweep, expanded = load(sweep_path, max_runs=max_runs)
    return sweep, expanded, _store_for_reading(store, sweep.store_root)


MaxRunsOpt = Annotated[int, typer.Option("--max-runs", metavar="N", min=1, help="Refuse sweeps that expand to more runs than this.")]


def _check_limit(limit: int) -> None:
    if limit < 0:
        raise BadInput(f"--limit {limit}: must be 0 (every row) or more")


@app.command("plan", cls=_Command)
@_domain_errors
def plan_cmd(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan's ID lists as JSON.")] = False,
    limit: Annotated[int, typer.Option(metavar="N", help="Rows to show in the table (0: all).")] = 50,
    max_runs: MaxRunsOpt = 1_000_000,
) -> None:
    """Show what `lh execute` would build and sample, and what the store already holds."""
    from rich.table import Table

    from lambda_hat.planner import plan

    _check_limit(limit)
    _, expanded, st = _load(sweep, store, max_runs)
    p = plan(expanded, st.snapshot([t.target_id for t in expanded.targets], [r.run_id for r in expanded.runs]))
    from lambda_hat.planner import describe_same_computations, same_computations

    same = same_computations(expanded)
    if as_json:  # the note's pairs too: a script reading the plan should not take them for replicates
        doc = {**p.as_json(), "same_computations": [{"id": later, "same_as": first, "why": why}
                                                    for first, later, why in same]}
        sys.stdout.write(json.dumps(doc) + "\n")
        return
    table = Table(title=rich_escape(shown(f"plan for {sweep} (store {st.root})")))
    for col in ("kind", "id", "action", "what"):
        table.add_column(col)
    n_rows = len(p.targets_to_build) + len(p.targets_cached) + len(p.runs_to_sample) + len(p.runs_cached)
    # Rows are described only as they are shown: a plan may hold a million runs.
    rows = _plan_rows(p) if limit <= 0 else itertools.islice(_plan_rows(p), limit)
    n_shown = 0
    for row in rows:
        table.add_row(*row, style="dim" if row[2] == "cached" else None)
        n_shown += 1
    console.print(table)
    if n_shown < n_rows:
        console.print(f"... and {n_rows - n_shown} more rows (--limit 0 shows all)")
    console.print(p.summary())
    recording = _recording_line(p, expanded)
    if recording:
        console.print(recording)
    for line in _why_new(p, st):
        console.print(line, markup=False, highlight=False)
    for line in describe_same_computations(same, shown=limit if limit > 0 else 10**9):
        console.print(line, markup=False, highlight=False)


def _recording_line(p, expanded) -> str | None:
    """What the runs to sample will store of recorded per-example losses (`record.per_example`)."""
    from lambda_hat.results import human_bytes
    from lambda_hat.sweep import heldout_rows, per_example_bytes

    specs = {t.target_id: t.spec for t in expanded.targets}
    recording = [r for r in p.runs_to_sample if r.setting.record is not None and r.setting.record.per_example is not None]
    held = {i: heldout_rows(specs[i]) for i in {r.target_id for r in recording if r.setting.record.per_example.heldout}}
    sizes = [per_example_bytes(r.setting.sampler, r.setting.record.per_example, specs[r.target_id].data.n_data,
                               held.get(r.target_id, 0)) for r in recording]
    if not sizes:
        return None
    return (f"per-example losses: {plural(len(sizes), 'run')} to sample record {human_bytes(sum(sizes))} "
            f"(largest {human_bytes(max(sizes))}, float32, before compression)")


def _why_new(p, st) -> list[str]:
    """What makes each user-model target to build differ from stored ones of the same factory."""
    mine = [(t.target_id, t.spec) for t in p.targets_to_build if t.spec.model.kind == "python"]
    if not mine:
        return []
    from pydantic import ValidationError

    from lambda_hat.specs import TargetSpec
    from lambda_hat.user_models import explain_new

    factories = {spec.model.factory for _, spec in mine}
    stored = []
    for m in st.manifests("target"):
        model = m.spec.get("model") or {}
        if model.get("kind") == "python" and model.get("factory") in factories:
            try:
                stored.append((m.id, TargetSpec.model_validate(m.spec)))
            except ValidationError:
                continue
    return explain_new(mine, stored)


def _plan_rows(p):
    from lambda_hat.planner import describe_target

    for action, targets in (("build", p.targets_to_build), ("cached", p.targets_cached)):
        for t in targets:
            yield "target", t.target_id, action, describe_target(t)
    for action, runs in (("sample", p.runs_to_sample), ("cached", p.runs_cached)):
        for r in runs:
            s = r.setting
            yield ("run", r.run_id, action,
                   f"{s.sampler.name} on {r.target_id}, seed={s.seed}, chains={s.sampler.chains}, γ={s.posterior.gamma}")


class Launcher(str, enum.Enum):
    srun = "srun"
    single = "single"


SLURM = "SLURM (--backend slurm; flags override the profile)"


@app.command("execute", cls=_Command)
@_domain_errors
def execute_cmd(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    store: StoreOpt = None,
    backend: Annotated[Backend, typer.Option(metavar="local|slurm", help="Where jobs run.")] = Backend.local,
    workers: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Local worker processes (default: min(cpu count, 8)).")] = None,
    logs: Annotated[Path, typer.Option(metavar="DIR", help="Per-job logs directory.")] = Path("logs"),
    results: Annotated[Optional[Path], typer.Option(metavar="FILE", help="One row per run of the sweep, .parquet or .csv. Default: results/NAME.parquet, NAME being the sweep's `name` or its file's stem.")] = None,
    retries: Annotated[int, typer.Option(metavar="N", min=0, help="Retry a job that raised (its own error) this many times; a job lost with its worker, node or block is retried up to 2 times anyway.")] = 0,
    max_runs: MaxRunsOpt = 1_000_000,
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="A line for every job submitted and completed (by default: one line per stage, the progress bar, failures; completions too up to 50 jobs).")] = False,
    batch_runs: Annotated[bool, typer.Option("--batch-runs", help="Sample the runs of one target that differ only in seed, beta, gamma or SGLD step size as one vmapped job each (numbers equal in law, not bit for bit, to runs sampled alone).")] = False,
    promote: Annotated[bool, typer.Option("--promote", help="After the runs, draw the sweep's gallery (as lh promote SWEEP).")] = False,
    promote_dir: Annotated[Optional[Path], typer.Option(metavar="DIR", help="Gallery folder for --promote (default: gallery).")] = None,
    profile: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Cluster profile: TOML with a \\[slurm] table (default: ./lh.toml if present).", rich_help_panel=SLURM)] = None,
    parsl_config: Annotated[Optional[Path], typer.Option(metavar="FILE", help="Python file defining `config` or `make_config()`; overrides backend, profile and flags.", rich_help_panel=SLURM)] = None,
    partition: Annotated[Optional[str], typer.Option(metavar="NAME", rich_help_panel=SLURM)] = None,
    account: Annotated[Optional[str], typer.Option(metavar="NAME", rich_help_panel=SLURM)] = None,
    qos: Annotated[Optional[str], typer.Option(metavar="NAME", rich_help_panel=SLURM)] = None,
    walltime: Annotated[Optional[str], typer.Option(metavar="HH:MM:SS", help="Per block (sbatch job). Default 04:00:00.", rich_help_panel=SLURM)] = None,
    nodes_per_block: Annotated[Optional[int], typer.Option(metavar="N", min=1, rich_help_panel=SLURM)] = None,
    cores_per_node: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Default 1.", rich_help_panel=SLURM)] = None,
    mem_per_node: Annotated[Optional[int], typer.Option(metavar="GB", min=1, help="Default 8.", rich_help_panel=SLURM)] = None,
    gpus_per_node: Annotated[Optional[int], typer.Option(metavar="N", min=0, help="Requests GPUs; workers get JAX_PLATFORMS=cuda.", rich_help_panel=SLURM)] = None,
    workers_per_node: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Default: one per GPU, else 1.", rich_help_panel=SLURM)] = None,
    max_blocks: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Most sbatch jobs at once. Default 50.", rich_help_panel=SLURM)] = None,
    exclusive: Annotated[Optional[bool], typer.Option("--exclusive/--no-exclusive", help="Whole nodes. Default no.", rich_help_panel=SLURM)] = None,
    worker_init: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Shell lines run before workers start (module load, source venv).", rich_help_panel=SLURM)] = None,
    scheduler_options: Annotated[Optional[str], typer.Option(metavar="TEXT", help="Extra '#SBATCH ...' lines.", rich_help_panel=SLURM)] = None,
    launcher: Annotated[Optional[Launcher], typer.Option(metavar="srun|single", help="How a block starts its workers. Default srun.", rich_help_panel=SLURM)] = None,
    address: Annotated[Optional[str], typer.Option(metavar="HOST", help="Address compute nodes use to reach this host.", rich_help_panel=SLURM)] = None,
    slurm_config: Annotated[
        Optional[Path], typer.Option(metavar="FILE", help="Older form of --profile: a YAML mapping of the same settings.", rich_help_panel=SLURM)
    ] = None,
) -> None:
    """Build the missing targets and sample the missing runs; record them; write results."""
    from lambda_hat.execute.driver import ExecuteRequest, execute

    # JAX (imported here to check python factories) warns at every fork of its process. The
    # driver's forks are subprocess's fork-then-exec (Parsl starting its interchange and
    # workers), which run no JAX: the warning would only alarm, on every execute.
    warnings.filterwarnings("ignore", message=r"os\.fork\(\) was called", category=RuntimeWarning,
                            module="subprocess")

    if profile is not None and slurm_config is not None:
        raise BadInput("--profile and --slurm-config: give one of them")
    if (profile or slurm_config) is not None and backend.value != "slurm" and parsl_config is None:
        flag = "--profile" if profile is not None else "--slurm-config"
        raise BadInput(f"{flag} {profile or slurm_config}: SLURM settings need --backend slurm")
    if promote_dir is not None and not promote:  # silently ignored, a gallery the user waits for never appears
        raise BadInput(f"--promote-dir {promote_dir}: only with --promote (add --promote, or run lh promote)")
    promote_dir = promote_dir or Path("gallery")
    if promote:  # the gallery is written after every run: its folder is checked before any
        from lambda_hat import promote as gallery
        from lambda_hat.output_paths import check_output_dir

        _, _, st = _load(sweep, store, max_runs)
        check_output_dir(promote_dir, st.root, "--promote-dir")
        gallery.check_gallery(promote_dir, "--promote-dir", st.root)
    flags = dict(partition=partition, account=account, qos=qos, walltime=walltime, nodes_per_block=nodes_per_block,
                 cores_per_node=cores_per_node, mem_per_node=mem_per_node, gpus_per_node=gpus_per_node,
                 workers_per_node=workers_per_node, max_blocks=max_blocks, exclusive=exclusive, worker_init=worker_init,
                 scheduler_options=scheduler_options, launcher=launcher.value if launcher else None, address=address)
    request = ExecuteRequest(sweep_path=sweep, store=store, backend=backend.value, workers=workers, logs=logs,
                             results=results, retries=retries, max_runs=max_runs, profile=profile or slurm_config, slurm_flags=flags,
                             parsl_config=parsl_config, verbose=verbose, batch_runs=batch_runs)
    outcome = execute(request, console)
    if promote and outcome.interrupted is None:
        console.print("\n[bold]=== Stage C: Promoting results ===[/bold]")
        try:
            _promote(sweep, store, promote_dir, None, None, flag="--promote-dir")
        except LhError as err:
            err_console.print(f"[red]error:[/red] promote: {rich_escape(str(err))}", soft_wrap=True, highlight=False)
            outcome.exit_code = outcome.exit_code or err.exit_code
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


@app.command("calibrate", cls=_Command)
@_domain_errors
def calibrate_cmd(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML with entries marked overrides: {step_size_nbeta: auto} (SGLD), {target_acceptance: auto} (HMC, NUTS) or posterior: {gamma: auto}.")],
    store: StoreOpt = None,
    workers: Annotated[Optional[int], typer.Option(metavar="N", min=1, help="Local worker processes for the pilots.")] = None,
    logs: Annotated[Path, typer.Option(metavar="DIR", help="Per-job logs directory.")] = Path("logs"),
    top: Annotated[float, typer.Option(metavar="X", help="The ladder's largest step, as ε·nβ (then X/2, X/4).")] = 0.04,
    out: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="The calibrated sweep (default: SWEEP's stem + .calibrated.yaml, beside it).")] = None,
    report_dir: Annotated[Path, typer.Option(metavar="DIR", help="Where the report goes (NAME.md, .json, .png, and NAME/index.html with the pilots' traces).")] = Path("calibration"),
    gammas: Annotated[Optional[str], typer.Option(metavar="LIST", help="The γ ladder for posterior: {gamma: auto}, comma-separated, increasing (default 0.1,1,10,100,1000).")] = None,
) -> None:
    """Choose SGLD's step size from pilot runs and extrapolate its bias away, HMC's and NUTS's
    target acceptance, or the localizer γ on the plateau of λ̂(γ); write a sweep with the chosen
    values (docs/calibrate.md)."""
    from lambda_hat.calibrate import CalibrateRequest, calibrate, parse_gammas

    extra = {} if gammas is None else {"gammas": parse_gammas(gammas)}
    outcome = calibrate(CalibrateRequest(sweep_path=sweep, store=store, workers=workers, logs=logs, top=top, out=out,
                                         report_dir=report_dir, **extra), console)
    if outcome.interrupted:  # lh execute said so; nothing was calibrated
        raise typer.Exit(outcome.exit_code)
    console.print("\n[bold]=== Calibrated ===[/bold]")
    for g in outcome.groups:
        c = g.choice
        if g.kind == "accept":
            said = ("uncalibrated" if c is None or c.rung is None else
                    f"target_acceptance = {g.rows[c.rung]['target_acceptance']:g}")
        elif g.kind == "gamma":
            said = ("uncalibrated" if c is None or c.rung is None else
                    f"plateau γ {g.rows[c.plateau[0]]['gamma']:g}–{g.rows[c.plateau[-1]]['gamma']:g}; "
                    f"γ = {g.rows[c.rung]['gamma']:g}")
        else:
            fit = f"λ̂(ε→0) = {c.fit.llc0:.4g} ± {c.fit.llc0_se:.2g}" if c and c.fit else "no fit"
            said = fit + "; " + (f"ε·nβ = {g.rows[c.rung]['step_size_nbeta']:g}" if c and c.rung is not None else "uncalibrated")
        console.print(f"  samplers[{g.entry}] on {g.target_id} ({g.label}): {said}", highlight=False)
        if c and c.rung is None:
            console.print(f"    {c.reason}", highlight=False)
    for i, why in sorted(outcome.why_not.items()):
        console.print(f"  samplers[{i}] uncalibrated: {why}", highlight=False)
    for i, value in sorted(outcome.chosen.items()):
        if isinstance(value, float):  # a γ entry: the γ its targets share, written to the calibrated sweep
            console.print(f"  samplers[{i}]: γ = {value:g} in the calibrated sweep", highlight=False)
        elif hasattr(value, "target_acceptance"):  # the most careful of its targets' choices
            console.print(f"  samplers[{i}]: target_acceptance = {value.target_acceptance:g} in the calibrated sweep",
                          highlight=False)
    if outcome.report is not None:
        console.print(f"report: {outcome.report}", highlight=False)
    if outcome.page is not None:
        console.print(f"page: {outcome.page} (the report and each pilot's traces)", highlight=False)
    if outcome.calibrated is not None:
        console.print(f"wrote {outcome.calibrated}: lh execute {outcome.calibrated}", highlight=False)
    elif outcome.groups:  # an entry takes one value for all its targets: one uncalibrated target holds it back
        console.print("no calibrated sweep written: every sampler entry is uncalibrated (above); an entry takes one "
                      "value for all the sweep's targets, so a target no setting suits keeps it uncalibrated "
                      "(calibrate the others in a sweep of their own)", highlight=False, soft_wrap=True)
    if outcome.exit_code:
        raise typer.Exit(outcome.exit_code)


class QueryFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"
    parquet = "parquet"


SweepOpt = Annotated[
    Optional[Path], typer.Option("--sweep", metavar="FILE", help="Sweep YAML: only its targets and runs, in the store its store_root names (as in `lh plan`).")
]
ShowSweepOpt = Annotated[
    Optional[Path], typer.Option("--sweep", metavar="FILE", help="Sweep YAML whose store_root names the store (as in `lh plan`).")
]


def _store_of(store: str | None, sweep: Path | None):
    """The store a read-only command looks at, resolved as `lh plan` does: --store, else
    $LH_STORE, else the sweep's store_root, else ./runs."""
    if sweep is None:
        return _store_for_reading(store)
    from lambda_hat.sweep import load_sweep

    return _store_for_reading(store, load_sweep(sweep).store_root)


def _scoped(store: str | None, sweep: Path | None):
    """The store, as `_store_of` finds it, and with a sweep its scope (results.Scope: the
    targets and runs the sweep names, which the views then show alone); else None."""
    return _scoped_reading(store, sweep)[:2]


def _scoped_reading(store: str | None, sweep: Path | None):
    """`_scoped`, and the files the command reads (the sweep, its models' code and checkpoints):
    what an output it writes must not be."""
    if sweep is None:
        return _store_for_reading(store), None, []
    from lambda_hat.results import Scope
    from lambda_hat.sweep import results_file
    from lambda_hat.sweep import files_read

    loaded, expanded, st = _load(sweep, store)
    scope = Scope(results_file(loaded, sweep).stem, tuple(dict.fromkeys(t.target_id for t in expanded.targets)),
                  tuple(r.run_id for r in expanded.runs))
    return st, scope, [("the sweep", sweep), *files_read(loaded.targets)]


@app.command("query", cls=_Command)
@_domain_errors
def query_cmd(
    sql: Annotated[str, typer.Argument(help='One SELECT over views `targets`, `runs`, `traces`, `examples`, `influence`, e.g. "select * from runs".')],
    store: StoreOpt = None,
    sweep: SweepOpt = None,
    fmt: Annotated[Optional[QueryFormat], typer.Option("--format", metavar="table|csv|json|parquet", help="table (fits the terminal), csv, json, parquet. "
                                                       "Default: from -o's extension, else table.")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Write to this file (outside the store) instead of stdout.")] = None,
    limit: Annotated[int, typer.Option(metavar="N", help="Rows to show in a table (0: all); csv, json and parquet get every row.")] = 100,
    timeout: Annotated[str, typer.Option("--timeout", metavar="SECONDS", help="Stop the query after this many seconds (0: no limit).")] = "120",
    memory_limit: Annotated[str, typer.Option("--memory-limit", metavar="SIZE", help="Most memory the query may hold (DuckDB's memory_limit, e.g. 500MB, 8GB).")] = "2GB",
) -> None:
    """Run one read-only SELECT against the store's index (sandboxed: no file or network
    access, nothing written, a time and memory limit). Views and examples: docs/query.md."""
    from lambda_hat import results

    _check_limit(limit)
    timeout_s = _seconds("--timeout", timeout)
    if timeout_s > QUERY_TIMEOUT_MAX_S:  # past what a timer can wait (time_t); a query is not a service
        raise BadInput(f"--timeout {timeout}: at most {QUERY_TIMEOUT_MAX_S:,} seconds (7d); 0 for no limit")
    memory_limit = results.check_memory_limit(memory_limit)
    st, scope, read = _scoped_reading(store, sweep)
    kind = results.format_for(out, fmt.value if fmt else None)
    if out is not None:
        check_output_path(out, st.root)
        check_not_input(out, read, "-o")
    elif kind == "parquet":
        raise BadInput("--format parquet writes a binary file: add -o FILE.parquet")
    left_out: dict[str, int] = {}
    limits = dict(timeout_s=timeout_s, memory_limit=memory_limit, scope=scope, left_out=left_out)
    try:
        _query_rows(st, sql, out, kind, limit, scope, limits)
        note = results.left_out_note(left_out)
        if note:  # after the rows: what the views leave out, as lh status counts it
            sys.stdout.flush()
            print(f"note: {note}", file=sys.stderr)
    except KeyboardInterrupt:  # Ctrl-C between DuckDB's calls (in them, DuckDB says so: QueryInterrupted)
        from lambda_hat.errors import QueryInterrupted

        raise QueryInterrupted("query interrupted (Ctrl-C)" + ("; nothing written" if out is not None else "")) from None


def _query_rows(st, sql: str, out: Path | None, kind: str, limit: int, scope, limits: dict) -> None:
    import shutil

    from lambda_hat import results

    # The whole process is bounded while rows are fetched and formatted, not only DuckDB.
    with results.memory_cap(limits["memory_limit"]):
        if kind == "table":
            # A table fetches only the rows it shows (and one more, to say so): at most --limit, and
            # never past TABLE_ROWS_MAX (rows held in Python are outside DuckDB's memory limit).
            limit = min(limit, results.TABLE_ROWS_MAX)
            shown = limit if out is None and limit > 0 else results.TABLE_ROWS_MAX
            res = results.run_query(st, sql, max_rows=shown, **limits)
            width = 10**6 if out is not None else shutil.get_terminal_size((80, 24)).columns
            text = results.to_table(res, width, limit=0 if out is not None else limit)
            if out is None:
                sys.stdout.write(text)
                _hint_if_empty(st, sql, len(res.rows), scope)
                return
            write_atomic(out, text.encode())
            n = len(res.rows)
        else:  # csv, json, parquet: every row, streamed a batch at a time
            with results.open_query(st, sql, arrow=kind == "parquet", **limits) as q:
                if out is None:
                    for chunk in results.text_chunks(q, kind):
                        sys.stdout.write(chunk)
                    _hint_if_empty(st, sql, q.fetched, scope)
                    return
                with atomic_file(out) as f:
                    if kind == "parquet":
                        results.write_parquet(q, f)
                    else:
                        for chunk in results.text_chunks(q, kind):
                            f.write(chunk.encode())
            n = q.fetched
    console.print(f"{plural(n, 'row')} written to {out}", highlight=False, soft_wrap=True)


def _hint_if_empty(st, sql: str, rows: int, scope=None) -> None:
    """No rows, and an ID prefix in the query where a whole ID was meant (or, under --sweep, an
    ID of another sweep): say so on stderr."""
    from lambda_hat.results import prefix_hint

    hint = prefix_hint(st, sql, scope) if rows == 0 else None
    if hint:
        sys.stdout.flush()
        print(f"hint: {hint}", file=sys.stderr)


@app.command("export", cls=_Command)
@_domain_errors
def export_cmd(
    sweep: Annotated[Optional[Path], typer.Argument(help="Sweep YAML: export its runs (default: every run in the store).")] = None,
    out: Annotated[Optional[Path], typer.Option("-o", "--output", metavar="FILE", help="Output file: .parquet or .csv (default: results/NAME.parquet for a sweep, as lh execute writes it; else results/llc_runs.parquet).")] = None,
    store: StoreOpt = None,
    view: Annotated[str, typer.Option("--view", metavar="VIEW", help="runs (default), or examples / influence: the runs' recorded per-example rows (docs/per-sample.md); needs -o.")] = "runs",
) -> None:
    """Write one row per finished run, with the columns of `lh query`'s `runs` view, to a
    Parquet or CSV file: a sweep's runs (the file `lh execute` writes), or every run in the store.
    With --view examples or influence, the runs' rows of that view instead."""
    from lambda_hat import results
    from lambda_hat.sweep import results_file

    if out is not None and out.suffix.lower() not in (".parquet", ".csv"):
        raise BadInput(f"-o {out}: unknown format {out.suffix or '(no extension)'!r}; use .parquet or .csv")
    if view not in results.EXPORT_VIEWS:
        raise BadInput(f"--view {view!r}: choose from {', '.join(results.EXPORT_VIEWS)}")
    if view != "runs" and out is None:
        raise BadInput(f"--view {view}: name the file with -o (the default file is the runs' results)")
    if sweep is not None:
        from lambda_hat.sweep import files_read

        loaded, expanded, st = _load(sweep, store)
        run_ids = [r.run_id for r in expanded.runs]
        out = out or results_file(loaded, sweep)
        read = [("the sweep", sweep), *files_read(loaded.targets)]
    else:
        st = _store_for_reading(store)
        run_ids = st.run_ids()
        out = out or Path("results/llc_runs.parquet")
        read = []
    if not st.root.is_dir():
        raise BadInput(f"{st.root}: no such store (--store DIR, $LH_STORE, or a sweep's store_root)")
    check_output_path(out, st.root)
    check_not_input(out, read, "-o")
    damaged: list[tuple[str, str]] = []
    n = results.export_runs(st, run_ids, out, damaged, view=view).rows
    if view != "runs":
        console.print(f"{plural(n, 'row')} of the {view} view written to {out}", highlight=False, soft_wrap=True)
        _fail_if_damaged(damaged, f"left out of {out}")
        return
    missing = len(run_ids) - n - len(damaged)
    console.print(f"{plural(n, 'run')} written to {out}" + (f" ({missing} of the sweep's runs {'is' if missing == 1 else 'are'} not finished)"
                                                   if missing and sweep is not None else ""),
                  highlight=False, soft_wrap=True)
    _fail_if_damaged(damaged, f"left out of {out}")


def _fail_if_damaged(damaged: list[tuple[str, str]], what: str) -> None:
    """After a command's own summary: damaged artifacts it met, as one error line (exit 1)."""
    from lambda_hat.results import describe_damaged
    from lambda_hat.errors import ArtifactDamaged

    if damaged:
        raise ArtifactDamaged(f"{plural(len(damaged), 'damaged artifact')} {what}: {describe_damaged(damaged)}; lh verify lists "
                              "them all")


LogsOpt = Annotated[Path, typer.Option("--logs", metavar="DIR", help="The per-job logs directory `lh execute` wrote (its --logs).")]


def _check_logs_to_read(logs: Path) -> None:
    """--logs of a command that reads job logs: absent (no logs yet) or a directory."""
    import stat

    from lambda_hat.files import file_type, lstat_or_none

    st = lstat_or_none(logs, "--logs")
    if st is None or logs.is_dir():
        return
    what = ("a symbolic link to nothing" if stat.S_ISLNK(st.st_mode) and not logs.exists()
            else "a file" if logs.is_file() else file_type(os.stat(logs)))
    raise BadInput(f"--logs {logs}: is {what}, not a directory (the folder lh execute wrote job logs to)")


@app.command("status", cls=_Command)
@_domain_errors
def status_cmd(
    store: StoreOpt = None,
    sweep: SweepOpt = None,
    logs: LogsOpt = Path("logs"),
    limit: Annotated[int, typer.Option(metavar="N", help="Entries to list per section (0: all).")] = 20,
) -> None:
    """Targets and runs by status, runs flagged by their diagnostics, failed jobs with their
    logs, jobs in flight, the store's size."""
    from lambda_hat import results

    _check_limit(limit)
    _check_logs_to_read(logs)
    st, scope = _scoped(store, sweep)
    if not st.root.is_dir():
        raise BadInput(f"{st.root}: no such store (--store DIR, $LH_STORE, or --sweep FILE)")
    rep = results.store_status(st, logs, scope)
    sys.stdout.write(results.format_status(rep, logs, limit=limit if limit > 0 else 10**9))


@app.command("show", cls=_Command)
@_domain_errors
def show_cmd(
    artifact: Annotated[str, typer.Argument(help="A target or run ID, or a unique prefix of one (as lh query prints them).")],
    store: StoreOpt = None,
    sweep: ShowSweepOpt = None,
    logs: LogsOpt = Path("logs"),
    gallery: Annotated[Path, typer.Option(metavar="DIR", help="Where lh promote wrote its gallery (to list this artifact's plots).")] = Path("gallery"),
    as_json: Annotated[bool, typer.Option("--json", help="Print the manifest as JSON instead.")] = False,
) -> None:
    """One target or run: status, numbers, spec, files, logs, plots, and its runs or target."""
    from lambda_hat import results

    _check_logs_to_read(logs)
    st = _store_of(store, sweep)
    if not st.root.is_dir():
        raise BadInput(f"{st.root}: no such store (--store DIR, $LH_STORE, or --sweep FILE)")
    kind, artifact_id = st.resolve(artifact)
    manifest = st.read_verified(kind, artifact_id)  # damaged: one line, exit 1
    if as_json:
        sys.stdout.write(json.dumps(manifest.to_json_dict(), indent=1) + "\n")
        return
    sys.stdout.write(results.format_show(st, kind, artifact_id, logs, gallery / f"{kind}s"))


@app.command("promote", cls=_Command)
@_domain_errors
def promote_cmd(
    sweep: Annotated[Optional[Path], typer.Argument(help="Sweep YAML: its runs, in sweep order (default: every run in the store).")] = None,
    store: StoreOpt = None,
    outdir: Annotated[Path, typer.Option(metavar="DIR", help="Gallery folder: index.html, gallery.md, runs/<run_id>/*.png, targets/<target_id>/compare.png.")] = Path("gallery"),
    plots: Annotated[Optional[str], typer.Option(metavar="LIST", help="Comma-separated subset of: trace, running_mean, rank, energy, examples, compare, trajectory (default: all).")] = None,
    title: Annotated[Optional[str], typer.Option(metavar="TEXT", help="The page's title (default: from the sweep's file name).")] = None,
) -> None:
    """Plot every finished run (trace, running mean, rank, energy) and each target's λ̂ per
    sampler into a static gallery (index.html, gallery.md). Only what changed is redrawn."""
    _promote(sweep, store, outdir, plots, title)


def _promote(sweep: Path | None, store: str | None, outdir: Path, plots: str | None, title: str | None,
             flag: str = "--outdir") -> None:
    from lambda_hat import promote

    chosen = promote.parse_plots(plots)
    if sweep is not None:
        _, expanded, st = _load(sweep, store)
        run_ids, target_ids = [r.run_id for r in expanded.runs], [t.target_id for t in expanded.targets]
        title = title or f"lambda-hat gallery: {sweep.stem}"
    else:
        st, run_ids, target_ids = _store_for_reading(store), None, None
        title = title or "lambda-hat gallery"
    if not st.root.is_dir():
        raise BadInput(f"{st.root}: no such store (--store DIR, $LH_STORE, or a sweep's store_root)")
    from lambda_hat.output_paths import check_output_dir

    check_output_dir(outdir, st.root, flag)
    promote.check_gallery(outdir, flag, st.root)
    t0 = time.perf_counter()
    rep = promote.promote(st, outdir, run_ids=run_ids, target_ids=target_ids, title=title, plots=chosen)
    unfinished = rep.runs_wanted - rep.runs
    console.print(f"{plural(rep.runs, 'run')} on {plural(rep.targets, 'target')}"
                  + (f" ({unfinished} not finished yet: promote again later)" if unfinished else "")
                  + f": {plural(len(rep.written), 'file')} written, {len(rep.unchanged)} unchanged, in {outdir} "
                  f"({time.perf_counter() - t0:.1f}s)\nopen {outdir / 'index.html'}", highlight=False, soft_wrap=True)
    _fail_if_damaged(rep.damaged, "left out of the gallery or drawn without plots")


@index_app.command("rebuild", cls=_Command)
@_domain_errors
def index_rebuild_cmd(store: StoreOpt = None) -> None:
    """Recreate index.duckdb from the manifests on disk (the filesystem is the truth); an
    unreadable index is moved aside first."""
    from lambda_hat.store import resolve_store_root
    from lambda_hat.store import Store

    st = Store.open(resolve_store_root(store))
    if not st.layout.targets_dir.is_dir() and not st.layout.runs_dir.is_dir():
        raise BadInput(f"{st.root}: not a lambda-hat store (no targets/ or runs/)")
    damaged: list[tuple[str, str]] = []
    n_t, n_r = st.rebuild_index(damaged=damaged)
    console.print(f"rebuilt {st.layout.index_path}: {plural(n_t, 'target')}, {plural(n_r, 'run')}")
    _fail_if_damaged(damaged, "left out (the next lh execute quarantines and redoes them)")


def _verify(ids: list[str] | None, store: str | None) -> None:
    from lambda_hat.store import resolve_store_root
    from lambda_hat.store import Store

    st = Store.open(resolve_store_root(store))
    t0 = time.perf_counter()
    report = st.verify(ids or None)
    for f in report.findings:
        style = "red" if f.serious else "yellow"
        console.print(f"[{style}]{f.path}[/{style}]: {rich_escape(f.problem)}", soft_wrap=True, highlight=False)
    serious = sum(f.serious for f in report.findings)
    console.print(f"{plural(report.checked, 'artifact')} checked in {time.perf_counter() - t0:.2f}s, "
                  f"{plural(serious, 'problem')}")
    if not report.ok:
        raise typer.Exit(1)


@app.command("verify", cls=_Command)
@_domain_errors
def verify_cmd(
    ids: Annotated[Optional[list[str]], typer.Argument(metavar="ID", help="Artifact IDs to check (default: all).")] = None,
    store: StoreOpt = None,
) -> None:
    """Check artifacts: manifest and its checksum, ID against directory and spec hash, array
    checksums; report temporary directories, orphans and quarantined entries. Exit 1 if
    anything is wrong."""
    _verify(ids, store)


@index_app.command("verify", cls=_Command)
@_domain_errors
def index_verify_cmd(store: StoreOpt = None) -> None:
    """Same as `lh verify` (kept for Lambda-Hat habits)."""
    _verify(None, store)


QUERY_TIMEOUT_MAX_S = 7 * 86400


def _seconds(flag: str, text: str) -> float:
    """A duration given as seconds or with a unit (30m, 12h, 7d): finite and not negative."""
    import math

    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    t = text.strip().lower()
    try:
        value = float(t[:-1]) * units[t[-1]] if t and t[-1] in units else float(t)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise BadInput(f"{flag} {text!r}: not a duration of 0 or more (e.g. 90, 30m, 12h, 7d)")
    return value


def _duration_s(text: str) -> float:
    return _seconds("--older-than", text)


@app.command("gc", cls=_Command)
@_domain_errors
def gc_cmd(
    store: StoreOpt = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")] = False,
    failed: Annotated[bool, typer.Option("--failed", help="Also remove failed runs (status nonfinite) so they are redone.")] = False,
    older_than: Annotated[Optional[str], typer.Option("--older-than", metavar="AGE", help="Only remove what is older than this (30m, 12h, 7d).")] = None,
) -> None:
    """Remove temporary directories of dead writers (any host), quarantined and orphaned
    artifacts, stale claims; with --failed, failed runs."""
    from lambda_hat.store import resolve_store_root
    from lambda_hat.store import Store

    st = Store.open(resolve_store_root(store))
    report = st.gc(dry_run=dry_run, failed=failed, older_than_s=None if older_than is None else _duration_s(older_than))
    verb = "would remove" if dry_run else "removed"
    for path, why in report.removed:
        console.print(f"{verb} {path} ({why})", soft_wrap=True, highlight=False)
    for path, why in report.kept:
        console.print(f"[dim]kept {path} ({why})[/dim]", soft_wrap=True, highlight=False)
    console.print(f"{verb} {_entries(len(report.removed))}, {report.bytes_freed / 2**20:.1f} MiB")
    if report.failed:  # what should go is still there: not a success
        path, problem = report.failed[0]
        more = f" and {len(report.failed) - 1} more" if len(report.failed) > 1 else ""
        raise LhError(f"{_entries(len(report.failed))} could not be removed: {path} ({problem}){more}")


def _entries(n: int) -> str:
    """`1 entry`, `2 entries` (`text.plural` only adds an s)."""
    return f"{n} {'entry' if n == 1 else 'entries'}"


def main() -> None:
    """The `lh` program. Only here, where no caller shares the process, may it end hard:
    Parsl can leave non-daemon threads waiting on processes that are gone, and they must not
    keep the command alive once everything we own is flushed and recorded. In-process callers
    (tests, notebooks) call `app` and get an exception or a return, never a dead process."""
    code = 0
    try:
        app(prog_name="lh", standalone_mode=True)  # `lh` in usage lines however it was started
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    # What prints after the command (a user module's atexit handler) goes to stderr: stdout may be
    # JSON or CSV that another program reads to its end.
    try:
        sys.stdout.flush()
    except (OSError, ValueError):  # a reader gone (`lh query … | head`): nothing more to say there
        pass
    sys.stdout = sys.stderr
    if "parsl" in sys.modules:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    main()
