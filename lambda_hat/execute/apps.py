"""The worker entry points (`build_target_job`, `run_sampler_job`, `run_sampler_batch_job`).
They receive specs (as JSON) and paths, write their artifacts through the store's worker
handle (`store.WorkerStore`), and return the small manifests. They never open the index. Validating the specs imports `lambda_hat.specs`,
which loads the plugins named in $LH_PLUGINS (`registry.py`): a worker knows the model kinds and
samplers its driver knew, through the environment it inherits."""

from __future__ import annotations

import datetime as dt
import functools
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

from lambda_hat.errors import BadInput
from lambda_hat.faults import crash_point
from lambda_hat.files import open_log
from lambda_hat.logs import STORE_LINE

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
    from lambda_hat.store import Manifest

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
def job_logs(log_path: Path, err_path: Path, store_root: str | Path) -> Iterator[None]:
    """Send this process's stdout/stderr (file descriptors too, so XLA's C++ logs follow)
    to the job's log files for the duration of the job. A failure's traceback lands in .err.
    The .log's first line names the store the job writes to (`STORE_LINE`): a logs folder
    shared by several stores is read back per store (`lh status`)."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    with open_log(log_path) as out, open_log(err_path) as err:
        os.dup2(out.fileno(), 1)
        os.dup2(err.fileno(), 2)
        try:
            print(f"{STORE_LINE}{Path(store_root).resolve()}", flush=True)
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


def _setup_jax(cache_dir: str | None) -> None:
    import jax

    from lambda_hat.science import compiling
    from lambda_hat.store import compile_guard

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
        compiling.guard = compile_guard(Path(cache_dir))


def build_target_job(spec_json: dict, store_root: str, log_path: str, err_path: str, inputs: list = (),
                     earlier: list = ()) -> dict:
    """`earlier`: for a checkpoint target, the IDs of its trajectory's checkpoints at smaller
    steps, in step order; it resumes from the last of them that is stored (`inputs` carries the
    build of the one before it, when this execute builds that one too)."""
    from lambda_hat.ids import TARGET_SCHEMA, resolved_spec, target_id, trajectory_id
    from lambda_hat.specs import TargetSpec
    from lambda_hat.store import WorkerStore

    store = WorkerStore(store_root, log_path)
    with job_logs(Path(log_path), Path(err_path), store_root):
        clock = _job_clock()
        spec = TargetSpec.model_validate(spec_json)
        tid = target_id(spec)
        print(f"building {tid} on {socket.gethostname()} (pid {os.getpid()})", flush=True)
        done = _already_complete(store, "target", tid)
        if done is not None:
            return done
        import_sec = _import_science()
        _setup_jax(str(store.jax_cache_dir))
        from lambda_hat.science import build_target

        t0 = time.perf_counter()
        if spec.step is None or getattr(spec.model, "params_file", None) is not None:
            arrays = build_target(spec)  # an ordinary target, or a checkpoint trained elsewhere (w* is its file's)
        else:
            from lambda_hat.science.trajectory import build_checkpoint

            resume = _stored_checkpoint(store, earlier)
            print(f"training steps {resume.step if resume else 0} to {spec.step} of {trajectory_id(spec)}"
                  + (" (resuming from a stored checkpoint)" if resume else ""), flush=True)
            arrays = build_checkpoint(spec, resume, on_span=lambda step: crash_point(f"train:step-{step}"))
        if spec.step is not None:
            arrays.metrics["trajectory_id"] = trajectory_id(spec)
        build_sec = time.perf_counter() - t0
        if not math.isfinite(float(arrays.metrics["L0"])):
            # A target whose training diverged has no w* to measure the LLC at.
            raise RuntimeError(f"training diverged: L0 = L_n(w*) is {arrays.metrics['L0']}; lower training.learning_rate")
        manifest = _manifest("target", tid, TARGET_SCHEMA, resolved_spec(spec), status="ok",
                             metrics=dict(arrays.metrics),
                             timings={"build_sec": build_sec, "import_sec": import_sec, **clock,
                                      "write_started_at": time.time()})
        payload = arrays.to_payload()
        manifest = store.write("target", tid, payload, manifest)
        print(f"wrote {store.artifact_dir('target', tid)}: {arrays.metrics} in {build_sec:.2f}s", flush=True)
        return manifest.to_json_dict()


def _stored_checkpoint(store, earlier: list):
    """The last of `earlier` (checkpoint IDs in step order) that is stored and intact, as a
    `trajectory.Resume`; None: train from step 0. A damaged one is quarantined and passed over."""
    from lambda_hat.errors import TargetDamaged
    from lambda_hat.science import TargetArrays
    from lambda_hat.science.trajectory import Resume, optimizer_leaves

    for tid in reversed(list(earlier)):
        if store.complete("target", tid) is None:
            continue
        try:
            manifest, loaded = store.read_target(tid)
        except TargetDamaged as err:
            print(f"not resuming from {tid}: {err}", flush=True)
            continue
        arrays = TargetArrays.from_payload(loaded, manifest.metrics)
        return Resume(int(manifest.spec["step"]), arrays.params, optimizer_leaves(arrays.optimizer))
    return None


def run_sampler_job(run_json: dict, store_root: str, log_path: str, err_path: str, inputs: list = (),
                    diagnostics: dict | None = None) -> dict:
    """`inputs` carries the target build's future when the target is built in this sweep:
    Parsl starts this job only once it has resolved. `diagnostics`: the sweep's thresholds for
    flagging the finished run (`specs.DiagnosticsSpec`; its defaults when None)."""
    from lambda_hat.ids import run_id
    from lambda_hat.specs import DiagnosticsSpec, RunSpec, TargetSpec
    from lambda_hat.store import WorkerStore

    store = WorkerStore(store_root, log_path)
    with job_logs(Path(log_path), Path(err_path), store_root):
        clock = _job_clock()
        spec = RunSpec.model_validate(run_json)
        rid = run_id(spec)
        print(f"sampling {rid} ({spec.sampler.name}) on {spec.target_id} on {socket.gethostname()}", flush=True)
        done = _already_complete(store, "run", rid)
        if done is not None:
            return done
        t_read = time.perf_counter()
        tman, loaded = store.read_target(spec.target_id)
        target = TargetSpec.model_validate(tman.spec)
        read_sec = time.perf_counter() - t_read
        import_sec = _import_science()
        _setup_jax(str(store.jax_cache_dir))
        from lambda_hat.science import TargetArrays, sample_run

        arrays = TargetArrays.from_payload(loaded, tman.metrics)
        t0 = time.perf_counter()
        work = store.segments(rid, checkpoint_interval_s(), draws=spec.sampler.draws)
        resume = work.load()
        if resume is not None:
            print(f"resuming {rid} after {resume[0].draws_done} of {spec.sampler.draws} draws", flush=True)
        result = sample_run(spec, target, arrays, resume=resume, on_segment=work.on_segment,
                            diagnostics=DiagnosticsSpec.model_validate(diagnostics or {}))
        total_sec = time.perf_counter() - t0
        manifest = _write_run(store, spec, rid, result, tman, {"sample_job_sec": total_sec, "import_sec": import_sec,
                                                                "read_sec": read_sec, **clock})
        work.remove()
        return manifest


def _write_run(store, spec, rid: str, result, tman, timings: dict) -> dict:
    """The run's artifact (its traces, then its manifest), written atomically; returns the manifest."""
    from lambda_hat.ids import RUN_SCHEMA, resolved_spec

    status = result.metrics.get("status", "ok")
    metrics = dict(result.metrics)
    # the target's exact λ is of the whole model, not of a restriction of it (`spec.free`)
    llc_true = tman.metrics.get("llc_true") if spec.free is None else None
    if llc_true is not None:
        # Targets with a known λ carry it into their runs' results.
        metrics["llc_true"] = llc_true
        if metrics.get("llc_ref") is None:  # a run with an exact finite-n reference is judged against that
            metrics["rel_error"] = (metrics["llc_mean"] - llc_true) / llc_true if llc_true else math.nan
    manifest = _manifest("run", rid, RUN_SCHEMA, resolved_spec(spec), status=status, metrics=metrics,
                         timings={**timings, "write_started_at": time.time()})
    payload = {f"traces/{k}": v for k, v in result.traces.items()} | {f"examples/{k}": v for k, v in result.examples.items()}
    manifest = store.write("run", rid, payload, manifest)
    m = result.metrics
    print(f"{rid}: llc_mean={m.get('llc_mean')} llc_std={m.get('llc_std')} r_hat={m.get('r_hat')} status={status}",
          flush=True)
    return manifest.to_json_dict()


