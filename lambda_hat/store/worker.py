"""The worker's narrow handle on the store (`WorkerStore`): whether an artifact is already
complete, the target a run samples (checked on the very bytes it decodes), writing an
artifact, a run's work directory (`SegmentStore`: segments, checkpoints, progress), and the
compile locks beside JAX's cache. Workers know no store path, manifest rule or Zarr layout
beyond what this module gives them (execute/apps.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, NamedTuple

from lambda_hat.errors import ArtifactError, StoreError, TargetDamaged
from lambda_hat.store.artifacts import TMP_PREFIX, load_verified, quarantine, read_arrays, write_artifact
from lambda_hat.store.layout import StoreLayout
from lambda_hat.store.locking import flock_within
from lambda_hat.store.manifest import Manifest

if TYPE_CHECKING:
    import numpy as np

# Under the compilation cache directory (JAX's cache files are `*-cache` at its top level).
COMPILE_LOCKS = "lh-compile-locks"


class WorkerStore:
    """What a worker job may do with the store at `root`."""

    def __init__(self, root: str | Path, log_path: str | Path | None = None):
        self.layout = StoreLayout(Path(root))
        # On a cluster the store and logs must be on a file system the nodes share.
        missing = [p for p in (self.layout.targets_dir, Path(log_path).parent if log_path else None)
                   if p is not None and not p.is_dir()]
        if missing:
            raise StoreError(f"{missing[0]} is not visible on {socket.gethostname()}: the store and --logs must be on "
                             "a file system the compute nodes share (not /tmp or a node-local disk)")

    @property
    def jax_cache_dir(self) -> Path:
        """JAX's persistent cache directory, cleared first of whatever in it is not a regular
        file or directory (`remove_odd_cache_entries`): the worker points JAX at it next, and
        JAX follows what it finds there."""
        for path in remove_odd_cache_entries(self.layout.jax_cache_dir):
            print(f"removed {path}: not a file of JAX's cache (a link, FIFO or device planted there)", flush=True)
        return self.layout.jax_cache_dir

    def artifact_dir(self, kind: str, artifact_id: str) -> Path:
        return self.layout.artifact_dir(kind, artifact_id)

    def complete(self, kind: str, artifact_id: str) -> Manifest | None:
        """The stored manifest if the artifact is already complete (another driver, an earlier
        attempt); None if it must be made."""
        from lambda_hat.store.store import check_manifest

        try:
            return check_manifest(self.layout.artifact_dir(kind, artifact_id), kind)[0]
        except (ArtifactError, OSError):
            return None

    def read_target(self, target_id: str) -> tuple[Manifest, dict[str, np.ndarray]]:
        """(manifest, arrays) of a complete, intact target. Never sample a target that is not
        exactly what was built: a damaged or edited one would give a wrong λ̂ recorded as `ok`.
        A damaged one is quarantined (one rename), so that the next plan sees it missing and
        rebuilds it, rather than failing every run on it on every execute. Raises TargetDamaged."""
        path = self.layout.target_dir(target_id)
        try:
            inode = os.stat(path).st_ino
        except FileNotFoundError:
            raise TargetDamaged(f"target {target_id} is missing (quarantined by another job?): "
                                "it is rebuilt on the next execute", target_id) from None
        try:
            return load_verified(path, "target")
        except ArtifactError as err:
            reason = str(err)
        # Only the directory we checked: not a good one that replaced it meanwhile.
        try:
            same = os.stat(path).st_ino == inode
        except FileNotFoundError:
            same = False
        where = quarantine(path, self.layout.quarantine_dir, f"damaged, found by a sampling job: {reason}") if same else None
        done = "quarantined" if where is not None else "already moved aside"
        raise TargetDamaged(f"target {target_id} was damaged ({reason}): {done}; it is rebuilt on the next execute",
                            target_id)

    def write(self, kind: str, artifact_id: str, arrays: dict[str, np.ndarray], manifest: Manifest) -> Manifest:
        """The artifact written atomically (`artifacts.write_artifact`); returns the stored manifest."""
        return write_artifact(self.layout.artifact_dir(kind, artifact_id), arrays, manifest,
                              quarantine_dir=self.layout.quarantine_dir)

    def segments(self, run_id: str, interval_s: float, draws: int | None = None) -> "SegmentStore":
        return SegmentStore(self.layout.work_dir(run_id), interval_s, draws=draws, run_id=run_id)


def remove_odd_cache_entries(cache_dir: Path) -> list[str]:
    """Remove, as the links or nodes they are, the symbolic links, FIFOs, sockets and devices
    under JAX's cache directory (never entering a link; the directory is small). JAX opens
    its entries as they are named: a FIFO would hang the job for ever, a link would have it
    read or write compiled programs outside the store. Returns the paths removed."""
    removed = []
    if not stat.S_ISDIR(_lstat_mode(cache_dir)):
        return removed  # absent (JAX makes it), or not a directory: the driver refuses that store
    for dirpath, dirnames, filenames in os.walk(cache_dir):  # does not enter links to directories
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            mode = _lstat_mode(path)
            if mode and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
                try:
                    os.unlink(path)
                    removed.append(path)
                except FileNotFoundError:
                    pass
    return removed


def _lstat_mode(path) -> int:
    """The file type and mode of `path` itself (0 where there is nothing)."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return 0


