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
* export         `Store.export_runs()` to Parquet from the manifests
* traces         `lh query`'s sandboxed `select ... from traces where run_id = ...` (one run's
                 4,000 rows out of the index's 4 million)
* record         the driver's `Store.record` of finished runs into that index (each run's
                 manifest read back with `record_manifest`, as the driver does, and its traces
                 read from Zarr into the index): --record-runs more runs one per write, then
                 writes of 10 runs; the median over writes of seconds per record

--code DIR measures the `lambda_hat` package in DIR (e.g. a worktree of an older commit) in
place of this checkout's, so that before and after run side by side on one machine.

Prints a table; writes benchmarks/results/store.json.
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--record-runs", type=int, default=100, help="runs recorded one per write, and as many in writes of 10")
    ap.add_argument("--code", type=Path, help="measure the lambda_hat package in this directory")
    args = ap.parse_args()
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
        rows["export runs to parquet"], rows_out = timed(lambda: st.export_runs(rids, Path(tmp) / "r.parquet"))
        assert rows_out == len(rids)
        from lambda_hat import results

        one = f"select chain, draw, loss, llc from traces where run_id = '{rids[len(rids) // 2]}'"
        results.run_query(st.layout, one)  # the first query pays for cold file caches
        rows["lh query: traces of one run"], res = timed(lambda: results.run_query(st.layout, one))
        assert len(res.rows) == 4 * 1000
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
    commit = subprocess.run(["git", "-C", str(CODE), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    out = Path(__file__).parent / "results" / (f"store-{commit or args.code.name}.json" if args.code else "store.json")
    out.write_text(json.dumps({"artifacts": n, "runs": len(rids), "seconds": rows, "record_s_per_run": per_record,
                               "code": str(CODE), "commit": commit or None,
                               "machine": {"python": platform.python_version(), "cpu_count": __import__("os").cpu_count()}},
                              indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
