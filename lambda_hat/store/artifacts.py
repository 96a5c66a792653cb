"""Atomic artifacts: a Zarr v3 group plus `manifest.json`, complete or absent.

An artifact is written into a temporary sibling directory (arrays first, then the
manifest with per-file checksums and its own checksum), then renamed into place. `rename`
of a directory is atomic on POSIX file systems, so a reader sees either nothing or a
complete artifact. A directory in place without a readable manifest (an interrupted copy,
a hand edit) is incomplete: it is moved to the store's quarantine, never read as done.
Killed writers leave only `.tmp-*` siblings, which the store removes (see `store.gc`).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

if TYPE_CHECKING:  # numpy is imported where arrays are written or read: `lh plan` never needs it
    import numpy as np

from lambda_hat.faults import crash_point
from lambda_hat.store.layout import MANIFEST
from lambda_hat.store.manifest import MANIFEST_VERSION, Manifest, ManifestError, parse_manifest, self_checksum

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
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "w") as f:
            json.dump(data, f, indent=2, sort_keys=True, allow_nan=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_arrays(group_dir: Path, arrays: dict[str, np.ndarray]) -> dict[str, list[int]]:
    """Write `{"a/b": array}` into a Zarr v3 group at `group_dir`; returns the shapes."""
    import numpy as np
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
    import numpy as np
    import zarr

    root = zarr.open_group(str(group_dir), mode="r", zarr_format=3)
    return {name: np.asarray(root[name][...]) for name in names}


def tmp_name(artifact_id: str) -> str:
    return f"{TMP_PREFIX}{artifact_id}-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


class TmpOwner(NamedTuple):
    artifact_id: str
    host: str
    pid: int


def parse_tmp_name(name: str) -> TmpOwner | None:
    """`.tmp-<id>-<host>-<pid>-<rand>` (host names may contain '-'); None if not ours."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].split("-")
    if len(parts) < 4 or not parts[-2].isdigit():
        return None
    return TmpOwner(parts[0], "-".join(parts[1:-2]), int(parts[-2]))


def quarantine(path: Path, quarantine_dir: Path, reason: str) -> Path | None:
    """Move an incomplete or damaged artifact aside (same file system: a rename). Returns
    where it went, or None if it was already gone (another process moved it first)."""
    quarantine_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
    dest = quarantine_dir / f"{path.name}-{stamp}-{uuid.uuid4().hex[:6]}"
    try:
        os.rename(path, dest)
    except FileNotFoundError:
        return None
    try:
        (dest / ".quarantine-reason").write_text(reason + "\n") if dest.is_dir() else None
    except OSError:
        pass
    return dest


def write_artifact(
    final_dir: Path,
    arrays: dict[str, np.ndarray],
    manifest: Manifest,
    before_manifest: Callable[[Path], None] | None = None,
    quarantine_dir: Path | None = None,
) -> Manifest:
    """Write arrays + manifest to `final_dir` atomically. Returns the manifest in the store.

    If another writer completed the same artifact first, ours is discarded and theirs is
    returned: same ID, same spec, so either is the answer. An incomplete directory in the
    way is quarantined first.
    """
    quarantine_dir = quarantine_dir or final_dir.parent.parent / ".quarantine"
    final_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = final_dir.parent / tmp_name(final_dir.name)
    tmp.mkdir()
    try:
        shapes = write_arrays(tmp, arrays)
        if before_manifest is not None:  # test hook: simulate a crash between arrays and manifest
            before_manifest(tmp)
        crash_point("artifact:before_manifest")
        data = manifest.model_copy(
            update={"manifest_version": MANIFEST_VERSION, "arrays": shapes, "checksums": _checksums(tmp), "manifest_sha256": None}
        ).to_json_dict()
        data["manifest_sha256"] = self_checksum(data)
        write_json_atomic(tmp / MANIFEST, data)
        _fsync_dir(tmp)
        crash_point("artifact:before_rename")
        for _ in range(3):
            try:
                os.rename(tmp, final_dir)
                break
            except OSError as err:
                if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
                try:
                    theirs = read_manifest(final_dir)
                except (ArtifactError, ManifestError) as bad:
                    quarantine(final_dir, quarantine_dir, f"in the way of a new write: {bad}")
                    continue
                shutil.rmtree(tmp, ignore_errors=True)
                return theirs
        else:
            raise ArtifactError(f"{final_dir}: could not move the new artifact into place")
        _fsync_dir(final_dir.parent)
        crash_point("artifact:after_rename")
        return Manifest.model_validate(data)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_manifest_raw(artifact_dir: Path) -> tuple[Manifest, dict]:
    path = artifact_dir / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        raise ArtifactError(f"{artifact_dir}: incomplete artifact (no {MANIFEST})") from None
    except OSError as err:
        raise ArtifactError(f"{path}: unreadable ({err.strerror})") from None
    return parse_manifest(text, str(path))


def read_manifest(artifact_dir: Path) -> Manifest:
    """The artifact's manifest. Raises ArtifactError (none) or ManifestError (unreadable)."""
    return read_manifest_raw(artifact_dir)[0]


def verify(artifact_dir: Path, kind: str | None = None) -> list[str]:
    """Problems found with one artifact (empty when it is intact): a readable manifest whose
    own checksum holds, whose ID is its directory's name and the hash of its stored spec,
    and whose arrays match their checksums."""
    from lambda_hat.ids import id_of_stored_spec

    try:
        manifest, raw = read_manifest_raw(artifact_dir)
    except (ArtifactError, ManifestError) as err:
        return [str(err).removeprefix(f"{artifact_dir}: ").removeprefix(f"{artifact_dir / MANIFEST}: ")]
    problems = []
    if manifest.manifest_version >= 2:
        if raw.get("manifest_sha256") != self_checksum(raw):
            problems.append("manifest checksum mismatch (manifest.json was edited)")
    if manifest.id != artifact_dir.name:
        problems.append(f"manifest id {manifest.id} is not the directory's name")
    if kind is not None and manifest.type != kind:
        problems.append(f"a {manifest.type} manifest in the {kind}s directory")
    try:
        hashed = id_of_stored_spec(manifest.type, manifest.spec)
        if hashed != artifact_dir.name:
            problems.append(f"stored spec hashes to {hashed}, not {artifact_dir.name}")
    except ValueError as err:
        problems.append(f"stored spec does not validate: {' '.join(str(err).split())[:200]}")
    actual = _checksums(artifact_dir)
    expected = manifest.checksums
    problems += [f"missing {p}" for p in expected if p not in actual]
    problems += [f"unexpected {p}" for p in actual if p not in expected and not p.startswith(".")]
    problems += [f"checksum mismatch {p}" for p in expected if p in actual and actual[p] != expected[p]]
    return problems


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
