"""`lh query`: the sandbox (every known attack refused, nothing written), the views, the
output formats, `lh export`. Real DuckDB on real stores made by `fill_store`."""

import csv
import io
import json
import os
import time

import numpy as np
import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.ids import resolved_spec
from lambda_hat.store import index
from lambda_hat.store.artifacts import write_artifact
from lambda_hat.store.layout import ARRAYS_ZIP
from lambda_hat.store.store import Store
from tests.test_store import SWEEP, fake_manifest, fill_store


@pytest.fixture
def runner():
    return CliRunner()


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    Store(root).reconcile()
    return root, ex


def tree(*roots):
    """Every path under `roots` with its size and mtime: what 'nothing written' compares."""
    out = {}
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            for name in dirnames + filenames:
                p = os.path.join(dirpath, name)
                st = os.lstat(p)
                out[p] = (st.st_size, st.st_mtime_ns)
    return out


def lh(runner, *args, env=None):
    return runner.invoke(app, list(args), env={"COLUMNS": "80", **(env or {})})


ATTACKS = [
    ("COPY runs TO '../leak.csv'", "refused: COPY is not run"),
    ("COPY (SELECT 1) TO 'leak.csv' (FORMAT csv)", "refused: COPY is not run"),
    ("EXPORT DATABASE 'dump'", "refused: EXPORT is not run"),
    ("select * from read_csv('/etc/passwd')", "reads only the store's index"),
    ("select * from read_text('/etc/passwd')", "reads only the store's index"),
    ("select * from read_blob('/etc/passwd')", "reads only the store's index"),
    ("select * from glob('~/*')", "reads only the store's index"),
    ("select * from read_parquet('../*.parquet')", "reads only the store's index"),
    ("ATTACH '{other}' AS o (READ_ONLY false); DELETE FROM o.runs", "2 statements"),
    ("ATTACH '{other}' AS o (READ_ONLY false)", "refused: ATTACH is not run"),
    ("DELETE FROM runs", "refused: DELETE is not run"),
    ("CREATE TABLE t AS SELECT 1", "refused: CREATE is not run"),
    ("COPY (SELECT '{{\"id\": \"run_000000000001\", \"type\": \"run\", \"spec\": {{}}}}') "
     "TO '{store}/runs/run_000000000001/manifest.json' (FORMAT csv, HEADER false, QUOTE '')", "refused: COPY is not run"),
    ("select 1; select 2", "2 statements"),
    ("select 1;;select 2", "2 statements"),
    ("INSTALL httpfs", "refused: INSTALL is not run"),
    ("CHECKPOINT", "refused: CHECKPOINT is not run"),  # DuckDB files it under CALL
    ("/* x */ force checkpoint", "refused: FORCE CHECKPOINT is not run"),
    ("USE memory", "refused: USE is not run"),  # ... and this under SET
    ("WITH t AS (SELECT 1) DELETE FROM runs", "refused: DELETE is not run"),
    ("LOAD httpfs", "refused: LOAD is not run"),
    ("SET enable_external_access = true", "refused: SET is not run"),
    ("PRAGMA enable_profiling", "refused: PRAGMA is not run"),
    ("CALL pragma_version()", "refused: CALL is not run"),
    ("", "no SQL given"),
    ("   ", "no SQL given"),
    ("/* only a comment */", "no SQL statement"),
]


