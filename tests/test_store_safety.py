"""A store that never lies: incomplete and damaged artifacts, corrupt or busy index,
tampering, claims between processes, gc. Real files, real DuckDB, real processes."""

import json
import multiprocessing as mp
import os
import shutil
import socket
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store import index
from lambda_hat.store.claims import Claims, Owner
from lambda_hat.store.layout import ARRAYS_ZIP
from lambda_hat.store.store import Store
from test_store import fill_store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    st.reconcile()
    return st, ex


def _ids(ex):
    return [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]


def lh(*args):
    return CliRunner().invoke(app, list(args))


def test_directory_without_manifest_is_quarantined_and_redone(store):
    st, ex = store
    tids, rids = _ids(ex)
    (st.layout.run_dir(rids[0]) / "manifest.json").unlink()  # an interrupted copy
    assert lh("verify", "--store", str(st.root)).exit_code == 1
    assert rids[0] not in st.snapshot(tids, rids).run_ids
    rep = st.reconcile()
    assert [w.name.split("-")[0] for w, _ in rep.quarantined] == [rids[0]]
    assert not st.layout.run_dir(rids[0]).exists()
    assert rids[0] not in index.indexed_stats(st.layout)["run"]  # the index no longer claims it
    assert lh("verify", "--store", str(st.root)).exit_code == 0  # quarantine is reported, not an error


def test_invalid_json_manifest_is_reported_never_a_traceback(store):
    st, ex = store
    tids, rids = _ids(ex)
    (st.layout.run_dir(rids[1]) / "manifest.json").write_text('{"id": "run_')
    result = lh("verify", "--store", str(st.root))
    assert result.exit_code == 1 and "not valid JSON" in result.stdout, result.output
    # No traceback: the runner records a clean exit's code as SystemExit, anything else as itself.
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert "Traceback" not in result.output
    result = lh("index", "rebuild", "--store", str(st.root))  # rebuilt without it, and says so
    assert result.exit_code == 1 and "2 targets, 3 runs" in result.stdout and f"left out" in result.output
    assert rids[1] in result.output
    assert rids[1] not in st.snapshot(tids, rids).run_ids  # not "cached"
    st.layout.index_path.unlink()
    assert rids[1] not in st.snapshot(tids, rids).run_ids
    rep = st.reconcile()
    assert len(rep.quarantined) == 1 and "not valid JSON" in rep.quarantined[0][1]


def test_garbage_index_is_moved_aside_and_rebuilt_quickly(store):
    st, ex = store
    st.layout.index_path.write_bytes(os.urandom(4096))
    t0 = time.monotonic()
    result = lh("query", "select count(*) from runs", "--store", str(st.root))
    assert result.exit_code == 2 and "lh index rebuild" in result.stderr
    rep = st.reconcile()
    assert rep.index_moved_aside is not None and rep.index_moved_aside.exists()
    assert time.monotonic() - t0 < 10
    assert len(index.indexed_stats(st.layout)["run"]) == 4
    st.layout.index_path.write_bytes(b"garbage")
    result = lh("index", "rebuild", "--store", str(st.root))
    assert result.exit_code == 0 and "2 targets, 4 runs" in result.stdout


HOLD = "import duckdb, sys, time; c = duckdb.connect(sys.argv[1], read_only=True); print('held', flush=True); time.sleep(float(sys.argv[2]))"


def test_reader_holding_the_index_delays_records_never_loses_them(store):
    from rich.console import Console

    from lambda_hat.execute.driver import Recorder

    st, ex = store
    st.layout.index_path.unlink()
    st.rebuild_index()
    with index.writer(st.layout) as (con, _):
        con.execute("DELETE FROM runs")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(st.layout.index_path), "4"], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    out = Console(record=True, width=200)
    rec = Recorder(st, st.claims(), out)
    for r in ex.runs:
        rec.add(st.record_manifest("run", r.run_id))
    t0 = time.monotonic()
    assert rec.flush(timeout_s=0.5) is False  # busy: kept, not raised
    assert time.monotonic() - t0 < 3
    assert "held by another process" in out.export_text()
    left = rec.close(final_wait_s=20)  # retries until the reader lets go
    holder.wait()
    assert left == 0
    assert set(index.indexed_stats(st.layout)["run"]) == {r.run_id for r in ex.runs}


