"""`lh`: plan, execute, query and maintain LLC sweeps.

Each command parses, calls one function, prints. JAX and Parsl are imported only by
`lh execute`, and only when there is something to run, so `lh --help`, `lh plan` and
`lh query` stay fast.
"""

from __future__ import annotations

import csv
import enum
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(
    name="lh",
    help="lambda-hat: reproducible Local Learning Coefficient sweeps over a content-addressed store.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
index_app = typer.Typer(help="Maintain the store's DuckDB index.", no_args_is_help=True)
app.add_typer(index_app, name="index")

console = Console()
err_console = Console(stderr=True)

StoreOpt = Annotated[
    Optional[str],
    typer.Option("--store", help="Store directory. Default: $LH_STORE, else the sweep's store_root, else ./runs."),
]


class Backend(str, enum.Enum):
    local = "local"
    slurm = "slurm"


class OutFormat(str, enum.Enum):
    table = "table"
    csv = "csv"
    json = "json"


def _bad_input(message: str) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}", soft_wrap=True, highlight=False)
    return typer.Exit(2)


def _load(sweep_path: Path, store: str | None):
    from lambda_hat.planner import expand
    from lambda_hat.store import StoreLayout, resolve_store_root
    from lambda_hat.sweep import SweepError, load_sweep

    try:
        sweep = load_sweep(sweep_path)
    except SweepError as err:
        raise _bad_input(str(err)) from None
    layout = StoreLayout(resolve_store_root(store, sweep.store_root))
    return sweep, expand(sweep), layout


def _plan(expanded, layout):
    from lambda_hat.planner import plan
    from lambda_hat.store import snapshot

    snap = snapshot(layout, [t.target_id for t in expanded.targets], [r.run_id for r in expanded.runs])
    return plan(expanded, snap)


@app.command("plan")
def plan_cmd(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    store: StoreOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan's ID lists as JSON.")] = False,
    limit: Annotated[int, typer.Option(help="Rows to show in the table (0: all).")] = 50,
) -> None:
    """Show what `lh execute` would build and sample, and what the store already holds."""
    from lambda_hat.planner import describe_target

    _, expanded, layout = _load(sweep, store)
    p = _plan(expanded, layout)
    if as_json:
        sys.stdout.write(json.dumps(p.as_json()) + "\n")
        return
    table = Table(title=f"plan for {sweep} (store {layout.root})")
    for col in ("kind", "id", "action", "what"):
        table.add_column(col)
    rows = [("target", t.target_id, "build", describe_target(t)) for t in p.targets_to_build]
    rows += [("target", t.target_id, "cached", describe_target(t)) for t in p.targets_cached]
    for action, runs in (("sample", p.runs_to_sample), ("cached", p.runs_cached)):
        for r in runs:
            s = r.spec
            rows.append(("run", r.run_id, action, f"{s.sampler.name} on {s.target_id}, seed={s.seed}, chains={s.sampler.chains}, γ={s.posterior.gamma}"))
    shown = rows if limit <= 0 else rows[:limit]
    for row in shown:
        table.add_row(*row, style="dim" if row[2] == "cached" else None)
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"... and {len(rows) - len(shown)} more rows (--limit 0 shows all)")
    console.print(p.summary())


@app.command("execute")
def execute_cmd(
    sweep: Annotated[Path, typer.Argument(help="Sweep YAML.")],
    store: StoreOpt = None,
    backend: Annotated[Backend, typer.Option(help="Where jobs run.")] = Backend.local,
    workers: Annotated[Optional[int], typer.Option(min=1, help="Local worker processes (default: min(cpu count, 8)).")] = None,
    logs: Annotated[Path, typer.Option(help="Per-job logs directory.")] = Path("logs"),
    results: Annotated[Path, typer.Option(help="Parquet file with one row per run of the sweep.")] = Path(
        "results/llc_runs.parquet"
    ),
    slurm_config: Annotated[
        Optional[Path], typer.Option(help="YAML of SLURM settings (partition, walltime, max_blocks, worker_init, ...).")
    ] = None,
) -> None:
    """Build the missing targets and sample the missing runs; record them; write results."""
    t_start = time.perf_counter()
    _, expanded, layout = _load(sweep, store)
    p = _plan(expanded, layout)

    from lambda_hat.store import index
    from lambda_hat.store.artifacts import clean_stale_tmp, read_manifest

    # Artifacts complete on disk but missing from the index (e.g. after Ctrl-C, or a copied
    # store) are recorded now: the filesystem is the truth.
    if layout.root.exists():
        known_t, known_r = index.indexed_ids(layout)
        missing = [layout.target_dir(t.target_id) for t in p.targets_cached if t.target_id not in known_t]
        missing += [layout.run_dir(r.run_id) for r in p.runs_cached if r.run_id not in known_r]
        if missing:
            index.record(layout, [read_manifest(d) for d in missing])

    if p.nothing_to_do:
        n = index.export_runs_parquet(layout, [r.run_id for r in expanded.runs], results)
        console.print(
            f"nothing to do: {len(p.targets_cached)} targets and {len(p.runs_cached)} runs already in the store "
            f"({layout.root}); {n} rows in {results} ({time.perf_counter() - t_start:.2f}s)"
        )
        return

    console.print(f"store {layout.root}: {p.summary()}")
    for parent in (layout.targets_dir, layout.runs_dir):
        for stale in clean_stale_tmp(parent):
            console.print(f"  removed unfinished artifact {stale.name} (its writer is gone)")

    from lambda_hat.execute.runner import ExecutorStartError, LogPaths, run_plan

    run_dir = Path("parsl_runinfo")
    if backend is Backend.local:
        from lambda_hat.execute.parsl_config import local_config

        config = local_config(run_dir, workers)
    else:
        import shutil

        from lambda_hat.execute.parsl_config import SlurmSettings, slurm_config

        if shutil.which("sbatch") is None:
            raise _bad_input("--backend slurm: sbatch not found on PATH (run lh execute on a SLURM login node)")
        settings = SlurmSettings()
        if slurm_config is not None:
            settings = _load_slurm_settings(slurm_config)
        config = slurm_config(run_dir, settings)

    try:
        outcome = run_plan(p, layout, config, LogPaths(logs), console)
    except ExecutorStartError as err:
        err_console.print(f"[red]error:[/red] {err} (Parsl logs: {run_dir})")
        _hard_exit(1)
    if outcome.interrupted:
        console.print(
            f"\n[yellow]interrupted[/yellow]: {len(outcome.completed)} jobs completed and recorded; "
            "run the same command again to do only what is missing."
        )
        _hard_exit(130)
    n = index.export_runs_parquet(layout, [r.run_id for r in expanded.runs], results)
    console.print(
        f"\n{len(outcome.completed)} jobs completed, {len(outcome.failed)} failed; "
        f"{n} rows in {results} ({time.perf_counter() - t_start:.1f}s)"
    )
    if outcome.failed:
        console.print("[red]failed jobs[/red] (see their logs):")
        for job_id, reason, err in outcome.failed:
            console.print(f"  {job_id}: {reason}\n    {err}", soft_wrap=True, highlight=False)
        raise typer.Exit(1)


