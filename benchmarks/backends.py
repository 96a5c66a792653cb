"""One sweep of many tiny runs, local backend against SLURM with one block, side by side.

    uv run python benchmarks/backends.py                # 200 runs; needs sbatch (scripts/slurm-local.sh start)
    uv run python benchmarks/backends.py --runs 50 --skip-slurm

The sweep: one `small` target (200 training steps) × N SGLD runs (2 chains, 300 steps),
each backend with a fresh store of its own (so each pays its own cold compiles), then
the same command again (the no-op: nothing to do).
Local: `--workers W`. SLURM: `--max-blocks 1 --cores-per-node W --workers-per-node W`
on the same machine (the one-node cluster of scripts/slurm-local.sh), so the difference
is SLURM's submission and Parsl's block start-up, not hardware.

Prints wall time of `lh execute` and runs per second; writes benchmarks/results/backends.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SWEEP = """\
store_root: store
targets:
  - {{model: small, data: small, seed: 7, overrides: {{training: {{steps: 200, learning_rate: 0.01}}}}}}
samplers:
  - {{name: sgld, chains: 2, grid: {{seed: {seeds}}}, overrides: {{steps: 300, warmup: 100, eval_every: 10}}}}
"""


def run(cwd: Path, args: list[str]) -> float:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"lh execute {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return wall


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--skip-slurm", action="store_true")
    args = ap.parse_args()
    backends = {"local": ["--workers", str(args.workers)]}
    if not args.skip_slurm:
        if shutil.which("sbatch") is None:
            raise SystemExit("no sbatch: start the local cluster (scripts/slurm-local.sh start) or pass --skip-slurm")
        backends["slurm (1 block)"] = ["--backend", "slurm", "--max-blocks", "1", "--cores-per-node", str(args.workers),
                                       "--workers-per-node", str(args.workers), "--mem-per-node", "4"]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, extra in backends.items():
            cwd = Path(tmp) / name.split()[0]
            cwd.mkdir()
            (cwd / "s.yaml").write_text(SWEEP.format(seeds=list(range(1, args.runs + 1))))
            wall = run(cwd, extra)
            noop = run(cwd, extra)
            rows[name] = {"wall_s": wall, "runs_per_s": args.runs / wall, "noop_s": noop}
    print(f"{args.runs} tiny SGLD runs + 1 target, {args.workers} workers")
    print(f"{'backend':<18}{'wall (s)':>10}{'runs/s':>10}{'no-op (s)':>12}")
    for name, r in rows.items():
        print(f"{name:<18}{r['wall_s']:>10.1f}{r['runs_per_s']:>10.2f}{r['noop_s']:>12.2f}")
    out = Path(__file__).parent / "results" / "backends.json"
    out.write_text(json.dumps({"runs": args.runs, "workers": args.workers, "results": rows}, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
