"""The worker entry points (`build_target_job`, `run_sampler_job`, `run_sampler_batch_job`).
They receive specs (as JSON) and paths, write their artifacts into the store, and return the
small manifests. They never open the index. Validating the specs imports `lambda_hat.specs`,
which loads the plugins named in $LH_PLUGINS (`registry.py`): a worker knows the model kinds and
samplers its driver knew, through the environment it inherits."""

from __future__ import annotations

import datetime as dt
import functools
import json
import math
import os
import platform
import socket
import subprocess
import sys
import time
import traceback
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Iterator

PACKAGES = ("lambda-hat", "jax", "jaxlib", "blackjax", "optax", "numpy", "zarr", "parsl")


@functools.lru_cache(maxsize=1)
def provenance() -> dict:
    """Code and environment facts for manifests (never part of an ID)."""
    here = Path(__file__).resolve().parent
    sha, dirty = None, None
    try:
        sha = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        ).stdout.strip() or None
        if sha:
            dirty = bool(
                subprocess.run(
                    ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                    capture_output=True, text=True, timeout=5,
                ).stdout.strip()
            )
    except (OSError, subprocess.SubprocessError):
        pass
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {
        "code": {"sha": sha, "dirty": dirty},
        "packages": versions,
        "python": platform.python_version(),
    }


def _manifest(kind: str, artifact_id: str, schema: str, spec: dict, **fields):
    from lambda_hat.store.manifest import Manifest

    return Manifest.model_validate({
        "id": artifact_id,
        "type": kind,
        "schema": schema,
        "spec": spec,
        "host": socket.gethostname(),
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        **provenance(),
        **fields,
    })