def _open_marker(path: Path) -> int:
    """A compile lock or marker file opened as a regular file of the store's own: never through
    a link (O_NOFOLLOW), never blocking on a FIFO (O_NONBLOCK). Anything else at its name
    (planted: the keys are deterministic) is removed as it is and the file made anew. Raises
    OSError where that fails (the compile goes on without it)."""
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    for _ in range(2):
        try:
            fd = os.open(path, flags, 0o644)
        except OSError:
            mode = _lstat_mode(path)
            if not mode or stat.S_ISREG(mode):
                raise
            fd = None  # a link (ELOOP), FIFO without a reader (ENXIO), socket: unlinked below
        if fd is not None:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                return fd
            os.close(fd)
        mode = _lstat_mode(path)
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(path)
        if mode:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    raise OSError(f"{path}: not a regular file")


def compile_guard(cache_dir: Path) -> "CompileOnce":
    """The compile locks of JAX's persistent cache at `cache_dir` (`science.compiling.guard`)."""
    return CompileOnce(Path(cache_dir) / COMPILE_LOCKS)


class CompileOnce:
    """`science.compiling.guard` for workers sharing a store: an exclusive `flock` per program in
    the compilation cache, held around its compile, so that concurrent workers (on this machine
    or on a cluster's nodes) compile a program once and the others load it from JAX's persistent
    cache. A `.done` marker, written after the first compile, lets later workers skip the lock.
    It orders compiles only: a file system without `flock`, or a holder that takes longer than
    `wait_s`, means compiling without it."""

    def __init__(self, root: Path, wait_s: float = 600.0):
        self.root, self.wait_s = root, wait_s

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        done = self.root / f"{key}.done"
        fd = None
        # Only a regular file counts as done; anything else at its name is replaced below.
        if not stat.S_ISREG(_lstat_mode(done)):
            try:
                self._make_root()
                fd = _open_marker(self.root / f"{key}.lock")
                flock_within(fd, self.wait_s)  # a holder past the deadline: compile anyway
            except OSError:
                pass  # no lock here: compile anyway
        try:
            yield
            if fd is not None:
                try:
                    os.close(_open_marker(done))
                except OSError:
                    pass
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock

    def _make_root(self) -> None:
        """The locks' directory, as a real directory: a link planted in its place is removed
        (as the link) rather than followed. Raises OSError where it cannot be made."""
        mode = _lstat_mode(self.root)
        if mode and not stat.S_ISDIR(mode):
            os.unlink(self.root)
        self.root.mkdir(parents=True, exist_ok=True)


class SavedCheckpoint(NamedTuple):
    """A checkpoint as read back: the fields of `science.pipeline.Checkpoint`, which
    `sample_run(resume=...)` takes as they are."""

    draws_done: int
    leaves: list
    L0: float
    compile_sec: float
    sample_sec: float


