"""A plugin as a user would write one: a model kind and a sampler from outside lambda-hat.

Imported through `LH_PLUGINS=toy_plugin` (with this directory on PYTHONPATH), in the planner and
in every worker. Light at import (no JAX): the sweep loader and `lh plan` read its specs; its
science runs only in a worker.

* model kind `line`: y = w₀·x + w₁ fitted by least squares (numpy), a regular model with two
  parameters, so its exact learning coefficient is d/2 = 1;
* sampler `toy_langevin`: unadjusted full-batch Langevin, w ← w + (ε/2)·∇log p(w) + √ε·ξ.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import numpy as np

from lambda_hat.registry import ModelKind, Sampler, register_model_kind, register_sampler
from lambda_hat.specs import ModelSpecBase, SamplerSpecBase

SLOPE, INTERCEPT = 2.0, 1.0


class LineSpec(ModelSpecBase):
    kind: Literal["line"]
    in_dim: ClassVar[int] = 1
    out_dim: ClassVar[int] = 1

    @property
    def layer_dims(self) -> list[int]:
        return [1, 1]

    @property
    def n_params(self) -> int:
        return 2

    def forward_key(self) -> tuple:
        return ("line",)


def forward(key):
    return lambda params, x: x * params["w"][0] + params["w"][1]


def exact_lambda(target) -> float:
    return target.model.n_params / 2  # a regular model: λ = d/2


def build(target):
    from lambda_hat.science import TargetArrays

    d, dtype = target.data, np.dtype(target.dtype)
    rng = np.random.default_rng(target.seed)
    X = rng.standard_normal((d.n_data, 1))
    Y = SLOPE * X + INTERCEPT + d.noise_scale * rng.standard_normal((d.n_data, 1))
    design = np.hstack([X, np.ones_like(X)])
    w = np.linalg.lstsq(design, Y[:, 0], rcond=None)[0]
    L0 = float(np.mean((design @ w - Y[:, 0]) ** 2))
    metrics = {"L0": L0, "train_steps": 0, "final_train_loss": L0, "n_params": 2, "n_data": d.n_data,
               "llc_true": exact_lambda(target)}
    return TargetArrays(params={"w": w.astype(dtype)}, X=X.astype(dtype), Y=Y.astype(dtype), metrics=metrics)


class ToyLangevinSpec(SamplerSpecBase):
    name: Literal["toy_langevin"] = "toy_langevin"
    draws: int = 200
    step_size: float = 0.01


def from_spec(s):
    import jax
    import jax.numpy as jnp

    from lambda_hat.science.engine import Algorithm, no_warmup
    from lambda_hat.science.posterior import make_logdensity

    def keys(chain_key):
        k_init, k_draw = jax.random.split(chain_key)
        return k_init, None, k_draw

    def step(key, w, params, problem):
        logdensity = make_logdensity(problem.loss_fn, problem.w_star, problem.n_beta, problem.gamma)
        w = w + 0.5 * s.step_size * jax.grad(logdensity)(w) + math.sqrt(s.step_size) * jax.random.normal(
            key, w.shape, w.dtype)
        return w, {"loss": problem.loss_fn(w)}

    return Algorithm(keys, lambda key, w0, problem: w0, no_warmup, step)


def costs(s, traces, n, loss_eval_fge):
    chains, draws = traces["loss"].shape
    return np.zeros(chains), np.full((chains, draws), 1.0 + loss_eval_fge)


register_model_kind(ModelKind(LineSpec, build=f"{__name__}:build", forward=f"{__name__}:forward",
                              exact_lambda=f"{__name__}:exact_lambda"))
register_sampler(Sampler(ToyLangevinSpec, module=__name__, color="#666666"))
