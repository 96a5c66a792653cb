"""SGLD's step size: bias and cost per setting of ε·nβ, against an exact λ or a NUTS reference.

    uv run python benchmarks/sgld_step.py          # about 10 minutes on 2 cores
    uv run python benchmarks/sgld_step.py --quick  # two step sizes, half the steps

For each target, SGLD runs at ε·nβ ∈ STEPS_NBETA with the number of steps scaled so every setting
covers the same Langevin time (ε·steps) as the default (ε·nβ = 0.02, 30k steps, 5k warmup): a
smaller step costs proportionally more FGE. The table gives λ̂ ± SEM, its error against the
reference in units of the combined standard error (z) and in percent, R-hat, bulk ESS and FGE.
References: deep linear networks against Aoyagi's exact λ; the quick example's ReLU MLPs against
a long NUTS run. Writes benchmarks/results/sgld_step.json and docs/sgld-step.md
(`--doc-only` re-renders the doc from the JSON).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

ROOT = Path(__file__).resolve().parent.parent
STEPS_NBETA = [0.04, 0.02, 0.01, 0.005]
DEFAULT_STEPS, DEFAULT_WARMUP, DEFAULT_NBETA = 30000, 5000, 0.02


def targets():
    from lambda_hat.specs import TargetSpec

    dln = lambda widths, rank: TargetSpec(model={"kind": "dln", "widths": widths}, teacher={"rank": rank},  # noqa: E731
                                         data={"n_data": 10_000, "noise_scale": 0.1}, seed=0)
    from lambda_hat.sweep import load_sweep

    mlp1, mlp2 = load_sweep(ROOT / "examples" / "quick.yaml").targets  # the quick example's targets
    return {"dln[5,3,5] r1": dln([5, 3, 5], 1), "dln[3,8,4] r2": dln([3, 8, 4], 2),
            "mlp small seed1": mlp1, "mlp small seed2": mlp2}


def run(target, arrays, sampler, seed=1):
    from lambda_hat.ids import target_id
    from lambda_hat.science import sample_run
    from lambda_hat.specs import RunSpec

    spec = RunSpec(target_id=target_id(target), sampler={**sampler, "chains": 4}, seed=seed)
    t = time.perf_counter()
    m = sample_run(spec, target, arrays).metrics
    return {k: m.get(k) for k in ("llc_mean", "llc_sem", "r_hat", "ess_bulk", "total_fge", "status")} | {
        "seconds": time.perf_counter() - t}


OUT = ROOT / "benchmarks" / "results" / "sgld_step.json"
DOC = ROOT / "docs" / "sgld-step.md"

CONCLUSION = """
**The default stays ε·nβ = 0.02** (30k steps, 5k warmup, batch 256). On deep linear networks it is
within 3.4 % of the exact λ, and a smaller step buys nothing there at 2-4x the FGE. On the quick
example's small ReLU MLPs (n = 100) the same setting sits 7-8 % above NUTS: the bias grows about
linearly with ε (+14 % at 0.04, +2 % at 0.01, within error at 0.005), the mark of an unadjusted
Langevin step that is large against the steepest posterior direction, which is steeper on these
networks than on the DLNs at the same ε·nβ. For MLP targets use `step_size_nbeta: 0.01` with twice
the steps (or HMC/NUTS). Changing the default would give every existing SGLD spec that relies on it
a new ID (the resolved spec is what is hashed), so existing stores would re-run it; the measured
bias is documented here instead. At every setting these MLP runs reach a bulk ESS of only ~150-320
over 4 chains, so lambda-hat marks them `unconverged` (threshold 400): the flag, not the default,
is what tells a user not to trust them. One row is a warning about standard errors: [5,3,5] at
0.01 is 5 % low with z = -4.9, between its neighbours at 0.02 and 0.005, so on that case the
run-to-run spread is larger than a 4-chain SEM says (slow modes that 4 chains do not reveal).
"""


def render(doc: dict) -> str:
    lines = ["# SGLD's step size: bias against cost", "",
             f"Produced by `uv run python benchmarks/sgld_step.py{' --quick' if doc['quick'] else ''}` on "
             f"{doc['machine']} ({doc['cpus']} CPUs, JAX on CPU, float64, 4 chains, batch 256). Each "
             "setting covers the Langevin time of the default (ε·steps constant), so FGE grows as ε shrinks. "
             "z is the error over the combined standard error of λ̂ and the reference.", "",
             "| target | reference | ε·nβ | steps | λ̂ ± SEM | error | z | R-hat | bulk ESS | FGE |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in doc["rows"]:
        ref = f"{r['reference']:.3f} ({r['reference_kind']})"
        lines.append(f"| {r['target']} | {ref} | {r['step_size_nbeta']} | {r['steps']:,} | {r['llc_mean']:.3f} ± "
                     f"{r['llc_sem']:.3f} | {100 * r['rel_error']:+.1f} % | {r['z']:+.1f} | {r['r_hat']:.3f} | "
                     f"{r['ess_bulk']:.0f} | {r['total_fge']:.3g} |")
    return "\n".join(lines + CONCLUSION.splitlines()) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--doc-only", action="store_true", help="re-render docs/sgld-step.md from the JSON")
    args = ap.parse_args()
    if args.doc_only:
        DOC.write_text(render(json.loads(OUT.read_text())))
        return
    import jax

    jax.config.update("jax_enable_x64", True)
    from lambda_hat.science import build_target

    steps_nbeta = [0.02, 0.005] if args.quick else STEPS_NBETA
    f = 2 if args.quick else 1
    rows = []
    for name, target in targets().items():
        arrays = build_target(target)
        if "llc_true" in arrays.metrics and arrays.metrics["llc_true"] is not None:
            ref, ref_sem, ref_kind = float(arrays.metrics["llc_true"]), 0.0, "exact"
        else:
            r = run(target, arrays, {"name": "nuts", "draws": 4000 // f, "warmup": 1000})
            ref, ref_sem, ref_kind = r["llc_mean"], r["llc_sem"], f"NUTS (R-hat {r['r_hat']:.3f})"
        for enb in steps_nbeta:
            scale = DEFAULT_NBETA / enb
            steps, warmup = int(DEFAULT_STEPS * scale) // f, int(DEFAULT_WARMUP * scale) // f
            r = run(target, arrays, {"name": "sgld", "step_size_nbeta": enb, "steps": steps, "warmup": warmup,
                                     "eval_every": max(1, int(20 * scale)), "batch_size": 256})
            err = r["llc_mean"] - ref
            row = {"target": name, "reference": ref, "reference_sem": ref_sem, "reference_kind": ref_kind,
                   "step_size_nbeta": enb, "steps": steps, **r, "rel_error": err / ref,
                   "z": err / math.hypot(r["llc_sem"], ref_sem)}
            rows.append(row)
            print(f"{name:16} ref {ref:7.3f} ({ref_kind:18}) εnβ {enb:<6} steps {steps:>7}  λ̂ {r['llc_mean']:7.3f} ± "
                  f"{r['llc_sem']:.3f}  {100 * row['rel_error']:+6.1f} %  z {row['z']:+5.1f}  R-hat {r['r_hat']:.3f}  "
                  f"ESS {r['ess_bulk']:6.0f}  FGE {r['total_fge']:9.3g}  {r['seconds']:5.1f} s", flush=True)
    doc = {"machine": platform.platform(), "cpus": os.cpu_count(), "quick": args.quick, "rows": rows}
    OUT.write_text(json.dumps(doc, indent=1))
    DOC.write_text(render(doc))
    print(f"wrote {OUT.relative_to(ROOT)} and {DOC.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
