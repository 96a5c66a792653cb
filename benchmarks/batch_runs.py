"""Batched runs: 1 target × 32 seeds, sampled one run at a time and as one vmapped program.

    uv run python benchmarks/batch_runs.py                        # every sampler, ~5 min on 2 cores
    uv run python benchmarks/batch_runs.py --samplers sgld --seeds 8

`pipeline.sample_runs` samples runs that differ only in seed, β, γ or the sampler's runtime
scalars as one program `vmap`ped over the runs (`lh execute --batch-runs` groups a plan's runs
this way). For each sampler this runs the same `--seeds` runs on the `small` MLP target (presets
small/small, 4 chains, float64) both ways, each way once to compile and once timed, and reports
the timed seconds (compile excluded: both ways reuse their executables), the speedup, and the mean
λ̂ over the seeds each way (equal in law: batched matrix products round differently).
Prints a table and writes benchmarks/results/batch_runs.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
ROOT = Path(__file__).resolve().parent.parent

SPECS = {
    "sgld": {"name": "sgld", "steps": 6000, "warmup": 1000, "batch_size": 32},
    "hmc": {"name": "hmc", "draws": 300, "warmup": 200},
    "nuts": {"name": "nuts", "draws": 200, "warmup": 200},
    "mclmc": {"name": "mclmc", "draws": 500, "num_steps": 500},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samplers", default="sgld,hmc,nuts,mclmc")
    ap.add_argument("--seeds", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batch_runs.json"))
    args = ap.parse_args()
    import jax
    import numpy as np

    jax.config.update("jax_enable_x64", True)
    from lambda_hat.science import build_target
    from lambda_hat.science.pipeline import sample_run, sample_runs
    from lambda_hat.specs import RunSpec
    from lambda_hat.sweep import sweep_from_dict

    target = sweep_from_dict({"targets": [{"model": "small", "data": "small"}], "samplers": [{"name": "hmc"}]}).targets[0]
    arrays = build_target(target)
    rows = []
    for name in args.samplers.split(","):
        runs = [RunSpec(target_id="tgt_benchmark", sampler=SPECS[name], seed=i) for i in range(args.seeds)]
        sample_run(runs[0], target, arrays)  # compile
        t0 = time.perf_counter()
        single = [sample_run(r, target, arrays).metrics for r in runs]
        single_sec = time.perf_counter() - t0
        sample_runs(runs, target, arrays)  # compile
        t0 = time.perf_counter()
        batched = [r.metrics for r in sample_runs(runs, target, arrays)]
        batch_sec = time.perf_counter() - t0
        row = {"sampler": name, "seeds": args.seeds, "spec": SPECS[name], "single_sec": single_sec,
               "batch_sec": batch_sec, "speedup": single_sec / batch_sec,
               "llc_mean_single": float(np.mean([m["llc_mean"] for m in single])),
               "llc_mean_batch": float(np.mean([m["llc_mean"] for m in batched])),
               "llc_sd_over_seeds": float(np.std([m["llc_mean"] for m in single], ddof=1))}
        rows.append(row)
        print(f"{name}: {single_sec:.2f} s one at a time, {batch_sec:.2f} s batched, {row['speedup']:.1f}x", flush=True)
    print(f"\n| sampler | runs | one at a time s | batched s | speedup | mean λ̂ (one at a time) | mean λ̂ (batched) |")
    print("|---|--:|--:|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['sampler']} | {r['seeds']} | {r['single_sec']:.2f} | {r['batch_sec']:.2f} | {r['speedup']:.1f}× "
              f"| {r['llc_mean_single']:.3f} | {r['llc_mean_batch']:.3f} |")
    meta = {"machine": f"{os.cpu_count()} cores, {platform.platform()}", "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "load_avg": os.getloadavg()}
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
