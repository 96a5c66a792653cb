"""A no-op `lh execute` (everything already in the store) leaves a results file alone when it
is what the store would give again, and writes it again whenever anything it is made of moved:
a manifest, the file itself, its record of where it came from."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest
import yaml
from rich.console import Console

from lambda_hat.execute.driver import ExecuteRequest, execute
from lambda_hat.store.store import Store
from test_store import SWEEP, fill_store


@pytest.fixture
def done(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text(yaml.safe_dump(SWEEP))
    req = ExecuteRequest(sweep_path=sweep, store=str(root), logs=tmp_path / "logs",
                         results=tmp_path / "results" / "runs.parquet")
    return req, ex


def noop(req: ExecuteRequest) -> str:
    out = Console(record=True, width=300)
    result = execute(req, out)
    text = out.export_text()
    assert result.exit_code == 0 and "nothing to do" in text, text
    return text


def stamp(path):
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def rows(path):
    return pq.read_table(path).to_pylist()


def test_noop_execute_keeps_an_in_step_results_file_and_rewrites_a_stale_one(done, tmp_path):
    req, ex = done
    out = req.results
    assert "4 rows" in noop(req)
    first = rows(out)
    assert [r["run_id"] for r in first] == [r.run_id for r in ex.runs]
    kept = stamp(out)

    assert "4 rows" in noop(req)
    assert stamp(out) == kept  # nothing changed: not written again

    # A manifest touched (same content, new mtime): the store may hold something else now.
    m = Store(req.store).layout.run_dir(ex.runs[1].run_id) / "manifest.json"
    os.utime(m, ns=(m.stat().st_atime_ns, m.stat().st_mtime_ns + 10**9))
    noop(req)
    assert stamp(out) != kept and rows(out) == first
    kept = stamp(out)

    # The results file replaced by something else: written again.
    out.write_bytes(b"not parquet")
    assert "4 rows" in noop(req)
    assert rows(out) == first
    kept = stamp(out)

    # Its record of where it came from gone: written again.
    for side in out.parent.glob(f".{out.name}.*"):
        side.unlink()
    os.utime(out, ns=(kept[1] - 10**9, kept[1] - 10**9))
    noop(req)
    assert stamp(out) != (kept[0], kept[1] - 10**9) and rows(out) == first


def test_another_sweep_into_the_same_results_file_is_written(done, tmp_path):
    req, ex = done
    noop(req)
    kept = stamp(req.results)
    one_target = dict(SWEEP, targets=[{**SWEEP["targets"][0], "grid": {"seed": [1]}}])  # half the runs
    sweep2 = tmp_path / "sweep2.yaml"
    sweep2.write_text(yaml.safe_dump(one_target))
    req2 = ExecuteRequest(sweep_path=sweep2, store=req.store, logs=req.logs, results=req.results)
    noop(req2)
    assert stamp(req.results) != kept
    assert len(rows(req.results)) == len(ex.runs) // 2


def test_a_results_file_edited_with_its_size_and_mtime_kept_is_written_again(done):
    """Issue 28: the no-op trusts the results file only by the sha256 of the bytes it wrote,
    never by size and mtime (what an edit can keep, and bit rot always does)."""
    req, ex = done
    noop(req)
    first = rows(req.results)
    data = bytearray(req.results.read_bytes())
    data[len(data) // 2] ^= 0x01
    kept = stamp(req.results)
    req.results.write_bytes(bytes(data))
    os.utime(req.results, ns=(kept[1], kept[1]))
    assert stamp(req.results) == kept
    noop(req)
    assert req.results.read_bytes() != bytes(data) and rows(req.results) == first


def test_a_fifo_in_place_of_the_results_file_is_refused_not_read(done):
    req, _ = done
    noop(req)
    req.results.unlink()
    os.mkfifo(req.results)
    out = Console(record=True, width=300)
    from lambda_hat.errors import BadInput

    with pytest.raises(BadInput, match="FIFO"):
        execute(req, out)  # refused before anything is read (a FIFO would block the digest's read)
