"""Store: atomic artifacts, typed manifests, snapshot, index record/rebuild, results export."""

import json

import numpy as np
import pytest

from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand, plan
from lambda_hat.results import export_runs
from lambda_hat.store import StoreSnapshot, index
from lambda_hat.store.layout import StoreLayout
from lambda_hat.store.artifacts import read_arrays, read_manifest, verify, write_artifact
from lambda_hat.store.layout import ARRAYS_ZIP
from lambda_hat.store.manifest import Manifest
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict

SWEEP = {
    "targets": [{"model": "small", "data": "small", "grid": {"seed": [1, 2]}}],
    "samplers": [{"name": "hmc"}, {"name": "sgld"}],
}


def fake_manifest(kind, artifact_id, spec, **metrics):
    return Manifest(id=artifact_id, type=kind, spec=spec, status="ok",
                    metrics={"llc_mean": 1.5, "L0": 0.01, "draws": 10, "n_params": 45, **metrics})


def fill_store(root, sweep=SWEEP):
    """A store holding every target and run of `sweep` as small fake artifacts."""
    layout = StoreLayout(root)
    ex = expand(sweep_from_dict(sweep))
    manifests = []
    for t in ex.targets:
        m = fake_manifest("target", t.target_id, resolved_spec(t.spec))
        manifests.append(write_artifact(layout.target_dir(t.target_id), {"X": np.arange(1.0, 3.0)}, m))
    for r in ex.runs:
        m = fake_manifest("run", r.run_id, resolved_spec(r.spec), llc_mean=float("nan") if r is ex.runs[0] else 2.0)
        manifests.append(write_artifact(layout.run_dir(r.run_id), {"traces/llc": np.zeros((2, 2))}, m))
    return ex, manifests


def test_planner_diff_against_snapshot():
    ex = expand(sweep_from_dict(SWEEP))
    assert len(ex.targets) == 2 and len(ex.runs) == 4
    empty = plan(ex, StoreSnapshot())
    assert (len(empty.targets_to_build), len(empty.runs_to_sample), len(empty.targets_cached), len(empty.runs_cached)) == (2, 4, 0, 0)
    t0 = ex.targets[0].target_id
    some = StoreSnapshot(target_ids=frozenset({t0}), run_ids=frozenset({ex.runs[0].run_id, "run_unrelated"}))
    p = plan(ex, some)
    assert [t.target_id for t in p.targets_cached] == [t0]
    assert [t.target_id for t in p.targets_to_build] == [ex.targets[1].target_id]
    assert [r.run_id for r in p.runs_cached] == [ex.runs[0].run_id]
    assert [r.run_id for r in p.runs_to_sample] == [r.run_id for r in ex.runs[1:]]
    full = plan(ex, StoreSnapshot(frozenset(t.target_id for t in ex.targets), frozenset(r.run_id for r in ex.runs)))
    assert full.nothing_to_do


def test_artifact_roundtrip_and_verify(tmp_path):
    ex, _ = fill_store(tmp_path)
    d = StoreLayout(tmp_path).target_dir(ex.targets[0].target_id)
    assert read_manifest(d).arrays == {"X": [2]}
    np.testing.assert_array_equal(read_arrays(d, ["X"])["X"], [1.0, 2.0])
    assert verify(d, "target") == []
    chunk = d / ARRAYS_ZIP
    chunk.write_bytes(chunk.read_bytes() + b"x")
    assert any("checksum mismatch" in p for p in verify(d, "target"))


def test_snapshot_counts_only_valid_manifests(tmp_path):
    ex, _ = fill_store(tmp_path)
    st = Store(tmp_path)
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
    assert st.snapshot(tids, rids) == StoreSnapshot(frozenset(tids), frozenset(rids))
    (st.layout.run_dir(rids[0]) / "manifest.json").write_text("{not json")
    (st.layout.run_dir(rids[1]) / "manifest.json").unlink()
    snap = st.snapshot(tids, rids)
    assert snap.run_ids == frozenset(rids[2:])