@pytest.mark.parametrize("sql, says", ATTACKS, ids=[a[0][:40] or "(empty)" for a in ATTACKS])
def test_forbidden_statements_are_refused_and_write_nothing(runner, tmp_path, monkeypatch, store, sql, says):
    root, ex = store
    other_root = tmp_path / "other"
    fill_store(other_root)
    Store(other_root).reconcile()
    other_runs = index_rows(other_root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    before = tree(tmp_path)
    sql = sql.format(other=other_root / "index.duckdb", store=root)
    result = lh(runner, "query", sql, "--store", str(root))
    assert result.exit_code == 2, result.output
    assert says in result.stderr and result.stderr.count("\n") == 1, result.stderr
    assert result.stdout == ""
    assert tree(tmp_path) == before
    assert index_rows(other_root) == other_runs
    assert not (root / "runs" / "run_000000000001").exists()


def index_rows(root):
    with index.connect_readonly(Store(root).layout) as con:
        return con.execute("select run_id, llc_mean from runs order by run_id").fetchall()


def test_refused_statement_does_not_even_parse_as_select(runner, store):
    root, _ = store
    result = lh(runner, "query", "selec nonsense", "--store", str(root))
    assert result.exit_code == 2 and "query failed" in result.stderr and "Parser Error" in result.stderr


def test_output_file_inside_the_store_is_refused(runner, store):
    root, ex = store
    target = root / "runs" / ex.runs[0].run_id / "manifest.json"
    before = target.read_bytes()
    result = lh(runner, "query", "select * from runs", "--store", str(root), "--format", "json", "-o", str(target))
    assert result.exit_code == 2 and "inside the store" in result.stderr
    assert target.read_bytes() == before


def test_formats_round_trip(runner, tmp_path, store):
    import pyarrow.parquet as pq

    root, ex = store
    sql = "select run_id, sampler, llc_mean, chains, adapt_step_size, target_widths, spec from runs order by run_id"
    with index.connect_readonly(Store(root).layout) as con:
        raw = con.execute("select run_id, sampler, llc_mean, chains, spec from runs order by run_id").fetchall()
    as_csv = lh(runner, "query", sql, "--store", str(root), "--format", "csv")
    assert as_csv.exit_code == 0 and "\r" not in as_csv.stdout
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert [r["run_id"] for r in rows] == [r[0] for r in raw]
    assert [r["llc_mean"] for r in rows] == ["" if r[2] is None else repr(r[2]) for r in raw]
    assert {r["adapt_step_size"] for r in rows} == {"true", ""}  # hmc has it, sgld does not
    assert json.loads(rows[0]["target_widths"]) == [4, 4]
    assert json.loads(rows[0]["spec"]) == json.loads(raw[0][4])

    as_json = json.loads(lh(runner, "query", sql, "--store", str(root), "--format", "json").stdout)
    assert [r["run_id"] for r in as_json] == [r[0] for r in raw]
    assert as_json[0]["spec"] == json.loads(raw[0][4]) and isinstance(as_json[0]["spec"]["sampler"], dict)
    assert [r["llc_mean"] for r in as_json] == [r[2] for r in raw]
    assert {r["chains"] for r in as_json} == {4}

    out = tmp_path / "q.parquet"
    assert lh(runner, "query", sql, "--store", str(root), "-o", str(out)).exit_code == 0
    table = pq.read_table(out)
    assert table.column("run_id").to_pylist() == [r[0] for r in raw]
    assert table.column("llc_mean").to_pylist() == [r[2] for r in raw]
    assert str(table.schema.field("chains").type) == "int32" and str(table.schema.field("llc_mean").type) == "double"

    out_json = tmp_path / "q.json"
    assert lh(runner, "query", sql, "--store", str(root), "-o", str(out_json)).exit_code == 0
    assert json.loads(out_json.read_text()) == as_json
    assert lh(runner, "query", sql, "--store", str(root), "--format", "parquet").exit_code == 2  # binary needs -o


def test_table_fits_80_columns_with_headers_values_and_unique_prefixes(runner, store):
    root, ex = store
    result = lh(runner, "query", "select * from runs order by run_id", "--store", str(root))
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines), [len(x) for x in lines]
    header = lines[0].split()
    assert header[:4] == ["run_id", "target_id", "sampler", "status"]
    assert set(lines[1]) == {"-", " "}
    body = [line.split() for line in lines[2:6]]
    for row, run in zip(body, sorted(ex.runs, key=lambda r: r.run_id)):
        assert run.run_id.startswith(row[0]) and len(row[0]) < len(run.run_id)
        assert run.spec.target_id.startswith(row[1])
        assert row[2] == run.spec.sampler.name and row[3] == "ok"
    footer = "\n".join(lines[6:])
    assert "4 rows" in footer and "not shown" in footer and "--format csv" in footer


