"""Atomic artifacts: a Zarr v3 group plus `manifest.json`, complete or absent.

The group is one file, `arrays.zarr.zip` (zarr's ZipStore layout, members stored
uncompressed: the chunks are zstd already); artifacts of lambda-hat ≤ 0.2 hold it as a
directory tree of zarr.json and chunk files, and read the same. One file rather than two per
array and group makes a tiny run's write a handful of fsyncs instead of dozens.

An artifact is written into a temporary sibling directory (arrays first, fsynced with the
directory, then the manifest with per-file checksums and its own checksum, fsynced), then
renamed into place and the parent fsynced. `rename`
of a directory is atomic on POSIX file systems, so a reader sees either nothing or a
complete artifact. A directory in place without a readable manifest (an interrupted copy,
a hand edit) is incomplete: it is moved to the store's quarantine, never read as done.
Killed writers leave only `.tmp-*` siblings, which the store removes (see `store.gc`).
"""

from __future__ import annotations

import datetime as dt
import errno
import functools
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
from lambda_hat.store.layout import ARRAYS_ZIP, MANIFEST
from lambda_hat.errors import ArtifactError, ManifestError
from lambda_hat.store.manifest import MANIFEST_VERSION, Manifest, parse_manifest, self_checksum

TMP_PREFIX = ".tmp-"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _files(root: Path) -> list[str]:
    """Every file under `root` but the manifest, as sorted relative POSIX paths (os.walk:
    pathlib's rglob cost more than hashing a tiny artifact's files)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        prefix = "" if rel == "." else rel.replace(os.sep, "/") + "/"
        out += [prefix + name for name in filenames if prefix or name != MANIFEST]
    return sorted(out)


def _checksums(root: Path) -> dict[str, str]:
    return {rel: _sha256(root / rel) for rel in _files(root)}


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# A (chain, draw, example) array (recorded per-example losses) is cut into blocks of at most this
# many draws × examples: one example's column or one draw's row reads a few chunks, not the array.
BLOCK_3D = 256


def _chunks(shape: tuple) -> tuple | str:
    if len(shape) == 3:
        return (shape[0], max(1, min(shape[1], BLOCK_3D)), max(1, min(shape[2], BLOCK_3D)))
    return shape or "auto"


def encode_arrays(arrays: dict[str, np.ndarray]) -> tuple[dict[str, memoryview], dict[str, list[int]]]:
    """The Zarr v3 group of `{"a/b": array}` as `{store key: encoded bytes}`, made by zarr in
    memory (the same bytes its LocalStore would write), and the arrays' shapes. One round
    trip to zarr's event loop for all arrays: a handoff per array and file cost more than the
    encoding itself for a tiny run, and far more while JAX workers keep the cores busy."""
    import asyncio

    import numpy as np
    import zarr.api.asynchronous as zarr_async
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    arrays = {name: np.ascontiguousarray(a) for name, a in arrays.items()}
    contents: dict = {}
    store = MemoryStore(contents)

    async def build() -> None:
        groups = {"": await zarr_async.open_group(store=store, mode="w", zarr_format=3)}
        for name in arrays:
            parts = name.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                path = "/".join(parts[:i])
                if path not in groups:
                    groups[path] = await groups["/".join(parts[:i - 1])].require_group(parts[i - 1])
        await asyncio.gather(*(
            zarr_async.create_array(store, name=name, data=a, chunks=_chunks(a.shape), zarr_format=3)
            for name, a in arrays.items()))

    sync(build())
    return ({key: memoryview(buf.as_buffer_like()).cast("B") for key, buf in contents.items()},
            {name: list(a.shape) for name, a in arrays.items()})


def write_files_durably(directory: Path, contents: dict[str, memoryview], sync_dir: bool = True) -> dict[str, str]:
    """Write `{name: bytes}` as new files in `directory`, each fsynced before returning, and
    (`sync_dir`) the directory too; returns their sha256s, computed from the bytes written
    (one pass, no re-read)."""
    checksums = {}
    for name, data in contents.items():
        fd = os.open(directory / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            view = data
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        checksums[name] = hashlib.sha256(data).hexdigest()
    if sync_dir:
        _fsync_dir(directory)
    return checksums


def zip_contents(contents: dict[str, memoryview]) -> memoryview:
    """A Zarr store's `{key: bytes}` as the bytes of a zip that zarr's ZipStore reads: members
    in key order, stored, with a fixed timestamp (same arrays, same bytes). Frees each member
    once copied, so the encoded arrays are held about once."""
    import io
    import zipfile

    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key in sorted(contents):
            zf.writestr(zipfile.ZipInfo(key, date_time=(1980, 1, 1, 0, 0, 0)), contents.pop(key))
    return buf.getbuffer()


def read_arrays(group_dir: Path, names: list[str]) -> dict[str, np.ndarray]:
    """`{name: array}` from an artifact's arrays (its `arrays.zarr.zip`, or the Zarr v3
    directory tree at `group_dir` of older artifacts and of a run's work dir), all read in one
    round trip to zarr's event loop. KeyError for a name the group lacks."""
    from zarr.storage import ZipStore

    packed = group_dir / ARRAYS_ZIP
    store = ZipStore(packed, mode="r") if packed.is_file() else str(group_dir)
    try:
        return _load_group(store, names)
    finally:
        if isinstance(store, ZipStore):
            store.close()