def test_crash_before_manifest_leaves_nothing_that_reads_as_done(tmp_path):
    layout = StoreLayout(tmp_path)
    d = layout.run_dir("run_000000000001")

    def crash(_tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_artifact(d, {"traces/llc": np.zeros((2, 3))}, fake_manifest("run", "run_000000000001", {}), before_manifest=crash)
    assert not d.exists()
    assert list(layout.runs_dir.iterdir()) == []  # the temporary sibling was removed too


def test_second_writer_of_same_artifact_defers_to_first(tmp_path):
    ex = expand(sweep_from_dict(SWEEP))
    t = ex.targets[0]
    d = StoreLayout(tmp_path).target_dir(t.target_id)
    first = write_artifact(d, {"X": np.zeros(3)}, fake_manifest("target", t.target_id, resolved_spec(t.spec), who=1))
    second = write_artifact(d, {"X": np.ones(3)}, fake_manifest("target", t.target_id, resolved_spec(t.spec), who=2))
    assert first.metrics["who"] == second.metrics["who"] == 1
    assert [p.name for p in d.parent.iterdir()] == [t.target_id]


def test_incomplete_directory_in_the_way_is_quarantined_by_the_writer(tmp_path):
    ex = expand(sweep_from_dict(SWEEP))
    t = ex.targets[0]
    layout = StoreLayout(tmp_path)
    d = layout.target_dir(t.target_id)
    (d / "X").mkdir(parents=True)  # an interrupted copy: arrays, no manifest
    m = write_artifact(d, {"X": np.zeros(3)}, fake_manifest("target", t.target_id, resolved_spec(t.spec)))
    assert m.id == t.target_id and verify(d, "target") == []
    assert len(list(layout.quarantine_dir.iterdir())) == 1


def test_index_write_query_rebuild_and_export(tmp_path):
    ex, manifests = fill_store(tmp_path)
    st = Store(tmp_path)
    records = [index.Record(m) for m in manifests]
    index.write(st.layout, records)
    index.write(st.layout, records)  # idempotent upsert
    with index.connect_readonly(st.layout) as con:
        assert con.execute("select count(*) from targets").fetchone()[0] == 2
        rows = con.execute("select run_id, sampler, llc_mean, draws, chains from runs order by run_id").fetchall()
    assert len(rows) == 4 and {r[1] for r in rows} == {"hmc", "sgld"}
    assert sorted((r[2] is None) for r in rows) == [False, False, False, True]  # NaN is stored as NULL
    assert {r[3] for r in rows} == {10} and {r[4] for r in rows} == {4}
    st.layout.index_path.unlink()
    assert st.rebuild_index() == (2, 4)
    stats = index.indexed_stats(st.layout)
    assert set(stats["target"]) == {t.target_id for t in ex.targets} and set(stats["run"]) == {r.run_id for r in ex.runs}
    out = tmp_path / "res" / "llc_runs.parquet"
    assert export_runs(st, [r.run_id for r in ex.runs], out).rows == 4
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("run_id").to_pylist() == [r.run_id for r in ex.runs]
    assert json.loads(table.column("spec").to_pylist()[0])["target_id"] == ex.runs[0].spec.target_id
    csv_out = tmp_path / "res" / "llc_runs.csv"
    assert export_runs(st, [r.run_id for r in ex.runs], csv_out).rows == 4
    assert b"\r\n" not in csv_out.read_bytes() and csv_out.read_text().splitlines()[0].startswith("run_id,")


def test_index_with_old_columns_is_remade_from_manifests(tmp_path):
    import duckdb

    ex, _ = fill_store(tmp_path)
    st = Store(tmp_path)
    con = duckdb.connect(str(st.layout.index_path))
    con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, llc DOUBLE)")  # an older layout
    con.close()
    st.reconcile()
    stats = index.indexed_stats(st.layout)
    assert set(stats["run"]) == {r.run_id for r in ex.runs} and len(stats["target"]) == 2


def test_index_columns_derive_from_the_manifest_models():
    from lambda_hat.store.manifest import RunMetrics, TargetMetrics

    run_cols = [c.name for c in index.TABLES["runs"]]
    assert set(RunMetrics.model_fields) <= set(run_cols)
    assert set(TargetMetrics.model_fields) <= {c.name for c in index.TABLES["targets"]}
    assert len(run_cols) == len(set(run_cols))


def test_a_batch_with_new_replaced_and_repeated_runs_keeps_one_row_and_one_trace_set_each(tmp_path):
    ex, manifests = fill_store(tmp_path)
    st = Store(tmp_path)
    runs = [st.record_manifest("run", r.run_id) for r in ex.runs]
    st.record(runs[:2])
    st.record([runs[1], runs[2], runs[2], runs[3], runs[1]])  # one replaced twice, one new twice, one new
    with index.connect_readonly(st.layout) as con:
        assert con.execute("select count(*), count(distinct run_id) from runs").fetchone() == (4, 4)
        per_run = dict(con.execute("select run_id, count(*) from traces group by run_id").fetchall())
    assert per_run == {r.run_id: 4 for r in ex.runs}  # each fake run's traces/llc is 2 chains × 2 draws
