"""Train the student to w* with optax, and refine a point to the nearest minimum of L_n.

Full batch when ``training.batch_size`` is None (or ≥ n); otherwise each step uses a
minibatch of ``batch_size`` indices drawn uniformly *with replacement*. Steps run in
jitted `lax.scan` chunks of `CHECK_EVERY` steps; after each chunk the full-data loss and
gradient norm are evaluated. Stopping rule:

* ``training.grad_tol`` set: stop once ‖∇L_n(w)‖ ≤ grad_tol (a stationarity criterion; the
  loss-plateau rule is then not used), else after ``steps``.
* otherwise (the rule from before grad_tol existed): stop when the loss changed by less
  than ``early_stop_tol`` since the previous check (``None`` or 0 disables it).

The data are arguments of the jitted chunk, never constants baked into it, so targets of
the same shapes share one executable (in process, and through the persistent compilation
cache across processes); `benchmarks/train_compiles.py` measures it.
"""

from __future__ import annotations

import math
from functools import lru_cache

import jax
import jax.numpy as jnp
import optax

from .losses import mean_loss
from .models import forward
from .posterior import n_rows, take_rows

CHECK_EVERY = 100
# L-BFGS iterations `refine` allows; each takes one gradient plus its line search's evaluations.
REFINE_MAX_ITERS = 500
# Iterations over which `refine` measures its rate of descent for `stop_above`.
STALL_WINDOW = 10


def make_optimizer(training):
    if training.optimizer == "adam":
        return optax.adam(training.learning_rate)
    if training.optimizer == "sgd":
        return optax.sgd(training.learning_rate)
    if training.optimizer == "adamw":
        decay = getattr(training, "weight_decay", None)
        return optax.adamw(training.learning_rate) if decay is None else optax.adamw(training.learning_rate,
                                                                                     weight_decay=decay)
    raise NotImplementedError(f"training.optimizer={training.optimizer!r} is not implemented")


def _grad_norm(g) -> jax.Array:
    return optax.tree.norm(g)


def make_step(training, model, loss_name: str = "mse"):
    """(optimizer, loss_fn, step): `step(params, opt_state, key, X, Y)` is one training step on the
    minibatch `key` draws (`training.batch_size` rows, with replacement; all rows when None or ≥ n),
    returning (params, opt_state). Shared by `train` and the checkpoint trainer (`trajectory.py`),
    which differ only in how each step's key is made."""
    apply = forward(model)
    opt = make_optimizer(training)
    bs = training.batch_size

    def loss_fn(p, xb, yb):
        return mean_loss(apply(p, xb), yb, loss_name)

    def step(p, s, key, X, Y):
        n = n_rows(X)
        if bs is None or bs >= n:
            xb, yb = X, Y
        else:
            idx = jax.random.randint(key, (bs,), 0, n)
            xb, yb = take_rows(X, idx), Y[idx]
        g = jax.grad(loss_fn)(p, xb, yb)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s

    return opt, loss_fn, step


@lru_cache(maxsize=64)
def _chunk_fn(training, model, length: int, loss_name: str = "mse"):
    """The jitted `length`-step chunk for (training config, model forward): a pure function of
    (carry, key, X, Y), so one compile serves every dataset of the same shapes."""
    opt, loss_fn, one_step = make_step(training, model, loss_name)

    def chunk(carry, key, X, Y):
        def step(carry, k):
            return one_step(*carry, k, X, Y), None

        carry, _ = jax.lax.scan(step, carry, jax.random.split(key, length))
        loss, g = jax.value_and_grad(loss_fn)(carry[0], X, Y)
        return carry, loss, _grad_norm(g)

    return jax.jit(chunk), jax.jit(lambda p, X, Y: loss_fn(p, X, Y)), opt