def _load_group(store, names: list[str]) -> dict[str, np.ndarray]:
    import asyncio

    import numpy as np
    import zarr.api.asynchronous as zarr_async
    from zarr.core.sync import sync

    async def load() -> list:
        root = await zarr_async.open_group(store=store, mode="r", zarr_format=3)

        async def one(name: str):
            return await (await root.getitem(name)).getitem(...)

        return await asyncio.gather(*(one(name) for name in names))

    return {name: np.asarray(a) for name, a in zip(names, sync(load()))}


def load_verified(artifact_dir: Path, kind: str) -> tuple[Manifest, dict[str, np.ndarray]]:
    """An intact artifact's manifest and all its arrays, checked as `verify` checks them but on
    the very bytes the arrays are decoded from: the arrays' file is read once, hashed, and
    decoded from memory, so nothing can change between the check and the read (and a worker
    reads its target once, not twice). Raises ArtifactError listing the problems."""
    import io
    import zipfile

    from zarr.core.buffer import default_buffer_prototype
    from zarr.storage import MemoryStore

    path = artifact_dir / MANIFEST
    try:
        text = read_manifest_bytes(path)
    except FileNotFoundError:
        raise ArtifactError(f"incomplete artifact (no {MANIFEST})") from None
    _, problems, expected = _manifest_problems(text, str(path), artifact_dir.name, kind)
    if expected is None or problems:
        raise ArtifactError("; ".join(problems))
    manifest, _ = parse_manifest(text, str(path))
    expected = dict(expected)
    if set(expected) != {ARRAYS_ZIP}:  # an older directory-tree artifact: check every file, then read
        problems = verify(artifact_dir, kind)
        if problems:
            raise ArtifactError("; ".join(problems))
        return manifest, read_arrays(artifact_dir, list(manifest.arrays))
    files = _files(artifact_dir)
    unexpected = [f"unexpected {p}" for p in files if p != ARRAYS_ZIP and not p.startswith(".")]
    try:
        data = (artifact_dir / ARRAYS_ZIP).read_bytes()
    except OSError:  # absent, or a directory (or a link) in its place
        there = os.path.lexists(artifact_dir / ARRAYS_ZIP)
        raise ArtifactError("; ".join([f"{ARRAYS_ZIP} is not a regular file" if there else f"missing {ARRAYS_ZIP}",
                                       *unexpected])) from None
    if hashlib.sha256(data).hexdigest() != expected[ARRAYS_ZIP]:
        unexpected.insert(0, f"checksum mismatch {ARRAYS_ZIP}")
    if unexpected:
        raise ArtifactError("; ".join(unexpected))
    buffer = default_buffer_prototype().buffer
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        contents = {info.filename: buffer.from_bytes(zf.read(info)) for info in zf.infolist()}
    del data
    return manifest, _load_group(MemoryStore(contents, read_only=True), list(manifest.arrays))


