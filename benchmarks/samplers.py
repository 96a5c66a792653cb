"""Sampler throughput on the `small` MLP target: steps/s, FGE/s, cold vs warm compile.

    uv run python benchmarks/samplers.py                 # all four samplers, shipped defaults
    uv run python benchmarks/samplers.py --samplers nuts,mclmc

Runs two worker processes sharing a fresh persistent compilation cache directory
(`jax_compilation_cache_dir`, min compile time 0): the first compiles cold, the second
finds every executable in the cache (warm). In each worker every sampler runs twice; the
second call hits the in-process compile cache, and its sample_sec is the steady-state
number used for steps/s and FGE/s. Printed per sampler:

* steps/s      sampler transitions (all chains, warmup/tuning included) per sample_sec
               (SGLD: minibatch steps; HMC/NUTS: transitions; MCLMC: integrator steps)
* FGE/s        full-gradient evaluations (metric `total_fge`) per sample_sec
* compile cold / warm (persistent cache) / in-process (second call) compile_sec
* in-step %    share of the first call's wall time (sample_run, diagnostics included)
               spent inside the compiled sampler, cold and warm process

Writes benchmarks/results/samplers.json. float64, 4 chains, CPU unless JAX_PLATFORMS says otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parent.parent

SAMPLERS = {  # shipped defaults (chains 4)
    "sgld": {"name": "sgld"},
    "hmc": {"name": "hmc"},
    "nuts": {"name": "nuts"},
    "mclmc": {"name": "mclmc"},
}


def _steps(spec, metrics) -> int:
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


def worker(cache_dir: str, names: list[str]) -> None:
    import jax

    jax.config.update("jax_compilation_cache_dir", cache_dir)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    jax.config.update("jax_enable_x64", True)
    from pydantic import TypeAdapter

    from lambda_hat.presets import DATA_PRESETS, MODEL_PRESETS, TEACHER_PRESETS
    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import DataSpec, MLPSpec, RunSpec, SamplerSpec, TargetSpec, TeacherSpec

    target = TargetSpec(model=MLPSpec(**MODEL_PRESETS["small"]), data=DataSpec(**DATA_PRESETS["small"]),
                        teacher=TeacherSpec(**TEACHER_PRESETS["small"]))
    arrays = build_target(target)
    out = {"n_params": target.model.n_params, "n_data": target.data.n_data, "samplers": {}}
    for name in names:
        spec = TypeAdapter(SamplerSpec).validate_python(SAMPLERS[name])
        run = RunSpec(target_id="bench", sampler=spec, seed=0)
        t0 = time.perf_counter()
        first = sample_run(run, target, arrays)
        wall_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        second = sample_run(run, target, arrays)
        wall_second = time.perf_counter() - t0
        m1, m2 = first.metrics, second.metrics
        out["samplers"][name] = {
            "spec": spec.model_dump(),
            "steps": _steps(spec, m2),
            "total_fge": m2["total_fge"],
            "compile_sec": m1["compile_sec"],
            "compile_sec_in_process": m2["compile_sec"],
            "sample_sec_first": m1["sample_sec"],
            "sample_sec": m2["sample_sec"],
            "wall_first": wall_first,
            "wall_second": wall_second,
            "in_step_share_first": m1["sample_sec"] / wall_first,
            "in_step_share_second": m2["sample_sec"] / wall_second,
            "llc_mean": m2["llc_mean"],
            "ess": m2["ess"],
        }
    print("JSON:" + json.dumps(out))


def _run_worker(cache_dir: str, names: list[str]) -> dict:
    cmd = [sys.executable, __file__, "--worker", "--cache-dir", cache_dir, "--samplers", ",".join(names)]
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"worker failed ({p.returncode})")
    line = next(ln for ln in p.stdout.splitlines() if ln.startswith("JSON:"))
    return json.loads(line[5:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samplers", default=",".join(SAMPLERS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "samplers.json"))
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--cache-dir", help=argparse.SUPPRESS)
    args = ap.parse_args()
    names = [s for s in args.samplers.split(",") if s]
    if args.worker:
        worker(args.cache_dir, names)
        return

    with tempfile.TemporaryDirectory(prefix="lh_jax_cache_") as cache:
        cold = _run_worker(cache, names)
        warm = _run_worker(cache, names)

    rows = {}
    for name in names:
        c, w = cold["samplers"][name], warm["samplers"][name]
        sec = min(c["sample_sec"], w["sample_sec"])
        rows[name] = {
            "steps": c["steps"],
            "total_fge": c["total_fge"],
            "steps_per_sec": c["steps"] / sec,
            "fge_per_sec": c["total_fge"] / sec,
            "sample_sec": sec,
            "compile_sec_cold": c["compile_sec"],
            "compile_sec_warm": w["compile_sec"],
            "compile_sec_in_process": c["compile_sec_in_process"],
            "in_step_share_cold": c["in_step_share_first"],
            "in_step_share_warm": w["in_step_share_first"],
            "in_step_share_in_process": c["in_step_share_second"],
            "llc_mean": c["llc_mean"],
            "ess": c["ess"],
            "spec": c["spec"],
        }

    import jax

    hdr = (f"{'sampler':8} {'steps':>8} {'FGE':>9} {'steps/s':>10} {'FGE/s':>10} {'sample s':>9} "
           f"{'compile cold':>12} {'warm':>6} {'in-proc':>8} {'in-step % cold/warm/in-proc':>28}")
    print(f"small MLP target: {cold['n_params']} params, n = {cold['n_data']}; float64, "
          f"{jax.default_backend()} ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    print(hdr)
    print("-" * len(hdr))
    for name, r in rows.items():
        share = "/".join(f"{100 * r[k]:.0f}" for k in ("in_step_share_cold", "in_step_share_warm",
                                                      "in_step_share_in_process"))
        print(f"{name:8} {r['steps']:>8} {r['total_fge']:>9.0f} {r['steps_per_sec']:>10.0f} {r['fge_per_sec']:>10.0f} "
              f"{r['sample_sec']:>9.3f} {r['compile_sec_cold']:>12.2f} {r['compile_sec_warm']:>6.2f} "
              f"{r['compile_sec_in_process']:>8.3f} {share:>28}")

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "machine": {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
                    "backend": jax.default_backend(), "jax": jax.__version__},
        "target": {"model": "small", "data": "small", "n_params": cold["n_params"], "n_data": cold["n_data"]},
        "samplers": rows,
    }, indent=2) + "\n")
    print(f"wrote {out.relative_to(ROOT) if out.is_relative_to(ROOT) else out}")


if __name__ == "__main__":
    main()
