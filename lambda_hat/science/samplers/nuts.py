"""NUTS on the localized tempered posterior, with BlackJAX window adaptation: hmc.py's
algorithm with `blackjax.nuts` and `max_num_doublings`. Per draw as HMC, with num_grad_evals
the trajectory's integration steps (NUTSInfo.num_integration_steps)."""

from __future__ import annotations

from .hmc import adaptation_settings, algorithm, build_hmc_family, costs, report  # noqa: F401


def from_spec(s):
    import blackjax

    return algorithm(family=blackjax.nuts, kernel_kwargs={"max_num_doublings": s.max_num_doublings},
                     **adaptation_settings(s))


def build_nuts(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, warmup: int,
               max_num_doublings: int, step_size: float, target_acceptance: float,
               adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """``run(key) -> dict`` of (chains, draws) traces plus ``warmup_grad_evals`` (chains,)."""
    import blackjax

    return build_hmc_family(
        algorithm_family=blackjax.nuts, kernel_kwargs={"max_num_doublings": max_num_doublings}, loss_fn=loss_fn,
        w_star=w_star, n_beta=n_beta, gamma=gamma, draws=draws, warmup=warmup, step_size=step_size,
        target_acceptance=target_acceptance, adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix, chains=chains, disperse=disperse,
    )
