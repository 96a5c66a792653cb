"""Minibatch SGLD around w*, BlackJAX style.

Update (ε = step size, L_b = minibatch loss estimate):

    w ← w − (ε/2)·(nβ·∇L_b(w) + γ·(w − w*)) + √ε·ξ,   ξ ~ N(0, I)

For ``precond="none"`` this is exactly `blackjax.sgld`'s Euler step (BlackJAX writes
w + h·∇log p + √(2h)·ξ, so we call it with h = ε/2). ``precond="rmsprop"`` and ``"adam"``
adapt a diagonal preconditioner during `warmup` only, then freeze it. The moments are optax's:
`optax.scale_by_rms(decay=0.99, eps=λ, eps_in_sqrt=False)` (V ← αV + (1−α)·g²) or
`optax.scale_by_adam(b1=0.9, b2=0.999, eps=λ)` (bias-corrected m̂, V̂), λ = 1, g the drift
gradient nβ∇L_b + γ(w − w*). optax's update is then exactly the preconditioned drift
G⊙g (Adam: G⊙m̂) with G = 1/(λ + √V̂), and the step is w ← w − (ε/2)·G⊙g + √(ε·G)⊙ξ. (Before
optax these moments were written by hand as αV + ((1−α)g)·g; optax computes (1−α)·(g·g) + αV,
which differs in the last bit, so preconditioned runs are equal in law, not bit for bit, to
runs made before the change; precond="none" is unchanged bit for bit.) For the draws, G is
frozen and rescaled so max G = 1: a constant G makes each step a plain preconditioned Langevin
step whose target is the posterior (no Γ correction needed), and the rescaling lets the
flattest coordinate move with the full ε while steep ones take smaller steps. Adapting G while
sampling (pSGLD without Γ) biased λ̂ by +30-70 % on deep linear networks; frozen and rescaled,
RMSProp-SGLD is within 8 % (docs/accuracy.md). λ = 1 rather than 1e-5 because chains start at or
near w*, where g ≈ 0: a tiny λ makes the first warmup steps √(ε/λ)-sized and the chain explodes.

The first `warmup` steps are discarded; then draws = (steps − warmup) // eval_every blocks of
`eval_every` steps run (one engine step each), and the full-data loss L_n(w) is recorded at the
end of each block (any remainder steps (steps − warmup) mod eval_every are not run). With
`loss_trace="minibatch"` a draw records instead the mean over its block of each step's minibatch
loss L_b(w) at the step's starting position: the batch is drawn independently of w, so each is an
unbiased estimate of L_n(w), and λ̂ = nβ·(mean − L0) stays unbiased, with no pass over the data
(on large n·d the full-data losses would cost more than all the steps).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ..engine import Algorithm, problem_from_loss, run_chains

RMSPROP_ALPHA = 0.99
RMSPROP_LAMBDA = 1.0
ADAM_BETA1 = 0.9
ADAM_BETA2 = 0.999
ADAM_LAMBDA = 1.0
PRECONDS = ("none", "rmsprop", "adam")


def _preconditioner(precond: str):
    import optax

    if precond == "rmsprop":
        return optax.scale_by_rms(decay=RMSPROP_ALPHA, eps=RMSPROP_LAMBDA, eps_in_sqrt=False)
    return optax.scale_by_adam(b1=ADAM_BETA1, b2=ADAM_BETA2, eps=ADAM_LAMBDA)


def _inverse_scale(precond: str, opt_state):
    """G = 1/(λ + √V̂) from the optax state (V̂ bias-corrected for Adam, at least one step)."""
    import optax

    if precond == "rmsprop":
        return 1.0 / (RMSPROP_LAMBDA + jnp.sqrt(opt_state.nu))
    nu_hat = optax.tree.bias_correction(opt_state.nu, ADAM_BETA2, jnp.maximum(opt_state.count, 1))
    return 1.0 / (ADAM_LAMBDA + jnp.sqrt(nu_hat))


def algorithm(*, batch_size: int | None, warmup: int, eval_every: int, precond: str = "none",
              loss_trace: str = "full") -> Algorithm:
    """SGLD over the position w (state) with the frozen, rescaled preconditioner G as its
    tuned parameter (None for precond="none"). `problem.scalars["step_size"]` is ε.
    `loss_trace`: what a draw records (see `SGLDSpec.loss_trace`)."""
    import blackjax

    if precond not in PRECONDS:
        raise NotImplementedError(f"sampler.precond={precond!r} is not implemented (use 'none', 'rmsprop' or 'adam')")
    if loss_trace not in ("full", "minibatch"):
        raise NotImplementedError(f"sampler.loss_trace={loss_trace!r} is not implemented (use 'full' or 'minibatch')")

    def drift_grad(problem, w, key):  # gradient of the potential nβ·L_b + γ/2‖w − w*‖²
        stoch = problem.minibatch_loss(batch_size)
        return problem.n_beta * jax.grad(stoch)(w, key) + problem.gamma * (w - problem.w_star)

    def eps_of(problem, w):
        return jnp.asarray(problem.scalars["step_size"], w.dtype)

    def plain_step(problem, w, key):
        k_batch, k_noise = jax.random.split(key)
        sgld = blackjax.sgld(lambda w, k: -drift_grad(problem, w, k))
        return sgld.step(k_noise, w, k_batch, eps_of(problem, w) / 2)

    def keys(chain_key):
        _, k_warm, k_draw = jax.random.split(chain_key, 3)
        return chain_key, k_warm, k_draw

    def init(key, w0, problem):
        return w0

    def warmup_fn(key, w, problem):
        zero = jnp.zeros((), jnp.int32)
        if precond == "none":
            if warmup > 0:
                w, _ = jax.lax.scan(lambda w, k: (plain_step(problem, w, k), None), w, jax.random.split(key, warmup))
            return w, None, zero
        tx = _preconditioner(precond)
        eps = eps_of(problem, w)

        def adapt_step(carry, k):
            w, opt = carry
            k_batch, k_noise = jax.random.split(k)
            drift, opt = tx.update(drift_grad(problem, w, k_batch), opt)  # G⊙g (Adam: G⊙m̂)
            G = _inverse_scale(precond, opt)
            noise = jax.random.normal(k_noise, w.shape, w.dtype)
            return (w - 0.5 * eps * drift + jnp.sqrt(eps * G) * noise, opt), None

        opt = tx.init(w)
        if warmup > 0:
            (w, opt), _ = jax.lax.scan(adapt_step, (w, opt), jax.random.split(key, warmup))
        G = _inverse_scale(precond, opt)
        # Scale so the least-curved coordinate moves with the full ε: the preconditioner then
        # only shrinks steep directions and never slows mixing below plain SGLD's.
        return w, G / jnp.max(G), zero

    def frozen_step(problem, w, G, key):
        k_batch, k_noise = jax.random.split(key)
        eps = eps_of(problem, w)
        g = drift_grad(problem, w, k_batch)
        noise = jax.random.normal(k_noise, w.shape, w.dtype)
        return w - 0.5 * eps * G * g + jnp.sqrt(eps * G) * noise

    # loss_trace="minibatch": the same moves (same keys, same drift), with each step's minibatch
    # loss L_b(w) kept from the gradient's forward pass; the draw records their mean over the block.
    def drift_and_loss(problem, w, key):
        lb, g = jax.value_and_grad(problem.minibatch_loss(batch_size))(w, key)
        return problem.n_beta * g + problem.gamma * (w - problem.w_star), lb

    def plain_step_with_loss(problem, w, key):
        k_batch, k_noise = jax.random.split(key)
        drift, lb = drift_and_loss(problem, w, k_batch)
        w = blackjax.sgld(lambda w, d: -d).step(k_noise, w, drift, eps_of(problem, w) / 2)
        return w, lb

    def frozen_step_with_loss(problem, w, G, key):
        k_batch, k_noise = jax.random.split(key)
        eps = eps_of(problem, w)
        g, lb = drift_and_loss(problem, w, k_batch)
        noise = jax.random.normal(k_noise, w.shape, w.dtype)
        return w - 0.5 * eps * G * g + jnp.sqrt(eps * G) * noise, lb

    def step(key, w, G, problem):
        if loss_trace == "minibatch":
            keys = jax.random.split(key, eval_every)
            if precond == "none":
                w, lbs = jax.lax.scan(lambda w, k: plain_step_with_loss(problem, w, k), w, keys)
            else:
                w, lbs = jax.lax.scan(lambda w, k: frozen_step_with_loss(problem, w, G, k), w, keys)
            return w, {"loss": jnp.mean(lbs)}
        if precond == "none":
            w, _ = jax.lax.scan(lambda w, k: (plain_step(problem, w, k), None), w, jax.random.split(key, eval_every))
        else:
            w, _ = jax.lax.scan(lambda w, k: (frozen_step(problem, w, G, k), None), w,
                                jax.random.split(key, eval_every))
        return w, {"loss": problem.loss_fn(w)}

    return Algorithm(keys, init, warmup_fn, step)


# --- what the pipeline needs from a sampler (see samplers/__init__.py) ---

def from_spec(s) -> Algorithm:
    return algorithm(batch_size=s.batch_size, warmup=s.warmup, eval_every=s.eval_every, precond=s.precond,
                     loss_trace=s.loss_trace)


def scalars(s, n_beta: float) -> dict:
    # ε is a runtime scalar (its registration: scalar_fields), so an ε sweep reuses one executable
    return {"step_size": float(s.step_size) if s.step_size is not None else float(s.step_size_nbeta) / n_beta}


def costs(s, traces: dict, n: int, loss_eval_fge: float):
    """(warmup fge per chain, fge per draw (chains, draws)): a minibatch gradient costs
    min(batch_size, n)/n; each draw runs eval_every of them, then the full-data loss it records
    (none with loss_trace="minibatch": the recorded losses come with the gradients)."""
    chains, draws = traces["loss"].shape
    per_step = min(s.batch_size, n) / n
    import numpy as np

    record = loss_eval_fge if s.loss_trace == "full" else 0.0
    return np.full(chains, s.warmup * per_step), np.full((chains, draws), s.eval_every * per_step + record)


def report(s, traces: dict, metrics: dict, scalars: dict, loss_eval_fge: float) -> None:
    import numpy as np

    eps = scalars["step_size"]
    traces["step_size"] = np.full(traces["loss"].shape, eps, dtype=traces["loss"].dtype)
    metrics["step_size"] = eps
    metrics["fge_recording"] = float(traces["loss"].size * loss_eval_fge) if s.loss_trace == "full" else 0.0


def build_sgld(*, loss_fn, stoch_loss_fn, w_star, n_beta: float, gamma: float, step_size: float,
               warmup: int, draws: int, eval_every: int, chains: int, precond: str = "none",
               disperse: bool = False):
    """``run(key) -> {"loss": (chains, draws), "warmup_grad_evals": (chains,)}`` for a given
    loss (L_n) and unbiased estimate stoch_loss_fn(w, key) of it; chains start at w*, or
    dispersed around it with `disperse`."""
    alg = algorithm(batch_size=None, warmup=warmup, eval_every=eval_every, precond=precond)
    problem = problem_from_loss(loss_fn, w_star, n_beta, gamma, stoch_loss_fn, step_size=step_size)
    return lambda key: run_chains(alg, problem, key, chains, draws, disperse)