def sizes_by_array(artifact_dir: Path, arrays: list[str]) -> dict[str, int]:
    """Bytes on disk per array of `arrays` (its Zarr metadata and chunks together), and per
    other file (the manifest), in either layout: members of `arrays.zarr.zip` count at their
    stored size, the zip's own headers under its name."""
    import zipfile

    def owner(rel: str) -> str:
        return next((a for a in arrays if rel.startswith(a + "/")), rel)

    sizes: dict[str, int] = {}
    for rel in [*_files(artifact_dir), MANIFEST]:
        path = artifact_dir / rel
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            continue
        if rel == ARRAYS_ZIP:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    sizes[owner(info.filename)] = sizes.get(owner(info.filename), 0) + info.compress_size
                    size -= info.compress_size
        sizes[owner(rel)] = sizes.get(owner(rel), 0) + size
    return sizes


def pid_space() -> tuple[str | None, str | None]:
    """(boot ID, PID namespace) of this process: where a pid means what it means to us. A host
    name alone does not say it: containers share their host's name but not its PIDs, and a
    rebooted machine reuses them. None for what cannot be read (no /proc)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot_id: str | None = f.read().strip() or None
    except OSError:
        boot_id = None
    try:
        pid_ns: str | None = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return boot_id, pid_ns


def pid_space_tag() -> str:
    """A short digest of `pid_space()` for names: 'n' and 8 hex digits."""
    boot_id, pid_ns = pid_space()
    return "n" + hashlib.sha256(f"{boot_id}|{pid_ns}".encode()).hexdigest()[:8]


def tmp_name(artifact_id: str) -> str:
    return f"{TMP_PREFIX}{artifact_id}-{socket.gethostname()}-{os.getpid()}-{pid_space_tag()}-{uuid.uuid4().hex[:8]}"


class TmpOwner(NamedTuple):
    artifact_id: str
    host: str
    pid: int
    space: str | None = None  # pid_space_tag() of the writer; None in names from before it was recorded

    def is_this_pid_space(self) -> bool:
        """Whether `pid` is a pid as this process sees them: same host name and, where the name
        records it, same boot and PID namespace (names from before that are trusted by host
        name, as they always were)."""
        return self.host == socket.gethostname() and (self.space is None or self.space == pid_space_tag())


def parse_tmp_name(name: str) -> TmpOwner | None:
    """`.tmp-<id>-<host>-<pid>-n<tag>-<rand>`, or `.tmp-<id>-<host>-<pid>-<rand>` as written
    before the tag (host names may contain '-'); None if not ours."""
    if not name.startswith(TMP_PREFIX):
        return None
    parts = name[len(TMP_PREFIX):].split("-")
    space = None
    if len(parts) >= 5 and _is_pid_text(parts[-3]) and _is_space_tag(parts[-2]):
        space = parts.pop(-2)
    if len(parts) < 4 or not _is_pid_text(parts[-2]):
        return None  # judged as any name not ours: by its age
    return TmpOwner(parts[0], "-".join(parts[1:-2]), int(parts[-2]), space)


# Linux's ceiling on pid_max (PID_MAX_LIMIT on 64-bit); other systems stay well below it.
PID_MAX = 1 << 22


def _is_pid_text(part: str) -> bool:
    """A pid as a writer names it: ASCII decimal digits ('²'.isdigit() too, yet int() refuses
    it), of a pid that can exist: 0 is none (kill(0, 0) asks our own process group)."""
    return 0 < len(part) <= len(str(PID_MAX)) and part.isascii() and part.isdigit() and 0 < int(part) <= PID_MAX


def _is_space_tag(part: str) -> bool:
    return len(part) == 9 and part[0] == "n" and all(c in "0123456789abcdef" for c in part[1:])


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
    _write_reason(dest, reason)
    return dest


QUARANTINE_REASON = ".quarantine-reason"


def _write_reason(dest: Path, reason: str) -> None:
    """`.quarantine-reason` in the quarantined directory `dest`, as a new file: whatever the
    damaged artifact held at that name (a link, a FIFO, a hard link to a file elsewhere) is
    removed, never written through nor opened. Best effort: the move aside is what counts."""
    nofollow = getattr(os, "O_NOFOLLOW", 0)
    try:
        # A linked artifact directory moves aside as the link: never entered.
        dir_fd = os.open(dest, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | nofollow)
    except OSError:
        return
    try:
        try:
            os.unlink(QUARANTINE_REASON, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
        fd = os.open(QUARANTINE_REASON, os.O_WRONLY | os.O_CREAT | os.O_EXCL | nofollow, 0o644, dir_fd=dir_fd)
        with os.fdopen(fd, "w") as f:
            f.write(reason + "\n")
    except OSError:
        pass  # a directory at that name, a full disk: the artifact is aside without its reason
    finally:
        os.close(dir_fd)


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
        contents, shapes = encode_arrays(arrays)
        # The data on disk before the manifest is written; `tmp`'s entries are fsynced once,
        # with the manifest's, before the rename that makes any of them visible.
        checksums = write_files_durably(tmp, {ARRAYS_ZIP: zip_contents(contents)}, sync_dir=False)
        del contents
        if before_manifest is not None:  # test hook: simulate a crash between arrays and manifest
            before_manifest(tmp)
        crash_point("artifact:before_manifest")
        data = manifest.model_copy(
            update={"manifest_version": MANIFEST_VERSION, "arrays": shapes, "checksums": checksums, "manifest_sha256": None}
        ).to_json_dict()
        data["manifest_sha256"] = self_checksum(data)
        # Written in place, not replaced: `tmp` as a whole is the unit that appears atomically.
        text = (json.dumps(data, indent=2, sort_keys=True, allow_nan=True) + "\n").encode()
        write_files_durably(tmp, {MANIFEST: memoryview(text)})
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


# A manifest is a few KB (spec, metrics, checksums); one far larger is damage, and reading it
# whole to find out would take its size in memory (a 2 GB sparse file took 4-6 GB).
MAX_MANIFEST_BYTES = 16 * 2**20


def read_manifest_bytes(path: Path) -> bytes:
    """The manifest's bytes, at most MAX_MANIFEST_BYTES (larger: ArtifactError, unread).
    Raises FileNotFoundError / OSError as reading does."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{MANIFEST} is {size:,} bytes, more than a manifest can be ({MAX_MANIFEST_BYTES:,})")
        data = f.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise ArtifactError(f"{MANIFEST} is more than {MAX_MANIFEST_BYTES:,} bytes, more than a manifest can be")
    return data


