"""The same SGLD as a plain PyTorch per-step loop (the devinterp way) and as lambda-hat, side by side.

    uv run --extra torch python benchmarks/torch_sgld.py --device cpu   # the `torch` extra: PyTorch from PyPI
    uv run --extra torch python benchmarks/torch_sgld.py --device cuda --dtype float32

Both sample the localized tempered posterior of the same target (the `small` MLP preset, 45
parameters, n = 1,000 from presets small with n_data raised) with the same SGLD: minibatch 32 drawn
with replacement, ε·nβ = 0.02, β = 1/log n, γ = 1, 4 chains, the same number of steps, each step's
minibatch loss recorded, float64 on CPU by default. lambda-hat's chains start dispersed around w*
(its standard start, counted in its time); the PyTorch loop's start at w*; both discard `--warmup`
steps.

The PyTorch loop is written as devinterp writes its sampler: for each chain in turn, a copy of the
model and an SGLD optimizer whose `step` adds −(ε/2)·(nβ·∇L_b + γ·(w − w*)) and √ε·N(0, 1) noise to
every parameter; per step, draw a batch, forward, `backward`, `step`, `zero_grad`, and record
`loss.item()`. lambda-hat runs `pipeline.sample_run` with `loss_trace: minibatch, eval_every: 1`
(its compile time is reported apart). Reported: chain-steps per second of each, their ratio, and
each one's λ̂ = nβ·(mean recorded loss − L0) (the two should agree within their noise).
Writes benchmarks/results/torch_sgld-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--dtype", default="float64", choices=["float32", "float64"])
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--chains", type=int, default=4)
    ap.add_argument("--steps", type=int, default=5000)
    ap.add_argument("--warmup", type=int, default=1000)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    os.environ["JAX_PLATFORMS"] = args.device
    import numpy as np

    from lambda_hat.science.pipeline import build_target, sample_run
    from lambda_hat.specs import RunSpec
    from lambda_hat.sweep import sweep_from_dict

    sweep = sweep_from_dict({"targets": [{"model": "small", "data": {"n_data": args.n}, "dtype": args.dtype}],
                             "samplers": [{"name": "sgld"}]})
    target = sweep.targets[0]
    arrays = build_target(target)
    n = args.n
    n_beta = n / math.log(n)
    eps = 0.02 / n_beta
    gamma = 1.0

    # lambda-hat
    sampler = {"name": "sgld", "chains": args.chains, "steps": args.steps + args.warmup, "warmup": args.warmup,
               "batch_size": args.batch, "eval_every": 1, "loss_trace": "minibatch", "dtype": args.dtype,
               "step_size": eps}
    run = RunSpec.model_validate({"target_id": "tgt_benchmark", "sampler": sampler, "posterior": {"gamma": gamma}})
    t0 = time.perf_counter()
    res = sample_run(run, target, arrays)
    lh_wall = time.perf_counter() - t0
    m = res.metrics
    total_steps = args.chains * (args.steps + args.warmup)
    lh_rate = total_steps / m["sample_sec"]

    print(f"lambda-hat: {lh_rate:,.0f} chain-steps/s (compile {m['compile_sec']:.2f} s), "
          f"λ̂ = {m['llc_mean']:.2f} ± {m['llc_sem']:.2f}", flush=True)
    try:
        import torch
    except ImportError:
        sys.exit("torch is not installed: the PyTorch side needs it (pip install torch)")

    # PyTorch, devinterp style
    tdtype = torch.float64 if args.dtype == "float64" else torch.float32
    dev = torch.device(args.device)
    X = torch.as_tensor(np.array(arrays.X), dtype=tdtype, device=dev)
    Y = torch.as_tensor(np.array(arrays.Y), dtype=tdtype, device=dev)
    n_layers = sum(1 for k in arrays.params if k.startswith("W_"))

    def make_model():
        layers = []
        for i in range(n_layers):
            W = np.asarray(arrays.params[f"W_{i}"])
            lin = torch.nn.Linear(W.shape[0], W.shape[1], bias=f"b_{i}" in arrays.params)
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(np.array(W.T)))
                if lin.bias is not None:
                    lin.bias.copy_(torch.as_tensor(np.array(arrays.params[f"b_{i}"])))
            layers.append(lin)
            if i < n_layers - 1:
                layers.append(torch.nn.ReLU())
        return torch.nn.Sequential(*layers).to(device=dev, dtype=tdtype)

    class SGLD(torch.optim.Optimizer):
        def __init__(self, params, lr, nbeta, localization):
            super().__init__(params, dict(lr=lr, nbeta=nbeta, localization=localization))
            for group in self.param_groups:
                for p in group["params"]:
                    self.state[p]["initial"] = p.detach().clone()

        @torch.no_grad()
        def step(self):
            for group in self.param_groups:
                for p in group["params"]:
                    drift = group["nbeta"] * p.grad + group["localization"] * (p - self.state[p]["initial"])
                    p.add_(drift, alpha=-0.5 * group["lr"])
                    p.add_(torch.randn_like(p), alpha=math.sqrt(group["lr"]))

    def loss_fn(pred, y):  # lambda-hat's convention: squared error summed over outputs, mean over rows
        return ((pred - y) ** 2).sum(-1).mean()

    torch.manual_seed(0)
    gen_idx = torch.Generator(device=dev).manual_seed(0)
    with torch.no_grad():
        L0 = float(loss_fn(make_model()(X), Y))
    losses = np.zeros((args.chains, args.steps + args.warmup))
    if args.device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for c in range(args.chains):
        model = make_model()
        opt = SGLD(model.parameters(), lr=eps, nbeta=n_beta, localization=gamma)
        for s in range(args.steps + args.warmup):
            idx = torch.randint(0, n, (args.batch,), device=dev, generator=gen_idx)
            loss = loss_fn(model(X[idx]), Y[idx])
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses[c, s] = loss.item()
    torch_sec = time.perf_counter() - t0
    torch_rate = total_steps / torch_sec
    torch_llc = n_beta * (losses[:, args.warmup:].mean() - L0)

    row = {
        "device": args.device, "dtype": args.dtype, "n": n, "batch": args.batch, "chains": args.chains,
        "steps": args.steps, "warmup": args.warmup, "step_size": eps, "n_beta": n_beta, "gamma": gamma,
        "n_params": int(target.model.n_params),
        "lambda_hat_chain_steps_per_sec": lh_rate, "lambda_hat_sample_sec": m["sample_sec"],
        "lambda_hat_compile_sec": m["compile_sec"], "lambda_hat_wall_sec": lh_wall,
        "lambda_hat_llc": m["llc_mean"], "lambda_hat_llc_sem": m["llc_sem"],
        "torch_chain_steps_per_sec": torch_rate, "torch_sec": torch_sec, "torch_llc": torch_llc,
        "ratio": lh_rate / torch_rate,
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "machine": f"{os.cpu_count()} cores, {platform.platform()}",
        "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print("| device | dtype | lambda-hat chain-steps/s | PyTorch loop chain-steps/s | ratio | λ̂ lambda-hat | λ̂ PyTorch |")
    print("|---|---|--:|--:|--:|--:|--:|")
    print(f"| {args.device} | {args.dtype} | {lh_rate:,.0f} | {torch_rate:,.0f} | {row['ratio']:,.0f}× "
          f"| {m['llc_mean']:.2f} ± {m['llc_sem']:.2f} | {torch_llc:.2f} |")
    out = Path(args.out or ROOT / "benchmarks" / "results" / f"torch_sgld-{args.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(row, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