def _hard_exit(code: int) -> None:
    # Parsl may leave non-daemon threads waiting on processes that are gone; do not let
    # them keep the command alive once everything we own is flushed and recorded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _load_slurm_settings(path: Path):
    import dataclasses

    import yaml

    from lambda_hat.execute.parsl_config import SlurmSettings

    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as err:
        raise _bad_input(f"{path}: cannot read SLURM settings: {err}") from None
    known = {f.name for f in dataclasses.fields(SlurmSettings)}
    if not isinstance(data, dict):
        raise _bad_input(f"{path}: must be a mapping of SLURM settings")
    for k in data:
        if k not in known:
            raise _bad_input(f"{path}: {k}: unknown SLURM setting (known: {', '.join(sorted(known))})")
    return SlurmSettings(**data)


def _jsonable(v):
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


@app.command("query")
def query_cmd(
    sql: Annotated[str, typer.Argument(help='SQL over tables `targets` and `runs`, e.g. "select * from runs".')],
    store: StoreOpt = None,
    fmt: Annotated[OutFormat, typer.Option("--format", help="Output format.")] = OutFormat.table,
) -> None:
    """Run read-only SQL against the store's index."""
    import duckdb

    from lambda_hat.store import StoreLayout, resolve_store_root
    from lambda_hat.store.index import connect_readonly

    layout = StoreLayout(resolve_store_root(store))
    if not layout.index_path.exists():
        raise _bad_input(f"{layout.index_path}: no index (run `lh execute` first, or `lh index rebuild`)")
    try:
        with connect_readonly(layout) as con:
            cur = con.execute(sql)
            cols = [d[0] for d in cur.description] if cur.description else []
            rows = cur.fetchall() if cols else []
    except duckdb.Error as err:
        raise _bad_input(f"query failed: {' '.join(str(err).split())}") from None
    if fmt is OutFormat.csv:
        w = csv.writer(sys.stdout)
        w.writerow(cols)
        w.writerows(rows)
    elif fmt is OutFormat.json:
        out = [{c: _jsonable(v) for c, v in zip(cols, row)} for row in rows]
        sys.stdout.write(json.dumps(out, default=str, indent=1) + "\n")
    else:
        table = Table()
        for c in cols:
            table.add_column(c, overflow="fold")
        for row in rows:
            table.add_row(*("NULL" if v is None else f"{v:.6g}" if isinstance(v, float) else str(v) for v in row))
        console.print(table)
        console.print(f"{len(rows)} rows")


@index_app.command("rebuild")
def index_rebuild_cmd(store: StoreOpt = None) -> None:
    """Recreate index.duckdb from the manifests on disk (the filesystem is the truth)."""
    from lambda_hat.store import StoreLayout, resolve_store_root
    from lambda_hat.store.index import rebuild

    layout = StoreLayout(resolve_store_root(store))
    if not layout.root.is_dir():
        raise _bad_input(f"{layout.root}: no such store")
    n_t, n_r = rebuild(layout)
    console.print(f"rebuilt {layout.index_path}: {n_t} targets, {n_r} runs")


@index_app.command("verify")
def index_verify_cmd(store: StoreOpt = None) -> None:
    """Check every artifact against its manifest's checksums."""
    from lambda_hat.store import StoreLayout, resolve_store_root
    from lambda_hat.store.artifacts import verify

    layout = StoreLayout(resolve_store_root(store))
    bad = 0
    checked = 0
    for parent in (layout.targets_dir, layout.runs_dir):
        if not parent.is_dir():
            continue
        for d in sorted(parent.iterdir()):
            if d.name.startswith(".") or not (d / "manifest.json").is_file():
                continue
            checked += 1
            problems = verify(d)
            if problems:
                bad += 1
                console.print(f"[red]{d}[/red]: {'; '.join(problems)}")
    console.print(f"{checked} artifacts checked, {bad} with problems")
    if bad:
        raise typer.Exit(1)


if __name__ == "__main__":
    app()
