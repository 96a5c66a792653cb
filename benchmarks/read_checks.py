"""The cost of checking what a job reads (issue 28): an artifact read with and without its
manifest checksums, and a run's checkpoint loaded with and without its run ID and checksums.

    uv run python benchmarks/read_checks.py            # ~1 min on 2 cores
    uv run python benchmarks/read_checks.py --reps 50

Artifacts at real shapes, written by `write_artifact` with real specs (random values: zstd
gains little on them, as on real draws):

* target small   the `small` presets: 45 parameters, X (100, 4), Y (100, 1)
* target base    the `base` presets: 9,921 parameters, X (20000, 32), Y (20000, 1)
* run 1k         6 trace arrays of 4 chains × 1,000 draws
* run 100k       6 trace arrays of 4 chains × 100,000 draws

Each is read, alternating, `--reps` times in one process (files in the page cache, as a
worker finds a target other runs just read):

* unchecked      `read_manifest` + `read_arrays` (zarr's ZipStore): what a read without checks costs
* checked        `load_verified`: the manifest's own checksum, ID and spec hash, the zip's
                 sha256 over the very bytes then decoded from memory (what a sampling job does)
* checked, cold  the same with its memo of parsed manifests cleared: an artifact read for the
                 first time in this process (a worker's first run on a target)

and what the planner would pay per cached artifact on every `lh plan` and no-op `lh execute`:

* plan: stamp    `store.files_stamp`: two stats (what it pays: files unchanged since indexed)
* plan: hash     the sha256 of every file the manifest lists (what hashing on every plan would cost)

Checkpoints (`SegmentStore` of `store/worker.py`, 6 traces of 4 chains, a 6-leaf state):
`load` as it was at 04cde7e (no run ID, no checksums) against `load` now (run ID, the state's
sha256, each trace's sha256 over the draws the checkpoint counts), and the sha256 each `flush`
now adds for a 1,000-draw segment.

And a sweep of many small runs (`--runs`, default 200: one `small` target, 1,000-draw runs of 4
chains), what the checks add up to over a whole sweep, each side in the same process, alternating:

* jobs' reads    every sampling job reads its target: `--runs` reads of the target, checked
                 (first read in a process, as each worker's first job) or not
* export         `results.export_runs` of every run, manifests checked on their content (what
                 `lh execute` writes results/NAME.parquet with) or read without the check
* plan           `files_stamp` (what a plan pays) or sha256 of every listed file, over all runs

Prints a table; writes benchmarks/results/read_checks.json.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lambda_hat.store.worker import SegmentStore
from lambda_hat.ids import resolved_spec
from lambda_hat.planner import expand
from lambda_hat.science.pipeline import Checkpoint
from lambda_hat.store import artifacts
from lambda_hat.store.artifacts import load_verified, read_arrays, read_manifest, write_artifact
from lambda_hat.store.layout import StoreLayout
from lambda_hat.store.manifest import Manifest
from lambda_hat.store.store import files_stamp
from lambda_hat.sweep import sweep_from_dict

TRACES = ("loss", "llc", "cumulative_fge", "walltime", "step_size", "accept_rate")
CHAINS = 4


def _mlp(rng, dims: list[int]) -> dict:
    out = {}
    for i, (a, b) in enumerate(zip(dims, dims[1:])):
        out[f"params/W_{i}"], out[f"params/b_{i}"] = rng.normal(size=(a, b)), rng.normal(size=(b,))
    return out


def make_store(root: Path) -> dict[str, tuple[str, Path]]:
    rng = np.random.default_rng(0)
    layout = StoreLayout(root)
    made = {}
    for preset, dims, n in (("small", [4, 4, 4, 1], 100), ("base", [32, 62, 62, 62, 1], 20000)):
        ex = expand(sweep_from_dict({"targets": [{"model": preset, "data": preset}], "samplers": [{"name": "sgld"}]}))
        t = ex.targets[0]
        arrays = {**_mlp(rng, dims), "X": rng.normal(size=(n, dims[0])), "Y": rng.normal(size=(n, 1))}
        write_artifact(layout.target_dir(t.target_id), arrays,
                       Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec), metrics={"L0": 0.01}))
        made[f"target {preset}"] = ("target", layout.target_dir(t.target_id))
    ex = expand(sweep_from_dict({"targets": [{"model": "small", "data": "small"}],
                                 "samplers": [{"name": "sgld", "grid": {"seed": [1, 2]}}]}))
    for r, draws, label in zip(ex.runs, (1000, 100_000), ("run 1k", "run 100k")):
        traces = {f"traces/{name}": rng.normal(size=(CHAINS, draws)) for name in TRACES}
        write_artifact(layout.run_dir(r.run_id), traces,
                       Manifest(id=r.run_id, type="run", spec=resolved_spec(r.spec), metrics={"llc_mean": 1.0}))
        made[label] = ("run", layout.run_dir(r.run_id))
    return made


def unchecked(kind: str, d: Path):
    m = read_manifest(d)
    return read_arrays(d, list(m.arrays))


def checked(kind: str, d: Path):
    return load_verified(d, kind)


def checked_cold(kind: str, d: Path):
    artifacts._manifest_problems.cache_clear()
    return load_verified(d, kind)


def plan_stamp(kind: str, d: Path):
    return files_stamp(d.parent, d.name)


def plan_hash(kind: str, d: Path):
    return artifacts.file_problems(d, read_manifest(d).checksums)


def load_unchecked(seg: SegmentStore):
    """`SegmentStore.load` as at 04cde7e: the checkpoint's fields and the traces, unchecked."""
    with np.load(seg.dir / seg.CHECKPOINT) as f:
        n_leaves = int(f["n_leaves"])
        ckpt = Checkpoint(int(f["draws_done"]), [f[f"leaf_{i}"] for i in range(n_leaves)], float(f["L0"]),
                          float(f["compile_sec"]), float(f["sample_sec"]))
        names = [str(x) for x in f["trace_names"]]
    traces = read_arrays(seg.dir / seg.TRACES, names)
    return ckpt, {k: v[:, :ckpt.draws_done] for k, v in traces.items()}


