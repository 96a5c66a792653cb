"""Atomic artifacts: a Zarr v3 group plus `manifest.json`, complete or absent.

An artifact is written into a temporary sibling directory (arrays first, then the
manifest with per-file checksums), then renamed into place. `rename` of a directory is
atomic on POSIX file systems, so a reader sees either nothing or a complete artifact; a
directory without a manifest is never treated as done. Killed writers leave only
`.tmp-*` siblings, which `clean_stale_tmp` removes.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Callable

import numpy as np

from lambda_hat.store.layout import MANIFEST

TMP_PREFIX = ".tmp-"


class ArtifactError(RuntimeError):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _checksums(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            out[p.relative_to(root).as_posix()] = _sha256(p)
    return out


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{uuid.uuid4().hex[:8]}")
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, sort_keys=True, allow_nan=True)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_arrays(group_dir: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Write `{"a/b": array}` into a Zarr v3 group at `group_dir`; returns the shapes."""
    import zarr

    root = zarr.open_group(str(group_dir), mode="w", zarr_format=3)
    shapes = {}
    for name, arr in arrays.items():
        arr = np.ascontiguousarray(arr)
        *parents, leaf = name.split("/")
        g = root
        for p in parents:
            g = g.require_group(p)
        g.create_array(leaf, data=arr, chunks=arr.shape or "auto")
        shapes[name] = list(arr.shape)
    return shapes


def read_arrays(group_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    import zarr

    root = zarr.open_group(str(group_dir), mode="r", zarr_format=3)
    return {name: np.asarray(root[name][...]) for name in names}


def write_artifact(
    final_dir: Path,
    arrays: dict[str, np.ndarray],
    manifest: dict,
    before_manifest: Callable[[Path], None] | None = None,
) -> dict:
    """Write arrays + manifest to `final_dir` atomically. Returns the manifest in the store.

    If another writer completed the same artifact first, ours is discarded and theirs is
    returned: same ID, same spec, so either is the answer.
    """
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / f"{TMP_PREFIX}{final_dir.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        manifest = dict(manifest)
        manifest["arrays"] = write_arrays(tmp, arrays)
        if before_manifest is not None:  # test hook: simulate a crash between arrays and manifest
            before_manifest(tmp)
        manifest["checksums"] = _checksums(tmp)
        write_json_atomic(tmp / MANIFEST, manifest)
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final_dir)
        except OSError as err:
            if err.errno in (errno.ENOTEMPTY, errno.EEXIST) and (final_dir / MANIFEST).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                return read_manifest(final_dir)
            raise
        _fsync_dir(final_dir.parent)
        return manifest
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest(artifact_dir: Path) -> dict:
    path = artifact_dir / MANIFEST
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        raise ArtifactError(f"{artifact_dir}: incomplete artifact (no {MANIFEST})") from None


def verify(artifact_dir: Path) -> list[str]:
    """Problems found (empty when the artifact matches its manifest's checksums)."""
    manifest = read_manifest(artifact_dir)
    expected = manifest.get("checksums", {})
    actual = _checksums(artifact_dir)
    problems = [f"missing {p}" for p in expected if p not in actual]
    problems += [f"unexpected {p}" for p in actual if p not in expected]
    problems += [f"checksum mismatch {p}" for p in expected if p in actual and actual[p] != expected[p]]
    return problems


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def clean_stale_tmp(parent: Path) -> list[Path]:
    """Remove `.tmp-*` directories left by dead writers on this host. Returns what was removed."""
    removed = []
    if not parent.is_dir():
        return removed
    host = socket.gethostname()
    for p in parent.iterdir():
        if not p.name.startswith(TMP_PREFIX):
            continue
        parts = p.name[len(TMP_PREFIX):].split("-")
        # .tmp-<id>-<host>-<pid>-<rand>; host names may contain '-'.
        if len(parts) < 4 or not parts[-2].isdigit():
            continue
        tmp_host, pid = "-".join(parts[1:-2]), int(parts[-2])
        if tmp_host == host and not _pid_alive(pid):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
            removed.append(p)
    return removed
