"""`index.aligned_stats`, the snapshot's columnar read of the index: for every requested ID, in
order, the (manifest size, mtime) that `indexed_stats` holds for it, NOT_INDEXED where it holds
none; the same from DuckDB and from the `.index.stats` sidecar."""

from __future__ import annotations

import os
import time

from lambda_hat.store import index
from lambda_hat.store.store import Store
from test_store import fill_store


def expected(stats: dict[str, tuple], ids: list[str]) -> list[tuple[int, int]]:
    def known(v):
        return index.NOT_INDEXED if v is None else v

    return [tuple(map(known, stats.get(i, (None, None)))) for i in ids]


def requests(st: Store) -> dict[str, list[str]]:
    tids, rids = st.ids("target"), st.ids("run")
    # Out of order, repeated, unknown, and non-ASCII IDs (byte offsets differ from character ones).
    return {"target": [tids[-1], "tgt_ünknown☃", *tids, tids[0]],
            "run": ["run_000000000000", *reversed(rids), "run_ü", rids[1], ""]}


def test_aligned_stats_match_indexed_stats(tmp_path):
    fill_store(tmp_path / "s")
    st = Store(tmp_path / "s")
    st.reconcile()
    # A row without a manifest stat (recorded before stats were known) is not indexed either.
    bare = st.record_manifest("run", st.ids("run")[0])
    index.write(st.layout, [index.Record(bare.manifest)])
    stats = index.indexed_stats(st.layout)
    assert stats["run"][bare.manifest.id] == (None, None)
    req = requests(st)
    got = index.aligned_stats(st.layout, req)
    assert not index.read_stats(st.layout).from_sidecar  # this answer came from DuckDB
    for kind, ids in req.items():
        sizes, mtimes = got[kind]
        assert list(zip(sizes, mtimes)) == expected(stats[kind], ids)
        assert index.NOT_INDEXED in sizes and any(s != index.NOT_INDEXED for s in sizes)  # both kinds of answer


def test_aligned_stats_from_the_sidecar(tmp_path):
    fill_store(tmp_path / "s")
    st = Store(tmp_path / "s")
    st.reconcile()
    t = time.time() - 60
    os.utime(st.layout.index_path, (t, t))
    st.reconcile()  # in step and old enough: leaves the sidecar
    assert index.read_stats(st.layout).from_sidecar
    req = requests(st)
    from_sidecar = index.aligned_stats(st.layout, req)
    index.forget_stats(st.layout)
    from_duckdb = index.aligned_stats(st.layout, req)
    assert from_sidecar == from_duckdb
    assert list(zip(*from_duckdb["run"])) == expected(index.indexed_stats(st.layout)["run"], req["run"])


def test_aligned_stats_without_an_index(tmp_path):
    fill_store(tmp_path / "s")
    st = Store(tmp_path / "s")
    got = index.aligned_stats(st.layout, {"target": st.ids("target"), "run": []})
    assert list(got["target"][0]) == [index.NOT_INDEXED] * len(st.ids("target")) and list(got["run"][1]) == []
