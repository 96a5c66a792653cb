"""The store's one API. Every command goes through `Store`: the planner's snapshot, the
driver's reconcile / record / claims, `lh verify`, `lh gc`, the results export.

Invariants it keeps (ARCHITECTURE.md): an artifact directory counts only when its manifest
reads, checks out and names it; anything else under `targets/` or `runs/` is moved to
`.quarantine/` (by reconcile) or collected (by gc), never read as done. The index is a
cache of the manifests with one writer path, `index.write` under the index lock, called only
from this class: by lh execute's driver (reconcile, record), `lh index rebuild`, and `lh gc`
(dropping the rows of the runs it removed; the next reconcile would drop them too).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import socket
import stat
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, TypeVar

from lambda_hat.errors import ArtifactDamaged, ArtifactError, ManifestError, NeedsPlugin, StoreError
from lambda_hat.files import file_type
from lambda_hat.ids import HEX_CHARS, PREFIXES
from lambda_hat.store import index
from lambda_hat.store.artifacts import (
    NEEDS_PLUGIN,
    TMP_PREFIX,
    _is_pid_text,
    file_problems,
    manifest_problems,
    parse_tmp_name,
    pid_alive,
    quarantine,
    read_manifest_bytes,
    read_manifest_raw,
    verify,
)
from lambda_hat.store.claims import Claims, Owner
from lambda_hat.store.layout import ARRAYS_ZIP, MANIFEST, StoreLayout, enclosing_store
from lambda_hat.store.manifest import Manifest
from lambda_hat.store.snapshot import StoreSnapshot

if TYPE_CHECKING:
    import numpy as np

_T = TypeVar("_T")

KINDS = ("target", "run")
TMP_GRACE_S = 3600.0  # a foreign host's temporary directory younger than this may be live
# Files at the root that lh's writes leave when killed (files.atomic_file's `.tmp-NAME-PID-HEX`
# of the index or its stats, the write probe) and index.move_aside's `index.duckdb.corrupt-TIME-PID`.
ROOT_LEFTOVER = re.compile(r"\.tmp-(\.index\.stats|index\.duckdb)-\d+-[0-9a-f]{8}"
                           r"|\.write-probe-.+-\d+-[0-9a-f]{8}|index\.duckdb\.corrupt-\d{8}T\d{6}-\d+")
FAILED_STATUSES = frozenset({"nonfinite", "failed"})
LISTING_ABOVE = 256  # a snapshot lists a kind's directory when more requested IDs than this are not indexed


def check_manifest(artifact_dir: Path, kind: str) -> tuple[Manifest, os.stat_result]:
    """A complete artifact's manifest and its file's stat, judged by the one manifest validator
    (`artifacts.manifest_problems`, which `lh verify` uses too). Raises ArtifactError,
    ManifestError, or NeedsPlugin (a plugin's artifact: left in place) with the reason it does
    not count as complete."""
    st = _regular_manifest(artifact_dir)
    path = artifact_dir / MANIFEST
    try:
        text = read_manifest_bytes(path)
    except OSError as err:
        raise ArtifactError(f"{path}: unreadable ({err.strerror})") from None
    except ArtifactError as err:
        raise ArtifactError(f"{artifact_dir}: {err}") from None
    manifest, problems = manifest_problems(text, str(path), artifact_dir.name, kind)
    if problems and all(p.startswith(NEEDS_PLUGIN) for p in problems):
        raise NeedsPlugin(f"{artifact_dir}: {'; '.join(problems)}; left in place")
    if problems or manifest is None:
        raise ManifestError(f"{artifact_dir}: {'; '.join(problems)}")
    return manifest, st


def check_artifact(artifact_dir: Path, kind: str) -> Manifest:
    """`check_manifest`, then every file of the artifact against the checksums its manifest
    lists (each read and hashed): how an artifact whose files changed since the index recorded
    them is judged before it counts as complete. Raises ArtifactError or ManifestError."""
    manifest, _ = check_manifest(artifact_dir, kind)
    problems = odd_entries(artifact_dir) or file_problems(artifact_dir, manifest.checksums)
    if problems:
        raise ArtifactError(f"{artifact_dir}: {'; '.join(problems)}")
    return manifest


def files_stamp(parent: Path, artifact_id: str, parent_fd: int | None = None) -> tuple[int, int]:
    """(manifest size, stamp) of an artifact's files as they are now (`parent`: its kind's
    directory, or `parent_fd` open on it). The stamp digests what a change to a file does not
    keep: the mtime, ctime and inode of the manifest and of the arrays file (and its size), or
    of every file in an older artifact's directory tree. Restoring an mtime (`touch -d`,
    `os.utime`) sets the ctime, which no user can set; only damage below the file system (bit
    rot) keeps them all, and `lh verify` hashes every file. Two stats: what the planner pays per
    artifact to trust the index instead of hashing its arrays (benchmarks/read_checks.py).
    Raises OSError when there is no manifest, or when the artifact's entry is not a directory of
    its own (a symbolic link to one elsewhere is not in the store: never counted as done)."""
    where = artifact_id if parent_fd is not None else str(parent / artifact_id)
    if not stat.S_ISDIR(os.lstat(where, dir_fd=parent_fd).st_mode):
        raise NotADirectoryError(errno.ENOTDIR, "not a directory of the store's own", where)
    m = os.stat(f"{where}/{MANIFEST}", dir_fd=parent_fd)
    try:
        a = os.stat(f"{where}/{ARRAYS_ZIP}", dir_fd=parent_fd)
        arrays: tuple = (a.st_size, a.st_mtime_ns, a.st_ctime_ns, a.st_ino)
    except FileNotFoundError:  # an older artifact's tree of files (or its arrays are gone): each file
        d = parent / artifact_id
        arrays = tuple(sorted((os.path.relpath(p, d), st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
                              for p, st in _walk(d) if stat.S_ISREG(st.st_mode) and os.path.basename(p) != MANIFEST))
    digest = hashlib.blake2b(repr((m.st_mtime_ns, m.st_ctime_ns, m.st_ino, arrays)).encode(), digest_size=8).digest()
    return m.st_size, int.from_bytes(digest, "big") >> 1  # >= 0: never index.NOT_INDEXED


def _regular_manifest(artifact_dir: Path) -> os.stat_result:
    """The lstat of an artifact's manifest, which must be a regular file before it is read: a
    FIFO would block the reader forever, a link would read another file."""
    try:
        st = os.lstat(artifact_dir / MANIFEST)
    except FileNotFoundError:
        raise ArtifactError(f"{artifact_dir}: incomplete artifact (no {MANIFEST})") from None
    except OSError as err:
        raise ArtifactError(f"{artifact_dir}: {MANIFEST} unreadable ({err.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise ManifestError(f"{artifact_dir}: {MANIFEST} is {file_type(st)}, not a regular file")
    return st


def _manifest_raw(artifact_dir: Path) -> tuple[Manifest, dict]:
    _regular_manifest(artifact_dir)
    return read_manifest_raw(artifact_dir)


def odd_entries(artifact_dir: Path) -> list[str]:
    """What in an artifact directory is neither a regular file nor a directory (a link, FIFO,
    device), found without following or opening anything: such an entry is damage, reported
    as it is and never read (reading a FIFO blocks, a link reads another file)."""
    out = []
    for p, st in _walk(artifact_dir):
        if p != str(artifact_dir) and not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)):
            out.append(f"{os.path.relpath(p, artifact_dir)} is {file_type(st)} (not read)")
    return out


@dataclass
class ReconcileReport:
    quarantined: list[tuple[Path, str]] = field(default_factory=list)  # (where it went, why)
    indexed: int = 0
    unindexed: int = 0
    removed_tmp: list[Path] = field(default_factory=list)
    foreign_tmp: list[Path] = field(default_factory=list)
    foreign: list[Path] = field(default_factory=list)  # entries of targets/, runs/, .work/, .claims/ not lambda-hat's: left in place
    index_moved_aside: Path | None = None
    needs_plugin: list[tuple[Path, str]] = field(default_factory=list)  # (artifact, why): left in place
    pending: list[index.Record] = field(default_factory=list)  # records the busy index did not take
    # {kind: {id: files_stamp}} of every complete artifact, as this reconcile saw it
    # (for `Store.snapshot(complete=...)`: no second index read or stat per artifact).
    complete: dict[str, dict[str, tuple[int, int]]] = field(default_factory=dict)


@dataclass
class Finding:
    path: Path
    problem: str
    serious: bool = True


@dataclass
class VerifyReport:
    checked: int = 0
    findings: list[Finding] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(f.serious for f in self.findings)


@dataclass
class GcReport:
    removed: list[tuple[Path, str]] = field(default_factory=list)
    kept: list[tuple[Path, str]] = field(default_factory=list)
    bytes_freed: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)  # to remove, but removing failed (read-only store)


LINK = "a symbolic link in the store (never followed; lh gc removes the link, not what it points to)"
TARGET_LINK_KEPT = ("a symbolic link in the store; runs were sampled on this target, so they are no orphans and "
                    "lh gc keeps the link (the next lh execute moves it aside and rebuilds the target)")


def _real_dir(path: Path) -> bool:
    """A directory itself, not a symbolic link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _walk(path: Path) -> Iterator[tuple[str, os.stat_result]]:
    """(path, lstat) of `path` and of everything under it, never through a symbolic link
    (os.walk without followlinks lists a link but does not enter it)."""
    try:
        yield str(path), os.lstat(path)
    except FileNotFoundError:
        return
    if not _real_dir(path):
        return
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            try:
                yield p, os.lstat(p)
            except FileNotFoundError:
                pass