def read_manifest_raw(artifact_dir: Path) -> tuple[Manifest, dict]:
    path = artifact_dir / MANIFEST
    try:
        text = read_manifest_bytes(path)
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
    and whose arrays match their checksums (every file is read and hashed each time)."""
    path = artifact_dir / MANIFEST
    try:
        text = read_manifest_bytes(path)
    except FileNotFoundError:
        return [f"incomplete artifact (no {MANIFEST})"]
    except OSError as err:
        return [f"unreadable ({err.strerror})"]
    except ArtifactError as err:
        return [str(err)]
    _, problems, expected = _manifest_problems(text, str(path), artifact_dir.name, kind)
    if expected is None:
        return list(problems)
    return [*problems, *file_problems(artifact_dir, dict(expected))]


def file_problems(artifact_dir: Path, expected: dict[str, str]) -> list[str]:
    """What differs between an artifact's files and the checksums its manifest lists (every
    file is read and hashed): missing, unexpected (hidden ones aside) and changed files."""
    actual = _checksums(artifact_dir)
    problems = [f"{p} is not a regular file" if os.path.lexists(artifact_dir / p) else f"missing {p}"
                for p in expected if p not in actual]
    problems += [f"unexpected {p}" for p in actual if p not in expected and not p.startswith(".")]
    problems += [f"checksum mismatch {p}" for p in expected if p in actual and actual[p] != expected[p]]
    return problems


# How verify words an artifact of a plugin that is not loaded: not damage (its spec is checked
# where the plugin is loaded).
NEEDS_PLUGIN = "its spec names a plugin's"


def manifest_problems(text: bytes, where: str, dir_name: str, kind: str | None) -> tuple[Manifest | None, list[str]]:
    """The one manifest validator: the manifest (None when it does not parse) and what is wrong
    with its content: its own checksum (version 2 on), its ID against its directory's name,
    its type against `kind`, its stored spec against its ID (a plugin's spec that no loaded
    plugin registers is worded with NEEDS_PLUGIN: not damage). Every reader of a manifest, from
    the planner's check to `lh verify`, judges it here."""
    manifest, problems, _ = _manifest_problems(text, where, dir_name, kind)
    return manifest, list(problems)


