"""Sampler throughput on three targets: steps/s, FGE/s, compile cold/warm, in-step share.

    uv run python benchmarks/samplers.py                          # 3 targets × 4 samplers, ~50 min on 2 cores (base HMC/NUTS dominate)
    uv run python benchmarks/samplers.py --targets small --samplers nuts,mclmc --seconds 5

Targets: `small` MLP (presets small/small: 45 parameters, n = 100), `base` MLP (presets
base/base: 9,921 parameters, n = 20,000) and a deep linear network `dln` ([10,10,10,10,10],
teacher rank 3, 400 parameters, n = 10,000, the LLC taken at the teacher).

Two worker processes share a fresh persistent compilation cache directory
(`jax_compilation_cache_dir`, min compile time 0): the first compiles cold, the second finds
every executable in the cache (warm). Per target and sampler each worker runs

1. a *probe*: the shipped defaults on `small`, a shortened spec (PROBE) on `base` and `dln`;
   run twice, the second call hitting the in-process cache (compile ≈ 0);
2. a *long* run: the probe spec with `draws` scaled (at least doubled) so the compiled call
   takes ≥ `--seconds`; a new shape, so it compiles (cold worker) or loads from the
   persistent cache (warm worker): the scale is fixed by the cold worker and reused.

Printed per target and sampler (rates from the warm worker's long run):

* steps/s      sampler transitions over all chains, warmup/tuning included, per sample_sec
               (SGLD: minibatch steps; HMC/NUTS: transitions; MCLMC: integrator steps)
* FGE/s        full-gradient evaluations (metric `total_fge`) per sample_sec
* compile      cold / warm (persistent cache) / in-process (second call) compile_sec of the probe
* in-step %    sample_sec / wall time of `sample_run` (compile and diagnostics included) for the
               long run, cold and warm worker. The goal is ≥ 90 % for runs of ≥ 10 s.

Writes benchmarks/results/samplers.json. float64, 4 chains, CPU unless JAX_PLATFORMS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parent.parent

SAMPLERS = ("sgld", "hmc", "nuts", "mclmc")

# Probe specs on the larger targets: short enough to take seconds on 2 CPU cores.
PROBE = {
    "small": {name: {"name": name} for name in SAMPLERS},  # the shipped defaults
    "base": {
        "sgld": {"name": "sgld", "steps": 1500, "warmup": 500, "eval_every": 20},
        "hmc": {"name": "hmc", "draws": 20, "warmup": 20},
        "nuts": {"name": "nuts", "draws": 10, "warmup": 10},
        "mclmc": {"name": "mclmc", "draws": 100, "num_steps": 100},
    },
    "dln": {
        "sgld": {"name": "sgld", "steps": 10000, "warmup": 2000},
        "hmc": {"name": "hmc", "draws": 100, "warmup": 100},
        "nuts": {"name": "nuts", "draws": 50, "warmup": 100},
        "mclmc": {"name": "mclmc", "draws": 300, "num_steps": 500},
    },
}


def make_target(name: str):
    from lambda_hat.presets import DATA_PRESETS, MODEL_PRESETS, TEACHER_PRESETS
    from lambda_hat.specs import DataSpec, MLPSpec, TargetSpec, TeacherSpec

    if name == "dln":
        return TargetSpec(model={"kind": "dln", "widths": [10, 10, 10, 10, 10]}, teacher={"rank": 3},
                          data={"n_data": 10_000, "noise_scale": 0.1})
    return TargetSpec(model=MLPSpec(**MODEL_PRESETS[name]), data=DataSpec(**DATA_PRESETS[name]),
                      teacher=TeacherSpec(**TEACHER_PRESETS[name]))


def scaled(spec: dict, factor: int) -> dict:
    """`spec` with `factor` times the draws (SGLD: the sampling steps after warmup)."""
    from pydantic import TypeAdapter

    from lambda_hat.specs import SamplerSpec

    s = TypeAdapter(SamplerSpec).validate_python(spec)
    if s.name == "sgld":
        return {**spec, "steps": s.warmup + factor * (s.steps - s.warmup)}
    return {**spec, "draws": factor * s.draws}


def _steps(spec) -> int:
    """Sampler transitions over all chains, warmup/tuning included."""
    c = spec.chains
    if spec.name == "sgld":
        return c * (spec.warmup + spec.draws * spec.eval_every)
    if spec.name in ("hmc", "nuts"):
        return c * (spec.warmup + spec.draws)
    from lambda_hat.science.samplers.mclmc import tuning_steps

    tune = tuning_steps(spec.num_steps, spec.frac_tune1, spec.frac_tune2, spec.frac_tune3,
                        spec.diagonal_preconditioning) if spec.tune else 0
    return c * (tune + spec.draws)


def _timed_run(spec_dict: dict, target, arrays) -> dict:
    from pydantic import TypeAdapter

    from lambda_hat.science import sample_run
    from lambda_hat.specs import RunSpec, SamplerSpec

    spec = TypeAdapter(SamplerSpec).validate_python(spec_dict)
    t0 = time.perf_counter()
    r = sample_run(RunSpec(target_id="bench", sampler=spec, seed=0), target, arrays)
    wall = time.perf_counter() - t0
    m = r.metrics
    return {"spec": spec.model_dump(), "steps": _steps(spec), "total_fge": m["total_fge"],
            "compile_sec": m["compile_sec"], "sample_sec": m["sample_sec"], "wall_sec": wall,
            "in_step_share": m["sample_sec"] / wall, "llc_mean": m["llc_mean"], "ess_bulk": m["ess_bulk"]}


def worker(cache_dir: str, targets: list[str], names: list[str], seconds: float, factors: dict) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_enable_x64", True)
    from lambda_hat.science import build_target

    out = {}
    for tname in targets:
        target = make_target(tname)
        arrays = build_target(target)
        rows = {}
        for name in names:
            probe = PROBE[tname][name]
            first = _timed_run(probe, target, arrays)
            second = _timed_run(probe, target, arrays)
            key = f"{tname}/{name}"
            # ≥ 2 so the long run is a new executable: its compile counts in its wall time
            factor = factors.get(key) or max(2, math.ceil(1.15 * seconds / max(second["sample_sec"], 1e-3)))
            rows[name] = {"probe_first": first, "probe_second": second, "factor": factor,
                          "long": _timed_run(scaled(probe, factor), target, arrays)}
            print(f"  {key}: probe {second['sample_sec']:.2f}s, long ×{factor}: "
                  f"{rows[name]['long']['sample_sec']:.1f}s", file=sys.stderr, flush=True)
        out[tname] = {"n_params": target.model.n_params, "n_data": target.data.n_data, "samplers": rows}
    print("JSON:" + json.dumps(out))


def _run_worker(cache_dir: str, targets, names, seconds: float, factors: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir, "--targets", ",".join(targets),
           "--samplers", ",".join(names), "--seconds", str(seconds), "--factors", json.dumps(factors)]
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, cwd=ROOT)
    if p.returncode != 0:
        raise SystemExit(f"worker failed ({p.returncode})")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("JSON:"))
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--targets", default="small,base,dln")
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--seconds", type=float, default=10.0, help="minimum sample_sec of the long runs")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "samplers.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    ap.add_argument("--factors", default="{}", help=argparse.SUPPRESS)
    args = ap.parse_args()
    targets = [t for t in args.targets.split(",") if t]
    names = [s for s in args.samplers.split(",") if s]
    if args.worker:
        worker(args.cache_dir, targets, names, args.seconds, json.loads(args.factors))
        return

    with tempfile.TemporaryDirectory(prefix="lh_jax_cache_") as cache:
        print("cold worker (empty compilation cache)", file=sys.stderr, flush=True)
        cold = _run_worker(cache, targets, names, args.seconds, {})
        factors = {f"{t}/{n}": cold[t]["samplers"][n]["factor"] for t in targets for n in names}
        print("warm worker (same cache)", file=sys.stderr, flush=True)
        warm = _run_worker(cache, targets, names, args.seconds, factors)

    import jax

    rows = []
    for t in targets:
        for name in names:
            c, w = cold[t]["samplers"][name], warm[t]["samplers"][name]
            long = w["long"]
            rows.append({
                "target": t, "sampler": name, "n_params": cold[t]["n_params"], "n_data": cold[t]["n_data"],
                "steps": long["steps"], "total_fge": long["total_fge"], "sample_sec": long["sample_sec"],
                "steps_per_sec": long["steps"] / long["sample_sec"], "fge_per_sec": long["total_fge"] / long["sample_sec"],
                "compile_sec_cold": c["probe_first"]["compile_sec"], "compile_sec_warm": w["probe_first"]["compile_sec"],
                "compile_sec_in_process": c["probe_second"]["compile_sec"],
                "in_step_share_long_cold": c["long"]["in_step_share"],
                "in_step_share_long_warm": long["in_step_share"],
                "long_wall_sec_warm": long["wall_sec"], "llc_mean_long": long["llc_mean"],
                "spec_probe": c["probe_first"]["spec"], "spec_long": long["spec"],
            })

    print(f"float64, 4 chains, {jax.default_backend()} "
          f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores), jax {jax.__version__}")
    hdr = (f"{'target':7} {'sampler':7} {'steps/s':>9} {'FGE/s':>9} {'long s':>7} "
           f"{'compile cold':>12} {'warm':>5} {'in-proc':>7} {'in-step % cold/warm':>20}")
    print(hdr)
    print("-" * len(hdr))
    for r in rows:
        share = f"{100 * r['in_step_share_long_cold']:.0f} / {100 * r['in_step_share_long_warm']:.0f}"
        print(f"{r['target']:7} {r['sampler']:7} {r['steps_per_sec']:>9.0f} {r['fge_per_sec']:>9.1f} "
              f"{r['sample_sec']:>7.1f} {r['compile_sec_cold']:>12.2f} {r['compile_sec_warm']:>5.2f} "
              f"{r['compile_sec_in_process']:>7.3f} {share:>20}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "backend": jax.default_backend(), "jax": jax.__version__},
        "command": "uv run python benchmarks/samplers.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
