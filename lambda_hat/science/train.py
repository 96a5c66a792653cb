"""Train the student to w* with optax.

Full batch when ``training.batch_size`` is None (or ≥ n); otherwise each step uses a
minibatch of ``batch_size`` indices drawn uniformly *with replacement*. Steps run in
jitted `lax.scan` chunks of `CHECK_EVERY` steps; after each chunk the full-data loss is
evaluated and training stops early when it changed by less than ``early_stop_tol`` since
the previous check (``None`` or 0 disables early stopping).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import optax

from .losses import mean_loss
from .models import mlp_apply

CHECK_EVERY = 100


def make_optimizer(training):
    if training.optimizer == "adam":
        return optax.adam(training.learning_rate)
    if training.optimizer == "sgd":
        return optax.sgd(training.learning_rate)
    if training.optimizer == "adamw":
        return optax.adamw(training.learning_rate)
    raise NotImplementedError(f"training.optimizer={training.optimizer!r} is not implemented")


def train(key, params, X, Y, training, activation: str):
    """Return (trained params, info dict with train_steps and final_train_loss)."""
    n = X.shape[0]
    opt = make_optimizer(training)
    bs = training.batch_size
    full_batch = bs is None or bs >= n

    def loss_fn(p, xb, yb):
        return mean_loss(mlp_apply(p, xb, activation), yb)

    def step(carry, k):
        p, s = carry
        if full_batch:
            xb, yb = X, Y
        else:
            idx = jax.random.randint(k, (bs,), 0, n)
            xb, yb = X[idx], Y[idx]
        g = jax.grad(loss_fn)(p, xb, yb)
        upd, s = opt.update(g, s, p)
        return (optax.apply_updates(p, upd), s), None

    @partial(jax.jit, static_argnums=2)
    def chunk(carry, k, length):
        carry, _ = jax.lax.scan(step, carry, jax.random.split(k, length))
        return carry, loss_fn(carry[0], X, Y)

    carry = (params, opt.init(params))
    done = 0
    prev = float(loss_fn(params, X, Y))
    tol = training.early_stop_tol
    loss = prev
    while done < training.steps:
        length = min(CHECK_EVERY, training.steps - done)
        key, sub = jax.random.split(key)
        carry, loss_arr = chunk(carry, sub, length)
        loss = float(loss_arr)
        done += length
        if tol is not None and tol > 0 and abs(prev - loss) < tol:
            break
        prev = loss
    return carry[0], {"train_steps": done, "final_train_loss": loss}