def run_sampler_batch_job(run_jsons: list, store_root: str, log_path: str, err_path: str, inputs: list = (),
                          diagnostics: dict | None = None) -> list:
    """Several runs of one target that differ only in seed, β, γ or runtime scalars
    (`RunSpec.batch_key`), sampled as one vmapped program (`lh execute --batch-runs`). Each run
    gets its own artifact and manifest, written as soon as the batch is done; runs already complete
    are returned as they are. Returns one manifest per run, in order. No checkpoints: a killed
    batch starts again (its finished runs are kept)."""
    from lambda_hat.ids import run_id
    from lambda_hat.specs import DiagnosticsSpec, RunSpec, TargetSpec
    from lambda_hat.store import WorkerStore

    store = WorkerStore(store_root, log_path)
    with job_logs(Path(log_path), Path(err_path), store_root):
        clock = _job_clock()
        specs = [RunSpec.model_validate(j) for j in run_jsons]
        rids = [run_id(s) for s in specs]
        print(f"sampling {len(specs)} runs as one batch ({specs[0].sampler.name}) on {specs[0].target_id} "
              f"on {socket.gethostname()}: {', '.join(rids)}", flush=True)
        out: dict[str, dict] = {}
        for rid in rids:
            done = _already_complete(store, "run", rid)
            if done is not None:
                out[rid] = done
        todo = [(s, r) for s, r in zip(specs, rids) if r not in out]
        if todo:
            t_read = time.perf_counter()
            tman, loaded = store.read_target(specs[0].target_id)
            target = TargetSpec.model_validate(tman.spec)
            read_sec = time.perf_counter() - t_read
            import_sec = _import_science()
            _setup_jax(str(store.jax_cache_dir))
            from lambda_hat.science import TargetArrays
            from lambda_hat.science.pipeline import sample_runs

            arrays = TargetArrays.from_payload(loaded, tman.metrics)
            t0 = time.perf_counter()
            results = sample_runs([s for s, _ in todo], target, arrays,
                                  diagnostics=DiagnosticsSpec.model_validate(diagnostics or {}))
            total_sec = time.perf_counter() - t0
            for (spec, rid), result in zip(todo, results):
                out[rid] = _write_run(store, spec, rid, result, tman,
                                      {"sample_job_sec": total_sec, "batch_runs": len(todo), "import_sec": import_sec,
                                       "read_sec": read_sec, **clock})
        return [out[r] for r in rids]


CHECKPOINT_SEC_ENV = "LH_CHECKPOINT_SEC"
# Seconds of sampling between checkpoints: a kill loses at most this much work, and persisting
# the traces and state costs a few milliseconds per checkpoint.
CHECKPOINT_SEC = 60.0


def checkpoint_interval_s() -> float:
    """LH_CHECKPOINT_SEC, a finite number of seconds, 0 or more (else BadInput: the driver checks it
    before any work, so a worker never meets a bad one)."""
    text = os.environ.get(CHECKPOINT_SEC_ENV, "").strip()
    if not text:
        return CHECKPOINT_SEC
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):  # 0: at every segment (the resume tests use it)
        raise BadInput(f"{CHECKPOINT_SEC_ENV}={text!r}: must be a number of seconds, 0 or more")
    return value


def _already_complete(store, kind: str, artifact_id: str) -> dict | None:
    """The stored manifest if the artifact is already complete (another driver, an earlier
    attempt); None if it must be made."""
    manifest = store.complete(kind, artifact_id)
    if manifest is None:
        return None
    print(f"{artifact_id} already complete in the store; nothing to do", flush=True)
    return manifest.to_json_dict()
