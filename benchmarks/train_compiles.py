"""Training compiles per target: does a second target of the same shapes reuse the first's executables?

    uv run python benchmarks/train_compiles.py            # 2 targets of the `small` preset's shapes
    uv run python benchmarks/train_compiles.py --label before

Builds targets that differ only in their seed (so their data differ, their shapes do not), one after
the other in one process, with the persistent compilation cache off, and counts XLA backend compiles
(`jax.monitoring`'s backend-compile events) and their seconds during each `build_target`, and
those inside `train.train` alone (the rest: data, w* quality checks). With the
data baked into the executable as constants every target compiles afresh; with the data as arguments
the second target compiles nothing. Prints a table; writes benchmarks/results/train_compiles.json
(one entry per --label).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--targets", type=int, default=2)
    ap.add_argument("--label", default="current")
    args = ap.parse_args()

    import jax

    jax.config.update("jax_enable_compilation_cache", False)
    from lambda_hat.science import build_target
    from lambda_hat.specs import DataSpec, MLPSpec, TargetSpec, TrainingSpec

    import lambda_hat.science.train as train_module

    compiles: list[float] = []
    in_train: list[float] = []
    inside = [False]

    def listen(event, secs, **kw):
        if event == COMPILE_EVENT:
            compiles.append(secs)
            if inside[0]:
                in_train.append(secs)

    jax.monitoring.register_event_duration_secs_listener(listen)
    plain_train = train_module.train

    def counted_train(*a, **k):  # training alone, apart from the w* quality checks
        inside[0] = True
        try:
            return plain_train(*a, **k)
        finally:
            inside[0] = False

    train_module.train = counted_train
    rows = []
    for seed in range(1, args.targets + 1):
        spec = TargetSpec(model=MLPSpec(target_params=50), data=DataSpec(n_data=1000),
                          training=TrainingSpec(steps=2000, learning_rate=0.01), seed=seed)
        start, start_train = len(compiles), len(in_train)
        t0 = time.perf_counter()
        arrays = build_target(spec)
        wall = time.perf_counter() - t0
        new, new_train = compiles[start:], in_train[start_train:]
        rows.append({"seed": seed, "train_compiles": len(new_train), "train_compile_sec": round(sum(new_train), 3),
                     "compiles": len(new), "compile_sec": round(sum(new), 3),
                     "build_sec": round(wall, 3), "train_steps": arrays.metrics["train_steps"]})
    print(f"{'target seed':>11} {'train compiles':>14} {'train compile s':>15} {'all compiles':>12} {'all compile s':>13} "
          f"{'build s':>8} {'steps':>6}   ({args.label})")
    for r in rows:
        print(f"{r['seed']:>11} {r['train_compiles']:>14} {r['train_compile_sec']:>15.2f} {r['compiles']:>12} "
              f"{r['compile_sec']:>13.2f} {r['build_sec']:>8.2f} {r['train_steps']:>6}")
    out = Path(__file__).resolve().parent / "results" / "train_compiles.json"
    data = json.loads(out.read_text()) if out.exists() else {}
    data[args.label] = {"rows": rows, "machine": platform.machine(), "jax": jax.__version__}
    out.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    main()
