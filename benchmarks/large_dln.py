"""Large models: SGLD on a deep linear network of ≥ 1e6 parameters at n = 1e5, in bounded memory.

    uv run python benchmarks/large_dln.py                       # CPU: d = 1.11e6 at n = 1e4 and 1e5, about 15 min on 2 busy cores
    uv run python benchmarks/large_dln.py --ns 10000 --steps 2000 --warmup 1000   # a quicker look
    JAX_PLATFORMS=cuda python benchmarks/large_dln.py --widths 100,3200,3200,10 --ns 100000 --steps 10000 --warmup 2000 --gamma 3000   # GPU, 1.06e7

Each row is one fresh process that builds the target (`pipeline.build_target`: a rank-r teacher,
noise-free data, w* = the teacher) and samples it with minibatch SGLD (`pipeline.sample_run`: the
functions a worker calls, without the store), and reports the learning coefficient against the
exact one (`theory.dln_lambda`), the time of each stage, and the process's peak resident memory
(VmHWM; on a GPU also the device's peak bytes in use).

What keeps memory bounded in n: SGLD steps read one minibatch; the recorded loss is the minibatch
loss of each step (`loss_trace: minibatch`), so no pass over the data is made while sampling; the
chains' dispersed start reads a subset of rows (`posterior.start_rows`); the target's L0 and
gradient norm are computed chunk by chunk (`posterior.CHUNK` rows), and its Hessian and descent
tests are skipped past `wstar.QUALITY_MAX_WORK`. Resident memory is then the data, the chains'
states and one chunk's activations: the rows at two n show how it grows.

Noise-free data make the teacher an exact minimum (L_n = 0), so the exact λ applies at w*
(`dln.llc_true`). Prints a table and writes benchmarks/results/large_dln.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def one(args) -> dict:
    """Build and sample one configuration in this process; returns its row."""
    import jax

    from lambda_hat.science.pipeline import build_target, sample_run
    from lambda_hat.science.theory import dln_lambda
    from lambda_hat.specs import RunSpec, TargetSpec

    widths = [int(w) for w in args.widths.split(",")]
    target = TargetSpec.model_validate({
        "model": {"kind": "dln", "widths": widths}, "teacher": {"rank": args.rank}, "w_star": "teacher",
        "data": {"n_data": args.n, "n_test": 1000, "noise_scale": 0.0}, "dtype": args.dtype, "seed": args.seed})
    t0 = time.perf_counter()
    arrays = build_target(target)
    build_sec = time.perf_counter() - t0
    sampler = {"name": "sgld", "chains": args.chains, "steps": args.steps, "warmup": args.warmup,
               "batch_size": args.batch, "eval_every": args.eval_every, "step_size_nbeta": args.step_size_nbeta,
               "loss_trace": "minibatch", "dtype": args.dtype}
    run = RunSpec.model_validate({"target_id": "tgt_benchmark", "sampler": sampler, "seed": args.seed,
                                  "posterior": {"gamma": args.gamma}})
    t1 = time.perf_counter()
    res = sample_run(run, target, arrays)
    run_sec = time.perf_counter() - t1
    m = res.metrics
    exact = dln_lambda(widths, args.rank)
    dev = jax.devices()[0]
    stats = dev.memory_stats() if dev.platform != "cpu" else None
    return {
        "widths": widths, "rank": args.rank, "n": args.n, "d": int(target.model.n_params), "dtype": args.dtype,
        "device": f"{dev.platform}:{getattr(dev, 'device_kind', '')}",
        "chains": args.chains, "steps": args.steps, "warmup": args.warmup, "batch": args.batch,
        "eval_every": args.eval_every, "step_size_nbeta": args.step_size_nbeta, "gamma": args.gamma,
        "llc_true": exact, "llc_true_target": arrays.metrics.get("llc_true"),
        "llc_mean": m["llc_mean"], "llc_sem": m["llc_sem"], "rel_err": (m["llc_mean"] - exact) / exact,
        "r_hat": m["r_hat"], "ess_bulk": m["ess_bulk"], "status": m["status"],
        "build_sec": build_sec, "run_sec": run_sec, "compile_sec": m["compile_sec"], "sample_sec": m["sample_sec"],
        "steps_per_sec": args.chains * args.steps / m["sample_sec"],
        "w_star_status": arrays.metrics.get("w_star_status"), "grad_norm": arrays.metrics.get("grad_norm"),
        "data_mib": (arrays.X.nbytes + arrays.Y.nbytes) / 2**20,
        "peak_rss_mib": _peak_rss_mib(),
        "device_peak_mib": stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None,
    }


def table(rows: list[dict]) -> str:
    head = ("| params | n | dtype | device | steps × chains | λ exact | λ̂ ± sem | error | R-hat | build s | compile s "
            "| sample s | chain-steps/s | peak RSS MiB | device peak MiB |")
    out = [head, "|" + "|".join(["--:"] * (head.count("|") - 1)) + "|"]
    for r in rows:
        dev = "" if r["device_peak_mib"] is None else f"{r['device_peak_mib']:,.0f}"
        out.append(
            f"| {r['d']:,} | {r['n']:,} | {r['dtype']} | {r['device']} | {r['steps']:,} × {r['chains']} | {r['llc_true']:g} "
            f"| {r['llc_mean']:.1f} ± {r['llc_sem']:.1f} | {100 * r['rel_err']:+.1f} % | {r['r_hat']:.3f} "
            f"| {r['build_sec']:.1f} | {r['compile_sec']:.1f} | {r['sample_sec']:.1f} | {r['steps_per_sec']:,.0f} "
            f"| {r['peak_rss_mib']:,.0f} | {dev} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--widths", default="100,1000,1000,10")
    ap.add_argument("--rank", type=int, default=5)
    ap.add_argument("--ns", default="10000,100000", help="comma-separated n; one process each")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--steps", type=int, default=3000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=10)
    ap.add_argument("--step-size-nbeta", type=float, default=0.02)
    ap.add_argument("--gamma", type=float, default=1000.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "large_dln.json"))
    ap.add_argument("--one", type=int, default=None, help=argparse.SUPPRESS)  # child: run n = ONE
    args = ap.parse_args()
    if args.one is not None:
        args.n = args.one
        print("ROW " + json.dumps(one(args)), flush=True)
        return
    rows = []
    for n in [int(x) for x in args.ns.split(",")]:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--one", str(n)]
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
        if proc.returncode != 0:
            sys.exit(f"n = {n} failed ({time.perf_counter() - t0:.0f} s):\n{proc.stderr[-3000:]}")
        row = json.loads(next(line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")))
        row["process_sec"] = time.perf_counter() - t0
        rows.append(row)
        print(table(rows[-1:]).splitlines()[-1], flush=True)
    print(table(rows))
    meta = {"machine": f"{os.cpu_count()} cores, {platform.platform()}", "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "argv": sys.argv[1:]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
