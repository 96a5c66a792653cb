"""Store maintenance at scale: verify, reconcile, snapshot and results export.

    uv run python benchmarks/store.py                 # 1,000 runs (+10 targets), ~1 min on 2 cores
    uv run python benchmarks/store.py --runs 10000

Builds a store of real artifacts (Zarr groups with a target's arrays at the `small` preset's
shapes and a run's traces at 4 chains × 1,000 draws, written by `write_artifact`, manifests
with real specs), then times, side by side in one process:

* verify         `Store.verify()`: every manifest, its checksum, ID vs directory and spec hash,
                 every array checksum (what `lh verify` does)
* reconcile      `Store.reconcile()` with an empty index (first execute after an upgrade or a
                 deleted index) and again with the index in step (every later execute)
* snapshot       `Store.snapshot()` of every ID (what `lh plan` and `lh execute` ask)
* lh query       one run's traces, and a count of runs, with and without leaving out what
                 does not check out (what `lh query` does now, `left_out`)
* export         `results.export_runs()` to Parquet from the manifests
* traces         `lh query`'s sandboxed `select ... from traces where run_id = ...` (one run's
                 4,000 rows out of the index's 4 million)
* record         the driver's `Store.record` of finished runs into that index (each run's
                 manifest read back with `record_manifest`, as the driver does, and its traces
                 read from Zarr into the index): --record-runs more runs one per write, then
                 writes of 10 runs; the median over writes of seconds per record

--code DIR measures the `lambda_hat` package in DIR (e.g. a worktree of an older commit) in
place of this checkout's, so that before and after run side by side on one machine.

Then, `tiny run I/O` (issue 13's per-run overhead): a worker's store I/O for one tiny run,
timed for the writer at `--before` (a git revision, loaded from git) and the current one,
alternating, on the same file system: `write_artifact` of a run's traces (4 chains × 200
draws, 6 arrays) with its phases, and the read path `run_sampler_job` takes for a small
target (`check_manifest`, `verify`, `read_arrays`); medians and p90 in ms, fsyncs per write.

    uv run python benchmarks/store.py --tiny-io-only    # just that section, ~1 min

Prints tables; writes benchmarks/results/store.json (the tiny-run section under "tiny_run_io").
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
_code = argparse.ArgumentParser(add_help=False)
_code.add_argument("--code", type=Path)
CODE = (_code.parse_known_args()[0].code or REPO).resolve()
sys.path.insert(0, str(CODE))

from lambda_hat.ids import resolved_spec  # noqa: E402
from lambda_hat.planner import expand  # noqa: E402
from lambda_hat.store.artifacts import write_artifact  # noqa: E402
from lambda_hat.store.manifest import Manifest  # noqa: E402
from lambda_hat.store.store import Store  # noqa: E402
from lambda_hat.sweep import sweep_from_dict  # noqa: E402


def build(root: Path, n_runs: int, first_seed: int = 0) -> int:
    n_targets = 10
    seeds = list(range(first_seed, first_seed + max(1, n_runs // n_targets)))
    sweep = sweep_from_dict({
        "targets": [{"model": "small", "data": "small", "grid": {"seed": list(range(n_targets))}}],
        "samplers": [{"name": "sgld", "grid": {"seed": seeds}}],
    })
    ex = expand(sweep)
    st = Store.open(root, create=True)
    rng = np.random.default_rng(0)
    for t in ex.targets:
        arrays = {"params/W_0": rng.normal(size=(4, 4)), "params/W_1": rng.normal(size=(4, 4)),
                  "params/W_2": rng.normal(size=(4, 1)), "X": rng.normal(size=(100, 4)), "Y": rng.normal(size=(100, 1))}
        write_artifact(st.layout.target_dir(t.target_id), arrays,
                       Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec), metrics={"L0": 0.01}))
    for r in ex.runs:
        traces = {"traces/llc": rng.normal(size=(4, 1000)), "traces/loss": rng.normal(size=(4, 1000))}
        write_artifact(st.layout.run_dir(r.run_id), traces,
                       Manifest(id=r.run_id, type="run", spec=resolved_spec(r.spec), metrics={"llc_mean": 1.0}))
    return len(ex.targets) + len(ex.runs), ex


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


TINY_TRACES = ("loss", "llc", "cumulative_fge", "walltime", "step_size", "accept_rate")
DEFAULT_BEFORE = "9da68f8"  # main before the tiny-run I/O work


def _artifacts_at(rev: str):
    """lambda_hat/store/artifacts.py as of git revision `rev`, as a module of its own."""
    import subprocess
    import types

    src = subprocess.run(["git", "show", f"{rev}:lambda_hat/store/artifacts.py"], capture_output=True, text=True,
                         check=True, cwd=Path(__file__).resolve().parents[1]).stdout
    mod = types.ModuleType(f"artifacts_at_{rev}")
    exec(compile(src, f"artifacts.py@{rev}", "exec"), mod.__dict__)
    return mod


def _phases_write(mod, final_dir: Path, arrays: dict, manifest: Manifest) -> dict:
    """write_artifact with its phases timed: the hook between arrays and manifest, and a
    wrapped os.rename, split it into arrays | manifest | rename + parent fsync."""
    import os

    marks = {}
    real_rename = os.rename

    def rename(src, dst):
        marks["rename"] = time.perf_counter()
        return real_rename(src, dst)

    mod.os.rename = rename
    try:
        t0 = time.perf_counter()
        mod.write_artifact(final_dir, arrays, manifest, before_manifest=lambda _: marks.setdefault("arrays", time.perf_counter()))
        t1 = time.perf_counter()
    finally:
        mod.os.rename = real_rename
    return {"write_artifact": t1 - t0, "  arrays (+checksums if fused)": marks["arrays"] - t0,
            "  checksums + manifest": marks["rename"] - marks["arrays"], "  rename + parent fsync": t1 - marks["rename"]}


def tiny_run_io(root: Path, before_rev: str, reps: int) -> dict:
    import os
    import statistics

    from lambda_hat.store import artifacts as after
    from lambda_hat.store.store import check_manifest

    mods = {"before": _artifacts_at(before_rev), "after": after}
    ex = expand(sweep_from_dict({"targets": [{"model": "small", "data": "small"}],
                                 "samplers": [{"name": "sgld", "grid": {"seed": list(range(reps + 1))}}]}))
    rng = np.random.default_rng(0)
    t, runs = ex.targets[0], ex.runs
    target_arrays = {"params/W_0": rng.normal(size=(4, 4)), "params/W_1": rng.normal(size=(4, 4)),
                     "params/W_2": rng.normal(size=(4, 1)), "X": rng.normal(size=(100, 4)), "Y": rng.normal(size=(100, 1))}
    tman = Manifest(id=t.target_id, type="target", spec=resolved_spec(t.spec), metrics={"L0": 0.01})
    tdirs = {}
    for label, mod in mods.items():
        tdirs[label] = root / label / "targets" / t.target_id
        mod.write_artifact(tdirs[label], target_arrays, tman)

    fsyncs = {"n": 0}
    real_fsync = os.fsync

    def counting_fsync(fd):
        fsyncs["n"] += 1
        return real_fsync(fd)

    samples: dict[str, dict[str, list]] = {label: {} for label in mods}
    n_fsync = {label: 0 for label in mods}
    n_files = {}
    for i in range(reps + 1):  # i == 0 warms up both
        for label in (("before", "after") if i % 2 else ("after", "before")):
            mod, tdir = mods[label], tdirs[label]
            r = runs[i]
            traces = {f"traces/{k}": rng.normal(size=(4, 200)) for k in TINY_TRACES}
            rman = Manifest(id=r.run_id, type="run", spec=resolved_spec(r.spec), metrics={"llc_mean": 1.0})
            fsyncs["n"] = 0
            mod.os.fsync = counting_fsync
            try:
                phases = _phases_write(mod, root / label / "runs" / r.run_id, traces, rman)
            finally:
                mod.os.fsync = real_fsync
            n_fsync[label] = fsyncs["n"]
            n_files[label] = sum(len(f) for _, _, f in os.walk(root / label / "runs" / r.run_id))
            t0 = time.perf_counter()
            tm, _ = check_manifest(tdir, "target")
            t1 = time.perf_counter()
            assert mod.verify(tdir, "target") == []
            t2 = time.perf_counter()
            mod.read_arrays(tdir, list(tm.arrays))
            t3 = time.perf_counter()
            row = {**phases, "read: check_manifest": t1 - t0, "read: verify": t2 - t1, "read: read_arrays": t3 - t2,
                   "read: total": t3 - t0}
            if i:
                for k, v in row.items():
                    samples[label].setdefault(k, []).append(v)

    def stats(xs):
        xs = sorted(xs)
        return {"median_ms": 1000 * statistics.median(xs), "p90_ms": 1000 * xs[int(0.9 * (len(xs) - 1))]}

    out = {"before_rev": before_rev, "reps": reps, "traces": f"{len(TINY_TRACES)} arrays of 4 x 200 float64",
           "fsyncs_per_write": n_fsync, "files_per_run_artifact": n_files,
           "ms": {label: {k: stats(v) for k, v in rows.items()} for label, rows in samples.items()}}
    print(f"\ntiny run I/O: {reps} alternating repetitions, median (p90) ms; before = {before_rev}, after = this tree")
    print(f"{'operation':<34}{'before':>18}{'after':>18}{'after/before':>14}")
    for k in samples["after"]:
        b, a = out["ms"]["before"][k], out["ms"]["after"][k]
        print(f"{k:<34}{b['median_ms']:>9.2f} ({b['p90_ms']:5.1f}){a['median_ms']:>9.2f} ({a['p90_ms']:5.1f})"
              f"{a['median_ms'] / b['median_ms']:>14.2f}")
    print(f"{'fsyncs per run write':<34}{n_fsync['before']:>18}{n_fsync['after']:>18}")
    print(f"{'files per run artifact':<34}{n_files['before']:>18}{n_files['after']:>18}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--before", default=DEFAULT_BEFORE, help="git revision whose artifacts.py is the tiny-run baseline")
    ap.add_argument("--tiny-reps", type=int, default=100)
    ap.add_argument("--tiny-io-only", action="store_true")
    ap.add_argument("--record-runs", type=int, default=100, help="runs recorded one per write, and as many in writes of 10")
    ap.add_argument("--code", type=Path, help="measure the lambda_hat package in this directory (no tiny-run section)")
    args = ap.parse_args()
    out = Path(__file__).parent / "results" / "store.json"
    if args.tiny_io_only:
        with tempfile.TemporaryDirectory() as tmp:
            tiny = tiny_run_io(Path(tmp), args.before, args.tiny_reps)
        report = json.loads(out.read_text()) if out.exists() else {}
        report["tiny_run_io"] = tiny
        out.write_text(json.dumps(report, indent=1) + "\n")
        print(f"wrote {out}")
        return
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        t_build, (n, ex) = timed(lambda: build(root, args.runs))
        st = Store(root)
        tids, rids = [t.target_id for t in ex.targets], [r.run_id for r in ex.runs]
        rows = {}
        rows["reconcile (empty index)"], rep = timed(st.reconcile)
        assert rep.indexed == n, rep
        rows["reconcile (index in step)"], rep = timed(st.reconcile)
        assert rep.indexed == 0
        rows["snapshot (all IDs)"], snap = timed(lambda: st.snapshot(tids, rids))
        assert len(snap.run_ids) == len(rids)
        rows["verify (everything)"], report = timed(st.verify)
        assert report.ok and report.checked == n, report.findings[:3]
        from lambda_hat import results

        rows["export runs to parquet"], written = timed(lambda: results.export_runs(st, rids, Path(tmp) / "r.parquet"))
        assert written.rows == len(rids)

        one = f"select chain, draw, loss, llc from traces where run_id = '{rids[len(rids) // 2]}'"
        results.run_query(st, one)  # the first query pays for cold file caches
        rows["lh query: traces of one run"], res = timed(lambda: results.run_query(st, one))
        assert len(res.rows) == 4 * 1000
        # What lh query adds to leave out what does not check out (the views over the snapshot's
        # IDs): one query with and one without, alternating, median of 5 each.
        count = "select count(*) from runs"
        for label, sql in (("traces of one run", one), ("count(*) of runs", count)):
            pairs = [(timed(lambda: results.run_query(st, sql))[0], timed(lambda: results.run_query(st, sql, left_out={}))[0])
                     for _ in range(5)]
            rows[f"lh query: {label}, unchecked"] = statistics.median(p[0] for p in pairs)
            rows[f"lh query: {label}, checked"] = statistics.median(p[1] for p in pairs)
        left_out: dict[str, int] = {}
        assert results.run_query(st, count, left_out=left_out).rows == [(len(rids),)] and not any(left_out.values())
        # Finished runs recorded into that index, as the driver's Recorder does.
        n_rec = args.record_runs
        _, more = build(root, 2 * n_rec + 10, first_seed=len(rids) // 10)  # the same targets, new seeds
        new = [r.run_id for r in more.runs if r.run_id not in set(rids)]
        assert len(new) == 2 * n_rec + 10

        def record(ids: list[str], per_write: int) -> float:
            """Median seconds per record of the writes (less moved by other load than the mean)."""
            seconds = []
            for i in range(0, len(ids), per_write):
                batch = ids[i:i + per_write]
                seconds.append(timed(lambda: st.record([st.record_manifest("run", r) for r in batch]))[0] / len(batch))
            return statistics.median(seconds)

        st.record([st.record_manifest("run", r) for r in new[:10]])  # imports (Zarr, pyarrow): once per driver
        per_record = {"record, 1 run per write": record(new[10:10 + n_rec], 1),
                      "record, 10 runs per write": record(new[10 + n_rec:], 10)}
        from lambda_hat.store import index

        assert set(new) <= set(index.indexed_stats(st.layout)["run"])
    print(f"store of {n:,} artifacts ({len(rids):,} runs), built in {t_build:.1f}s")
    print(f"{'operation':<28}{'seconds':>10}{'per artifact (ms)':>20}")
    for k, v in rows.items():
        print(f"{k:<28}{v:>10.3f}{1000 * v / n:>20.3f}")
    print(f"\n{'into that index':<28}{'ms per record (median of writes)':>34}")
    for k, v in per_record.items():
        print(f"{k:<28}{1000 * v:>34.1f}")
    tiny = None
    if args.code is None:
        with tempfile.TemporaryDirectory() as tmp:
            tiny = tiny_run_io(Path(tmp), args.before, args.tiny_reps)
    commit = subprocess.run(["git", "-C", str(CODE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(__file__).parent / "results" / (f"store-{commit or args.code.name}.json" if args.code else "store.json")
    out.write_text(json.dumps({"artifacts": n, "runs": len(rids), "seconds": rows, "record_s_per_run": per_record,
                               "code": str(CODE), "commit": commit or None,
                               "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()},
                               **({"tiny_run_io": tiny} if tiny else {})},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
