"""Store.snapshot answers the same whichever way it finds the artifacts: the index's word with
one stat per ID, or a listing of the directory first (when many IDs are not indexed), and
whether the IDs are stat'ed in one chunk or in many across threads."""

from __future__ import annotations

import os

import pytest

from lambda_hat.store import store as store_module
from lambda_hat.store.store import Store
from test_store import fill_store


@pytest.mark.parametrize("chunk", [2048, 2], ids=["one-chunk", "threaded-chunks"])
@pytest.mark.parametrize("listing_above", [0, 10**9], ids=["listing", "stat-only"])
@pytest.mark.parametrize("indexed", [True, False], ids=["indexed", "no-index"])
def test_snapshot_is_the_same_with_or_without_a_listing(tmp_path, monkeypatch, listing_above, indexed, chunk):
    monkeypatch.setattr(store_module, "LISTING_ABOVE", listing_above)
    monkeypatch.setattr(store_module, "STAT_CHUNK", chunk)
    ex, _ = fill_store(tmp_path / "store")
    st = Store(tmp_path / "store")
    if indexed:
        st.reconcile()
    tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
    (st.layout.run_dir(rids[0]) / "manifest.json").unlink()  # incomplete
    (st.layout.run_dir(rids[1]) / "manifest.json").write_text("{not json")  # damaged
    absent = ["run_000000000000", "tgt_000000000000"]
    snap = st.snapshot(tids + absent[1:], rids + absent[:1])
    assert snap.target_ids == frozenset(tids)
    assert snap.run_ids == frozenset(rids[2:])
    again = st.snapshot(tids, rids)
    assert again.state == snap.state  # the absent IDs add nothing to the state
    m = st.layout.run_dir(rids[2]) / "manifest.json"
    os.utime(m, ns=(m.stat().st_atime_ns, m.stat().st_mtime_ns + 10**9))
    assert st.snapshot(tids, rids).state != snap.state
