"""HMC and NUTS on the localized tempered posterior, with BlackJAX window adaptation.

One `algorithm` serves both: it is parametrised by the BlackJAX algorithm (`blackjax.hmc` or
`blackjax.nuts`) and the keyword arguments its kernel takes besides step size and inverse mass
matrix (`num_integration_steps` for HMC, `max_num_doublings` for NUTS; nuts.py is the NUTS
spec's side). The state is BlackJAX's (position, log density, its gradient); the tuned
parameters are (step size, diagonal inverse mass matrix), one per chain. Warmup flags:

* warmup == 0: no adaptation; step size = spec.step_size, identity mass matrix.
* adapt_step_size and adapt_mass_matrix: BlackJAX window adaptation (Stan-style windows,
  diagonal mass matrix, dual averaging to `target_acceptance`) for `warmup` steps.
* only adapt_mass_matrix: window adaptation for `warmup` steps, then its adapted inverse
  mass matrix is kept and the step size is overridden by spec.step_size.
* only adapt_step_size: dual averaging of the step size alone (Hoffman & Gelman, BlackJAX's
  `dual_averaging_adaptation`) with the identity mass matrix for `warmup` steps.
* neither (warmup > 0): `warmup` plain steps at spec.step_size / identity mass as
  burn-in, discarded.

Per draw: full-data loss (from the state's log density, `posterior.loss_from_logdensity`: no
extra pass over the data), acceptance rate, total energy, divergence flag, step size, and the
number of gradient evaluations of the transition (`num_grad_evals`: the integrator's steps, L
for HMC, the trajectory length for NUTS; velocity Verlet reuses the last gradient, so one
gradient per step).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import Algorithm, problem_from_loss, run_chains


def algorithm(*, family, kernel_kwargs: dict, warmup: int, step_size: float, target_acceptance: float,
              adapt_step_size: bool, adapt_mass_matrix: bool) -> Algorithm:
    """`family` is `blackjax.hmc` or `blackjax.nuts`; `kernel_kwargs` its extra kernel arguments
    (e.g. ``{"num_integration_steps": 10}`` or ``{"max_num_doublings": 10}``)."""
    import blackjax
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    from ..posterior import loss_from_logdensity, make_logdensity

    base_kernel = family.build_kernel()

    def logdensity_of(problem):
        return make_logdensity(problem.loss_fn, problem.w_star, problem.n_beta, problem.gamma)

    def n_grads(info):
        return jnp.asarray(info.num_integration_steps, jnp.int32)

    def keys(chain_key):
        k_adapt, k_draw = jax.random.split(chain_key)
        return None, k_adapt, k_draw

    def init(key, w0, problem):
        return family.init(w0, logdensity_of(problem))

    def warmup_fn(key, state, problem):
        logdensity = logdensity_of(problem)
        dtype = state.position.dtype
        eps0 = jnp.asarray(step_size, dtype)
        ones = jnp.ones_like(state.position)
        zero = jnp.zeros((), jnp.int32)

        def kernel(k, s, eps, imm):
            return base_kernel(k, s, logdensity, eps, imm, **kernel_kwargs)

        if warmup == 0:
            return state, (eps0, ones), zero
        if adapt_mass_matrix:
            wa = blackjax.window_adaptation(
                family, logdensity, is_mass_matrix_diagonal=True, initial_step_size=step_size,
                target_acceptance_rate=target_acceptance,
                adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps"}),
                **kernel_kwargs,
            )
            (state, params), info = wa.run(key, state.position, num_steps=warmup)
            eps = params["step_size"] if adapt_step_size else eps0
            grads = jnp.sum(n_grads(info.info))
            return state, (jnp.asarray(eps, dtype), jnp.asarray(params["inverse_mass_matrix"], dtype)), grads
        if adapt_step_size:
            da_init, da_update, da_final = dual_averaging_adaptation(target_acceptance)

            def body(carry, k):
                s, da, g = carry
                s, info = kernel(k, s, jnp.exp(da.log_step_size).astype(dtype), ones)
                acc = jnp.nan_to_num(info.acceptance_rate, nan=0.0)
                return (s, da_update(da, acc), g + n_grads(info)), None

            (state, da, grads), _ = jax.lax.scan(body, (state, da_init(eps0), zero), jax.random.split(key, warmup))
            return state, (jnp.asarray(da_final(da), dtype), ones), grads

        def burn(carry, k):
            s, g = carry
            s, info = kernel(k, s, eps0, ones)
            return (s, g + n_grads(info)), None

        (state, grads), _ = jax.lax.scan(burn, (state, zero), jax.random.split(key, warmup))
        return state, (eps0, ones), grads

    # Parameters that warmup does not tune stay compile-time constants, as in a hand-written
    # kernel: XLA then folds them (a unit mass matrix multiplies away), which keeps these runs'
    # numbers bit for bit what they were before the engine.
    tunes_eps = warmup > 0 and adapt_step_size
    tunes_imm = warmup > 0 and adapt_mass_matrix

    def step(key, state, params, problem):
        eps, imm = params
        if not tunes_eps:
            eps = jnp.asarray(step_size, state.position.dtype)
        if not tunes_imm:
            imm = jnp.ones_like(state.position)
        state, info = base_kernel(key, state, logdensity_of(problem), eps, imm, **kernel_kwargs)
        return state, {
            "loss": loss_from_logdensity(state.logdensity, state.position, problem.w_star, problem.n_beta,
                                         problem.gamma),
            "accept_rate": info.acceptance_rate,
            "energy": info.energy,
            "diverging": info.is_divergent,
            "step_size": eps,
            "num_grad_evals": n_grads(info),
        }

    return Algorithm(keys, init, warmup_fn, step)


# --- what the pipeline needs from a sampler (see samplers/__init__.py) ---

def from_spec(s) -> Algorithm:
    import blackjax

    return algorithm(family=blackjax.hmc, kernel_kwargs={"num_integration_steps": s.num_integration_steps},
                     **adaptation_settings(s))


def adaptation_settings(s) -> dict:
    return dict(warmup=s.warmup, step_size=s.step_size, target_acceptance=s.target_acceptance,
                adapt_step_size=s.adapt_step_size, adapt_mass_matrix=s.adapt_mass_matrix)


def costs(s, traces: dict, n: int, loss_eval_fge: float):
    return traces["warmup_grad_evals"].astype(np.float64), traces["num_grad_evals"].astype(np.float64)


def report(s, traces: dict, metrics: dict, scalars: dict, loss_eval_fge: float) -> None:
    metrics["step_size"] = float(np.mean(traces["step_size"][:, 0]))
    metrics["accept_rate_mean"] = float(np.nanmean(traces["accept_rate"]))
    metrics["divergences"] = int(np.sum(traces["diverging"]))
    metrics["divergence_rate"] = metrics["divergences"] / traces["diverging"].size  # flagged by pipeline.sample_run


def build_hmc_family(*, algorithm_family, kernel_kwargs: dict, loss_fn, w_star, n_beta: float, gamma: float,
                     draws: int, warmup: int, step_size: float, target_acceptance: float,
                     adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """``run(key) -> dict`` of (chains, draws) traces plus ``warmup_grad_evals`` (chains,)."""
    alg = algorithm(family=algorithm_family, kernel_kwargs=kernel_kwargs, warmup=warmup, step_size=step_size,
                    target_acceptance=target_acceptance, adapt_step_size=adapt_step_size,
                    adapt_mass_matrix=adapt_mass_matrix)
    problem = problem_from_loss(loss_fn, w_star, n_beta, gamma)
    return lambda key: run_chains(alg, problem, key, chains, draws, disperse)


def build_hmc(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, warmup: int,
              num_integration_steps: int, step_size: float, target_acceptance: float,
              adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """HMC with `num_integration_steps` leapfrog steps per transition, for a given loss."""
    import blackjax

    return build_hmc_family(
        algorithm_family=blackjax.hmc, kernel_kwargs={"num_integration_steps": num_integration_steps},
        loss_fn=loss_fn, w_star=w_star, n_beta=n_beta, gamma=gamma, draws=draws, warmup=warmup,
        step_size=step_size, target_acceptance=target_acceptance, adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix, chains=chains, disperse=disperse,
    )