def make_checkpoint(work_dir: Path, draws: int, segment: int = 1000) -> None:
    rng = np.random.default_rng(1)
    seg = SegmentStore(work_dir, interval_s=3600.0)
    leaves = [rng.normal(size=(CHAINS, 45)), rng.normal(size=(CHAINS, 45)), rng.normal(size=(CHAINS,)),
              rng.integers(0, 2**31, size=(CHAINS, 2)).astype(np.uint32), rng.normal(size=(CHAINS,)),
              rng.normal(size=(CHAINS, 45))]
    for done in range(segment, draws + 1, segment):
        seg.on_segment(Checkpoint(done, leaves, 0.01, 1.0, 0.1),
                       {name: rng.normal(size=(CHAINS, segment)) for name in TRACES})
    seg.flush()


def make_sweep_store(root: Path, runs: int) -> tuple[Path, list[str]]:
    """One small target and `runs` runs on it of 4 chains x 1,000 draws: (target dir, run IDs)."""
    rng = np.random.default_rng(3)
    layout = StoreLayout(root)
    ex = expand(sweep_from_dict({"targets": [{"model": "small", "data": "small"}],
                                 "samplers": [{"name": "sgld", "grid": {"seed": list(range(runs))}}]}))
    t = ex.targets[0]
    write_artifact(layout.target_dir(t.target_id), {**_mlp(rng, [4, 4, 4, 1]), "X": rng.normal(size=(100, 4)),
                                                    "Y": rng.normal(size=(100, 1))},
                   Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec), metrics={"L0": 0.01}))
    for r in ex.runs:
        traces = {f"traces/{name}": rng.normal(size=(CHAINS, 1000)) for name in TRACES}
        write_artifact(layout.run_dir(r.run_id), traces,
                       Manifest(id=r.run_id, type="run", spec=resolved_spec(r.spec),
                                metrics={"llc_mean": float(rng.normal()), "status": "ok"}))
    return layout.target_dir(t.target_id), [r.run_id for r in ex.runs]


def sweep_costs(tmp: Path, runs: int, reps: int) -> dict:
    """Seconds per whole sweep, checked against unchecked (see the module docstring)."""
    from lambda_hat import results
    from lambda_hat.store import Store

    target_dir, run_ids = make_sweep_store(tmp / "sweep-store", runs)
    store = Store(tmp / "sweep-store")
    store.reconcile()
    out = tmp / "sweep.parquet"
    checked_manifests = store.checked_manifests

    def unchecked_manifests(kind, ids):  # the same manifests, read without the content check
        return [read_manifest(store.layout.artifact_dir(kind, i)) for i in ids], []

    def export(check: bool):
        artifacts._manifest_problems.cache_clear()  # as in a fresh `lh execute` process
        store.checked_manifests = checked_manifests if check else unchecked_manifests
        assert results.export_runs(store, run_ids, out).rows == runs

    run_dirs = [store.layout.run_dir(i) for i in run_ids]
    sides = {
        "jobs' reads": (lambda: [unchecked("target", target_dir) for _ in run_ids],
                        lambda: [checked_cold("target", target_dir) for _ in run_ids]),
        "export": (lambda: export(False), lambda: export(True)),
        "plan": (lambda: [plan_stamp("run", d) for d in run_dirs], lambda: [plan_hash("run", d) for d in run_dirs]),
    }
    report = {}
    for label, (off, on) in sides.items():
        off(), on()  # warm: imports, page cache
        times = {"unchecked": [], "checked": []}
        for _ in range(reps):
            for name, fn in (("unchecked", off), ("checked", on)):
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        report[label] = {name: statistics.median(t) for name, t in times.items()}
    store.checked_manifests = checked_manifests
    return report


