"""Fully connected networks as plain parameter dicts.

Parameters are a dict ``{"W_0", "b_0", "W_1", "b_1", ...}`` with ``W_i`` of shape
(fan_in, fan_out) and ``b_i`` of shape (fan_out,); the ``b_i`` are absent when the model
has no bias. Layer ``i`` computes ``h @ W_i + b_i``; the activation is applied after every
layer but the last (the output layer is linear).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
    # exact (erf) GELU, not the tanh approximation
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "identity": lambda x: x,
}


def jnp_dtype(name: str):
    """The JAX dtype for a spec's `dtype` (no side effects: see `precision`)."""
    if name == "float64":
        return jnp.float64
    if name == "float32":
        return jnp.float32
    raise NotImplementedError(f"dtype={name!r} is not implemented")


def precision(name: str):
    """Context manager: JAX's x64 mode that a computation in dtype `name` needs, for this
    thread only (`jax.enable_x64`), whatever the process-wide `jax_enable_x64` says.

    float64 needs x64 on. float32 runs with x64 *off*: libraries turn Python floats and
    dtype-less constructors into the default float, so under x64 a float32 computation picks
    up float64 values and fails at trace time (BlackJAX 1.7: `generate_gaussian_noise`'s
    default sigma makes SGLD's noise float64; window adaptation's initial mass matrix and step
    size, and MCLMC's tuner, start as float64), and the results would depend on the caller's
    global flag. Scoped this way, a spec's numbers never depend on the process's setting."""
    jnp_dtype(name)  # refuse unknown names here too
    return jax.enable_x64(name == "float64")


def init_std(init: str, fan_in: int, fan_out: int) -> float:
    """Standard deviation of the (normal) weight initialisation."""
    if init == "he":
        return math.sqrt(2.0 / fan_in)
    if init == "xavier":
        return math.sqrt(2.0 / (fan_in + fan_out))
    if init == "lecun":
        return math.sqrt(1.0 / fan_in)
    raise NotImplementedError(f"model.init={init!r} is not implemented")


def init_mlp(key, layer_dims: list[int], *, init: str, bias: bool, dtype) -> dict:
    """Normal weights with the scheme's std, zero biases."""
    params = {}
    keys = jax.random.split(key, len(layer_dims) - 1)
    for i, (a, b) in enumerate(zip(layer_dims[:-1], layer_dims[1:])):
        params[f"W_{i}"] = (init_std(init, a, b) * jax.random.normal(keys[i], (a, b))).astype(dtype)
        if bias:
            params[f"b_{i}"] = jnp.zeros((b,), dtype=dtype)
    return params


def n_layers(params: dict) -> int:
    return sum(1 for k in params if k.startswith("W_"))


def model_key(model) -> str | tuple:
    """The hashable key of a model spec's forward pass (what `forward`, `train.train` and
    `posterior.flat_model` take): its kind's `forward_key()`, e.g. an MLP's activation name,
    "identity" for a deep linear network (the MLP pass without biases or nonlinearity)."""
    return model.forward_key()


def forward(model):
    """``apply(params, X) -> Y`` for a `model_key`: a string is the MLP pass with that activation,
    a tuple names its model kind first, whose registered `forward` builds the pass."""
    from lambda_hat import registry

    return registry.model_kind("mlp" if isinstance(model, str) else model[0]).apply(model)


def mlp_forward(activation: str):
    """The MLP pass with `activation` (the mlp and dln kinds' `forward`)."""
    ACTIVATIONS[activation]  # refuse an unknown name here, not at trace time
    return lambda params, x: mlp_apply(params, x, activation)


def mlp_apply(params: dict, x, activation: str):
    """Forward pass: x (..., in_dim) -> (..., out_dim)."""
    act = ACTIVATIONS[activation]
    L = n_layers(params)
    h = x
    for i in range(L):
        h = h @ params[f"W_{i}"]
        b = params.get(f"b_{i}")
        if b is not None:
            h = h + b
        if i < L - 1:
            h = act(h)
    return h
