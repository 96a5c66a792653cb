"""HMC on the localized tempered posterior, with BlackJAX window adaptation.

Chains start at w* (no jitter) and are independent: adaptation runs per chain
(`vmap` over `blackjax.window_adaptation(...).run`), so every chain has its own step size
and diagonal inverse mass matrix. Adaptation flags:

* warmup == 0: no adaptation; step size = spec.step_size, identity mass matrix.
* adapt_step_size and adapt_mass_matrix: BlackJAX window adaptation (Stan-style windows,
  diagonal mass matrix, dual averaging to `target_acceptance`) for `warmup` steps.
* only adapt_mass_matrix: window adaptation for `warmup` steps, then its adapted inverse
  mass matrix is kept and the step size is overridden by spec.step_size.
* only adapt_step_size: dual averaging of the step size alone (Hoffman & Gelman, BlackJAX's
  `dual_averaging_adaptation`) with the identity mass matrix for `warmup` steps.
* neither (warmup > 0): `warmup` plain HMC steps at spec.step_size / identity mass as
  burn-in, discarded.

Then `draws` HMC steps in `lax.scan`, recording per draw: full-data loss, acceptance rate,
total energy, divergence flag, step size.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def build_hmc(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, warmup: int,
              num_integration_steps: int, step_size: float, target_acceptance: float,
              adapt_step_size: bool, adapt_mass_matrix: bool, chains: int):
    """Return ``run(key) -> dict of (chains, draws) traces`` for a flat-vector loss."""
    import blackjax
    from blackjax.adaptation.step_size import dual_averaging_adaptation

    from ..posterior import make_logdensity

    dtype = w_star.dtype
    logdensity = make_logdensity(loss_fn, w_star, n_beta, gamma)
    kernel = blackjax.hmc.build_kernel()
    L = num_integration_steps
    eps0 = jnp.asarray(step_size, dtype)
    ones = jnp.ones_like(w_star)

    def plain_steps(key, state, eps, imm, n):
        def body(s, k):
            s, info = kernel(k, s, logdensity, eps, imm, L)
            return s, info
        return jax.lax.scan(body, state, jax.random.split(key, n))

    def adapt(key):
        state = blackjax.hmc.init(w_star, logdensity)
        if warmup == 0:
            return state, eps0, ones
        if adapt_mass_matrix:
            wa = blackjax.window_adaptation(
                blackjax.hmc, logdensity, is_mass_matrix_diagonal=True, initial_step_size=step_size,
                target_acceptance_rate=target_acceptance, num_integration_steps=L,
            )
            (state, params), _ = wa.run(key, w_star, num_steps=warmup)
            eps = params["step_size"] if adapt_step_size else eps0
            return state, jnp.asarray(eps, dtype), jnp.asarray(params["inverse_mass_matrix"], dtype)
        if adapt_step_size:
            da_init, da_update, da_final = dual_averaging_adaptation(target_acceptance)

            def body(carry, k):
                s, da = carry
                s, info = kernel(k, s, logdensity, jnp.exp(da.log_step_size).astype(dtype), ones, L)
                acc = jnp.nan_to_num(info.acceptance_rate, nan=0.0)
                return (s, da_update(da, acc)), None

            (state, da), _ = jax.lax.scan(body, (state, da_init(eps0)), jax.random.split(key, warmup))
            return state, jnp.asarray(da_final(da), dtype), ones
        state, _ = plain_steps(key, state, eps0, ones, warmup)
        return state, eps0, ones

    def one_chain(key):
        k_adapt, k_draw = jax.random.split(key)
        state, eps, imm = adapt(k_adapt)

        def body(s, k):
            s, info = kernel(k, s, logdensity, eps, imm, L)
            rec = {
                "loss": loss_fn(s.position),
                "accept_rate": info.acceptance_rate,
                "energy": info.energy,
                "diverging": info.is_divergent,
                "step_size": eps,
            }
            return s, rec

        _, rec = jax.lax.scan(body, state, jax.random.split(k_draw, draws))
        return rec

    def run(key):
        return jax.vmap(one_chain)(jax.random.split(key, chains))

    return run
