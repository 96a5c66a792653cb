"""Microcanonical Langevin Monte Carlo (unadjusted MCLMC, BlackJAX) on the localized
tempered posterior.

Chains start at w* (or, with `disperse`, dispersed around it: `posterior.dispersed_start`)
with an independent random unit momentum and are independent (`vmap`).
With ``tune``, each chain runs `blackjax.mclmc_find_L_and_step_size` (BlackJAX 1.7.1
signature: mclmc_kernel, num_steps, state, rng_key, logdensity_fn, frac_tune1/2/3,
desired_energy_var, trust_in_estimate, num_effective_samples, diagonal_preconditioning,
params) starting from ``params = (L, step_size, ones)`` of the spec; the tuner spends
round(num_steps·frac_tune1) + round(num_steps·frac_tune2) (+ a third of that with
diagonal preconditioning) + round(num_steps·frac_tune3) steps, which BlackJAX returns.
Without ``tune``, L and step_size are used as given with the identity preconditioner and
no warmup. The state is BlackJAX's MCLMC integrator state, the tuned parameters (L, step size, inverse
mass matrix) per chain. Per draw, recording the full-data loss (from
the state's log density: no extra pass over the data),
the step's energy change, and L / step_size.

MCLMC is unadjusted (no Metropolis step): its stationary law is biased by O(step_size²);
the tuner picks the step size from `desired_energy_var` (energy error variance per
dimension), which bounds that bias.

Gradient evaluations per step depend on the integrator: isokinetic leapfrog (velocity
Verlet) 1, McLachlan 2, Yoshida 3 (`GRADS_PER_STEP`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ..engine import Algorithm, problem_from_loss, run_chains

# spec name -> (BlackJAX integrator attribute, gradient evaluations per step)
INTEGRATORS = {
    "isokinetic_leapfrog": ("isokinetic_velocity_verlet", 1),
    "isokinetic_mclachlan": ("isokinetic_mclachlan", 2),
    "isokinetic_yoshida": ("isokinetic_yoshida", 3),
}


def grads_per_step(integrator: str) -> int:
    return INTEGRATORS[integrator][1]


def tuning_steps(num_steps: int, frac_tune1: float, frac_tune2: float, frac_tune3: float,
                 diagonal_preconditioning: bool) -> int:
    """Integrator steps `mclmc_find_L_and_step_size` spends (mirrors BlackJAX 1.7.1)."""
    n1, n2 = round(num_steps * frac_tune1), round(num_steps * frac_tune2)
    n2 += int(diagonal_preconditioning) * (n2 // 3)
    n3 = round(num_steps * frac_tune3)
    return n1 + n2 + (n3 if n3 >= 2 else 0)


def algorithm(*, L: float, step_size: float, tune: bool, num_steps: int, frac_tune1: float, frac_tune2: float,
              frac_tune3: float, desired_energy_var: float, trust_in_estimate: float, num_effective_samples: float,
              diagonal_preconditioning: bool, integrator: str) -> Algorithm:
    import blackjax
    from blackjax.adaptation.mclmc_adaptation import MCLMCAdaptationState
    from blackjax.mcmc import integrators

    from ..posterior import loss_from_logdensity, make_logdensity

    if integrator not in INTEGRATORS:
        raise NotImplementedError(f"sampler.integrator={integrator!r} is not implemented")
    kernel = blackjax.mcmc.mclmc.build_kernel(integrator=getattr(integrators, INTEGRATORS[integrator][0]),
                                             desired_energy_var=desired_energy_var)
    per_step = grads_per_step(integrator)

    def logdensity_of(problem):
        return make_logdensity(problem.loss_fn, problem.w_star, problem.n_beta, problem.gamma)

    def keys(chain_key):
        return tuple(jax.random.split(chain_key, 3))

    def init(key, w0, problem):
        return blackjax.mcmc.mclmc.init(w0, logdensity_of(problem), key)

    def warmup_fn(key, state, problem):
        dtype = state.position.dtype
        params = MCLMCAdaptationState(jnp.asarray(L, dtype), jnp.asarray(step_size, dtype),
                                      jnp.ones_like(state.position))
        warm = jnp.zeros((), jnp.int32)
        if tune and num_steps > 0:
            state, params, n_tune = blackjax.mclmc_find_L_and_step_size(
                mclmc_kernel=kernel, num_steps=num_steps, state=state, rng_key=key,
                logdensity_fn=logdensity_of(problem), frac_tune1=frac_tune1, frac_tune2=frac_tune2,
                frac_tune3=frac_tune3, desired_energy_var=desired_energy_var, trust_in_estimate=trust_in_estimate,
                num_effective_samples=num_effective_samples, diagonal_preconditioning=diagonal_preconditioning,
                params=params,
            )
            warm = jnp.asarray(n_tune * per_step, jnp.int32)
        tuned = (jnp.asarray(params.L, dtype), jnp.asarray(params.step_size, dtype),
                 jnp.asarray(params.inverse_mass_matrix, dtype))
        return state, tuned, warm

    # Parameters the tuner does not set stay compile-time constants (XLA folds a unit mass
    # matrix away), which keeps these runs' numbers bit for bit what they were before the engine.
    tuned = tune and num_steps > 0

    def step(key, state, params, problem):
        Lc, eps, imm = params
        dtype = state.position.dtype
        if not tuned:
            Lc, eps = jnp.asarray(L, dtype), jnp.asarray(step_size, dtype)
        if not (tuned and diagonal_preconditioning):
            imm = jnp.ones_like(state.position)
        state, info = kernel(key, state, logdensity_of(problem), imm, Lc, eps)
        loss = loss_from_logdensity(state.logdensity, state.position, problem.w_star, problem.n_beta, problem.gamma)
        return state, {"loss": loss, "energy_change": info.energy_change, "L": Lc, "step_size": eps}

    return Algorithm(keys, init, warmup_fn, step)


# --- what the pipeline needs from a sampler (see samplers/__init__.py) ---

SETTINGS = ("L", "step_size", "tune", "num_steps", "frac_tune1", "frac_tune2", "frac_tune3", "desired_energy_var",
            "trust_in_estimate", "num_effective_samples", "diagonal_preconditioning", "integrator")


def from_spec(s) -> Algorithm:
    return algorithm(**{k: getattr(s, k) for k in SETTINGS})


def costs(s, traces: dict, n: int, loss_eval_fge: float):
    return (traces["warmup_grad_evals"].astype(np.float64),
            np.full(traces["loss"].shape, float(grads_per_step(s.integrator))))


def report(s, traces: dict, metrics: dict, scalars: dict, loss_eval_fge: float) -> None:
    metrics["step_size"] = float(np.mean(traces["step_size"][:, 0]))
    metrics["L"] = float(np.mean(traces["L"][:, 0]))


def build_mclmc(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, chains: int, disperse: bool = False,
                **settings):
    """``run(key) -> dict`` of (chains, draws) traces ("loss", "energy_change", "L", "step_size")
    plus ``warmup_grad_evals`` (chains,), for a given loss; `settings` as `algorithm`'s."""
    alg = algorithm(**settings)
    problem = problem_from_loss(loss_fn, w_star, n_beta, gamma)
    return lambda key: run_chains(alg, problem, key, chains, draws, disperse)