def _tree_age_s(path: Path) -> float:
    """Seconds since anything under `path` last changed (links count as themselves)."""
    newest = max((st.st_mtime for _, st in _walk(path)), default=None)
    if newest is None:
        raise FileNotFoundError(path)
    return time.time() - newest


def _tree_size(path: Path) -> int:
    """Bytes of the regular files under `path` (what a link points to is not ours)."""
    return sum(st.st_size for _, st in _walk(path) if stat.S_ISREG(st.st_mode))


def _regular(path: Path) -> bool:
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def _remove(path: Path) -> str | None:
    """Remove one entry of the store: a symbolic link as a link (never what it points to), a
    directory with everything in it (shutil.rmtree unlinks the links inside, it does not
    enter them), anything else as a file. Returns why it could not, or None."""
    return _remove_counted(path)[1]


STAT_THREADS = 8  # stat releases the GIL: on a network file system the calls overlap their latency
STAT_CHUNK = 2048


def _remove_counted(path: Path) -> tuple[bool, str | None]:
    """`_remove`'s removal, with whether this call removed `path` itself: (False, None) when another
    process (a concurrent gc) removed it first. Only one process's removal of the name itself
    (its unlink, or rmtree's last rmdir) succeeds: that one counts it."""
    gone_first = False
    problems: list[str] = []

    def failed(fn, p, exc) -> None:
        nonlocal gone_first
        if isinstance(exc[1], FileNotFoundError):
            gone_first = gone_first or os.fspath(p) == os.fspath(path)
        else:
            problems.append(f"{p}: {exc[1].strerror or exc[1]}")

    try:
        if stat.S_ISDIR(os.lstat(path).st_mode):
            shutil.rmtree(path, onerror=failed)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False, None
    except OSError as err:
        return False, err.strerror or str(err)
    if os.path.lexists(path):
        return False, problems[0] if problems else "still there"
    return not gone_first, None


# The names lambda-hat gives what it puts in `.quarantine/` (`artifacts.quarantine`,
# `Store._link_aside`: <name>-<UTC stamp>-<6 hex>; gc's own moves: <name>-gc-<pid>; any set-aside
# artifact, named by its ID) and in `.claims/` (`claims.py`: leases, and their .clock-/.new-/
# .stale- temporaries). gc removes only these there: anything else (a store copied into
# `.quarantine/`: its index.duckdb, runs/, targets/, hidden folders) is not ours to delete.
# ASCII: lambda-hat's digits are ASCII ('²' is a \d to Python, and int() refuses it).
_QUARANTINED_NAME = re.compile(r"(tgt|run)_.*|[^.].*-(\d{8}T\d{6}-[0-9a-f]{6}|gc-\d+)", re.ASCII)
_CLAIMS_NAME = re.compile(r"[^.].*\.lease|\.(clock|new|stale)-.+", re.ASCII)
# The names lambda-hat gives the entries of targets/ and runs/ (besides its `.tmp-` ones) and of
# `.work/` (a run's ID): anything else there is someone else's, left where it is and reported.
_ID_NAME = {kind: re.compile(re.escape(PREFIXES[kind]) + f"[0-9a-f]{{{HEX_CHARS}}}") for kind in ("target", "run")}
# A temporary directory's name as writers give it (`artifacts.tmp_name`) with a pid that does not
# parse (another system's, garbled): still a writer's, judged by its age.
_TMP_ID_NAME = re.compile(re.escape(TMP_PREFIX) + f"(tgt|run)_[0-9a-f]{{{HEX_CHARS}}}-.+", re.ASCII)
NOT_OURS = "not lambda-hat's (lh gc leaves it alone; move it out of the store)"


def _tmp_ours(name: str) -> bool:
    """Whether an entry of targets/ or runs/ named `.tmp-…` is a writer's temporary directory:
    `.tmp-backup` is someone's, kept by gc whatever its age."""
    return parse_tmp_name(name) is not None or _TMP_ID_NAME.fullmatch(name) is not None


def _ours(directory: str, name: str) -> bool:
    pattern = _QUARANTINED_NAME if directory == "quarantine" else _CLAIMS_NAME
    return pattern.fullmatch(name) is not None


def _empty_dir(path: Path) -> bool:
    try:
        with os.scandir(path) as it:
            return next(it, None) is None
    except OSError:
        return False


def _claims_ours(path: Path) -> bool:
    """Whether gc may remove an entry of `.claims/` (a link, FIFO, device: as it is). lambda-hat
    makes only regular files there, by its names: a directory with anything in it is someone
    else's tree (claims.py renames one found at a lease's name to `.stale-…`, and leaves it)."""
    if _real_dir(path):
        return _empty_dir(path) and _ours("claims", path.name)
    return not _regular(path) or _ours("claims", path.name)


def _work_ours(path: Path) -> bool:
    """Whether an entry of `.work/` is lambda-hat's to judge: one named by a run's ID (the
    worker's work dir), or one no one's data is in (a link, FIFO, device)."""
    if _ID_NAME["run"].fullmatch(path.name) is not None:
        return True
    return os.path.lexists(path) and not (_regular(path) or _real_dir(path))


def _mount_points() -> list[str]:
    """This process's mount points (/proc/self/mountinfo, where there is one): a bind mount
    of the same file system keeps st_dev, so only this list shows it."""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    # The mount point is the fifth field, with space, tab, newline and backslash as octal escapes.
    return [re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), line.split()[4])
            for line in lines if len(line.split()) > 4]


def _mount_inside(path: Path) -> str | None:
    """Why the tree at `path` must not be removed: something in it is on another device than
    `path` itself, or is a mount point (rmtree would delete the mounted files, then fail with
    EBUSY on the mount: half a deletion of what is not ours). None when it is all one tree."""
    top: os.stat_result | None = None
    for p, st in _walk(path):
        if top is None:
            top = st
            if not stat.S_ISDIR(st.st_mode):
                return None  # a file or link: removed as itself
            try:  # the entry itself mounted there (where there is no mountinfo to say so)
                if os.lstat(os.path.dirname(os.path.abspath(path))).st_dev != st.st_dev:
                    return f"{path} is a mount point; left alone, nothing under it removed"
            except OSError:
                pass
        elif st.st_dev != top.st_dev:
            return f"{p} is on another file system (a mount point inside it); left alone, nothing under it removed"
    if top is None:
        return None
    real = os.path.realpath(path)
    for m in _mount_points():
        if m == real or m.startswith(real.rstrip("/") + "/"):
            return f"{m} is a mount point inside it; left alone, nothing under it removed"
    return None


def _in_parts(n: int, part: Callable[[int, int], "_T"]) -> Iterator["_T"]:
    """part(start, stop) over [0, n) in chunks, in order; many chunks go to a few threads, with
    only a few chunks' answers ahead of the consumer (a million stat results held at once were
    half the memory of a million-run plan)."""
    if n <= STAT_CHUNK:
        if n:
            yield part(0, n)
        return
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(STAT_THREADS) as pool:
        ahead: deque = deque()
        for start in range(0, n, STAT_CHUNK):
            ahead.append(pool.submit(part, start, min(start + STAT_CHUNK, n)))
            if len(ahead) >= 2 * STAT_THREADS:
                yield ahead.popleft().result()
        while ahead:
            yield ahead.popleft().result()


# What lambda-hat itself puts at a store's root.
_STORE_ENTRIES = {"targets", "runs", "index.duckdb", "index.duckdb.wal", "index.duckdb.tmp"}
_STORE_PREFIXES = ("index.duckdb.corrupt-",)  # an unreadable index moved aside (index.move_aside)
_STORE_HIDDEN = {".claims", ".work", ".quarantine", ".jax_cache", ".index.lock", ".index.stats"}
_STORE_HIDDEN_PREFIXES = (".tmp-", ".write-probe-")  # atomic writes' temporaries, the write probe


