"""One chain runner for every sampler: `vmap` over chains, `lax.scan` over draws, in segments.

A sampler (samplers/*.py) is an `Algorithm`: four pure functions over its own NamedTuple
states, BlackJAX style, with its static settings closed over and the posterior (`Problem`:
loss, w*, nβ, γ, the sampler's runtime scalars) passed in:

    keys(chain_key)                 -> (init_key, warmup_key, draw_key)
    init(init_key, w0, problem)     -> state
    warmup(warmup_key, state, problem) -> (state, tuned params, gradient evaluations)
    step(key, state, params, problem)  -> (state, per-draw info {name: scalar})

`start` runs init + warmup for every chain (starting dispersed around w*,
`posterior.dispersed_start`) and returns `Chains`, the whole resumable state: sampler states,
tuned parameters, each chain's draw key and its warmup cost. `segment` advances all chains by
a fixed number of draws from draw `first` on. Draw i of a chain always uses key
`split(draw_key, draws)[i]` (`draw_keys` computes any slice of it without the rest), so a run
cut into segments follows exactly the PRNG stream of one `lax.scan` over all draws, and a run
resumed from `Chains` after draw `first` continues it bit for bit.

Pure JAX: nothing here touches a file; the caller persists `Chains` and the traces.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp


class Problem(NamedTuple):
    """The localized tempered posterior as a sampler sees it (built inside the traced function)."""

    loss_fn: Callable  # w -> L_n(w), full data
    minibatch_loss: Callable  # batch_size -> ((w, key) -> unbiased estimate of L_n(w))
    w_star: Any
    n_beta: Any
    gamma: Any
    scalars: dict  # the sampler's runtime scalars (SGLD: {"step_size": ε}): arguments, not constants
    # key -> (w -> estimate of L_n(w)) for a chain's dispersed start when reading the full data
    # there would cost too much (`posterior.start_rows`); None: the start uses loss_fn
    start_loss: Callable | None = None
    # w -> (m,) losses ℓ_i(w) of the recorded examples (`record.per_example`), kept with every
    # draw as the per-draw info "example_loss" (float32); None: not recorded
    example_loss: Callable | None = None


class Algorithm(NamedTuple):
    keys: Callable
    init: Callable
    warmup: Callable
    step: Callable


class Chains(NamedTuple):
    """Every chain's resumable state (leading axis: chain)."""

    state: Any
    params: Any
    key: jax.Array  # each chain's draw key
    warmup_grad_evals: jax.Array


def position(state):
    """The sampled point of a sampler state: BlackJAX states' `position`, or the state itself (SGLD's)."""
    return getattr(state, "position", state)


def _step_recording(alg: Algorithm, problem: Problem):
    """`alg.step`, adding the recorded examples' losses at the new position when asked for."""
    if problem.example_loss is None:
        return alg.step

    def step(key, state, params, problem):
        state, info = alg.step(key, state, params, problem)
        return state, dict(info, example_loss=problem.example_loss(position(state)).astype("float32"))

    return step


def no_warmup(key, state, problem):
    return state, (), jnp.zeros((), jnp.int32)


def draw_keys(key, first, length: int, total: int):
    """`jax.random.split(key, total)[first:first + length]` (indices past `total` give unused
    keys), computing only those keys when the threefry split is counter-based (JAX's default,
    `jax_threefry_partitionable`): key i is threefry2x32(key, (0, i))."""
    if jax.config.jax_threefry_partitionable and jax.config.jax_default_prng_impl == "threefry2x32":
        from jax.extend.random import threefry2x32_p

        idx = jnp.asarray(first, jnp.uint32) + jnp.arange(length, dtype=jnp.uint32)
        k1, k2 = (jnp.broadcast_to(k, idx.shape) for k in (key[0], key[1]))
        bits1, bits2 = threefry2x32_p.bind(k1, k2, jnp.zeros_like(idx), idx)
        return jnp.stack([bits1, bits2], axis=-1)
    keys = jax.random.split(key, total)
    keys = jnp.concatenate([keys, keys[:length]])  # padding for a last, partial segment
    return jax.lax.dynamic_slice_in_dim(keys, first, length)


def start(alg: Algorithm, problem: Problem, key, chains: int, disperse: bool = True) -> Chains:
    from .posterior import START_SUBSET_STREAM, dispersed_start

    def one_chain(chain_key):
        k_init, k_warm, k_draw = alg.keys(chain_key)
        if disperse:
            loss = (problem.loss_fn if problem.start_loss is None
                    else problem.start_loss(jax.random.fold_in(chain_key, START_SUBSET_STREAM)))
            w0 = dispersed_start(chain_key, loss, problem.w_star, problem.n_beta, problem.gamma)
        else:
            w0 = problem.w_star
        state = alg.init(k_init, w0, problem)
        state, params, grads = alg.warmup(k_warm, state, problem)
        return Chains(state, params, k_draw, jnp.asarray(grads, jnp.int32))

    return jax.vmap(one_chain)(jax.random.split(key, chains))


def segment(alg: Algorithm, problem: Problem, chains: Chains, first, length: int, total: int):
    """Advance every chain by draws first … min(first + length, total) − 1. Returns (chains, info
    {name: (chains, length)}, "example_loss": (chains, length, m)); entries past `total` are
    zeros, to be dropped.

    The loop runs a traced number of times (a while loop whatever `length` is): XLA then compiles
    the step the same way for every segment length, never unrolling a one-step loop nor mixing a
    mask into it, so a run's numbers do not depend on how it is cut into segments."""
    n = jnp.minimum(length, total - first)
    step = _step_recording(alg, problem)

    def one_chain(c: Chains):
        keys = draw_keys(c.key, first, length, total)
        info0 = jax.eval_shape(lambda s, k: step(k, s, c.params, problem)[1], c.state, keys[0])
        bufs = jax.tree.map(lambda a: jnp.zeros((length, *a.shape), a.dtype), info0)

        def body(i, carry):
            state, bufs = carry
            state, info = step(keys[i], state, c.params, problem)
            bufs = jax.tree.map(lambda b, v: jax.lax.dynamic_update_index_in_dim(b, v, i, 0), bufs, info)
            return state, bufs

        state, bufs = jax.lax.fori_loop(0, n, body, (c.state, bufs))
        return c._replace(state=state), bufs

    return jax.vmap(one_chain)(chains)


def run_chains(alg: Algorithm, problem: Problem, key, chains: int, draws: int, disperse: bool = False) -> dict:
    """Warmup and all draws in one traced call: traces {name: (chains, draws)} plus
    "warmup_grad_evals" (chains,)."""
    c = start(alg, problem, key, chains, disperse)
    _, info = segment(alg, problem, c, 0, draws, draws)
    return dict(info, warmup_grad_evals=c.warmup_grad_evals)


def problem_from_loss(loss_fn, w_star, n_beta, gamma, stoch_loss_fn=None, **scalars) -> Problem:
    """A `Problem` around a given loss (the samplers' `build_*` functions, tests)."""
    return Problem(loss_fn, lambda batch_size: stoch_loss_fn, w_star, n_beta, gamma, scalars)