def read_progress(work_dir: Path) -> tuple[int, int] | None:
    """(draws done, draws) from a sampling run's progress file; None where there is none
    (not started, finished, or mid-replace)."""
    try:
        # Never through a link, never blocking on a FIFO, never more than a small file: the
        # driver reads this every second, and a planted entry must not hang or mislead it.
        fd = os.open(work_dir / SegmentStore.PROGRESS, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                     | getattr(os, "O_NONBLOCK", 0))
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            p = json.loads(os.read(fd, 4096))
        finally:
            os.close(fd)
        done, draws = p["draws_done"], p["draws"]
        # whole numbers as a worker writes them; anything else (Infinity, 1e400, -3) is no worker's
        if not all(type(v) is int for v in (done, draws)) or not 0 <= done <= draws:
            return None
        return done, draws
    except (OSError, ValueError, KeyError, TypeError):
        return None


PROGRESS_SEC = 2.0  # the driver's display of draws done is refreshed about this often


def _new_file(path: Path):
    """`path` opened for writing as a file of our own: created here (O_EXCL), never through a
    link (O_NOFOLLOW); a leftover of ours of the same name (a killed process's, pid reused) is
    unlinked first."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
    return os.fdopen(fd, "wb")


class SegmentStore:
    """A sampling run's work directory (`StoreLayout.work_dir`): the traces of the draws done so
    far, as Zarr arrays (chains, draws) filled segment by segment, and `checkpoint.npz`, the
    sampler state after them (`pipeline.Checkpoint`'s fields), replaced atomically. Traces are written
    before the checkpoint that counts them, so a kill at any point leaves a checkpoint whose
    draws are all on disk. Segments are buffered in memory and persisted at most every
    `interval_s` seconds (and after the last one).

    The checkpoint names its run and holds a sha256 of each trace's first `draws_done` draws
    and one over everything it holds: a work dir whose checkpoint is another run's, damaged,
    or counts draws its traces lack (or differ from) is discarded, never resumed from."""

    CHECKPOINT = "checkpoint.npz"
    TRACES = "traces.zarr"
    PROGRESS = "progress.json"  # {"draws_done", "draws"} every PROGRESS_SEC, for the driver's display

    def __init__(self, work_dir: Path, interval_s: float, draws: int | None = None, run_id: str | None = None):
        self.dir, self.interval_s, self.draws = work_dir, interval_s, draws
        self.run_id = run_id or work_dir.name  # the work dir is named after its run
        self.pending: list = []  # (checkpoint, segment traces) not yet on disk
        self.last_flush = time.monotonic()
        # The first progress file after PROGRESS_SEC of sampling: a run shorter than that (most
        # runs of a large sweep of small models) never makes its work directory at all.
        self.last_progress = time.monotonic()
        self.segments = 0
        # sha256 of each trace's draws so far, in draw-major order (appending draws extends
        # the bytes hashed), and how many draws they cover.
        self.trace_hashes: dict = {}
        self.hashed_draws = 0
        self._check_plain()

    def _check_plain(self) -> bool:
        """Discard the work directory if anything in it is not plain (`_odd_entry`): Zarr and
        numpy would write through a planted link, out of the store. Checked when the run
        starts and again before every write, since a link can be planted in between. Returns
        whether the directory was kept (or is absent)."""
        if self.dir.is_symlink():  # planted: never read or write through it (it points out of the store)
            print(f"removing {self.dir}, a symbolic link where a work directory belongs; starting over", flush=True)
            self.remove()
            return False
        odd = self._odd_entry()
        if odd is not None:
            print(f"discarding {self.dir} ({odd}); starting over", flush=True)
            self.remove()
            return False
        return True

    def _make_dir(self) -> None:
        """The work directory, created as a real directory under a real `.work` (never through a
        link planted at either), and checked plain (`_check_plain`) before a write into it."""
        parent = self.dir.parent
        if parent.is_symlink():
            raise StoreError(f"{parent} is a symbolic link: the store's work directory must be a real one")
        parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(self.dir)
        except FileExistsError:
            pass
        if not self._check_plain():
            os.mkdir(self.dir)

    def _odd_entry(self) -> str | None:
        """What in the work directory is neither a directory nor a regular file (a symbolic
        link, FIFO, device: `store.odd_entries`), or the directory itself not being one; None
        if all is plain."""
        from lambda_hat.store.store import odd_entries

        try:
            top = os.lstat(self.dir)
        except FileNotFoundError:
            return None
        if not stat.S_ISDIR(top.st_mode):
            return "it is not a directory"
        odd = odd_entries(self.dir)
        return odd[0] if odd else None

    @staticmethod
    def _draw_major(block) -> bytes:
        import numpy as np

        return np.ascontiguousarray(np.moveaxis(block, 1, 0)).tobytes()

    def _digest(self, draws_done: int, L0: float, compile_sec: float, sample_sec: float, names: list[str],
                trace_sha256: dict, leaves: list) -> str:
        """sha256 over everything a checkpoint holds: its run, draw count, times, the traces'
        digests, and each state leaf's dtype, shape and bytes."""
        import hashlib

        import numpy as np

        leaves = [np.ascontiguousarray(a) for a in leaves]
        head = {"run_id": self.run_id, "draws_done": draws_done, "L0": L0, "compile_sec": compile_sec,
                "sample_sec": sample_sec, "trace_names": names, "traces_sha256": trace_sha256,
                "leaves": [[a.dtype.str, list(a.shape)] for a in leaves]}
        h = hashlib.sha256(json.dumps(head, sort_keys=True, allow_nan=True).encode())
        for a in leaves:
            h.update(a.tobytes())
        return h.hexdigest()

    def load(self):
        """(checkpoint, traces so far) to resume from, or None (no usable checkpoint: start
        over; a work dir that cannot be resumed from is removed, with one line saying why)."""
        import hashlib

        import numpy as np

        path = self.dir / self.CHECKPOINT
        if not path.is_file():
            if os.path.lexists(self.dir):  # traces without a checkpoint count nothing: never appended to
                self.remove()
            return None
        try:
            with np.load(path) as f:
                if "run_id" not in f or "digest" not in f:
                    raise ValueError("it carries no run ID or checksum (an older lambda-hat's)")
                if str(f["run_id"]) != self.run_id:
                    raise ValueError(f"its checkpoint is run {f['run_id']}'s, not {self.run_id}'s")
                n_leaves = int(f["n_leaves"])
                ckpt = SavedCheckpoint(int(f["draws_done"]), [f[f"leaf_{i}"] for i in range(n_leaves)], float(f["L0"]),
                                  float(f["compile_sec"]), float(f["sample_sec"]))
                names = [str(x) for x in f["trace_names"]]
                trace_sha256 = json.loads(str(f["traces_sha256"]))
                digest = str(f["digest"])
            if self._digest(ckpt.draws_done, ckpt.L0, ckpt.compile_sec, ckpt.sample_sec, names, trace_sha256,
                            ckpt.leaves) != digest:
                raise ValueError("checkpoint checksum mismatch")
            traces = read_arrays(self.dir / self.TRACES, names)
            hashes = {}
            for name, v in traces.items():
                if v.shape[1] < ckpt.draws_done:
                    raise ValueError(f"trace {name} holds {v.shape[1]} draws, the checkpoint counts {ckpt.draws_done}")
                hashes[name] = hashlib.sha256(self._draw_major(v[:, :ckpt.draws_done]))
                if hashes[name].hexdigest() != trace_sha256.get(name):
                    raise ValueError(f"trace {name} differs from the draws its checkpoint counted")
        except Exception as err:  # a damaged work dir costs a restart, never a wrong result
            print(f"discarding {self.dir} ({' '.join(str(err).split())[:300]}); starting over", flush=True)
            self.remove()
            return None
        self.trace_hashes, self.hashed_draws = hashes, ckpt.draws_done
        return ckpt, {k: v[:, :ckpt.draws_done] for k, v in traces.items()}

    def on_segment(self, checkpoint, traces: dict) -> None:
        from lambda_hat.faults import crash_point

        self.segments += 1
        crash_point(f"sample:segment-{self.segments}")
        self.pending.append((checkpoint, traces))
        # (after the last segment the run's artifact is written next: nothing to resume from)
        if time.monotonic() - self.last_flush >= self.interval_s:
            self.flush()
        if self.draws is not None and time.monotonic() - self.last_progress >= PROGRESS_SEC:
            # Advisory, for display: at most every PROGRESS_SEC, replaced atomically but never
            # fsynced (a file write per segment measurably slowed short segments).
            self.last_progress = time.monotonic()
            self._make_dir()
            tmp = self.dir / f".{self.PROGRESS}-{os.getpid()}"
            with _new_file(tmp) as f:
                f.write(json.dumps({"draws_done": checkpoint.draws_done, "draws": self.draws}).encode())
            os.replace(tmp, self.dir / self.PROGRESS)

    def flush(self) -> None:
        import hashlib

        import numpy as np
        import zarr

        from lambda_hat.faults import crash_point

        if not self.pending:
            return
        ckpt = self.pending[-1][0]
        first = self.pending[0][0].draws_done - next(iter(self.pending[0][1].values())).shape[1]
        if first != self.hashed_draws:
            # Segments that do not continue the draws checksummed so far (cannot happen after
            # `load`): no checkpoint rather than one that would not check out.
            self.pending.clear()
            return
        self._make_dir()
        if self.hashed_draws and not (self.dir / self.CHECKPOINT).is_file():
            # Discarded since the last flush (a link was planted in it): what was on disk is gone,
            # and these segments alone would not make a checkpoint that checks out. Start again.
            self.trace_hashes, self.hashed_draws = {}, 0
            self.pending.clear()
            return
        root = zarr.open_group(str(self.dir / self.TRACES), mode="a", zarr_format=3)
        names = sorted(self.pending[0][1])
        for name in names:
            block = np.concatenate([t[name] for _, t in self.pending], axis=1)
            self.trace_hashes.setdefault(name, hashlib.sha256()).update(self._draw_major(block))
            rest = block.shape[2:]  # recorded per-example losses: (chains, draws, examples)
            if name not in root:
                root.create_array(name, shape=(block.shape[0], ckpt.draws_done, *rest), dtype=block.dtype,
                                  chunks=(block.shape[0], max(1, block.shape[1]), *rest))
            arr = root[name]
            if arr.shape[1] < ckpt.draws_done:
                arr.resize((arr.shape[0], ckpt.draws_done, *rest))
            arr[:, first:ckpt.draws_done] = block
        self.hashed_draws = ckpt.draws_done
        crash_point(f"sample:before_checkpoint-{self.segments}")
        leaves = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(ckpt.leaves)}
        trace_sha256 = {name: self.trace_hashes[name].hexdigest() for name in names}
        digest = self._digest(ckpt.draws_done, ckpt.L0, ckpt.compile_sec, ckpt.sample_sec, names, trace_sha256,
                              list(leaves.values()))
        tmp = self.dir / f"{TMP_PREFIX}{self.CHECKPOINT}-{os.getpid()}"
        with _new_file(tmp) as f:
            np.savez(f, run_id=self.run_id, draws_done=ckpt.draws_done, L0=ckpt.L0, compile_sec=ckpt.compile_sec,
                     sample_sec=ckpt.sample_sec, n_leaves=len(leaves), trace_names=np.asarray(names),
                     traces_sha256=json.dumps(trace_sha256, sort_keys=True), digest=digest, **leaves)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.dir / self.CHECKPOINT)
        self.pending.clear()
        self.last_flush = time.monotonic()

    def remove(self) -> None:
        import shutil

        if self.dir.is_symlink() or (self.dir.exists() and not self.dir.is_dir()):  # a link: itself, never its target
            try:
                os.unlink(self.dir)
            except FileNotFoundError:
                pass
            return
        from lambda_hat.store.store import _mount_inside

        mounted = _mount_inside(self.dir)
        if mounted is not None:  # rmtree would delete the mounted files: left for the user, said why
            print(f"work directory {self.dir} kept: {mounted}", flush=True)
            return
        shutil.rmtree(self.dir, ignore_errors=True)  # unlinks the links inside, never follows them