def test_tampering_is_detected(store):
    st, ex = store
    tids, rids = _ids(ex)
    d = st.layout.run_dir(rids[2])
    m = json.loads((d / "manifest.json").read_text())
    m["metrics"]["llc_mean"] = 123.0
    (d / "manifest.json").write_text(json.dumps(m))
    d2 = st.layout.run_dir(rids[3])
    m2 = json.loads((d2 / "manifest.json").read_text())
    m2["id"] = rids[2]
    (d2 / "manifest.json").write_text(json.dumps(m2))
    d3 = st.layout.target_dir(tids[0])
    chunk = d3 / ARRAYS_ZIP
    chunk.write_bytes(b"\0" * len(chunk.read_bytes()))
    result = lh("verify", "--store", str(st.root))
    assert result.exit_code == 1
    assert "manifest checksum mismatch" in result.stdout
    assert "not the directory's name" in result.stdout
    assert f"checksum mismatch {ARRAYS_ZIP}" in result.stdout
    # The edited manifests no longer count as done; the damaged target is caught by the worker.
    assert st.snapshot(tids, rids).run_ids == frozenset(rids[:2])


def test_worker_refuses_a_damaged_target(store, tmp_path):
    from lambda_hat.execute.apps import run_sampler_job

    st, ex = store
    r = ex.runs[0]
    d = st.layout.target_dir(r.spec.target_id)
    chunk = d / ARRAYS_ZIP
    chunk.write_bytes(b"\1" * len(chunk.read_bytes()))
    st.layout.run_dir(r.run_id).rename(tmp_path / "moved")  # so the run is still to do
    from lambda_hat.errors import TargetDamaged

    with pytest.raises(TargetDamaged, match=rf"damaged \(checksum mismatch {ARRAYS_ZIP}"):
        run_sampler_job(r.spec.model_dump(mode="json"), str(st.root), str(tmp_path / "l.log"), str(tmp_path / "l.err"))
    assert not st.layout.run_dir(r.run_id).exists()


def _claim_many(args):
    claims_dir, ids, barrier = args
    barrier.wait()
    c = Claims(claims_dir)
    return [i for i in ids if c.acquire(i) is None]


def test_claims_race_between_processes_has_one_winner_per_artifact(tmp_path):
    ids = [f"run_{i:012d}" for i in range(100)]
    with mp.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(4)
        with mp.get_context("spawn").Pool(4) as pool:
            won = pool.map(_claim_many, [(tmp_path, ids, barrier)] * 4)
    # Processes have exited: their claims are stale (dead pids on this host) but were held once each.
    flat = [i for w in won for i in w]
    assert sorted(flat) == ids, (len(flat), [len(w) for w in won])


def test_stale_claims_expire(tmp_path):
    dead = subprocess.Popen(["true"])
    dead.wait()
    ghost = Claims(tmp_path, Owner(socket.gethostname(), dead.pid, "ghost"))
    assert ghost.acquire("run_a") is None
    me = Claims(tmp_path)
    assert me.holder("run_a") is None and me.acquire("run_a") is None  # dead process: taken over
    other_host = Claims(tmp_path, Owner("elsewhere", 1, "remote"), ttl_s=1.0)
    assert other_host.acquire("run_b") is None
    assert me.acquire("run_b") is not None  # alive as far as we can tell
    old = time.time() - 600
    os.utime(tmp_path / "run_b.lease", (old, old))
    assert me.acquire("run_b") is None  # its heartbeat stopped long ago
    me.release_all()
    assert not list(tmp_path.glob("*.lease"))


def test_gc_removes_dead_tmp_quarantine_orphans_and_failed(store, tmp_path):
    st, ex = store
    tids, rids = _ids(ex)
    foreign = st.layout.runs_dir / ".tmp-run_aaaaaaaaaaaa-otherhost-123-abcd1234"
    (foreign / "traces").mkdir(parents=True)
    fresh = st.layout.runs_dir / ".tmp-run_bbbbbbbbbbbb-otherhost-124-abcd1234"
    fresh.mkdir()
    old = time.time() - 7200
    for p in (foreign, foreign / "traces"):
        os.utime(p, (old, old))
    (st.layout.run_dir(rids[0]) / "manifest.json").unlink()
    st.reconcile()  # quarantines it
    failed_dir = st.layout.run_dir(rids[1])
    m = json.loads((failed_dir / "manifest.json").read_text())
    from lambda_hat.store.manifest import self_checksum

    m["status"] = "nonfinite"
    m["manifest_sha256"] = self_checksum(m)
    (failed_dir / "manifest.json").write_text(json.dumps(m))
    # An orphan: a run whose target is gone.
    st.layout.target_dir(tids[1]).rename(tmp_path / "gone-target")
    orphans = {r.run_id for r in ex.runs if r.spec.target_id == tids[1]}
    before = sorted(p.name for p in st.layout.runs_dir.iterdir())
    dry = lh("gc", "--store", str(st.root), "--dry-run", "--failed")
    assert dry.exit_code == 0 and "would remove" in dry.stdout
    assert sorted(p.name for p in st.layout.runs_dir.iterdir()) == before
    result = lh("gc", "--store", str(st.root), "--failed")
    assert result.exit_code == 0, result.stdout
    left = {p.name for p in st.layout.runs_dir.iterdir()}
    assert not foreign.exists() and fresh.exists()  # a young foreign tmp may be live
    assert not st.layout.quarantine_dir.exists() or not list(st.layout.quarantine_dir.iterdir())
    assert not (orphans & left)
    assert rids[1] not in left  # the failed run is gone, so it will be redone
    assert set(index.indexed_stats(st.layout)["run"]) <= left