@functools.lru_cache(maxsize=256)
def _manifest_problems(text: bytes, where: str, dir_name: str, kind: str | None
                       ) -> tuple[Manifest | None, tuple[str, ...], tuple[tuple[str, str], ...] | None]:
    """`manifest_problems`, and the checksums the manifest lists (None when it does not parse).
    A pure function of its arguments, so memoized: a worker that verifies the same target for
    run after run parses and re-hashes its spec (RFC 8785) once; the array files are hashed on
    every call all the same."""
    from lambda_hat.ids import id_of_stored_spec

    try:
        manifest, raw = parse_manifest(text, where)
    except ManifestError as err:
        return None, (str(err).removeprefix(f"{where}: "),), None
    problems = []
    if manifest.manifest_version >= 2:
        if raw.get("manifest_sha256") != self_checksum(raw):
            problems.append("manifest checksum mismatch (manifest.json was edited)")
    if manifest.id != dir_name:
        problems.append(f"manifest id {manifest.id} is not the directory's name")
    if kind is not None and manifest.type != kind:
        problems.append(f"a {manifest.type} manifest in the {kind}s directory")
    try:
        hashed = id_of_stored_spec(manifest.type, manifest.spec)
        if hashed != dir_name:
            problems.append(f"stored spec hashes to {hashed}, not {dir_name}")
    except ValueError as err:
        from lambda_hat.registry import unregistered

        missing = unregistered(manifest.type, manifest.spec)
        problems.append(f"{NEEDS_PLUGIN} {missing} (set $LH_PLUGINS to the module that registers it)" if missing
                        else f"stored spec does not validate: {' '.join(str(err).split())[:200]}")
    return manifest, tuple(problems), tuple(manifest.checksums.items())


def _forget_judgements_when_plugins_change() -> None:
    from lambda_hat import registry

    # A judgement names the plugins loaded when it was made: (un)registering one changes it.
    registry.on_change(_manifest_problems.cache_clear)


_forget_judgements_when_plugins_change()


def pid_alive(pid: int) -> bool:
    """Whether a process `pid` exists on this host. False for what can be no process's pid
    (never raising): kill(0 or a negative pid, 0) asks about process groups, and a pid past a C
    int raises OverflowError."""
    if isinstance(pid, bool) or not isinstance(pid, int) or not 0 < pid <= PID_MAX:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