def _holds_artifact(lay: StoreLayout) -> bool:
    """A `tgt_…` or `run_…` directory in `targets/` or `runs/` (neither a link)."""
    for d, prefix in ((lay.targets_dir, "tgt_"), (lay.runs_dir, "run_")):
        if d.is_symlink() or not d.is_dir():
            continue
        try:
            with os.scandir(d) as entries:
                if any(e.name.startswith(prefix) and e.is_dir(follow_symlinks=False) for e in entries):
                    return True
        except OSError:
            continue
    return False


def _check_store_shape(root: Path, lay: StoreLayout) -> None:
    """`root` is empty or a store: a folder with other things in it (a project, TensorBoard's
    `runs/`, a gallery) would have its entries quarantined as damage and removed by gc. A
    store is known by its index, or by its claims beside an artifact of its own (an empty
    `.claims/` alone marks nothing); one without them (a first execute stopped early) holds
    only lambda-hat's names."""
    if lay.index_path.is_file() or lay.claims_dir.is_dir() and _holds_artifact(lay):
        return
    def foreign(d: Path, prefix: str | None) -> str | None:
        try:
            names = os.listdir(d)
        except OSError:
            return None
        for name in sorted(names):
            if name.startswith(".") and (prefix is not None or name in _STORE_HIDDEN
                                         or name.startswith(_STORE_HIDDEN_PREFIXES)):
                continue  # at the root only lambda-hat's own hidden names: a .git makes a project, not a store
            ours = name in _STORE_ENTRIES or name.startswith(_STORE_PREFIXES)
            if prefix is None and not ours or prefix is not None and not name.startswith(prefix):
                return name
        return None
    for d, prefix in ((root, None), (lay.targets_dir, "tgt_"), (lay.runs_dir, "run_")):
        # The root may be a link the user named: judged by the directory it points to (a link at
        # targets/ or runs/ is never looked through; a writer refuses it above).
        name = foreign(d, prefix) if d.is_dir() and (d == root or not d.is_symlink()) else None
        if name is not None:
            where = name if d == root else f"{d.name}/{name}"
            raise StoreError(f"{root}: not a lambda-hat store ({where} is not lambda-hat's, and there is no "
                             "index); give --store a new or empty directory, or a store")