def test_table_prints_floats_to_four_significant_digits_and_folds_a_wide_row(runner, store):
    root, ex = store
    result = lh(runner, "query", "select 3.14159265358979::double as pi, 'x' as s", "--store", str(root))
    assert result.stdout.splitlines()[2].split() == ["3.142", "x"]
    # Trailing zeros are significant digits too: an R-hat of 1.0004 is not printed as "1".
    kept = lh(runner, "query", "select 1.0004::double as r_hat, 5579.3::double as ess, 2.5e-7::double as tiny",
              "--store", str(root))
    assert kept.stdout.splitlines()[2].split() == ["1.000", "5579", "2.500e-07"]
    wide = lh(runner, "query", f"select * from runs where run_id = '{ex.runs[1].run_id}'", "--store", str(root))
    lines = wide.stdout.splitlines()
    assert all(len(line) <= 80 for line in lines)
    folded = dict(line.split(None, 1) for line in lines if line and not line.startswith(("1 row", "not shown", "everything")))
    assert folded["sampler"] == ex.runs[1].spec.sampler.name and folded["llc_mean"] == "2.000"
    assert folded["target_model"] == "mlp"


def test_traces_view_answers_one_run_from_the_index_alone(runner, tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    # Real trace shapes: replace one run's fake traces with (chains, draws) arrays.
    run = ex.runs[1]
    d = st.layout.run_dir(run.run_id)
    import shutil

    shutil.rmtree(d)
    loss = np.arange(12.0).reshape(3, 4)
    write_artifact(d, {"traces/loss": loss, "traces/llc": 2 * loss, "traces/diverging": loss > 5,
                       "traces/mystery": np.zeros((3, 4))},
                   fake_manifest("run", run.run_id, resolved_spec(run.spec)))
    st.reconcile()
    # Every other run's arrays are gone: the answer cannot come from reading them.
    for other in ex.runs:
        if other is not run:
            (st.layout.run_dir(other.run_id) / ARRAYS_ZIP).unlink()
    result = lh(runner, "query", f"select chain, draw, loss, llc, diverging, accept_rate from traces "
                f"where run_id = '{run.run_id}' order by chain, draw", "--store", str(root), "--format", "json")
    rows = json.loads(result.stdout)
    assert len(rows) == 12 and rows[5] == {"chain": 1, "draw": 1, "loss": 5.0, "llc": 10.0, "diverging": False,
                                           "accept_rate": None}
    assert rows[6]["diverging"] is True
    cols = json.loads(lh(runner, "query", "select * from traces limit 1", "--store", str(root), "--format", "json").stdout)[0]
    assert list(cols)[:5] == ["run_id", "chain", "draw", "loss", "llc"] and "mystery" not in cols


def test_index_rows_of_traces_follow_their_run(tmp_path):
    """Re-recording a run replaces its trace rows; a run gone from the store takes its rows with it."""
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    st.reconcile()
    count = "select count(*) from traces"
    assert results_count(st, count) == 4 * 4
    st.record([st.record_manifest("run", ex.runs[0].run_id)])
    assert results_count(st, count) == 16
    import shutil

    shutil.rmtree(st.layout.run_dir(ex.runs[0].run_id))
    st.reconcile()
    assert results_count(st, count) == 12
    st.layout.index_path.unlink()
    st.rebuild_index()
    assert results_count(st, count) == 12


def results_count(st, sql):
    from lambda_hat import results

    return results.run_query(st, sql).rows[0][0]


def test_an_index_without_traces_is_rebuilt_with_them(tmp_path):
    import duckdb

    root = tmp_path / "store"
    fill_store(root)
    st = Store(root)
    st.reconcile()
    con = duckdb.connect(str(st.layout.index_path))
    con.execute("DROP TABLE traces")  # an index from before traces were indexed
    con.close()
    st.reconcile()
    assert results_count(st, "select count(*) from traces") == 16


def test_query_finds_the_store_like_plan(runner, tmp_path, monkeypatch, store):
    root, _ = store
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"store_root": str(root), **SWEEP}))  # JSON is YAML
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LH_STORE", raising=False)
    result = lh(runner, "query", "select count(*) as n from runs", "--sweep", str(sweep), "--format", "csv")
    assert result.exit_code == 0 and result.stdout == "n\n4\n", result.output
    result = lh(runner, "query", "select count(*) as n from runs", "--format", "csv", env={"LH_STORE": str(root)})
    assert result.stdout == "n\n4\n"
    result = lh(runner, "query", "select 1")  # ./runs does not exist
    assert result.exit_code == 2 and "no index" in result.stderr