def train(key, params, X, Y, training, model, loss_name: str = "mse"):
    """Return (trained params, info dict with train_steps, final_train_loss and
    final_grad_norm). `model`: an MLP activation name or a `models.forward` key; `loss_name`: the
    per-example loss's name (`losses.per_example`)."""
    tol = training.early_stop_tol
    grad_tol = getattr(training, "grad_tol", None)
    _, loss0_fn, opt = _chunk_fn(training, model, CHECK_EVERY, loss_name)
    carry = (params, opt.init(params))
    done = 0
    prev = float(loss0_fn(params, X, Y))
    loss, gnorm = prev, float("nan")
    while done < training.steps:
        length = min(CHECK_EVERY, training.steps - done)
        key, sub = jax.random.split(key)
        carry, loss_arr, gnorm_arr = _chunk_fn(training, model, length, loss_name)[0](carry, sub, X, Y)
        loss, gnorm = float(loss_arr), float(gnorm_arr)
        done += length
        if grad_tol is not None:
            if gnorm <= grad_tol:
                break
        elif tol is not None and tol > 0 and abs(prev - loss) < tol:
            break
        prev = loss
    return carry[0], {"train_steps": done, "final_train_loss": loss, "final_grad_norm": gnorm}


@lru_cache(maxsize=32)
def _refine_fn(model, max_iters: int, loss_name: str = "mse"):
    apply = forward(model)

    def run(w0, X, Y, grad_tol, stop_above):
        def fun(p):
            return mean_loss(apply(p, X), Y, loss_name)

        opt = optax.lbfgs()
        value_and_grad = optax.value_and_grad_from_state(fun)

        def body(carry):
            p, state, _, i, recent = carry
            value, g = value_and_grad(p, state=state)
            upd, state = opt.update(g, state, p, value=value, grad=g, value_fn=fun)
            # recent[i % W]: the loss W iterations before this one's, replaced by this one's
            return optax.apply_updates(p, upd), state, _grad_norm(g), i + 1, recent.at[i % STALL_WINDOW].set(value)

        def cond(carry):
            _, _, gnorm, i, recent = carry
            # recent[i % W] is now the oldest loss of the window, recent[(i - 1) % W] the newest
            newest, oldest = recent[(i - 1) % STALL_WINDOW], recent[i % STALL_WINDOW]
            projected = newest - (max_iters - i) * (oldest - newest) / STALL_WINDOW
            stalled = (i >= STALL_WINDOW) & (projected > stop_above)
            return (i < max_iters) & (gnorm > grad_tol) & ~stalled

        dtype = jax.tree.leaves(w0)[0].dtype
        big = jnp.asarray(jnp.inf, dtype)
        start = (w0, opt.init(w0), big, 0, jnp.full((STALL_WINDOW,), jnp.inf, dtype))
        p, _, _, iters, _ = jax.lax.while_loop(cond, body, start)
        loss, g = jax.value_and_grad(fun)(p)
        return p, loss, _grad_norm(g), iters

    return jax.jit(run)


def refine(params, X, Y, model, *, grad_tol: float = 0.0, max_iters: int = REFINE_MAX_ITERS,
           loss_name: str = "mse", stop_above: float = math.inf):
    """Full-batch L-BFGS (optax, zoom line search) from `params` down to the nearest minimum
    of L_n: stops when ‖∇L_n‖ ≤ grad_tol or after `max_iters` iterations. A descent method
    never climbs, so it stays in the basin it starts in. Returns (params, info) with
    refine_iters, refined_loss and refined_grad_norm. An exact saddle (zero gradient) is not
    left: callers test curvature separately (`wstar.quality`).

    `stop_above`: also stop once, at the rate of its last STALL_WINDOW iterations, the rest of the
    budget would end above this loss (checked from iteration STALL_WINDOW on). A caller that only
    asks whether descent gets below a level stops paying once the answer is settled at "no"."""
    dtype = jax.tree.leaves(params)[0].dtype
    p, loss, gnorm, iters = _refine_fn(model, int(max_iters), loss_name)(
        params, X, Y, jnp.asarray(grad_tol, dtype), jnp.asarray(stop_above, dtype))
    return p, {"refine_iters": int(iters), "refined_loss": float(loss), "refined_grad_norm": float(gnorm)}
