"""Nothing damaged is counted as done (issue 28, items 4-5): an artifact whose arrays file was
edited, truncated or removed, or whose manifest was edited with its size and mtime kept, is not
cached for the planner, and the execute's reconcile quarantines it so that it is made again.
What the planner pays for it: two stats per artifact, no file read, while nothing changed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from lambda_hat.planner import plan
from lambda_hat.store import artifacts
from lambda_hat.store.layout import ARRAYS_ZIP, MANIFEST
from lambda_hat.store.store import Store
from test_store import fill_store


def keep_stat(path: Path, change) -> None:
    """`change(path)`, then the size (where the change kept it) and mtime put back, as bit rot
    or a careful forger would leave them."""
    st = os.stat(path)
    change(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))


def flip_a_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    keep_stat(path, lambda p: p.write_bytes(bytes(data)))
    assert os.stat(path).st_size == len(data)


def truncate(path: Path) -> None:
    keep_stat(path, lambda p: p.write_bytes(p.read_bytes()[:-9]))


def remove(path: Path) -> None:
    path.unlink()


def edit_manifest_digit(run_dir: Path) -> None:
    m = run_dir / MANIFEST
    text = m.read_text()
    assert '"llc_mean": 2.0' in text
    keep_stat(m, lambda p: p.write_text(text.replace('"llc_mean": 2.0', '"llc_mean": 7.0', 1)))


DAMAGE = {
    "arrays byte flipped": lambda d: flip_a_byte(d / ARRAYS_ZIP),
    "arrays truncated": lambda d: truncate(d / ARRAYS_ZIP),
    "arrays removed": lambda d: remove(d / ARRAYS_ZIP),
    "manifest digit edited": edit_manifest_digit,
}


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    st.reconcile()  # indexed: the planner takes the index's word for what did not change
    return st, ex


@pytest.mark.parametrize("how", sorted(DAMAGE))
def test_a_damaged_run_is_not_cached_and_is_quarantined(store, how):
    st, ex = store
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
    victim = rids[2]
    DAMAGE[how](st.layout.run_dir(victim))
    # `lh plan`: the index's snapshot
    p = plan(ex, st.snapshot(tids, rids))
    assert [r.run_id for r in p.runs_to_sample] == [victim]
    assert not p.nothing_to_do
    # `lh execute`: its reconcile quarantines it, and the snapshot made from the reconcile agrees
    rep = st.reconcile()
    assert [w.name.split("-")[0] for w, _ in rep.quarantined] == [victim], rep.quarantined
    assert victim not in rep.complete["run"] and not st.layout.run_dir(victim).exists()
    p = plan(ex, st.snapshot(tids, rids, complete=rep.complete))
    assert [r.run_id for r in p.runs_to_sample] == [victim]
    assert [r.run_id for r in plan(ex, st.snapshot(tids, rids)).runs_to_sample] == [victim]


def test_a_damaged_target_is_not_cached(store):
    st, ex = store
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
    flip_a_byte(st.layout.target_dir(tids[1]) / ARRAYS_ZIP)
    assert plan(ex, st.snapshot(tids, rids)).targets_to_build == [ex.targets[1]]
    rep = st.reconcile()
    assert tids[1] not in rep.complete["target"]


def test_unchanged_artifacts_are_counted_without_reading_their_arrays(store, monkeypatch):
    st, ex = store
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]

    def no_reading(*args):
        raise AssertionError("an unchanged artifact's files were hashed")

    monkeypatch.setattr(artifacts, "_sha256", no_reading)
    snap = st.snapshot(tids, rids)
    assert snap.run_ids == frozenset(rids) and snap.target_ids == frozenset(tids)
    assert set(st.reconcile().complete["run"]) == set(rids)


def test_a_touched_but_intact_artifact_is_checked_once_and_still_counted(store, monkeypatch):
    st, ex = store
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
    arrays = st.layout.run_dir(rids[1]) / ARRAYS_ZIP
    keep_stat(arrays, lambda p: p.write_bytes(p.read_bytes()))  # same bytes, a new ctime
    hashed = []
    real = artifacts._sha256
    monkeypatch.setattr(artifacts, "_sha256", lambda path: hashed.append(Path(path).parent.name) or real(path))
    assert st.snapshot(tids, rids).run_ids == frozenset(rids)
    assert hashed == [rids[1]]  # only what changed was read
    rep = st.reconcile()  # recorded with its new stamp: later plans trust it again
    assert not rep.quarantined and rep.indexed == 1
    hashed.clear()
    assert st.snapshot(tids, rids).run_ids == frozenset(rids) and hashed == []
