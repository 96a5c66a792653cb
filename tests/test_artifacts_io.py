"""The artifact writer's on-disk contract: standard Zarr v3 that plain zarr reads, old stores
still readable, every byte durable before the manifest, checksums that match the disk, and
verification that re-reads the files every time."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.store import artifacts
from lambda_hat.store.artifacts import read_arrays, read_manifest, verify, write_artifact
from lambda_hat.store.layout import ARRAYS_ZIP
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


def test_written_artifact_reads_back_and_verifies(tmp_path):
    d, m = _target(tmp_path)
    out = write_artifact(d, ARRAYS, m)
    assert out.arrays == {k: list(np.ascontiguousarray(v).shape) for k, v in ARRAYS.items()}
    _assert_same(read_arrays(d, list(ARRAYS)), ARRAYS)
    assert verify(d, "target") == []
    with pytest.raises(KeyError):
        read_arrays(d, ["X", "no_such_array"])


def test_arrays_are_one_zip_that_zarr_reads_and_the_manifest_checksums_it(tmp_path):
    d, m = _target(tmp_path)
    out = write_artifact(d, ARRAYS, m)
    assert sorted(p.name for p in d.iterdir()) == [ARRAYS_ZIP, "manifest.json"]
    packed = d / ARRAYS_ZIP
    assert out.checksums == read_manifest(d).checksums == {ARRAYS_ZIP: hashlib.sha256(packed.read_bytes()).hexdigest()}
    # zarr's own ZipStore and synchronous API, not our reader
    store = zarr.storage.ZipStore(packed, mode="r")
    root = zarr.open_group(store, mode="r", zarr_format=3)
    _assert_same({k: np.asarray(root[k][...]) for k in ARRAYS}, ARRAYS)
    store.close()
    # members: one zarr.json per group (root, params, params/deep) and array, one chunk per array
    with zipfile.ZipFile(packed) as zf:
        names = zf.namelist()
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
    assert len(names) == 3 + 2 * len(ARRAYS) and "params/deep/zarr.json" in names


def test_same_arrays_give_the_same_bytes_in_another_process(tmp_path):
    d, m = _target(tmp_path / "here")
    write_artifact(d, ARRAYS, m)
    code = ("import sys, numpy as np; from pathlib import Path; import tests.test_artifacts_io as t; "
            "d, m = t._target(Path(sys.argv[1])); t.write_artifact(d, t.ARRAYS, m)")
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "there")], check=True, cwd=Path(__file__).parents[1],
                   env={**os.environ, "PYTHONHASHSEED": "7"})
    there = tmp_path / "there" / "targets" / d.name
    assert (there / ARRAYS_ZIP).read_bytes() == (d / ARRAYS_ZIP).read_bytes()


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
def test_data_is_fsynced_before_the_manifest_and_everything_before_the_rename(tmp_path, monkeypatch):
    d, m = _target(tmp_path)
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, os.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst):
        events.append(("rename", str(Path(src).resolve())))
        return real_rename(src, dst)

    monkeypatch.setattr(artifacts.os, "fsync", fsync)
    monkeypatch.setattr(artifacts.os, "rename", rename)
    write_artifact(d, ARRAYS, m, before_manifest=lambda tmp: events.append(("manifest", str(tmp.resolve()))))
    i_manifest = next(i for i, (e, _) in enumerate(events) if e == "manifest")
    i_rename = next(i for i, (e, _) in enumerate(events) if e == "rename")
    tmp = Path(events[i_manifest][1])
    assert events[i_rename][1] == str(tmp) and i_manifest < i_rename
    assert ("fsync", str(tmp / ARRAYS_ZIP)) in events[:i_manifest]
    assert {("fsync", str(tmp / "manifest.json")), ("fsync", str(tmp))} <= set(events[i_manifest:i_rename])
    assert events[i_rename + 1:] == [("fsync", str(d.parent.resolve()))]  # the rename itself made durable


def test_verify_rereads_the_files_every_time(tmp_path):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    assert verify(d, "target") == [] and verify(d, "target") == []
    packed = d / ARRAYS_ZIP
    data = bytearray(packed.read_bytes())
    data[len(data) // 2] ^= 1  # same size, same manifest, same stat size: only the hash can tell
    packed.write_bytes(bytes(data))
    assert verify(d, "target") == [f"checksum mismatch {ARRAYS_ZIP}"]
    packed.unlink()
    assert verify(d, "target") == [f"missing {ARRAYS_ZIP}"]


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


def test_sizes_by_array_add_up_to_the_files_in_both_layouts(tmp_path):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    old = tmp_path / "old"
    shutil.copytree(OLD_STORE / "targets" / OLD_TARGET, old)
    for where, names in ((d, list(ARRAYS)), (old, list(read_manifest(old).arrays))):
        sizes = artifacts.sizes_by_array(where, names)
        assert sum(sizes.values()) == sum(p.stat().st_size for p in where.rglob("*") if p.is_file())
        assert set(names) <= set(sizes) and all(sizes[n] > 0 for n in names)
        assert sizes["manifest.json"] == (where / "manifest.json").stat().st_size
    # float64 (4 × 2) in the new layout: its chunk and zarr.json stored, never less than the data
    assert artifacts.sizes_by_array(d, ["X"])["X"] >= 4 * 2 * 4


def test_load_verified_reads_what_verify_and_read_arrays_read_in_both_layouts(tmp_path):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    manifest, arrays = artifacts.load_verified(d, "target")
    assert manifest.id == d.name
    _assert_same(arrays, ARRAYS)
    root = tmp_path / "old"
    shutil.copytree(OLD_STORE, root)
    old = Store(root).layout.target_dir(OLD_TARGET)
    manifest, arrays = artifacts.load_verified(old, "target")
    _assert_same(arrays, read_arrays(old, list(read_manifest(old).arrays)))
    (old / "X" / "c" / "0" / "0").write_bytes(b"\0" * 8)
    with pytest.raises(artifacts.ArtifactError, match="checksum mismatch X/c/0/0"):
        artifacts.load_verified(old, "target")


@pytest.mark.parametrize("damage, reason", [
    ("flip a byte", f"checksum mismatch {ARRAYS_ZIP}"),
    ("extra file", "unexpected extra.bin"),
    ("no arrays", f"missing {ARRAYS_ZIP}"),
    ("edit manifest", "manifest checksum mismatch"),
    ("no manifest", "incomplete artifact"),
    ("wrong kind", "a target manifest in the runs directory"),
])
def test_load_verified_refuses_what_verify_refuses(tmp_path, damage, reason):
    d, m = _target(tmp_path)
    write_artifact(d, ARRAYS, m)
    kind = "target"
    packed, manifest = d / ARRAYS_ZIP, d / "manifest.json"
    if damage == "flip a byte":
        data = bytearray(packed.read_bytes())
        data[len(data) // 2] ^= 1
        packed.write_bytes(bytes(data))
    elif damage == "extra file":
        (d / "extra.bin").write_bytes(b"x")
    elif damage == "no arrays":
        packed.unlink()
    elif damage == "edit manifest":
        raw = json.loads(manifest.read_text())
        raw["metrics"] = {"L0": 0.0}
        manifest.write_text(json.dumps(raw))
    elif damage == "no manifest":
        manifest.unlink()
    else:
        kind = "run"
    assert any(reason in p for p in verify(d, kind)) or damage == "no manifest"
    with pytest.raises(artifacts.ArtifactError, match=reason):
        artifacts.load_verified(d, kind)