def test_verify_reports_temporary_directories(store):
    st, _ = store
    dead = subprocess.Popen(["true"])
    dead.wait()
    (st.layout.targets_dir / f".tmp-tgt_cccccccccccc-{socket.gethostname()}-{dead.pid}-abcd1234").mkdir()
    result = lh("verify", "--store", str(st.root))
    assert result.exit_code == 1 and "dead writer" in result.stdout


def test_open_refuses_paths_that_are_not_stores(tmp_path):
    from lambda_hat.errors import StoreError

    f = tmp_path / "file"
    f.write_text("x")
    for bad in (f, f / "below"):
        with pytest.raises(StoreError, match="is a file"):
            Store.open(bad, create=True)
    odd = tmp_path / "odd"
    odd.mkdir()
    (odd / "runs").write_text("not a dir")
    with pytest.raises(StoreError, match="not a lambda-hat store"):
        Store.open(odd, create=True)
    assert not (odd / "targets").exists()
    result = lh("verify", "--store", str(tmp_path / "nonexistent"))
    assert result.exit_code == 2 and "no such store" in result.stderr


@pytest.mark.parametrize("bad", ["-1h", "nanh", "1e400s", "inf", "-0.5"])
def test_gc_refuses_a_duration_that_is_not_one(store, bad):
    """Issue 28, item 15: these were accepted (a negative age removes everything at once)."""
    st, _ = store
    dead = st.layout.runs_dir / ".tmp-run_aaaaaaaaaaaa-otherhost-123-abcd1234"
    dead.mkdir()
    old = time.time() - 7200
    os.utime(dead, (old, old))
    result = lh("gc", "--store", str(st.root), f"--older-than={bad}")
    assert result.exit_code == 2 and "--older-than" in result.stderr and result.stderr.count("\n") == 1, result.output
    assert dead.exists()


def test_index_rebuild_on_a_read_only_store_is_one_line(tmp_path):
    """Issue 28, item 12: a traceback on a store the command may not write. Root writes through
    permissions, so the store is mounted read-only (a bind mount in a mount namespace of the
    command's own, as a cluster's read-only project space would be); any user can run it."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()
    before = {p: os.stat(root / p).st_mtime_ns for p in os.listdir(root)}
    script = ('mount --bind "$1" "$1" && mount -o remount,ro,bind "$1" && shift && exec "$@"')
    cmd = ["unshare", "--mount", "--map-root-user", "sh", "-c", script, "sh", str(root),
           sys.executable, "-m", "lambda_hat.cli", "index", "rebuild", "--store", str(root)]
    if os.geteuid() == 0:
        cmd.remove("--map-root-user")
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=tmp_path)
    if "unshare:" in result.stderr or "mount:" in result.stderr:
        pytest.skip(f"no private read-only mount here: {result.stderr.strip()[:200]}")
    assert result.returncode == 2, (result.returncode, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot write the index" in lines[0] and "Read-only file system" in lines[0], result.stderr
    assert {p: os.stat(root / p).st_mtime_ns for p in os.listdir(root)} == before


def test_a_busy_index_is_named_in_whole_sentences(store):
    """Issue 28, item 15: `lh index rebuild` while a query held the index printed DuckDB's
    message cut mid-sentence ("... However, you)")."""
    st, _ = store
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, duckdb\n"
        f"con = duckdb.connect({str(st.layout.index_path)!r}, read_only=True)\n"
        "print('held', flush=True)\n"
        "sys.stdin.read()\n")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(index.IndexBusy) as busy:
            st.rebuild_index(timeout_s=0.5)
    finally:
        holder.communicate("", timeout=30)
    message = str(busy.value)
    assert message.startswith(f"{st.layout.index_path}: held by another process (PID {holder.pid}, "), message
    assert message.endswith("try again when it is done (an lh query ends within its --timeout)"), message
