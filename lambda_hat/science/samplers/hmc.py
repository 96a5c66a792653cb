"""HMC and NUTS on the localized tempered posterior, with BlackJAX window adaptation.

One builder (`build_hmc_family`) serves both: it is parametrised by the BlackJAX
algorithm (`blackjax.hmc` or `blackjax.nuts`) and the keyword arguments its kernel takes
besides step size and inverse mass matrix (`num_integration_steps` for HMC,
`max_num_doublings` for NUTS). `build_hmc` and `nuts.build_nuts` are thin wrappers.

Chains start at w* or, with `disperse`, dispersed around it (`posterior.dispersed_start`),
and are independent: adaptation runs per chain
(`vmap` over `blackjax.window_adaptation(...).run`), so every chain has its own step size
and diagonal inverse mass matrix. Adaptation flags:

* warmup == 0: no adaptation; step size = spec.step_size, identity mass matrix.
* adapt_step_size and adapt_mass_matrix: BlackJAX window adaptation (Stan-style windows,
  diagonal mass matrix, dual averaging to `target_acceptance`) for `warmup` steps.
* only adapt_mass_matrix: window adaptation for `warmup` steps, then its adapted inverse
  mass matrix is kept and the step size is overridden by spec.step_size.
* only adapt_step_size: dual averaging of the step size alone (Hoffman & Gelman, BlackJAX's
  `dual_averaging_adaptation`) with the identity mass matrix for `warmup` steps.
* neither (warmup > 0): `warmup` plain steps at spec.step_size / identity mass as
  burn-in, discarded.

Then `draws` steps in `lax.scan`, recording per draw: full-data loss (from the state's log
density, `posterior.loss_from_logdensity`: no extra pass over the data), acceptance rate,
total energy, divergence flag, step size, and the number of gradient evaluations of the
transition (`num_grad_evals`: the integrator's steps, L for HMC, the trajectory length for
NUTS; velocity Verlet reuses the last gradient, so one gradient per step). The run also
returns `warmup_grad_evals` (chains,): gradient evaluations spent in warmup/adaptation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def build_hmc_family(*, algorithm, kernel_kwargs: dict, loss_fn, w_star, n_beta: float, gamma: float,
                     draws: int, warmup: int, step_size: float, target_acceptance: float,
                     adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """Return ``run(key) -> dict`` of (chains, draws) traces plus ``warmup_grad_evals`` (chains,).

    `algorithm` is `blackjax.hmc` or `blackjax.nuts`; `kernel_kwargs` the extra kernel
    arguments (e.g. ``{"num_integration_steps": 10}`` or ``{"max_num_doublings": 10}``).
    """
    from blackjax.adaptation.base import get_filter_adapt_info_fn
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    import blackjax

    from ..posterior import dispersed_start, loss_from_logdensity, make_logdensity

    dtype = w_star.dtype
    logdensity = make_logdensity(loss_fn, w_star, n_beta, gamma)
    base_kernel = algorithm.build_kernel()
    eps0 = jnp.asarray(step_size, dtype)
    ones = jnp.ones_like(w_star)

    def kernel(k, s, eps, imm):
        return base_kernel(k, s, logdensity, eps, imm, **kernel_kwargs)

    def n_grads(info):
        return jnp.asarray(info.num_integration_steps, jnp.int32)

    def adapt(key, w0):
        """-> (state, step size, inverse mass matrix, warmup gradient evaluations)."""
        state = algorithm.init(w0, logdensity)
        zero = jnp.zeros((), jnp.int32)
        if warmup == 0:
            return state, eps0, ones, zero
        if adapt_mass_matrix:
            wa = blackjax.window_adaptation(
                algorithm, logdensity, is_mass_matrix_diagonal=True, initial_step_size=step_size,
                target_acceptance_rate=target_acceptance,
                adaptation_info_fn=get_filter_adapt_info_fn(info_keys={"num_integration_steps"}),
                **kernel_kwargs,
            )
            (state, params), info = wa.run(key, w0, num_steps=warmup)
            eps = params["step_size"] if adapt_step_size else eps0
            grads = jnp.sum(n_grads(info.info))
            return state, jnp.asarray(eps, dtype), jnp.asarray(params["inverse_mass_matrix"], dtype), grads
        if adapt_step_size:
            da_init, da_update, da_final = dual_averaging_adaptation(target_acceptance)

            def body(carry, k):
                s, da, g = carry
                s, info = kernel(k, s, jnp.exp(da.log_step_size).astype(dtype), ones)
                acc = jnp.nan_to_num(info.acceptance_rate, nan=0.0)
                return (s, da_update(da, acc), g + n_grads(info)), None

            (state, da, grads), _ = jax.lax.scan(body, (state, da_init(eps0), zero), jax.random.split(key, warmup))
            return state, jnp.asarray(da_final(da), dtype), ones, grads

        def burn(carry, k):
            s, g = carry
            s, info = kernel(k, s, eps0, ones)
            return (s, g + n_grads(info)), None

        (state, grads), _ = jax.lax.scan(burn, (state, zero), jax.random.split(key, warmup))
        return state, eps0, ones, grads

    def one_chain(key):
        k_adapt, k_draw = jax.random.split(key)
        w0 = dispersed_start(key, loss_fn, w_star, n_beta, gamma) if disperse else w_star
        state, eps, imm, warm_grads = adapt(k_adapt, w0)

        def body(s, k):
            s, info = kernel(k, s, eps, imm)
            rec = {
                "loss": loss_from_logdensity(s.logdensity, s.position, w_star, n_beta, gamma),
                "accept_rate": info.acceptance_rate,
                "energy": info.energy,
                "diverging": info.is_divergent,
                "step_size": eps,
                "num_grad_evals": n_grads(info),
            }
            return s, rec

        _, rec = jax.lax.scan(body, state, jax.random.split(k_draw, draws))
        rec["warmup_grad_evals"] = warm_grads
        return rec

    def run(key):
        return jax.vmap(one_chain)(jax.random.split(key, chains))

    return run


def build_hmc(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, warmup: int,
              num_integration_steps: int, step_size: float, target_acceptance: float,
              adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """HMC with `num_integration_steps` leapfrog steps per transition (see the module doc)."""
    import blackjax

    return build_hmc_family(
        algorithm=blackjax.hmc, kernel_kwargs={"num_integration_steps": num_integration_steps}, loss_fn=loss_fn,
        w_star=w_star, n_beta=n_beta, gamma=gamma, draws=draws, warmup=warmup, step_size=step_size,
        target_acceptance=target_acceptance, adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix, chains=chains, disperse=disperse,
    )
