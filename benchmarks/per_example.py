"""What recording per-example losses costs (`record: {per_example: ...}`, issue 25): sampling
time and stored bytes of one run with and without it, side by side in one process.

    uv run python benchmarks/per_example.py              # ~3 min on 2 cores
    uv run python benchmarks/per_example.py --reps 3

One target, the `small` MLP of the quick example (45 parameters) on n = 1,000 examples; for NUTS
(4 chains × 1,000 draws) and SGLD (4 chains × 1,000 recorded draws, 10 steps each, batch 64):
`sample_run` without recording, with 256 examples, and with all 1,000. Each setting is run once
to compile, then `--reps` times alternating; the table gives the median `sample_sec` (compile
excluded), its ratio to the run without recording, and the bytes of the run's artifact as
`lh execute` writes it (`store.artifacts.encode_arrays`, zstd; random-looking float32 losses
compress little).

Prints a table; writes benchmarks/results/per_example.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
from pathlib import Path

from lambda_hat.science import build_target, sample_run
from lambda_hat.specs import RunSpec
from lambda_hat.store.artifacts import encode_arrays, zip_contents
from lambda_hat.sweep import sweep_from_dict

SAMPLERS = {
    "nuts": {"name": "nuts", "seed": 1, "chains": 4, "overrides": {"draws": 1000, "warmup": 300}},
    "sgld": {"name": "sgld", "seed": 1, "chains": 4,
             "overrides": {"steps": 10000, "warmup": 500, "eval_every": 10, "batch_size": 64}},
}
RECORDS = {"none": None, "256": {"per_example": {"subset": 256}}, "all": {"per_example": {"subset": "all"}}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args()
    sweep = sweep_from_dict({"targets": [{"model": "small", "data": {"n_data": 1000},
                                          "overrides": {"training": {"steps": 2000}}, "seed": 1}],
                             "samplers": [{**s, "record": r} for s in SAMPLERS.values() for r in RECORDS.values()]})
    target = sweep.targets[0]
    arrays = build_target(target)
    runs = {}
    for s in sweep.samplers:
        rec = "none" if s.record is None else str(s.record.per_example.subset)
        runs[(s.sampler.name, rec)] = RunSpec(target_id="tgt_bench", sampler=s.sampler, posterior=s.posterior,
                                               seed=s.seed, record=s.record)
    times: dict = {k: [] for k in runs}
    sizes: dict = {}
    for key, run in runs.items():  # compile
        r = sample_run(run, target, arrays)
        payload = {f"traces/{k}": v for k, v in r.traces.items()} | {f"examples/{k}": v for k, v in r.examples.items()}
        sizes[key] = len(zip_contents(encode_arrays(payload)[0]))
    for _ in range(args.reps):
        for key, run in runs.items():
            times[key].append(sample_run(run, target, arrays).metrics["sample_sec"])
    rows = []
    for (sampler, rec), ts in times.items():
        base = statistics.median(times[(sampler, "none")])
        rows.append({"sampler": sampler, "recorded": rec, "sample_sec": statistics.median(ts),
                     "slowdown": statistics.median(ts) / base, "artifact_bytes": sizes[(sampler, rec)]})
    print(f"{'sampler':8} {'recorded':>9} {'sample s':>9} {'x none':>7} {'artifact':>10}")
    for r in rows:
        print(f"{r['sampler']:8} {r['recorded']:>9} {r['sample_sec']:9.2f} {r['slowdown']:7.2f} "
              f"{r['artifact_bytes'] / 2**20:8.2f} MiB")
    out = Path(__file__).parent / "results" / "per_example.json"
    out.write_text(json.dumps({"machine": platform.platform(), "reps": args.reps, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