@contextmanager
def job_logs(log_path: Path, err_path: Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors too, so XLA's C++ logs follow)
    to the job's log files for the duration of the job. A failure's traceback lands in .err."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open(log_path, "w") as out, open(err_path, "w") as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            yield
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


# Jobs this worker process has run so far: the first pays the imports (JAX, the science code),
# later ones reuse them and the in-process cache of compiled programs.
_JOBS_IN_PROCESS = 0


def _job_clock() -> dict:
    """Start of a job's timings: when it started (epoch seconds, comparable with the driver's
    stage times) and how many jobs this worker process ran before it."""
    global _JOBS_IN_PROCESS
    clock = {"job_started_at": time.time(), "worker_pid": os.getpid(), "worker_job_index": _JOBS_IN_PROCESS}
    _JOBS_IN_PROCESS += 1
    return clock


# JAX's GPU memory settings (https://docs.jax.dev/en/latest/gpu_memory_allocation.html): by
# default each process takes 75 % of a GPU's memory when it first uses it.
GPU_MEMORY_ENV = ("XLA_PYTHON_CLIENT_PREALLOCATE", "XLA_PYTHON_CLIENT_MEM_FRACTION", "XLA_PYTHON_CLIENT_ALLOCATOR")


def _share_the_gpu() -> None:
    """A node's workers are separate processes that share its GPU: with the default
    preallocation the first takes 75 % of its memory and the others fail to (seen on an H100:
    out-of-memory errors while XLA retries smaller pools), then run short. Unless the user chose
    a setting, each worker allocates as it goes."""
    if not any(name in os.environ for name in GPU_MEMORY_ENV):
        os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"


def _import_science() -> float:
    """Import JAX and the science code; returns the seconds it took (~0 after a worker's first job)."""
    _share_the_gpu()  # before JAX starts its GPU backend
    t0 = time.perf_counter()
    # lambda_hat.science imports its libraries lazily: import them here so that this figure
    # (reported per job as `import_sec`) is the whole import, not a part of the next step
    import blackjax  # noqa: F401
    import jax  # noqa: F401
    import optax  # noqa: F401

    import lambda_hat.science  # noqa: F401

    return time.perf_counter() - t0


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
        from lambda_hat.store.locking import flock_within

        done = self.root / f"{key}.done"
        fd = None
        if not done.exists():
            try:
                self.root.mkdir(parents=True, exist_ok=True)
                fd = os.open(self.root / f"{key}.lock", os.O_RDWR | os.O_CREAT, 0o644)
                flock_within(fd, self.wait_s)  # a holder past the deadline: compile anyway
            except OSError:
                pass  # no lock here: compile anyway
        try:
            yield
            if fd is not None:
                try:
                    done.touch()
                except OSError:
                    pass
        finally:
            if fd is not None:
                os.close(fd)  # releases the lock


# Under the compilation cache directory (JAX's cache files are `*-cache` at its top level).
COMPILE_LOCKS = "lh-compile-locks"


def _setup_jax(cache_dir: str | None) -> None:
    import jax

    from lambda_hat.science import compiling

    # No process-wide jax_enable_x64: the science entry points run each spec in the x64 mode
    # its `dtype` needs, scoped to the call (`science.models.precision`).
    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        # Cache every compile: on small models most compiles are under JAX's 1 s default,
        # and they are exactly what a sweep repeats across targets of the same shapes.
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        # No XLA side caches under the cache directory (JAX's default adds the GPU autotuning
        # cache): their path becomes part of every program's cache key, so a store reached by
        # another path (moved, copied, mounted elsewhere) would miss every entry it holds.
        jax.config.update("jax_persistent_cache_enable_xla_caches", "none")
        compiling.guard = CompileOnce(Path(cache_dir) / COMPILE_LOCKS)


def _require_shared_store(store_root: str, log_path: str) -> None:
    """On a cluster the store and logs must be on a file system the nodes share."""
    missing = [p for p in (Path(store_root) / "targets", Path(log_path).parent) if not p.is_dir()]
    if missing:
        raise RuntimeError(
            f"{missing[0]} is not visible on {socket.gethostname()}: the store and --logs must be on a file "
            "system the compute nodes share (not /tmp or a node-local disk)"
        )


def build_target_job(spec_json: dict, store_root: str, log_path: str, err_path: str) -> dict:
    from lambda_hat.ids import TARGET_SCHEMA, resolved_spec, target_id
    from lambda_hat.specs import TargetSpec
    from lambda_hat.store.artifacts import write_artifact
    from lambda_hat.store.layout import StoreLayout

    _require_shared_store(store_root, log_path)
    layout = StoreLayout(Path(store_root))
    with job_logs(Path(log_path), Path(err_path)):
        clock = _job_clock()
        spec = TargetSpec.model_validate(spec_json)
        tid = target_id(spec)
        print(f"building {tid} on {socket.gethostname()} (pid {os.getpid()})", flush=True)
        done = _already_complete(layout, "target", tid)
        if done is not None:
            return done
        import_sec = _import_science()
        _setup_jax(str(layout.jax_cache_dir))
        from lambda_hat.science import build_target

        t0 = time.perf_counter()
        arrays = build_target(spec)
        build_sec = time.perf_counter() - t0
        if not math.isfinite(float(arrays.metrics["L0"])):
            # A target whose training diverged has no w* to measure the LLC at.
            raise RuntimeError(f"training diverged: L0 = L_n(w*) is {arrays.metrics['L0']}; lower training.learning_rate")
        manifest = _manifest("target", tid, TARGET_SCHEMA, resolved_spec(spec), status="ok",
                             metrics=dict(arrays.metrics),
                             timings={"build_sec": build_sec, "import_sec": import_sec, **clock,
                                      "write_started_at": time.time()})
        payload = arrays.to_payload()
        manifest = write_artifact(layout.target_dir(tid), payload, manifest, quarantine_dir=layout.quarantine_dir)
        print(f"wrote {layout.target_dir(tid)}: {arrays.metrics} in {build_sec:.2f}s", flush=True)
        return manifest.to_json_dict()


def run_sampler_job(run_json: dict, store_root: str, log_path: str, err_path: str, inputs: list = (),
                    diagnostics: dict | None = None) -> dict:
    """`inputs` carries the target build's future when the target is built in this sweep:
    Parsl starts this job only once it has resolved. `diagnostics`: the sweep's thresholds for
    flagging the finished run (`specs.DiagnosticsSpec`; its defaults when None)."""
    from lambda_hat.ids import run_id
    from lambda_hat.specs import DiagnosticsSpec, RunSpec, TargetSpec
    from lambda_hat.store.layout import StoreLayout

    _require_shared_store(store_root, log_path)
    layout = StoreLayout(Path(store_root))
    with job_logs(Path(log_path), Path(err_path)):
        clock = _job_clock()
        spec = RunSpec.model_validate(run_json)
        rid = run_id(spec)
        print(f"sampling {rid} ({spec.sampler.name}) on {spec.target_id} on {socket.gethostname()}", flush=True)
        done = _already_complete(layout, "run", rid)
        if done is not None:
            return done
        t_read = time.perf_counter()
        tman, loaded = _read_target(layout, spec.target_id)
        target = TargetSpec.model_validate(tman.spec)
        read_sec = time.perf_counter() - t_read
        import_sec = _import_science()
        _setup_jax(str(layout.jax_cache_dir))
        from lambda_hat.science import TargetArrays, sample_run

        arrays = TargetArrays.from_payload(loaded, tman.metrics)
        t0 = time.perf_counter()
        work = SegmentStore(layout.work_dir(rid), checkpoint_interval_s(), draws=spec.sampler.draws, run_id=rid)
        resume = work.load()
        if resume is not None:
            print(f"resuming {rid} after {resume[0].draws_done} of {spec.sampler.draws} draws", flush=True)
        result = sample_run(spec, target, arrays, resume=resume, on_segment=work.on_segment,
                            diagnostics=DiagnosticsSpec.model_validate(diagnostics or {}))
        total_sec = time.perf_counter() - t0
        manifest = _write_run(layout, spec, rid, result, tman, {"sample_job_sec": total_sec, "import_sec": import_sec,
                                                                "read_sec": read_sec, **clock})
        work.remove()
        return manifest


class TargetDamaged(RuntimeError):
    """The target a run was to sample failed its checksums and was quarantined. `target_id`
    names it (the driver may rebuild it); `str()` is the one line the user sees."""

    def __init__(self, message: str, target_id: str):
        super().__init__(message, target_id)  # both in args: Parsl pickles it back to the driver
        self.target_id = target_id

    def __str__(self) -> str:
        return self.args[0]


def _read_target(layout, target_id: str):
    """(manifest, arrays) of a complete, intact target. Never sample a target that is not
    exactly what was built: a damaged or edited one would give a wrong λ̂ recorded as `ok`.
    A damaged one is quarantined (one rename), so that the next plan sees it missing and
    rebuilds it, rather than failing every run on it on every execute."""
    from lambda_hat.store.artifacts import ArtifactError, load_verified, quarantine

    path = layout.target_dir(target_id)
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
    where = quarantine(path, layout.quarantine_dir, f"damaged, found by a sampling job: {reason}") if same else None
    done = "quarantined" if where is not None else "already moved aside"
    raise TargetDamaged(f"target {target_id} was damaged ({reason}): {done}; it is rebuilt on the next execute",
                        target_id)


def _write_run(layout, spec, rid: str, result, tman, timings: dict) -> dict:
    """The run's artifact (its traces, then its manifest), written atomically; returns the manifest."""
    from lambda_hat.ids import RUN_SCHEMA, resolved_spec
    from lambda_hat.store.artifacts import write_artifact

    status = result.metrics.get("status", "ok")
    metrics = dict(result.metrics)
    llc_true = tman.metrics.get("llc_true")
    if llc_true is not None:
        # Targets with a known λ carry it into their runs' results.
        metrics["llc_true"] = llc_true
        if metrics.get("llc_ref") is None:  # a run with an exact finite-n reference is judged against that
            metrics["rel_error"] = (metrics["llc_mean"] - llc_true) / llc_true if llc_true else math.nan
    manifest = _manifest("run", rid, RUN_SCHEMA, resolved_spec(spec), status=status, metrics=metrics,
                         timings={**timings, "write_started_at": time.time()})
    manifest = write_artifact(layout.run_dir(rid), {f"traces/{k}": v for k, v in result.traces.items()}, manifest,
                              quarantine_dir=layout.quarantine_dir)
    m = result.metrics
    print(f"{rid}: llc_mean={m.get('llc_mean')} llc_std={m.get('llc_std')} r_hat={m.get('r_hat')} status={status}",
          flush=True)
    return manifest.to_json_dict()


def run_sampler_batch_job(run_jsons: list, store_root: str, log_path: str, err_path: str, inputs: list = (),
                          diagnostics: dict | None = None) -> list:
    """Several runs of one target that differ only in seed, β, γ or runtime scalars
    (`pipeline.batch_key`), sampled as one vmapped program (`lh execute --batch-runs`). Each run
    gets its own artifact and manifest, written as soon as the batch is done; runs already complete
    are returned as they are. Returns one manifest per run, in order. No checkpoints: a killed
    batch starts again (its finished runs are kept)."""
    from lambda_hat.ids import run_id
    from lambda_hat.specs import DiagnosticsSpec, RunSpec, TargetSpec
    from lambda_hat.store.layout import StoreLayout

    _require_shared_store(store_root, log_path)
    layout = StoreLayout(Path(store_root))
    with job_logs(Path(log_path), Path(err_path)):
        clock = _job_clock()
        specs = [RunSpec.model_validate(j) for j in run_jsons]
        rids = [run_id(s) for s in specs]
        print(f"sampling {len(specs)} runs as one batch ({specs[0].sampler.name}) on {specs[0].target_id} "
              f"on {socket.gethostname()}: {', '.join(rids)}", flush=True)
        out: dict[str, dict] = {}
        for rid in rids:
            done = _already_complete(layout, "run", rid)
            if done is not None:
                out[rid] = done
        todo = [(s, r) for s, r in zip(specs, rids) if r not in out]
        if todo:
            t_read = time.perf_counter()
            tman, loaded = _read_target(layout, specs[0].target_id)
            target = TargetSpec.model_validate(tman.spec)
            read_sec = time.perf_counter() - t_read
            import_sec = _import_science()
            _setup_jax(str(layout.jax_cache_dir))
            from lambda_hat.science import TargetArrays
            from lambda_hat.science.pipeline import sample_runs

            arrays = TargetArrays.from_payload(loaded, tman.metrics)
            t0 = time.perf_counter()
            results = sample_runs([s for s, _ in todo], target, arrays,
                                  diagnostics=DiagnosticsSpec.model_validate(diagnostics or {}))
            total_sec = time.perf_counter() - t0
            for (spec, rid), result in zip(todo, results):
                out[rid] = _write_run(layout, spec, rid, result, tman,
                                      {"sample_job_sec": total_sec, "batch_runs": len(todo), "import_sec": import_sec,
                                       "read_sec": read_sec, **clock})
        return [out[r] for r in rids]


CHECKPOINT_SEC_ENV = "LH_CHECKPOINT_SEC"
# Seconds of sampling between checkpoints: a kill loses at most this much work, and persisting
# the traces and state costs a few milliseconds per checkpoint.
CHECKPOINT_SEC = 60.0
PROGRESS_SEC = 2.0  # the driver's display of draws done is refreshed about this often


def checkpoint_interval_s() -> float:
    return float(os.environ.get(CHECKPOINT_SEC_ENV, CHECKPOINT_SEC))


class SegmentStore:
    """A sampling run's work directory (`StoreLayout.work_dir`): the traces of the draws done so
    far, as Zarr arrays (chains, draws) filled segment by segment, and `checkpoint.npz`, the
    sampler state after them (`pipeline.Checkpoint`), replaced atomically. Traces are written
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

        from lambda_hat.science.pipeline import Checkpoint
        from lambda_hat.store.artifacts import read_arrays

        path = self.dir / self.CHECKPOINT
        if not path.is_file():
            return None
        try:
            with np.load(path) as f:
                if "run_id" not in f or "digest" not in f:
                    raise ValueError("it carries no run ID or checksum (an older lambda-hat's)")
                if str(f["run_id"]) != self.run_id:
                    raise ValueError(f"its checkpoint is run {f['run_id']}'s, not {self.run_id}'s")
                n_leaves = int(f["n_leaves"])
                ckpt = Checkpoint(int(f["draws_done"]), [f[f"leaf_{i}"] for i in range(n_leaves)], float(f["L0"]),
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
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f".{self.PROGRESS}-{os.getpid()}"
            tmp.write_text(json.dumps({"draws_done": checkpoint.draws_done, "draws": self.draws}))
            os.replace(tmp, self.dir / self.PROGRESS)

    def flush(self) -> None:
        import hashlib

        import numpy as np
        import zarr

        from lambda_hat.faults import crash_point
        from lambda_hat.store.artifacts import TMP_PREFIX

        if not self.pending:
            return
        ckpt = self.pending[-1][0]
        first = self.pending[0][0].draws_done - next(iter(self.pending[0][1].values())).shape[1]
        if first != self.hashed_draws:
            # Segments that do not continue the draws checksummed so far (cannot happen after
            # `load`): no checkpoint rather than one that would not check out.
            self.pending.clear()
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(self.dir / self.TRACES), mode="a", zarr_format=3)
        names = sorted(self.pending[0][1])
        for name in names:
            block = np.concatenate([t[name] for _, t in self.pending], axis=1)
            self.trace_hashes.setdefault(name, hashlib.sha256()).update(self._draw_major(block))
            if name not in root:
                root.create_array(name, shape=(block.shape[0], ckpt.draws_done), dtype=block.dtype,
                                  chunks=(block.shape[0], max(1, block.shape[1])))
            arr = root[name]
            if arr.shape[1] < ckpt.draws_done:
                arr.resize((arr.shape[0], ckpt.draws_done))
            arr[:, first:ckpt.draws_done] = block
        self.hashed_draws = ckpt.draws_done
        crash_point(f"sample:before_checkpoint-{self.segments}")
        leaves = {f"leaf_{i}": np.asarray(a) for i, a in enumerate(ckpt.leaves)}
        trace_sha256 = {name: self.trace_hashes[name].hexdigest() for name in names}
        digest = self._digest(ckpt.draws_done, ckpt.L0, ckpt.compile_sec, ckpt.sample_sec, names, trace_sha256,
                              list(leaves.values()))
        tmp = self.dir / f"{TMP_PREFIX}{self.CHECKPOINT}-{os.getpid()}"
        with open(tmp, "wb") as f:
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

        shutil.rmtree(self.dir, ignore_errors=True)


def _already_complete(layout, kind: str, artifact_id: str) -> dict | None:
    """The stored manifest if the artifact is already complete (another driver, an earlier
    attempt); None if it must be made."""
    from lambda_hat.store.artifacts import ArtifactError
    from lambda_hat.store.manifest import ManifestError
    from lambda_hat.store.store import check_manifest

    try:
        manifest, _ = check_manifest(layout.artifact_dir(kind, artifact_id), kind)
    except (ArtifactError, ManifestError, OSError):
        return None
    print(f"{artifact_id} already complete in the store; nothing to do", flush=True)
    return manifest.to_json_dict()
