"""Results scoped to a sweep (issue 27), through the real CLI: two sweeps sharing one store and
one run each write their own results file (neither replaces the other's), and `lh query
--sweep`, `lh status --sweep` and `lh export SWEEP` see exactly the sweep's own units (IDs taken
from `lh plan --json`, not from the code under test); a sweep's `name:` names its file; a
prefix or ID of another sweep gets a hint, not a silent empty table. Also `lh show` and
`lh execute` at 80 columns."""

import json

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lhproc import lh, sgld_sweep

# Lax thresholds: the tiny runs (2 chains, 20 draws) are judged ok, so nothing below depends on
# the flagged-run listing; `ess_bulk_min` is kept low enough for every seed.
LAX = "diagnostics: {r_hat_max: 2.0, ess_bulk_min: 2}\n"


def cells(line: str) -> int:
    from rich.cells import cell_len

    return cell_len(line)


@pytest.fixture(scope="module")
def two_sweeps(tmp_path_factory):
    """Sweep `a` (seeds 1, 2) and sweep `bee` (file b.yaml, seeds 2, 3) executed into one store;
    sweep `c` (seed 4) planned only. Returns (cwd, {sweep: plan JSON}, the execute outputs)."""
    d = tmp_path_factory.mktemp("scope")
    (d / "a.yaml").write_text(LAX + sgld_sweep([1, 2]))
    (d / "b.yaml").write_text("name: bee\n" + LAX + sgld_sweep([2, 3]))
    (d / "c.yaml").write_text(LAX + sgld_sweep([4]))
    plans = {s: json.loads(lh(d, "plan", f"{s}.yaml", "--json").stdout) for s in "abc"}
    outs = [lh(d, "execute", f"{s}.yaml", "--workers", "1").stdout for s in "ab"]
    return d, plans, outs


@pytest.fixture
def cli(two_sweeps, monkeypatch):
    """The read-only commands in this process (no JAX to import: quick), run in the sweeps' folder."""
    monkeypatch.chdir(two_sweeps[0])
    monkeypatch.delenv("LH_STORE", raising=False)

    def run(*args, code=0):
        res = CliRunner().invoke(app, list(args), env={"COLUMNS": "80"})
        assert res.exit_code == code, (res.stdout, res.stderr, res.exception)
        return res

    return run


def run_ids(plan: dict) -> set[str]:
    return set(plan["runs_to_sample"]) | set(plan["runs_cached"])


def target_ids(plan: dict) -> set[str]:
    return set(plan["targets_to_build"]) | set(plan["targets_cached"])


def query(cli, sql, *args) -> list[dict]:
    return json.loads(cli("query", sql, "--format", "json", *args).stdout)


def test_each_sweep_keeps_its_own_results_file(two_sweeps, cli):
    import pyarrow.parquet as pq

    d, plans, outs = two_sweeps
    assert run_ids(plans["a"]) & run_ids(plans["b"]) and run_ids(plans["a"]) != run_ids(plans["b"])
    assert "rows in results/a.parquet" in outs[0] and "rows in results/bee.parquet" in outs[1]
    # Executing b (named bee) left a's file as it was: both hold their own sweep's runs.
    for sweep, name in (("a", "a"), ("b", "bee")):
        rows = pq.read_table(d / "results" / f"{name}.parquet").column("run_id").to_pylist()
        assert sorted(rows) == sorted(run_ids(plans[sweep]))
    assert not (d / "results" / "llc_runs.parquet").exists()
    # lh export SWEEP writes the sweep's file by default; with no sweep, every run in the store.
    (d / "results" / "a.parquet").unlink()
    assert "2 runs written to results/a.parquet" in cli("export", "a.yaml").stdout
    assert sorted(pq.read_table(d / "results" / "a.parquet").column("run_id").to_pylist()) == sorted(run_ids(plans["a"]))
    cli("export", "--store", "store")
    every = pq.read_table(d / "results" / "llc_runs.parquet").column("run_id").to_pylist()
    assert sorted(every) == sorted(run_ids(plans["a"]) | run_ids(plans["b"]))


def test_query_with_a_sweep_sees_only_its_units(two_sweeps, cli):
    d, plans, _ = two_sweeps
    everything = query(cli, "select run_id from runs", "--store", "store")
    assert {r["run_id"] for r in everything} == run_ids(plans["a"]) | run_ids(plans["b"])
    for s in "ab":
        assert {r["run_id"] for r in query(cli, "select run_id from runs", "--sweep", f"{s}.yaml")} == run_ids(plans[s])
        traced = query(cli, "select distinct run_id from traces", "--sweep", f"{s}.yaml")
        assert {r["run_id"] for r in traced} == run_ids(plans[s])
        targets = query(cli, "select target_id from targets", "--sweep", f"{s}.yaml")
        assert {r["target_id"] for r in targets} == target_ids(plans[s])
    assert query(cli, "select * from runs", "--sweep", "c.yaml") == []


def test_a_unit_of_another_sweep_gets_a_hint(two_sweeps, cli):
    d, plans, _ = two_sweeps
    only_b = sorted(run_ids(plans["b"]) - run_ids(plans["a"]))[0]
    for literal in (only_b, only_b[:8]):
        proc = cli("query", f"select * from runs where run_id = '{literal}'", "--sweep", "a.yaml")
        assert proc.stderr.strip() == (f"hint: '{literal}' is in the store but not in sweep a (--sweep shows only "
                                       "the sweep's own targets and runs)")
    proc = cli("query", f"select * from runs where run_id = '{only_b[:8]}'", "--sweep", "b.yaml")
    assert f"'{only_b[:8]}' is a prefix of {only_b}" in proc.stderr


def test_status_with_a_sweep_counts_only_its_units(two_sweeps, cli):
    whole = cli("status", "--store", "store").stdout
    assert "  runs     3 " in whole and "sweep" not in whole
    bee = cli("status", "--sweep", "b.yaml").stdout.splitlines()
    assert bee[1] == "sweep bee: 1 target, 2 runs; only these below" and bee[3].startswith("  runs     2 ")
    c = cli("status", "--sweep", "c.yaml").stdout.splitlines()
    assert c[1] == "sweep c: 1 target, 1 run (1 run not done: lh execute); only these below"
    assert c[3] == "  runs     0"


def test_a_bad_sweep_name_is_refused_at_plan_time(tmp_path):
    (tmp_path / "s.yaml").write_text("name: ../elsewhere\n" + sgld_sweep([1]))
    proc = lh(tmp_path, "plan", "s.yaml", check=False)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "s.yaml" in proc.stderr and "name" in proc.stderr, proc.stderr


def test_show_and_execute_fit_80_columns(two_sweeps, cli):
    d, plans, outs = two_sweeps
    run = sorted(run_ids(plans["a"]))[0]
    target = sorted(target_ids(plans["a"]))[0]
    for artifact in (run, target):
        text = cli("show", artifact, "--sweep", "a.yaml").stdout
        head = text.split("\nspec\n")[0].splitlines()
        wide = [line for line in head if cells(line) > 80]
        assert not wide, wide
        # The arrays are members of the zip, listed under it, not files beside it.
        files = head.index(next(line for line in head if line.startswith("files ")))
        assert head[files + 1].startswith("  manifest.json ") and head[files + 2].startswith("  arrays.zarr.zip ")
        assert head[files + 3].startswith("    ")
    # The execute outputs were written to a pipe: no line is hard-wrapped, each fits 80 columns.
    for out in outs:
        assert not [line for line in out.splitlines() if cells(line) > 80], out