def quantiles(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"median_ms": 1e3 * statistics.median(xs), "p90_ms": 1e3 * xs[int(0.9 * (len(xs) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--runs", type=int, default=200, help="runs in the many-small-runs sweep")
    args = ap.parse_args()
    import os

    report: dict = {"reps": args.reps, "machine": platform.platform(), "load_avg_at_start": os.getloadavg(),
                    "artifacts": {}, "checkpoints": {}}
    with tempfile.TemporaryDirectory(dir=Path.cwd()) as tmp:
        root = Path(tmp) / "store"
        made = make_store(root)
        variants = {"unchecked": unchecked, "checked": checked, "checked, cold": checked_cold,
                    "plan: stamp": plan_stamp, "plan: hash": plan_hash}
        for label, (kind, d) in made.items():
            size = sum(p.stat().st_size for p in d.iterdir())
            times: dict[str, list[float]] = {v: [] for v in variants}
            for fn in variants.values():  # once each before timing: imports, zarr's event loop
                fn(kind, d)
            for _ in range(args.reps):
                for name, fn in variants.items():
                    t0 = time.perf_counter()
                    fn(kind, d)
                    times[name].append(time.perf_counter() - t0)
            report["artifacts"][label] = {"bytes": size, **{v: quantiles(t) for v, t in times.items()}}
        for draws in (1000, 100_000):
            work = Path(tmp) / ".work" / f"run_{draws:012d}"
            make_checkpoint(work, draws)
            seg = SegmentStore(work, interval_s=3600.0)
            assert seg.load() is not None
            size = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
            times = {"unchecked (04cde7e)": [], "checked": []}
            for _ in range(args.reps):
                t0 = time.perf_counter()
                load_unchecked(seg)
                t1 = time.perf_counter()
                assert SegmentStore(work, interval_s=3600.0).load() is not None
                t2 = time.perf_counter()
                times["unchecked (04cde7e)"].append(t1 - t0)
                times["checked"].append(t2 - t1)
            report["checkpoints"][f"{draws:,} draws"] = {"bytes": size, **{v: quantiles(t) for v, t in times.items()}}
        block = np.random.default_rng(2).normal(size=(CHAINS, 1000))
        hashing = []
        for _ in range(args.reps * 10):
            t0 = time.perf_counter()
            for _name in TRACES:
                hashlib.sha256().update(SegmentStore._draw_major(block))
            hashing.append(time.perf_counter() - t0)
        report["flush_hashing_per_1000_draw_segment"] = quantiles(hashing)
        report["sweep"] = {"runs": args.runs, **sweep_costs(Path(tmp), args.runs, max(3, args.reps // 6))}

    report["load_avg_at_end"] = os.getloadavg()
    print(f"{args.reps} alternating repetitions, median (p90) ms; load average {report['load_avg_at_start'][0]:.1f} "
          f"at the start, {report['load_avg_at_end'][0]:.1f} at the end")
    print(f"{'artifact':<12} {'MB':>7} " + " ".join(f"{v:>16}" for v in variants))
    for label, row in report["artifacts"].items():
        cells = [f"{row[v]['median_ms']:7.2f} ({row[v]['p90_ms']:6.2f})" for v in variants]
        print(f"{label:<12} {row['bytes'] / 1e6:7.2f} " + " ".join(f"{c:>16}" for c in cells))
    print(f"{'checkpoint':<12} {'MB':>7} {'unchecked':>16} {'checked':>16}")
    for label, row in report["checkpoints"].items():
        cells = [f"{row[v]['median_ms']:7.2f} ({row[v]['p90_ms']:6.2f})" for v in ("unchecked (04cde7e)", "checked")]
        print(f"{label:<12} {row['bytes'] / 1e6:7.2f} " + " ".join(f"{c:>16}" for c in cells))
    h = report["flush_hashing_per_1000_draw_segment"]
    print(f"sha256 a flush adds per 1,000-draw segment (6 traces): {h['median_ms']:.3f} ({h['p90_ms']:.3f}) ms")
    sw = report["sweep"]
    print(f"a sweep of {sw['runs']} small runs (one small target; 4 chains x 1,000 draws each), seconds per sweep:")
    print(f"{'':<14} {'unchecked':>10} {'checked':>10}")
    for label in ("jobs' reads", "export", "plan"):
        print(f"{label:<14} {sw[label]['unchecked']:10.3f} {sw[label]['checked']:10.3f}")
    out = Path(__file__).resolve().parent / "results" / "read_checks.json"
    out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
