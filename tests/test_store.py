"""Store: atomic artifacts, snapshot from the filesystem, index record/rebuild."""

import json
import os

import numpy as np
import pytest

from lambda_hat.planner import StoreSnapshot, expand, plan
from lambda_hat.store import StoreLayout, index, snapshot
from lambda_hat.store.artifacts import clean_stale_tmp, read_arrays, read_manifest, verify, write_artifact
from lambda_hat.sweep import sweep_from_dict

SWEEP = {
    "targets": [{"model": "small", "data": "small", "grid": {"seed": [1, 2]}}],
    "samplers": [{"name": "hmc"}, {"name": "sgld"}],
}


def _fake_manifest(kind, artifact_id, spec):
    return {"id": artifact_id, "type": kind, "spec": spec, "status": "ok",
            "metrics": {"llc_mean": 1.5, "L0": 0.01, "draws": 10, "n_params": 45}}


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
    assert set(full.as_json()) == {"targets_to_build", "targets_cached", "runs_to_sample", "runs_cached"}


def test_artifact_roundtrip_and_verify(tmp_path):
    layout = StoreLayout(tmp_path)
    d = layout.target_dir("tgt_000000000001")
    arrays = {"params/W_0": np.arange(6.0).reshape(2, 3), "X": np.ones((5, 2), np.float32)}
    m = write_artifact(d, arrays, _fake_manifest("target", "tgt_000000000001", {}))
    assert layout.has_target("tgt_000000000001")
    assert read_manifest(d)["arrays"] == {"params/W_0": [2, 3], "X": [5, 2]} == m["arrays"]
    back = read_arrays(d, ["params/W_0", "X"])
    np.testing.assert_array_equal(back["params/W_0"], arrays["params/W_0"])
    assert back["X"].dtype == np.float32
    assert verify(d) == []
    chunk = next(p for p in sorted(d.rglob("*")) if p.is_file() and "/c/" in p.as_posix())
    chunk.write_bytes(chunk.read_bytes() + b"x")
    assert any("checksum mismatch" in p for p in verify(d))


def test_crash_before_manifest_leaves_nothing_that_reads_as_done(tmp_path):
    layout = StoreLayout(tmp_path)
    d = layout.run_dir("run_000000000001")

    def crash(_tmp):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_artifact(d, {"traces/llc": np.zeros((2, 3))}, _fake_manifest("run", "run_000000000001", {}), before_manifest=crash)
    assert not d.exists()
    assert not layout.has_run("run_000000000001")
    assert list(layout.runs_dir.iterdir()) == []  # the temporary sibling was removed too
    assert snapshot(layout, [], ["run_000000000001"]).run_ids == frozenset()


def test_directory_without_manifest_is_not_complete(tmp_path):
    layout = StoreLayout(tmp_path)
    (layout.run_dir("run_000000000002") / "traces").mkdir(parents=True)
    assert snapshot(layout, [], ["run_000000000002"]).run_ids == frozenset()


def test_stale_tmp_of_dead_writer_is_cleaned(tmp_path):
    import socket
    import subprocess

    dead = subprocess.Popen(["true"])
    dead.wait()
    host = socket.gethostname()
    stale = tmp_path / f".tmp-run_x-{host}-{dead.pid}-abcd1234"
    live = tmp_path / f".tmp-run_y-{host}-{os.getpid()}-abcd1234"
    stale.mkdir()
    live.mkdir()
    assert clean_stale_tmp(tmp_path) == [stale]
    assert live.exists() and not stale.exists()


def test_second_writer_of_same_artifact_defers_to_first(tmp_path):
    d = StoreLayout(tmp_path).target_dir("tgt_000000000003")
    first = write_artifact(d, {"X": np.zeros(3)}, {**_fake_manifest("target", "tgt_000000000003", {}), "who": "first"})
    second = write_artifact(d, {"X": np.ones(3)}, {**_fake_manifest("target", "tgt_000000000003", {}), "who": "second"})
    assert first["who"] == second["who"] == "first"
    assert [p.name for p in d.parent.iterdir()] == ["tgt_000000000003"]


def test_index_record_query_and_rebuild(tmp_path):
    layout = StoreLayout(tmp_path)
    ex = expand(sweep_from_dict(SWEEP))
    manifests = []
    for t in ex.targets:
        m = _fake_manifest("target", t.target_id, t.spec.model_dump(mode="json"))
        manifests.append(write_artifact(layout.target_dir(t.target_id), {"X": np.zeros(2)}, m))
    for r in ex.runs:
        m = _fake_manifest("run", r.run_id, r.spec.model_dump(mode="json"))
        m["metrics"]["llc_mean"] = float("nan") if r is ex.runs[0] else 2.0
        manifests.append(write_artifact(layout.run_dir(r.run_id), {"traces/llc": np.zeros((2, 2))}, m))
    index.record(layout, manifests)
    index.record(layout, manifests)  # idempotent upsert
    with index.connect_readonly(layout) as con:
        assert con.execute("select count(*) from targets").fetchone()[0] == 2
        rows = con.execute("select run_id, sampler, llc_mean from runs order by run_id").fetchall()
    assert len(rows) == 4
    assert {r[1] for r in rows} == {"hmc", "sgld"}
    assert sorted((r[2] is None) for r in rows) == [False, False, False, True]  # NaN is stored as NULL
    layout.index_path.unlink()
    assert index.rebuild(layout) == (2, 4)
    assert index.indexed_ids(layout) == ({t.target_id for t in ex.targets}, {r.run_id for r in ex.runs})
    out = tmp_path / "res" / "llc_runs.parquet"
    assert index.export_runs_parquet(layout, [r.run_id for r in ex.runs], out) == 4
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("run_id").to_pylist() == [r.run_id for r in ex.runs]
    assert json.loads(table.column("spec").to_pylist()[0])["target_id"] == ex.runs[0].spec.target_id


def test_index_with_old_columns_is_remade_from_manifests(tmp_path):
    import duckdb

    layout = StoreLayout(tmp_path)
    ex = expand(sweep_from_dict(SWEEP))
    r = ex.runs[0]
    write_artifact(layout.run_dir(r.run_id), {"traces/llc": np.zeros((2, 2))},
                   _fake_manifest("run", r.run_id, r.spec.model_dump(mode="json")))
    con = duckdb.connect(str(layout.index_path))
    con.execute("CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, llc DOUBLE)")  # an older layout
    con.close()
    t = ex.targets[0]
    index.record(layout, [_fake_manifest("target", t.target_id, t.spec.model_dump(mode="json"))])
    assert index.indexed_ids(layout) == ({t.target_id}, {r.run_id})