def test_query_waits_for_a_writer_and_answers(runner, store):
    """A driver holds the index for a moment each second; a query in between waits for it."""
    import subprocess
    import sys

    root, _ = store
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from lambda_hat.store import index\nfrom lambda_hat.store.layout import StoreLayout\n"
        f"with index.writer(StoreLayout(__import__('pathlib').Path({str(root)!r}))) as (con, _):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(1.5)\n")], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    t0 = time.perf_counter()
    result = lh(runner, "query", "select count(*) as n from runs", "--store", str(root), "--format", "csv")
    waited = time.perf_counter() - t0
    holder.wait(timeout=30)
    assert result.exit_code == 0 and result.stdout == "n\n4\n", result.output
    assert waited > 0.5  # it did meet the writer


def test_export_has_the_columns_of_runs_and_reads_in_pandas_and_polars(runner, tmp_path, store):
    import pandas as pd
    import polars as pl
    import pyarrow.parquet as pq

    root, ex = store
    out = tmp_path / "res" / "runs.parquet"
    result = lh(runner, "export", "--store", str(root), "-o", str(out))
    assert result.exit_code == 0 and "4 runs" in result.stdout, result.output
    q = tmp_path / "q.parquet"
    assert lh(runner, "query", "select * from runs", "--store", str(root), "-o", str(q)).exit_code == 0
    assert pq.read_schema(out) == pq.read_schema(q)
    frame = pd.read_parquet(out)
    assert sorted(frame["run_id"]) == sorted(r.run_id for r in ex.runs)
    assert frame["llc_mean"].dtype == "float64" and frame["chains"].dtype == "int32"
    polars_frame = pl.read_parquet(out)
    assert polars_frame["sampler"].to_list() == list(frame["sampler"])
    assert polars_frame.schema["warmup"] == pl.Int64 and polars_frame.schema["adapt_step_size"] == pl.Boolean
    csv_out = tmp_path / "res" / "runs.csv"
    assert lh(runner, "export", "--store", str(root), "-o", str(csv_out)).exit_code == 0
    assert pd.read_csv(csv_out).shape == frame.shape and b"\r\n" not in csv_out.read_bytes()
    assert lh(runner, "export", "--store", str(root), "-o", str(tmp_path / "x.txt")).exit_code == 2


def edit_keeping_size_and_mtime(path, old: bytes, new: bytes):
    """What bit rot does: a few bytes change, the file's size and mtime do not."""
    st = os.stat(path)
    data = path.read_bytes()
    assert len(old) == len(new) and data.count(old) >= 1
    path.write_bytes(data.replace(old, new, 1))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(path).st_size == st.st_size


