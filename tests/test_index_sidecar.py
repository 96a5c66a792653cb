"""`.index.stats`, the copy of the index's (ID, manifest size, mtime) rows that lets a no-op
`lh execute` skip DuckDB: it answers only while the index file is exactly the one it was read
from, never hides a manifest edited or removed since, and a stale or forged copy is ignored.

The sidecar is written only for an index file at least `STATS_SIDECAR_MIN_AGE_S` old (so that
any later write changes its mtime); the tests age the file with `os.utime` instead of waiting."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time

import pytest
import yaml
from rich.console import Console

from lambda_hat.execute.driver import ExecuteRequest, execute
from lambda_hat.store import index
from lambda_hat.store.store import Store
from test_store import SWEEP, fill_store


def age_index(st: Store, seconds: float = 60.0) -> None:
    t = time.time() - seconds
    os.utime(st.layout.index_path, (t, t))


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    st.reconcile()  # writes the index: too new for a sidecar yet
    assert not (root / ".index.stats").exists()
    age_index(st)
    st.reconcile()  # in step, and old enough: leaves the sidecar
    assert (root / ".index.stats").exists()
    return st, [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]


def test_sidecar_says_what_duckdb_says(store):
    st, tids, rids = store
    read = index.read_stats(st.layout)
    assert read.from_sidecar
    assert read.stats == index.indexed_stats(st.layout)
    assert set(read.stats["run"]) == set(rids) and set(read.stats["target"]) == set(tids)


def test_sidecar_is_not_written_for_a_fresh_index(tmp_path):
    st = Store(tmp_path / "store")
    fill_store(st.root)
    st.reconcile()
    st.reconcile()  # in step, but the index file was written moments ago
    assert not (st.root / ".index.stats").exists()
    assert not index.read_stats(st.layout).from_sidecar


def test_a_stale_sidecar_put_back_after_an_index_write_is_ignored(store):
    st, tids, rids = store
    side = st.root / ".index.stats"
    stale = side.read_bytes()
    gone = rids[0]
    st.layout.run_dir(gone).rename(st.root / "elsewhere")
    st.reconcile()  # drops the row: an index write
    assert not side.exists()  # the writer removed the copy it made stale
    side.write_bytes(stale)  # as a crash or a racing host might leave it
    read = index.read_stats(st.layout)
    assert not read.from_sidecar and gone not in read.stats["run"]


def test_a_wal_beside_the_index_makes_the_sidecar_not_count(store):
    st, _, _ = store
    wal = st.layout.index_path.with_name(st.layout.index_path.name + ".wal")
    wal.write_bytes(b"")  # a writer's transaction in progress or cut short
    try:
        assert not index.read_stats(st.layout).from_sidecar
    finally:
        wal.unlink()
    assert index.read_stats(st.layout).from_sidecar


@pytest.mark.parametrize("damage", ["truncated", "forged_row", "forged_identity"])
def test_a_damaged_or_forged_sidecar_is_ignored(store, damage):
    st, _, rids = store
    side = st.root / ".index.stats"
    raw = side.read_bytes()
    digest, _, payload = raw.partition(b"\n")
    body = json.loads(payload)
    if damage == "truncated":
        side.write_bytes(raw[: len(raw) // 2])
    elif damage == "forged_row":  # a row the index does not hold, digest left as it was
        body["run"]["run_forged"] = [1, 2]
        side.write_bytes(digest + b"\n" + json.dumps(body).encode())
    else:  # consistent file, but for another index file
        import hashlib

        body["index"][1] += 1
        payload = json.dumps(body).encode()
        side.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    read = index.read_stats(st.layout)
    assert not read.from_sidecar
    assert "run_forged" not in read.stats["run"] and set(read.stats["run"]) == set(rids)


@pytest.mark.parametrize("how", ["edited", "removed", "touched"])
def test_a_manifest_changed_after_the_sidecar_is_noticed(store, how):
    st, tids, rids = store
    victim = st.layout.run_dir(rids[2]) / "manifest.json"
    if how == "edited":
        raw = json.loads(victim.read_text())
        raw["metrics"]["llc_mean"] = 99.0  # checksum no longer matches
        victim.write_text(json.dumps(raw))
    elif how == "removed":
        victim.unlink()
    else:  # same bytes, new mtime: read and checked again, still complete
        st_ = victim.stat()
        os.utime(victim, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10**9))
    assert index.read_stats(st.layout).from_sidecar  # the index file itself did not change
    snap = st.snapshot(tids, rids)
    assert (rids[2] in snap.run_ids) == (how == "touched")
    rep = st.reconcile()
    assert (rids[2] in rep.complete["run"]) == (how == "touched")
    if how == "edited":
        assert [w.name.split("-")[0] for w, _ in rep.quarantined] == [rids[2]]
    after = st.snapshot(tids, rids)
    assert after == st.snapshot(tids, rids, complete=st.reconcile().complete)


def test_snapshot_from_a_reconcile_equals_a_snapshot_of_its_own(store):
    st, tids, rids = store
    rep = st.reconcile()
    ours = st.snapshot(tids + ["tgt_not_there"], rids[1:] + ["run_not_there"], complete=rep.complete)
    theirs = st.snapshot(tids + ["tgt_not_there"], rids[1:] + ["run_not_there"])
    assert ours == theirs and ours.state == theirs.state and ours.state
    assert ours.run_ids == frozenset(rids[1:])


def test_noop_execute_in_a_new_process_loads_no_duckdb(tmp_path):
    root = tmp_path / "store"
    fill_store(root)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    req = ExecuteRequest(sweep_path=sweep, store=str(root), logs=tmp_path / "logs", results=tmp_path / "r.parquet")
    execute(req, Console(file=open(os.devnull, "w")))  # indexes the store, writes the results
    age_index(Store(root))
    execute(req, Console(file=open(os.devnull, "w")))  # in step: leaves the sidecar
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "300"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lambda_hat.cli", "execute", str(sweep),
                           "--store", str(root), "--logs", str(tmp_path / "logs"), "--results", str(tmp_path / "r.parquet")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "nothing to do" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "lambda_hat.store.index" in modules  # the measurement saw the store being used
    assert not {m for m in modules if m.split(".")[0] in ("duckdb", "pyarrow", "numpy", "jax", "parsl")}


def test_an_index_from_before_the_per_example_tables_is_queried_then_upgraded(store):
    """An index and its version-2 sidecar as the previous lambda-hat left them (no `examples`,
    no `influence` table): `lh query` failed on every statement ("made by another lambda-hat
    version"), and the reconcile trusted the sidecar, so nothing repaired it short of `lh index
    rebuild`. Now the views of a missing table are empty, and the next reconcile refills."""
    import duckdb

    from lambda_hat.results import run_query

    st, tids, rids = store
    con = duckdb.connect(str(st.layout.index_path))
    con.execute("DROP TABLE examples")
    con.execute("DROP TABLE influence")
    con.close()
    age_index(st)
    sidecar = st.root / ".index.stats"
    body = json.loads(sidecar.read_bytes().partition(b"\n")[2])
    payload = json.dumps({**body, "version": 2, "index": list(index._identity(st.layout))}).encode()
    sidecar.write_bytes(hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)  # as the old version wrote it
    assert run_query(st, "select count(*) as n from runs").rows == [(len(rids),)]
    assert run_query(st, "select count(*) as n from influence").rows == [(0,)]
    st.reconcile()
    con = duckdb.connect(str(st.layout.index_path), read_only=True)
    tables = {r[0] for r in con.execute("select table_name from duckdb_tables()").fetchall()}
    runs = con.execute("select count(*) from runs").fetchone()[0]
    con.close()
    assert {"examples", "influence", "traces"} <= tables and runs == len(rids)
