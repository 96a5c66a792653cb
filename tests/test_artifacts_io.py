"""The artifact writer's on-disk contract: standard Zarr v3 that plain zarr reads, old stores
still readable, every byte durable before the manifest, checksums that match the disk, and
verification that re-reads the files every time."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.store import artifacts
from lambda_hat.store.artifacts import read_arrays, read_manifest, verify, write_artifact
from lambda_hat.store.manifest import Manifest
from lambda_hat.store.store import Store, check_manifest
from lambda_hat.sweep import sweep_from_dict

OLD_STORE = Path(__file__).parent / "data" / "store-0.2-zarr-nested"  # written by lambda-hat 0.2's writer (c/0/0 chunks)
OLD_TARGET, OLD_RUN = "tgt_ced0f1aa653f", "run_f0f4429d39a2"

ARRAYS = {
    "params/W_0": np.arange(6.0).reshape(2, 3),
    "params/deep/b": np.array([-1.5, np.inf, np.nan]),
    "X": np.linspace(0, 1, 8, dtype=np.float32).reshape(4, 2),
    "scalar": np.float64(2.5),
    "mask": np.array([True, False, True]),
    "counts": np.arange(4, dtype=np.int64).reshape(2, 2),
    "fortran": np.asfortranarray(np.arange(12.0).reshape(3, 4)),
}


def _target(tmp_path: Path) -> tuple[Path, Manifest]:
    t = expand(sweep_from_dict({"targets": [{"model": "small", "data": "small"}], "samplers": [{"name": "sgld"}]})).targets[0]
    return tmp_path / "targets" / t.target_id, Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec))


def _assert_same(got: dict, want: dict) -> None:
    assert set(got) == set(want)
    for k, v in want.items():
        v = np.ascontiguousarray(v)  # as stored since 0.1: a NumPy scalar is kept as shape (1,)
        assert got[k].dtype == v.dtype and got[k].shape == v.shape, k
        np.testing.assert_array_equal(got[k], v, err_msg=k)


def test_written_artifact_is_plain_zarr_v3_and_reads_back(tmp_path):
    d, m = _target(tmp_path)
    out = write_artifact(d, ARRAYS, m)
    assert out.arrays == {k: list(np.ascontiguousarray(v).shape) for k, v in ARRAYS.items()}
    # zarr's own synchronous API, not our reader, finds every array with its dtype and values.
    root = zarr.open_group(str(d), mode="r", zarr_format=3)
    _assert_same({k: np.asarray(root[k][...]) for k in ARRAYS}, ARRAYS)
    _assert_same(read_arrays(d, list(ARRAYS)), ARRAYS)
    assert verify(d, "target") == []
    with pytest.raises(KeyError):
        read_arrays(d, ["X", "no_such_array"])


def test_manifest_checksums_are_those_of_the_files_on_disk(tmp_path):
    d, m = _target(tmp_path)
    out = write_artifact(d, ARRAYS, m)
    on_disk = {p.relative_to(d).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
               for p in d.rglob("*") if p.is_file() and p.name != "manifest.json"}
    assert out.checksums == on_disk
    assert read_manifest(d).checksums == on_disk
    # one zarr.json per group and array, one chunk file per array
    n_groups = 3  # root, params, params/deep
    assert len(on_disk) == n_groups + 2 * len(ARRAYS)


def test_store_written_by_lambda_hat_0_2_still_reads_and_verifies(tmp_path):
    root = tmp_path / "store"
    shutil.copytree(OLD_STORE, root)
    st = Store(root)
    tdir, rdir = st.layout.target_dir(OLD_TARGET), st.layout.run_dir(OLD_RUN)
    assert (tdir / "X" / "c" / "0" / "0").is_file()  # the old nested chunk layout
    assert verify(tdir, "target") == [] and verify(rdir, "run") == []
    check_manifest(tdir, "target")
    want = {"params/W_0": np.arange(6.0).reshape(2, 3), "X": np.linspace(0, 1, 8).reshape(4, 2),
            "Y": np.arange(4.0).reshape(4, 1), "scalar": np.float64(2.5), "mask": np.array([True, False, True])}
    _assert_same(read_arrays(tdir, list(read_manifest(tdir).arrays)), want)
    traces = st.read_traces(OLD_RUN)
    np.testing.assert_array_equal(traces["loss"], np.arange(8.0).reshape(2, 4))
    np.testing.assert_array_equal(traces["diverging"], [[False, True], [True, False]])
    report = st.verify()
    assert report.ok and report.checked == 2, report.findings
    # damage in the old layout is still found
    chunk = tdir / "X" / "c" / "0" / "0"
    chunk.write_bytes(bytes(len(chunk.read_bytes())))
    assert verify(tdir, "target") == ["checksum mismatch X/c/0/0"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="names fsynced descriptors through /proc/self/fd")
def test_every_file_and_directory_is_fsynced_before_the_manifest_and_the_rename(tmp_path, monkeypatch):
    d, m = _target(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(src)))
        return real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    monkeypatch.setattr(artifacts.os, "rename", rename)
    tmp_seen = []
    write_artifact(d, ARRAYS, m, before_manifest=lambda tmp: (tmp_seen.append(tmp.resolve()),
                                                              events.append(("manifest", ""))))
    tmp = tmp_seen[0]
    before = {p for e, p in events[:events.index(("manifest", ""))] if e == "fsync"}
    final = d.resolve()
    data_files = {str(tmp / p.relative_to(final)) for p in final.rglob("*") if p.name != "manifest.json"}
    assert data_files <= before, sorted(data_files - before)  # every file and directory below tmp
    assert str(tmp) in before
    i_rename = next(i for i, (e, _) in enumerate(events) if e == "rename")
    synced_before_rename = {p for e, p in events[:i_rename] if e == "fsync"}
    assert {str(tmp / "manifest.json"), str(tmp)} <= synced_before_rename
    assert ("fsync", str(final.parent)) in events[i_rename:]  # the rename itself made durable


def test_verify_rereads_the_files_every_time(tmp_path):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    assert verify(d, "target") == [] and verify(d, "target") == []
    chunk = next(p for p in sorted((d / "X").iterdir()) if p.name != "zarr.json")
    chunk.write_bytes(bytes(len(chunk.read_bytes())))  # same size, same manifest: only the hash can tell
    assert verify(d, "target") == [f"checksum mismatch X/{chunk.name}"]
    chunk.unlink()
    assert verify(d, "target") == [f"missing X/{chunk.name}"]


def test_verify_sees_an_edited_manifest_after_a_clean_verify(tmp_path):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    assert verify(d, "target") == []
    raw = json.loads((d / "manifest.json").read_text())
    raw["metrics"]["L0"] = 1.0
    (d / "manifest.json").write_text(json.dumps(raw))
    assert verify(d, "target") == ["manifest checksum mismatch (manifest.json was edited)"]
    # the same manifest text under another directory name is judged for that name
    other = d.parent / "tgt_000000000000"
    d.rename(other)
    problems = verify(other, "target")
    assert any("not the directory's name" in p for p in problems)


def test_a_failed_write_leaves_no_directory_behind(tmp_path):
    d, m = _target(tmp_path)
    with pytest.raises(RuntimeError):
        write_artifact(d, ARRAYS, m, before_manifest=lambda tmp: (_ for _ in ()).throw(RuntimeError("crash")))
    assert not d.exists() and list(d.parent.iterdir()) == []