def test_export_reports_a_run_whose_manifest_was_edited_instead_of_dropping_it(runner, tmp_path, store):
    """Issue 28, item 4: the results file is written from manifests checked on their content;
    one that no longer checks out is named (exit 1), not silently left out."""
    root, ex = store
    rot = ex.runs[2].run_id
    edit_keeping_size_and_mtime(root / "runs" / rot / "manifest.json", b'"llc_mean": 2.0', b'"llc_mean": 7.0')
    out = tmp_path / "runs.csv"
    result = lh(runner, "export", "--store", str(root), "-o", str(out))
    assert result.exit_code == 1, result.output
    assert "3 runs written" in result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and rot in lines[0] and "checksum mismatch" in lines[0], result.stderr
    assert sorted(r["run_id"] for r in csv.DictReader(io.StringIO(out.read_text()))) == sorted(
        r.run_id for r in ex.runs if r.run_id != rot)


def test_export_leaves_out_and_names_a_run_whose_arrays_fail_their_checksum(runner, tmp_path, store):
    """Third adversarial pass: a flipped byte in a run's arrays.zarr.zip (size and mtime kept)
    was exported as a good row (exit 0); `lh export` now checks each run's files, as `lh verify`."""
    from lambda_hat.store.layout import ARRAYS_ZIP

    root, ex = store
    rot = ex.runs[1].run_id
    path = root / "runs" / rot / ARRAYS_ZIP
    st = os.stat(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 1
    path.write_bytes(bytes(data))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = tmp_path / "runs.csv"
    result = lh(runner, "export", "--store", str(root), "-o", str(out))
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and rot in lines[0] and "damaged" in lines[0], result.stderr
    assert rot not in out.read_text() and len(list(csv.DictReader(io.StringIO(out.read_text())))) == len(ex.runs) - 1


def test_export_of_an_empty_store_writes_no_rows_and_of_a_missing_one_refuses(runner, tmp_path):
    """Issue 28, item 12: `executemany requires a non-empty list` was a traceback."""
    empty = tmp_path / "empty"
    Store.open(empty, create=True)
    out = tmp_path / "runs.csv"
    result = lh(runner, "export", "--store", str(empty), "-o", str(out))
    assert result.exit_code == 0 and "0 runs written" in result.stdout, result.output
    assert out.read_text().startswith("run_id,target_id,") and out.read_text().count("\n") == 1
    parquet = tmp_path / "runs.parquet"
    assert lh(runner, "export", "--store", str(empty), "-o", str(parquet)).exit_code == 0
    import pyarrow.parquet as pq

    assert pq.read_table(parquet).num_rows == 0
    result = lh(runner, "export", "--store", str(tmp_path / "missing"), "-o", str(tmp_path / "m.csv"))
    assert result.exit_code == 2 and "no such store" in result.stderr and result.stderr.count("\n") == 1
    assert not (tmp_path / "m.csv").exists()


def test_an_id_prefix_that_matches_nothing_gets_a_hint(runner, store):
    root, ex = store
    rid = ex.runs[0].run_id
    for fmt in ("table", "json"):
        res = lh(runner, "query", "--store", str(root), "--format", fmt,
                 f"select run_id from runs where run_id = '{rid[:8]}'")
        assert res.exit_code == 0, res.output
        assert f"hint: '{rid[:8]}' is a prefix of {rid}" in res.stderr and f"LIKE '{rid[:8]}%'" in res.stderr, res.stderr
    # the whole ID: its row, no hint; a prefix of nothing stored: no hint either
    whole = lh(runner, "query", "--store", str(root), f"select run_id from runs where run_id = '{rid}'")
    assert "1 row" in whole.stdout and "hint" not in whole.stderr, whole.stdout
    other = "run_" + ("0" if rid[4] != "0" else "1") * 6
    none = lh(runner, "query", "--store", str(root), f"select run_id from runs where run_id = '{other}'")
    assert none.exit_code == 0 and "hint" not in none.stderr, none.stderr