class Store:
    # The index's tables as `lh query` and the results file show them (columns, SQL types).
    TABLES = index.TABLES
    TRACES_TABLE = index.TRACES_TABLE
    EXAMPLES_TABLE = index.EXAMPLES_TABLE
    EXAMPLE_ARRAYS = index.EXAMPLE_ARRAYS
    RUN_TABLES = index.RUN_TABLES
    INFLUENCE_TABLE = index.INFLUENCE_TABLE

    def __init__(self, root: Path | str):
        self.layout = StoreLayout(Path(root))

    @property
    def root(self) -> Path:
        return self.layout.root

    @property
    def index_path(self) -> Path:
        return self.layout.index_path

    def attach_index(self, con, alias: str, timeout_s: float) -> None:
        """The index attached read-only to the DuckDB connection `con` as `alias` (waiting out
        a writer's brief hold). Raises IndexBusy / IndexCorrupt / QueryFailed."""
        index.attach_readonly(con, self.index_path, alias, timeout_s)

    @staticmethod
    def tabulate(con, manifests: list[Manifest], examples: list[tuple[str, dict]] = ()) -> None:
        """The index's tables, filled with `manifests` (and the `examples`/`influence` tables
        with [(run ID, its `read_examples` arrays)]), in `con`'s current catalog."""
        index.tabulate(con, manifests, examples)

    def sizes_by_array(self, kind: str, artifact_id: str, arrays: list[str]) -> dict[str, int]:
        """Bytes on disk per array of an artifact (and per other file)."""
        from lambda_hat.store.artifacts import sizes_by_array

        return sizes_by_array(self.layout.artifact_dir(kind, artifact_id), arrays)

    def sampling_progress(self, run_id: str) -> tuple[int, int] | None:
        """(draws done, draws) of a run that is sampling, from its work dir's progress file;
        None before its first report, after it finished, or mid-replace."""
        from lambda_hat.store.worker import read_progress

        return read_progress(self.layout.work_dir(run_id))

    # ------------------------------------------------------------------ opening

    @staticmethod
    def check_placement(root: Path) -> None:
        """A store is never inside another: that one's gc and execute would take this one's
        files for damage or junk and remove them."""
        outer = enclosing_store(Path(root).resolve().parent)
        if outer is not None:
            raise StoreError(f"{root}: inside the store {outer}; a store cannot hold another "
                             "(give --store a directory outside it)")

    @classmethod
    def open(cls, root: Path | str, *, create: bool = False) -> "Store":
        """A store at `root`, checked: a directory (created if `create`), writable when it
        will be written, and either empty or laid out as a store."""
        root = Path(root)
        if str(root) == "":
            raise StoreError("--store '': an empty path is not a store directory")
        for parent in [root, *root.parents]:
            if parent.exists() and not parent.is_dir():
                raise StoreError(f"{root}: {parent} is a file, not a directory")
        store = cls(root)
        lay = store.layout
        cls.check_placement(root)
        if root.is_dir():
            # A writer writes below the root only into real directories: a link among the store's
            # own directories would send runs, leases, quarantined entries or compile locks
            # elsewhere. (Readers pass: lh gc removes such links, lh verify reports them.)
            for sub in (lay.targets_dir, lay.runs_dir, lay.work_root, lay.claims_dir, lay.quarantine_dir,
                        lay.jax_cache_dir, lay.jax_cache_dir / "lh-compile-locks"):
                if create and sub.is_symlink():
                    raise StoreError(f"{sub}: a symbolic link in the store; lambda-hat writes only into the "
                                     "store's own directories: make it one (--store can name a store on another disk)")
                if create and sub not in (lay.targets_dir, lay.runs_dir) and os.path.lexists(sub) and not sub.is_dir():
                    st = os.lstat(sub)
                    what = "a file" if stat.S_ISREG(st.st_mode) else file_type(st)
                    raise StoreError(f"{sub}: {what} where the store's own directory belongs; "
                                     "move it away (lh writes only into real directories of its own)")
            for sub in (lay.targets_dir, lay.runs_dir):
                if sub.exists() and not sub.is_dir():
                    raise StoreError(f"{root}: not a lambda-hat store ({sub.name} is a file)")
            if lay.index_path.exists() and not lay.index_path.is_file():
                raise StoreError(f"{root}: not a lambda-hat store ({lay.index_path.name} is not a file)")
            _check_store_shape(root, lay)
        if not create:
            if not root.is_dir():
                raise StoreError(f"{root}: no such store")
            return store
        try:
            lay.targets_dir.mkdir(parents=True, exist_ok=True)
            lay.runs_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise StoreError(f"{root}: cannot create the store ({err.strerror})") from None
        # A name of our own, created new and never through a link (a planted one was truncated).
        probe = root / f".write-probe-{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))
            probe.unlink()
        except OSError as err:
            raise StoreError(f"{root}: store is not writable ({err.strerror})") from None
        return store

    # ------------------------------------------------------------------ reading

    def _listing(self, kind: str) -> set[str]:
        return self._scan(kind)[0]

    def _scan(self, kind: str) -> tuple[set[str], set[str]]:
        """The artifact entries of one kind (hidden ones and others' left out: `_scan_all`),
        and those of them that are symbolic links."""
        return self._scan_all(kind)[:2]

    def _scan_all(self, kind: str) -> tuple[set[str], set[str], set[str]]:
        """The artifact entries of one kind (hidden ones left out), those of them that are
        symbolic links (from the directory listing itself: no stat per entry), and the names not
        lambda-hat's: an entry not named by an ID of the kind (notes, a TensorBoard run), never
        quarantined or collected as damage. A link so named is still the store's to move aside."""
        parent = self.layout.targets_dir if kind == "target" else self.layout.runs_dir
        ours = _ID_NAME[kind].fullmatch
        names: set[str] = set()
        links: set[str] = set()
        foreign: set[str] = set()
        if os.path.islink(parent):  # never looked through: its artifacts are another folder's (verify says so)
            return names, links, foreign
        try:
            with os.scandir(parent) as entries:
                for entry in entries:
                    if not entry.name.startswith("."):
                        if entry.is_symlink():
                            links.add(entry.name)
                        elif ours(entry.name) is None:
                            foreign.add(entry.name)
                            continue
                        names.add(entry.name)
        except (FileNotFoundError, NotADirectoryError):
            pass
        return names, links, foreign

    def _foreign(self, kind: str) -> list[Path]:
        """The entries of targets/ or runs/ that are not lambda-hat's (`_scan_all`), sorted;
        none when the directory is a link (never looked through)."""
        parent = self.layout.targets_dir if kind == "target" else self.layout.runs_dir
        return [] if os.path.islink(parent) else [parent / n for n in sorted(self._scan_all(kind)[2])]

    def _scans_not_linked(self) -> dict[str, tuple[set[str], set[str]]]:
        """`_scan` of each kind, empty for a kind whose directory is itself a link (gc and
        verify never look through one)."""
        return {k: (set(), set()) if os.path.islink(self.layout.targets_dir if k == "target" else self.layout.runs_dir)
                else self._scan(k) for k in KINDS}

    def _kind_dirs_linked(self) -> list[Path]:
        """The store's own directories that are symbolic links: never listed by gc or verify."""
        lay = self.layout
        return [d for d in (lay.targets_dir, lay.runs_dir, lay.quarantine_dir, lay.work_root, lay.claims_dir)
                if os.path.islink(d)]

    def snapshot(self, target_ids: Iterable[str], run_ids: Iterable[str],
                 complete: dict[str, dict[str, tuple[int, int]]] | None = None) -> StoreSnapshot:
        """Which of these IDs are complete. The index answers, in one read, for artifacts whose
        files are unchanged since it recorded them (`files_stamp`, three stats each: at a million
        IDs most of the time, and what catches a manifest or arrays file edited, truncated or
        removed since); any other is checked whole (`check_artifact`: its manifest, and its
        files hashed against their checksums). `state` digests the complete IDs with their
        stamps: equal states, nothing these IDs name has changed.

        `complete`: a reconcile's `ReconcileReport.complete`, made moments ago in this process
        from a listing and a stat of every manifest; it answers instead of the index and the
        stats (an ID it lacks was not in the store then)."""
        if complete is not None:
            return self._snapshot_of(complete, target_ids, run_ids)
        requested = {"target": list(target_ids), "run": list(run_ids)}
        try:
            known = index.aligned_stats(self.layout, requested)
        except (index.IndexBusy, index.IndexCorrupt):
            known = {k: index.unknown_stats(len(ids)) for k, ids in requested.items()}
        done: dict[str, list[str]] = {}
        state = hashlib.sha256()
        for kind, ids in requested.items():
            sizes, stamps = known[kind]
            done[kind] = complete_ids = []
            # IDs the index knows are stat'ed directly; for the others one listing of the directory
            # saves a failing stat each, when there are many (a sweep new to this store).
            listing = self._listing(kind) if sizes.count(index.NOT_INDEXED) > LISTING_ABOVE else None
            if listing is not None and not listing:
                continue
            try:  # stat relative to the kind's directory: one path lookup less per ID; never through a link
                parent = os.open(self.layout.targets_dir if kind == "target" else self.layout.runs_dir,
                                 os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_DIRECTORY", 0))
            except OSError:
                continue
            try:
                for found, lines in _in_parts(len(ids), lambda start, stop, kind=kind: self._complete_among(
                        kind, parent, ids[start:stop], sizes[start:stop], stamps[start:stop], listing)):
                    complete_ids.extend(found)
                    state.update(lines)
            finally:
                os.close(parent)
        return StoreSnapshot(frozenset(done["target"]), frozenset(done["run"]), state.hexdigest())

    def _complete_among(self, kind: str, parent_fd: int, ids: list[str], sizes: Iterable[int], stamps: Iterable[int],
                        listing: set[str] | None) -> tuple[list[str], bytes]:
        """The complete ones of `ids` (index stamps `sizes`, `stamps`), and their lines of the
        snapshot's state."""
        found, lines = [], []
        parent = self.layout.targets_dir if kind == "target" else self.layout.runs_dir
        for artifact_id, size, stamp in zip(ids, sizes, stamps):
            if size == index.NOT_INDEXED and listing is not None and artifact_id not in listing:
                continue
            try:
                now = files_stamp(parent, artifact_id, parent_fd)
            except OSError:
                continue
            if now != (size, stamp):
                try:
                    check_artifact(parent / artifact_id, kind)
                except (ArtifactError, ManifestError, OSError):
                    continue
            found.append(artifact_id)
            lines.append(f"{kind} {artifact_id} {now[0]} {now[1]}\n")
        return found, "".join(lines).encode()

    @staticmethod
    def _snapshot_of(complete: dict[str, dict[str, tuple[int, int]]], target_ids: Iterable[str],
                     run_ids: Iterable[str]) -> StoreSnapshot:
        done: dict[str, list[str]] = {}
        state = hashlib.sha256()  # the same digest `snapshot` makes from its own stats
        for kind, ids in (("target", target_ids), ("run", run_ids)):
            seen = complete.get(kind, {})
            done[kind] = found = []
            for artifact_id in ids:
                st = seen.get(artifact_id)
                if st is not None:
                    found.append(artifact_id)
                    state.update(f"{kind} {artifact_id} {st[0]} {st[1]}\n".encode())
        return StoreSnapshot(frozenset(done["target"]), frozenset(done["run"]), state.hexdigest())

    def ids(self, kind: str) -> list[str]:
        """The artifact directories of one kind, sorted: complete or not (check with
        `read_manifest`; temporary and hidden entries are never listed)."""
        return sorted(self._listing(kind))

    def run_ids(self) -> list[str]:
        return self.ids("run")

    def resolve(self, prefix: str) -> tuple[str, str]:
        """(kind, ID) of the one artifact whose ID starts with `prefix` (a unique prefix is
        enough, as `lh query` prints them). Raises BadInput if none or several match."""
        from lambda_hat.errors import BadInput

        prefix = prefix.strip()
        if not prefix:
            raise BadInput("an empty ID; give an ID or a unique prefix of one (tgt_…, run_…)")
        matches = [(kind, i) for kind in KINDS for i in self.ids(kind) if i.startswith(prefix)]
        if not matches:
            raise BadInput(f"{prefix}: no target or run in {self.root} has an ID starting with it")
        if len(matches) > 1:
            shown = ", ".join(i for _, i in matches[:5]) + (", …" if len(matches) > 5 else "")
            raise BadInput(f"{prefix}: {len(matches)} IDs start with it ({shown}); give more characters")
        return matches[0]

    def manifests(self, kind: str, damaged: list[str] | None = None) -> Iterator[Manifest]:
        """Every complete artifact's manifest of one kind, checked (see `check_manifest`);
        incomplete and damaged ones are skipped, as everywhere else (their IDs added to
        `damaged`; a plugin's artifact whose plugin is not loaded is no damage)."""
        for artifact_id in self.ids(kind):
            try:
                yield self.read_manifest(kind, artifact_id)
            except NeedsPlugin:
                continue
            except (ArtifactError, ManifestError, OSError):
                if damaged is not None:
                    damaged.append(artifact_id)

    def read_traces(self, run_id: str, names: Iterable[str] | None = None) -> dict[str, "np.ndarray"]:
        """A complete run's trace arrays (chains × draws) by name (`loss`, `llc`, ...): all of
        them, or those of `names` that it has. The run is checked first as `lh verify` checks
        it (manifest, and its files against their checksums); raises ArtifactError naming
        what is damaged, never a decoder's error."""
        return self._read_group(run_id, "traces", names)

    def read_examples(self, run_id: str, names: Iterable[str] | None = None) -> dict[str, "np.ndarray"]:
        """A complete run's recorded per-example arrays (`record.per_example`), checked as
        `read_traces` checks: "loss" (chain, draw, example), "index" (the examples' rows),
        "loss_at_wstar", "llc_contribution", and with a query set "influence" (example, query)
        and "query" (the query examples' positions among the recorded), with held-out examples
        "heldout_loss" (chain, draw, held-out), "heldout_index" (their rows in the held-out set),
        "heldout_loss_at_wstar" and "heldout_influence" (example, held-out); empty for a run
        that recorded none."""
        arrays = self._read_group(run_id, "examples", names)
        problem = index.example_problem(arrays)
        if problem is not None:  # checksums that hold over arrays that disagree: damaged all the same
            raise ArtifactError(f"{run_id}: {problem}")
        return arrays

    def _read_group(self, run_id: str, group: str, names: Iterable[str] | None) -> dict[str, "np.ndarray"]:
        from lambda_hat.store.artifacts import read_arrays

        d = self.layout.run_dir(run_id)
        manifest = self.read_manifest("run", run_id)
        problems = odd_entries(d) or verify(d, "run")
        if problems:
            raise ArtifactError(f"{run_id}: {'; '.join(problems)}")
        have = [k.removeprefix(f"{group}/") for k in manifest.arrays if k.startswith(f"{group}/")]
        wanted = have if names is None else [n for n in names if n in have]
        try:
            arrays = read_arrays(d, [f"{group}/{n}" for n in wanted])
        except Exception as err:  # the checksums held, yet zarr could not decode it: damaged all the same
            why = " ".join(str(err).split())[:160]
            raise ArtifactError(f"{run_id}: arrays not readable ({type(err).__name__}: {why})") from None
        return {k.removeprefix(f"{group}/"): v for k, v in arrays.items()}

    def live_claims(self) -> list[tuple[str, object]]:
        """(artifact ID, Holder) of every claim a live driver holds now."""
        claims = self.claims()
        out = []
        if _real_dir(self.layout.claims_dir):
            for p in sorted(self.layout.claims_dir.glob("*.lease")):
                if not _regular(p):
                    continue  # not a lease a driver wrote (a FIFO would block its read); lh gc removes it
                holder = claims.holder(p.name.removesuffix(".lease"))
                if holder is not None:
                    out.append((p.name.removesuffix(".lease"), holder))
        return out

    def size_bytes(self) -> int:
        """Bytes of every file in the store (artifacts, index, caches)."""
        total = 0
        for dirpath, _, filenames in os.walk(self.root):
            for name in filenames:
                try:
                    total += os.lstat(os.path.join(dirpath, name)).st_size
                except FileNotFoundError:
                    pass
        return total

    def is_complete(self, kind: str, artifact_id: str) -> bool:
        """One artifact, checked on disk (no index involved)."""
        d = self.layout.artifact_dir(kind, artifact_id)
        if not (d / MANIFEST).exists():
            return False
        try:
            check_manifest(d, kind)
            return True
        except (ArtifactError, ManifestError, OSError):
            return False

    def read_manifest(self, kind: str, artifact_id: str) -> Manifest:
        return check_manifest(self.layout.artifact_dir(kind, artifact_id), kind)[0]

    def read_verified(self, kind: str, artifact_id: str) -> Manifest:
        """The manifest of an artifact checked whole, as `lh verify` checks it (manifest and
        every file against its checksum), for a command that shows or reads it. Raises
        ArtifactDamaged, one line naming what is wrong."""
        d = self.layout.artifact_dir(kind, artifact_id)
        problems = [LINK] if os.path.islink(d) else (odd_entries(d) or verify(d, kind)) if d.is_dir() else ["not a directory"]
        if not problems:
            try:
                return self.read_manifest(kind, artifact_id)
            except (ArtifactError, ManifestError, OSError) as err:
                problems = [" ".join(str(err).split()).removeprefix(f"{d}: ")]
        raise ArtifactDamaged(f"{kind} {artifact_id} is damaged: {'; '.join(problems)} ({d}; lh verify lists every "
                              "damaged artifact)")

    def complete_manifests(self, kind: str, ids: Iterable[str]) -> list[Manifest]:
        return self.checked_manifests(kind, ids)[0]

    def checked_manifests(self, kind: str, ids: Iterable[str],
                          files: bool = False) -> tuple[list[Manifest], list[tuple[str, str]]]:
        """The manifests of the complete artifacts among `ids`, each checked on its content
        (`check_manifest`: its checksum, ID and spec hash, never trusted by size and mtime;
        with `files`, every file against its checksum too, as `lh verify` checks), and the
        (ID, why) of those in place that do not check out: a result built from them reports
        them instead of dropping them silently. An ID with nothing in the store is neither
        (not made yet)."""
        out, damaged = [], []
        linked = os.path.islink(self.layout.targets_dir if kind == "target" else self.layout.runs_dir)
        for artifact_id in ids:
            d = self.layout.artifact_dir(kind, artifact_id)
            if not os.path.lexists(d):
                continue
            if linked:  # never read through (as plan, status, verify and gc): another folder's artifacts
                damaged.append((artifact_id, f"{d.parent.name}/ is a symbolic link (not looked through; lh verify)"))
                continue
            if os.path.islink(d):
                damaged.append((artifact_id, LINK))
                continue
            try:
                manifest = check_manifest(d, kind)[0]
                problems = (odd_entries(d) or verify(d, kind)) if files else []
            except (ArtifactError, ManifestError, OSError) as err:
                damaged.append((artifact_id, " ".join(str(err).split()).removeprefix(f"{d}: ")))
                continue
            if problems:
                damaged.append((artifact_id, "; ".join(problems)))
            else:
                out.append(manifest)
        return out, damaged

    def tmp_entries(self) -> Iterator[Path]:
        for parent in (self.layout.targets_dir, self.layout.runs_dir):
            if _real_dir(parent):
                yield from (p for p in parent.iterdir() if p.name.startswith(TMP_PREFIX))

    def _finished_run(self, run_id: str) -> bool:
        """Whether a run is finished for gc's work-dir rule: its artifact is complete and valid
        (`check_artifact`), not merely a manifest.json in a directory (one copied from another
        run would make gc delete the checkpoint the next execute resumes from)."""
        d = self.layout.run_dir(run_id)
        if not _real_dir(d):
            return False
        try:
            check_artifact(d, "run")
        except (ArtifactError, ManifestError, OSError):
            return False
        return True

    def _tmp_is_dead(self, path: Path, grace_s: float) -> bool:
        if os.path.islink(path):
            return True  # no writer makes a link: not a live writer's, whatever it is called
        owner = parse_tmp_name(path.name)
        if owner is not None and owner.is_this_pid_space():
            return not pid_alive(owner.pid)
        try:
            return _tree_age_s(path) > grace_s
        except FileNotFoundError:
            return False

    # ------------------------------------------------------------------ the driver's writes

    def reconcile(self) -> ReconcileReport:
        """Make the store say exactly what is done: quarantine incomplete or damaged artifact
        directories, remove this host's dead writers' temporary directories, and bring the
        index in line with the manifests (a corrupt index is moved aside and rebuilt)."""
        report = ReconcileReport()
        for p in list(self.tmp_entries()):
            owner = parse_tmp_name(p.name)
            # Its pid is judged only where it is a pid as we see them (this host, boot and PID
            # namespace): a container named like this host is another writer, maybe live.
            dead = owner is not None and owner.is_this_pid_space() and not pid_alive(owner.pid)
            # a tree with a mount point inside is not removed here either (gc keeps it and says why)
            if os.path.islink(p) or (dead and _mount_inside(p) is None):
                if _remove(p) is None:
                    report.removed_tmp.append(p)
            else:
                report.foreign_tmp.append(p)
        read = None
        try:
            read = index.read_stats(self.layout)
            stats = read.stats
        except index.IndexCorrupt:
            report.index_moved_aside = index.move_aside(self.layout)
            stats = {k: {} for k in KINDS}
        except index.IndexBusy:
            stats = {k: {} for k in KINDS}
        records: list[index.Record] = []
        deleted: dict[str, list[str]] = {}
        # What is not ours in the work and claims directories, as gc keeps it: said, left in place.
        for sub, ours in ((self.layout.work_root, _work_ours), (self.layout.claims_dir, _claims_ours)):
            try:
                report.foreign += [p for p in sorted(sub.iterdir()) if not ours(p)] if _real_dir(sub) else []
            except OSError:
                pass
        for kind in KINDS:
            known = stats[kind]
            report.complete[kind] = present = {}
            names, links, foreign = self._scan_all(kind)
            report.foreign += [self.layout.artifact_dir(kind, n) for n in sorted(foreign)]  # left where they are
            for name in sorted(names):
                d = self.layout.artifact_dir(kind, name)
                if name in links:  # never read through: moved aside as the link it is
                    where = self._link_aside(d)
                    if where is not None:
                        report.quarantined.append((where, "a symbolic link (never followed)"))
                    continue
                try:
                    now = files_stamp(d.parent, name)
                    if known.get(name) == now:
                        present[name] = now
                        continue
                    # New to the index, or its files changed since it was recorded: checked whole.
                    manifest = check_artifact(d, kind)
                except NeedsPlugin as err:
                    report.needs_plugin.append((d, str(err).removeprefix(f"{d}: ")))
                    continue
                except (ArtifactError, ManifestError, OSError) as err:
                    reason = " ".join(str(err).split()).removeprefix(f"{d}: ")
                    if not d.is_dir():
                        reason = "not a directory"
                    where = quarantine(d, self.layout.quarantine_dir, reason)
                    if where is not None:
                        report.quarantined.append((where, reason))
                    continue
                present[name] = now
                records.append(index.Record(manifest, *now))
            deleted[kind] = sorted(set(known) - set(present))
        report.indexed = len(records)
        in_step = not records and not any(deleted.values()) and self.layout.index_path.exists()
        if in_step and read is not None:
            index.remember_stats(self.layout, read)  # the next no-op reads these without DuckDB
        # Every complete artifact was checked whole just now (a new or remade index): its records
        # refill the tables, where a rebuild would check them all again.
        whole = len(records) == sum(map(len, report.complete.values()))
        if not in_step:
            try:
                if not index.write(self.layout, records, deleted):
                    self._refill(records) if whole else self.rebuild_index()
            except index.IndexCorrupt:
                report.index_moved_aside = index.move_aside(self.layout)
                self._refill(records) if whole else self.rebuild_index()
            except index.IndexBusy:
                report.pending = records
                report.unindexed = len(records)
                report.indexed = 0
        return report

    def _link_aside(self, link: Path) -> Path | None:
        """Move a symbolic link found among the artifacts into the quarantine, as a link (the
        rename moves the link itself; nothing is written where it points). None if gone."""
        q = self.layout.quarantine_dir
        if not _real_dir(q):
            if os.path.islink(q):
                os.unlink(q)
            q.mkdir(parents=True, exist_ok=True)
        dest = q / f"{link.name}-link-{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{os.urandom(3).hex()}"
        try:
            os.rename(link, dest)
        except FileNotFoundError:
            return None
        return dest

    def record(self, records: list[index.Record], timeout_s: float = 2.0) -> None:
        """Put finished artifacts' manifests into the index. Raises IndexBusy (the caller
        keeps them and retries); a corrupt index is moved aside and rebuilt."""
        try:
            if not index.write(self.layout, records, timeout_s=timeout_s):
                self.rebuild_index()
        except index.IndexCorrupt:
            index.move_aside(self.layout)
            self.rebuild_index()

    def record_manifest(self, kind: str, artifact_id: str) -> index.Record:
        """The index record of an artifact a job has just written, with its files' stamp as
        they are now (its manifest checked; its arrays were hashed as they were written)."""
        d = self.layout.artifact_dir(kind, artifact_id)
        now = files_stamp(d.parent, artifact_id)
        return index.Record(check_manifest(d, kind)[0], *now)

    def _refill(self, records: list[index.Record], timeout_s: float = 10.0) -> None:
        """The index made anew from `records` (every complete artifact's), one transaction."""
        try:
            index.write(self.layout, records, replace_all=True, timeout_s=timeout_s)
        except index.IndexCorrupt:
            index.move_aside(self.layout)
            index.write(self.layout, records, replace_all=True, timeout_s=timeout_s)

    def rebuild_index(self, timeout_s: float = 10.0, damaged: list[tuple[str, str]] | None = None) -> tuple[int, int]:
        """Recreate the index from the artifacts on disk, each checked whole (`check_artifact`:
        a stamp recorded here is trusted by every later plan); damaged ones are skipped (added
        to `damaged` as (ID, why)), and the next reconcile quarantines them. Returns (targets,
        runs) indexed."""
        records = []
        for kind in KINDS:
            names, links = self._scan(kind)
            for name in sorted(names - links):  # a link is never read through
                d = self.layout.artifact_dir(kind, name)
                try:
                    now = files_stamp(d.parent, name)
                    records.append(index.Record(check_artifact(d, kind), *now))
                except NeedsPlugin:
                    continue  # a plugin's artifact, its plugin not loaded here: not damage
                except (ArtifactError, ManifestError, OSError) as err:
                    if damaged is not None:
                        damaged.append((name, str(err) if isinstance(err, ArtifactError) else err.strerror or str(err)))
                    continue
        try:
            self._refill(records, timeout_s)
        except OSError as err:  # a read-only store, a full disk
            raise StoreError(f"{self.root}: cannot write the index ({err.strerror or err}: "
                             f"{getattr(err, 'filename', None) or self.layout.index_path})") from None
        return (sum(r.manifest.type == "target" for r in records), sum(r.manifest.type == "run" for r in records))

    def claims(self, owner: Owner | None = None) -> Claims:
        return Claims(self.layout.claims_dir, owner)

    # ------------------------------------------------------------------ checking and collecting

    def _odd_cache_entries(self) -> list[tuple[Path, os.stat_result]]:
        """(path, lstat) of what under JAX's cache directory (or the directory itself) is not a
        regular file or directory: a link, FIFO, socket, device. JAX follows what it finds
        there (a FIFO hangs a job, a link has compiled programs written outside the store)."""
        cache = self.layout.jax_cache_dir
        return [(Path(p), st) for p, st in _walk(cache)
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode))]

    def _targets_to_come(self) -> dict[str, str]:
        """{target ID: why} of the targets not in targets/ that are expected back under the same
        ID: one being built (a temporary directory of a writer that may be live) or quarantined
        (the next execute rebuilds it). The runs on them are no orphans, so `verify` and `gc`
        agree: a rebuild reproduces exactly the target those runs were sampled on."""
        out: dict[str, str] = {}
        if _real_dir(self.layout.quarantine_dir):
            for p in self.layout.quarantine_dir.iterdir():
                # A link too: a target linked from another disk, moved aside as the link by reconcile.
                if p.name.startswith("tgt_") and (_real_dir(p) or p.is_symlink()) and _ours("quarantine", p.name):
                    out[p.name.split("-", 1)[0]] = "quarantined (the next lh execute rebuilds it under the same ID)"
        for p in self.tmp_entries():
            owner = parse_tmp_name(p.name)
            if owner is not None and owner.artifact_id.startswith("tgt_") and not self._tmp_is_dead(p, TMP_GRACE_S):
                out[owner.artifact_id] = "being built"
        return out

    def _quarantine_kept(self, target_ids: set[str], run_target_ids: set[str]) -> dict[Path, str]:
        """{quarantined target: why gc keeps it}: a quarantined target that complete runs were
        sampled on, and that is not back in targets/ (`target_ids`). It marks their target as
        coming back (`_targets_to_come`): removed, a later gc would take the runs for orphans."""
        out: dict[Path, str] = {}
        if _real_dir(self.layout.quarantine_dir):
            for p in self.layout.quarantine_dir.iterdir():
                tid = p.name.split("-", 1)[0]
                if (p.name.startswith("tgt_") and tid in run_target_ids and tid not in target_ids
                        and (_real_dir(p) or p.is_symlink()) and _ours("quarantine", p.name)):
                    out[p] = "lh gc keeps it while runs sampled on it wait for its rebuild (lh execute)"
        return out

    def _awaited_target(self, target_id: str, to_come: dict[str, str], claims: Claims) -> str | None:
        """Why the runs on `target_id`, found missing from targets/, are no orphans; None if they
        are. Asked in this order, so that a build publishing meanwhile is not missed: a driver
        claims a target before it builds it and releases it only once it is in targets/."""
        lease = self.layout.claims_dir / f"{target_id}.lease"
        if _real_dir(self.layout.claims_dir) and _regular(lease) and claims.holder(target_id) is not None:
            return "claimed by a live driver"
        if target_id in to_come:
            return to_come[target_id]
        if _real_dir(self.layout.target_dir(target_id)):
            return "back in the store"
        return None

    def verify(self, ids: Iterable[str] | None = None, progress: Callable[[int], None] | None = None) -> VerifyReport:
        """Check every artifact (or those named): manifest, its checksum, ID against directory
        and stored spec, array checksums; report temporary directories, orphans (runs whose
        target is gone for good: `_awaited_target`), quarantined entries, index rows without an
        artifact, an unusable index (or one lh query refuses: `index.schema_problem`), symbolic
        links in the store (never followed), names in `.quarantine/` and `.claims/` that are not
        lambda-hat's, and what in JAX's cache is not a regular file or directory. `ids`: IDs or
        unique prefixes of them (`resolve`); raises BadInput for one that names nothing."""
        report = VerifyReport()
        wanted = set(ids) if ids is not None else None
        if wanted is not None:
            # As `lh show` takes them: an ID or a unique prefix of one; any other is bad input (BadInput).
            names = self._listing("target") | self._listing("run")
            wanted = {i if i in names else self.resolve(i)[1] for i in wanted}
        linked_dirs = self._kind_dirs_linked()
        report.findings += [Finding(d, LINK if d not in (self.layout.targets_dir, self.layout.runs_dir) else
                                    "a symbolic link in the store: lh verify and lh gc do not look through it "
                                    "(nothing under it checked or collected)") for d in linked_dirs]
        scans = self._scans_not_linked()
        listing = {k: names for k, (names, _) in scans.items()}
        to_come, claims = self._targets_to_come(), self.claims()
        run_target_ids: set[str] = set()  # the targets the complete runs were sampled on
        target_links: list[Path] = []  # judged once the runs are read (`TARGET_LINK_KEPT`)
        for kind in KINDS:
            names, links = scans[kind]
            for name in sorted(names):
                if wanted is not None and name not in wanted:
                    continue
                d = self.layout.artifact_dir(kind, name)
                report.checked += 1
                if progress:
                    progress(report.checked)
                if name in links:
                    if kind == "target":
                        target_links.append(d)
                    else:
                        report.findings.append(Finding(d, LINK))
                    continue
                if not d.is_dir():
                    report.findings.append(Finding(d, "not a directory"))
                    continue
                odd = odd_entries(d)
                for problem in odd or verify(d, kind):
                    report.findings.append(Finding(d, problem, serious=not problem.startswith(NEEDS_PLUGIN)))
                if kind == "run" and not odd:
                    try:
                        tid = read_manifest_raw(d)[0].spec.get("target_id")
                    except (ArtifactError, ManifestError):
                        continue
                    run_target_ids.add(tid)
                    if tid and tid not in listing["target"]:
                        awaited = self._awaited_target(tid, to_come, claims)
                        if awaited is None:
                            report.findings.append(Finding(d, f"orphan: its target {tid} is not in the store"))
                        else:
                            report.findings.append(Finding(d, f"its target {tid} is not in targets/ but {awaited}; "
                                                           "lh gc keeps the run", serious=False))
        for d in target_links:
            report.findings.append(Finding(d, TARGET_LINK_KEPT if d.name in run_target_ids else LINK))
        if wanted is None:
            lay = self.layout
            for sub in (lay.work_root, lay.claims_dir, lay.quarantine_dir, lay.jax_cache_dir):
                if os.path.lexists(sub) and not os.path.islink(sub) and not sub.is_dir():
                    st = os.lstat(sub)
                    what = "a file" if stat.S_ISREG(st.st_mode) else file_type(st)
                    report.findings.append(Finding(sub, f"{what} where the store's own directory belongs "
                                                        "(lh execute refuses the store until it is moved away)"))
            for kind in KINDS:
                report.findings += [Finding(p, NOT_OURS, serious=False) for p in self._foreign(kind)]
            for p in self.tmp_entries():
                if os.path.islink(p):
                    report.findings.append(Finding(p, LINK))
                    continue
                if not _tmp_ours(p.name):  # `.tmp-backup`: not a name lambda-hat gives
                    report.findings.append(Finding(p, NOT_OURS, serious=False))
                    continue
                dead = self._tmp_is_dead(p, TMP_GRACE_S)
                report.findings.append(Finding(p, "temporary directory of a dead writer (lh gc removes it)" if dead
                                               else "temporary directory of a writer that may be live", serious=dead))
            # Links in the work and claims directories, as gc removes them; what there is not ours,
            # as gc keeps it (`_work_ours`, `_claims_ours`).
            for sub in (lay.work_root, lay.claims_dir):
                for p in sorted(sub.iterdir()) if _real_dir(sub) else []:
                    if os.path.islink(p):
                        report.findings.append(Finding(p, LINK))
                    elif not (_work_ours(p) if sub == lay.work_root else _claims_ours(p)):
                        report.findings.append(Finding(p, NOT_OURS, serious=False))
            q = self.layout.quarantine_dir
            if _real_dir(q):
                awaited = self._quarantine_kept(listing["target"], run_target_ids)
                for p in sorted(q.iterdir()):
                    if not os.path.islink(p) and not _ours("quarantine", p.name):
                        report.findings.append(Finding(p, NOT_OURS, serious=False))
                        continue
                    report.findings.append(Finding(p, "quarantined (lh gc removes it)" if p not in awaited else
                                                   f"quarantined; {awaited[p]}", serious=False))
            for p, st in self._odd_cache_entries():
                report.findings.append(Finding(p, f"{file_type(st)} in JAX's compilation cache (JAX would follow it: "
                                                  "lh gc removes it as it is)"))
            try:
                foreign = index.schema_problem(self.layout)
                if foreign is not None:  # what lh status and lh query refuse
                    report.findings.append(Finding(self.layout.index_path, foreign))
                stats = index.indexed_stats(self.layout)
                for kind in KINDS:
                    for name in sorted(set(stats[kind]) - listing[kind]):
                        report.findings.append(Finding(self.layout.index_path, f"index row {name} has no artifact "
                                                       "(the next lh execute or lh index rebuild fixes it)", serious=False))
                if foreign is None:  # the rows as their manifests have them: what lh query and lh status show
                    self._check_rows(report, [m for kind in KINDS for m in self.manifests(kind)], stats)
            except index.IndexBusy as err:  # another process writing: no damage
                report.findings.append(Finding(self.layout.index_path, str(err), serious=False))
            except index.IndexCorrupt as err:  # every query and execute would fail on it
                report.findings.append(Finding(self.layout.index_path, str(err)))
        elif wanted:  # the named artifacts' index rows too
            try:
                if index.schema_problem(self.layout) is None:
                    named = [m for kind in KINDS for m in self.manifests(kind) if m.id in wanted]
                    self._check_rows(report, named, index.indexed_stats(self.layout))
            except index.IndexBusy as err:
                report.findings.append(Finding(self.layout.index_path, str(err), serious=False))
            except index.IndexCorrupt as err:
                report.findings.append(Finding(self.layout.index_path, str(err)))
        return report

    def _check_rows(self, report: "VerifyReport", manifests: list, stats: dict) -> None:
        """Findings for the index rows of `manifests` that say other than their manifest: edited in
        the index when the artifact's files are as the row recorded them (serious), else a row
        older than its manifest (a note; the next record replaces it)."""
        for name in index.rows_not_as_recorded(self.layout, manifests):
            kind = "run" if name.startswith("run_") else "target"
            try:
                now = files_stamp(self.layout.targets_dir if kind == "target" else self.layout.runs_dir, name)
            except OSError:
                now = None
            if now is not None and tuple(stats[kind].get(name, ())) == now:
                report.findings.append(Finding(self.layout.index_path, f"index row {name} differs from its manifest "
                                               "(edited in the index); lh index rebuild remakes it"))
            else:
                report.findings.append(Finding(self.layout.index_path, f"index row {name} predates its manifest, or "
                                               "the store was copied (the next lh execute re-records a stale row; "
                                               "lh index rebuild remakes every row)", serious=False))

    def gc(self, *, dry_run: bool = False, failed: bool = False, older_than_s: float | None = None,
           tmp_grace_s: float = TMP_GRACE_S) -> GcReport:
        """Remove temporary directories of dead writers (any host: after `tmp_grace_s` without
        a change and with no live claim), quarantined entries (but a quarantined target that
        runs wait for: `_quarantine_kept`), orphaned runs (`_awaited_target`), stale claim
        files, links and FIFOs in JAX's cache, and with `failed` the runs whose status is a
        failure, so they are redone. The report counts only what this gc removed (concurrent
        gcs each count their own).

        Never follows a symbolic link: one found where gc looks (the store's directories,
        their entries) is removed as the link it is, but a target's link that runs were sampled
        on (it stands for their target: they are no orphans); directories are removed with
        shutil.rmtree, which unlinks the links inside them without entering them. Never removes
        what is not ours: in `.quarantine/` and `.claims/` only names lambda-hat gives (`_ours`;
        in `.claims/` no directory with anything in it: `_claims_ours`), in `.work/` only run-ID
        names (`_work_ours`), in targets/ and runs/ only IDs of the kind and writers' temporary names
        (`_scan_all`, `_tmp_ours`), and no tree with a mount point inside
        (`_mount_inside`): such entries are kept, said why. Links and FIFOs there still go, as
        themselves."""
        report = GcReport()
        claims = self.claims()
        min_age = older_than_s or 0.0
        lay = self.layout

        def old_enough(p: Path) -> bool:
            try:
                return min_age <= 0 or _tree_age_s(p) > min_age
            except FileNotFoundError:
                return False

        def remove(p: Path, why: str, tree: bool = True) -> bool:
            """Counted only when this gc removed it: one that another gc removed first is neither
            counted nor a failure. Not `tree`: a directory goes only while empty (rmdir), so
            nothing put into it since it was judged is deleted."""
            if not os.path.lexists(p):
                return False
            if not old_enough(p):
                if os.path.lexists(p):
                    report.kept.append((p, f"{why}, but younger than --older-than"))
                return False
            mounted = _mount_inside(p)
            if mounted is not None:
                report.kept.append((p, f"{why}, but {mounted}"))
                return False
            size = _tree_size(p)
            if not dry_run and not tree and _real_dir(p):
                try:
                    os.rmdir(p)
                except FileNotFoundError:
                    return False
                except OSError as err:
                    if err.errno in (errno.ENOTEMPTY, errno.EEXIST):  # filled meanwhile: someone's now
                        report.kept.append((p, NOT_OURS))
                    else:
                        report.kept.append((p, f"{why}, but it could not be removed ({err.strerror or err})"))
                        report.failed.append((p, err.strerror or str(err)))
                    return False
            elif not dry_run:
                removed_here, problem = _remove_counted(p)
                if problem is not None:
                    report.kept.append((p, f"{why}, but it could not be removed ({problem})"))
                    report.failed.append((p, problem))
                    return False
                if not removed_here:
                    return False
            report.removed.append((p, why))
            report.bytes_freed += size
            return True

        def entries(d: Path) -> list[Path]:
            return sorted(d.iterdir()) if _real_dir(d) else []

        def held(artifact_id: str) -> bool:
            """A live driver's claim: only a regular lease file is read to judge it."""
            return _regular(lay.claims_dir / f"{artifact_id}.lease") and claims.holder(artifact_id) is not None

        for d in self._kind_dirs_linked():
            if d in (lay.targets_dir, lay.runs_dir):
                # Not removed: without it every artifact of the other kind would look orphaned.
                report.kept.append((d, "a symbolic link in the store: not followed, nothing under it collected"))
            else:
                remove(d, "a symbolic link in the store (removed as a link, not followed)")
        # Leases are read to be judged: anything in .claims that is not a regular file (a FIFO
        # would block the read, a link would read another file) is no driver's, and goes first.
        for p in entries(lay.claims_dir):
            if not _regular(p) and not _real_dir(p) and os.path.lexists(p):
                remove(p, f"{file_type(os.lstat(p))} in the claims directory (not a lease; removed as it is, not followed)")
        for p, st in self._odd_cache_entries():
            remove(p, f"{file_type(st)} in JAX's compilation cache (removed as it is, not followed)")
        for p in list(self.tmp_entries()):
            owner = parse_tmp_name(p.name)
            if os.path.islink(p):
                remove(p, "a symbolic link in the store (removed as a link, not followed)")
            elif not _tmp_ours(p.name):  # `.tmp-backup`: not a name lambda-hat gives its temporaries
                report.kept.append((p, NOT_OURS))
            elif owner is not None and held(owner.artifact_id):
                report.kept.append((p, "its artifact is claimed by a live driver"))
            elif self._tmp_is_dead(p, tmp_grace_s):
                remove(p, "temporary directory of a dead writer")
            else:
                report.kept.append((p, "temporary directory of a writer that may be live"))
        # A run's work dir holds the checkpoint its next execute resumes from: kept until
        # the run is complete (the worker removes it then; a kill in between leaves it).
        for p in entries(lay.work_root):
            if os.path.islink(p):
                remove(p, "a symbolic link in the store (removed as a link, not followed)")
            elif not os.path.lexists(p):
                continue  # removed meanwhile (its run finished)
            elif not _work_ours(p):  # lambda-hat makes only run-ID-named directories here
                report.kept.append((p, NOT_OURS))
            elif not _real_dir(p):  # a run's work dir is a directory: anything else was never ours to resume
                remove(p, f"{'a file' if _regular(p) else file_type(os.lstat(p))} in the work directory "
                          "(not a run's work dir; removed as it is, not followed)")
            elif held(p.name):
                report.kept.append((p, "its run is claimed by a live driver"))
            elif self._finished_run(p.name):
                remove(p, "work dir of a finished run")
            else:
                report.kept.append((p, "checkpoint of an unfinished run (the next execute resumes from it)"))
        for p in entries(lay.claims_dir):
            artifact_id = p.name.removesuffix(".lease")
            if not _regular(p) and not _real_dir(p):
                continue  # removed above (or gone)
            if not _claims_ours(p):
                report.kept.append((p, NOT_OURS))
            elif _real_dir(p):  # an empty one (`_claims_ours`): no lease, nothing in it to lose
                remove(p, "an empty directory in the claims directory (not a lease)", tree=False)
            elif p.suffix != ".lease" or not held(artifact_id):
                remove(p, "stale claim")
        for kind in KINDS:  # left where they are, as reconcile leaves them
            report.kept += [(p, NOT_OURS) for p in self._foreign(kind)]
        scans = self._scans_not_linked()
        for name in sorted(scans["run"][1]):
            remove(lay.run_dir(name), "a symbolic link in the store (removed as a link, not followed)")
        # A target that is a link (moved to another disk) still stands for the runs sampled on it:
        # they are no orphans, and the link goes only once no run needs it (after the orphans).
        targets = scans["target"][0]
        # A run is an orphan only when its target is gone for good: not in targets/, and
        # neither claimed, being built nor quarantined (`_awaited_target`): a target is rebuilt
        # under the same ID, and the runs sampled on it stand.
        to_come = self._targets_to_come()
        drop: list[tuple[str, Path, str, str | None]] = []  # (run, its directory, why, its orphaned target)
        run_target_ids: set[str] = set()
        # Orphans are judged against targets/ as it is: never when it is a link gc does not look through.
        for name in sorted(scans["run"][0] - scans["run"][1]) if not os.path.islink(lay.targets_dir) else []:
            d = lay.run_dir(name)
            try:
                manifest = _manifest_raw(d)[0]
            except (ArtifactError, ManifestError):
                continue  # incomplete: reconcile quarantines it
            tid = manifest.spec.get("target_id")
            run_target_ids.add(tid)
            if tid not in targets:
                drop.append((name, d, f"orphan: its target {tid} is gone", tid))
            elif failed and manifest.status in FAILED_STATUSES:
                drop.append((name, d, f"failed run (status {manifest.status})", None))
        gone = []
        for name, d, why, orphaned in drop:
            if held(name):
                report.kept.append((d, "claimed by a live driver"))
                continue
            # Asked last, just before it goes: a rebuild may have started or ended meanwhile.
            awaited = None if orphaned is None else self._awaited_target(orphaned, to_come, claims)
            if awaited is not None:
                report.kept.append((d, f"its target {orphaned} is not in targets/ but {awaited}"))
                continue
            if not old_enough(d):
                if os.path.lexists(d):
                    report.kept.append((d, f"{why}, but younger than --older-than"))
                continue
            mounted = _mount_inside(d)
            if mounted is not None:
                report.kept.append((d, f"{why}, but {mounted}"))
                continue
            if not dry_run:
                # Out of runs/ first (one rename), so no reader ever sees half a deletion.
                aside = lay.quarantine_dir / f"{name}-gc-{os.getpid()}"
                try:
                    if not _real_dir(lay.quarantine_dir):
                        lay.quarantine_dir.mkdir(parents=True, exist_ok=True)  # a concurrent gc may make it too
                        if not _real_dir(lay.quarantine_dir):  # never moved through a link
                            raise OSError(f"{lay.quarantine_dir} is not a directory")
                    os.rename(d, aside)
                except OSError as err:
                    if os.path.lexists(d):  # else another gc took it first: not ours to count
                        report.kept.append((d, f"{why}, but it could not be removed ({err.strerror or err})"))
                    continue
                report.bytes_freed += _tree_size(aside)
                problem = _remove(aside)
                if problem is not None:
                    report.kept.append((aside, f"{why}; moved to the quarantine, but it could not be removed ({problem})"))
            else:
                report.bytes_freed += _tree_size(d)
            report.removed.append((d, why))
            gone.append(name)
        # After the orphans: a quarantined target that runs were sampled on stays until it is
        # rebuilt (`_quarantine_kept`), else a later gc would take those runs for orphans.
        for name in sorted(scans["target"][1]):
            if name in run_target_ids:
                report.kept.append((lay.target_dir(name), f"{TARGET_LINK_KEPT} (not followed)"))
            else:
                remove(lay.target_dir(name), "a symbolic link in the store (removed as a link, not followed)")
        # What writes at the store's root leave when killed (an atomic write's temporary, the write
        # probe) and indexes moved aside as unreadable: files of ours, by their names, kept for
        # `tmp_grace_s` (a live write, or a corrupt index to look at) and then removed.
        for p in entries(lay.root):
            if not ROOT_LEFTOVER.fullmatch(p.name) or not (_regular(p) or os.path.islink(p)):
                continue
            try:
                age = time.time() - os.lstat(p).st_mtime
            except FileNotFoundError:
                continue
            if age > tmp_grace_s:
                remove(p, "an unreadable index moved aside, rebuilt since" if p.name.startswith("index.duckdb.corrupt-")
                       else "a temporary file of a killed write")
        keep = self._quarantine_kept(targets, run_target_ids) if not os.path.islink(lay.targets_dir) else {}
        for p in entries(lay.quarantine_dir):
            _, gc_mark, gc_pid = p.name.rpartition("-gc-")
            if not os.path.islink(p) and not _ours("quarantine", p.name):
                report.kept.append((p, NOT_OURS))  # a link goes as the link it is: nothing of anyone's deleted
            elif p in keep:
                report.kept.append((p, f"quarantined; {keep[p]}"))
            elif gc_mark and _is_pid_text(gc_pid) and pid_alive(int(gc_pid)):
                continue  # an orphan a live gc (this one, or one beside it) moved aside: that gc counts it
            else:
                remove(p, "quarantined")
        if gone and not dry_run and self.layout.index_path.exists():
            try:
                index.write(self.layout, [], {"run": gone})
            except (index.IndexBusy, index.IndexCorrupt, OSError):
                pass  # the next reconcile drops the rows
        return report
