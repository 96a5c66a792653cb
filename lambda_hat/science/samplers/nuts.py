"""NUTS on the localized tempered posterior, with BlackJAX window adaptation.

Same structure as HMC (`hmc.build_hmc_family` with `blackjax.nuts`): per-chain
`blackjax.window_adaptation(blackjax.nuts, ...)` honouring warmup / adapt_step_size /
adapt_mass_matrix exactly as HMC does, then `draws` NUTS transitions with
`max_num_doublings` in `lax.scan`. Per draw: loss, accept_rate (mean acceptance
probability over the trajectory), energy, diverging, step_size and num_grad_evals (the
trajectory's integration steps, NUTSInfo.num_integration_steps).
"""

from __future__ import annotations


def build_nuts(*, loss_fn, w_star, n_beta: float, gamma: float, draws: int, warmup: int,
               max_num_doublings: int, step_size: float, target_acceptance: float,
               adapt_step_size: bool, adapt_mass_matrix: bool, chains: int, disperse: bool = False):
    """Return ``run(key) -> dict`` of (chains, draws) traces plus ``warmup_grad_evals`` (chains,)."""
    import blackjax

    from .hmc import build_hmc_family

    return build_hmc_family(
        algorithm=blackjax.nuts, kernel_kwargs={"max_num_doublings": max_num_doublings}, loss_fn=loss_fn,
        w_star=w_star, n_beta=n_beta, gamma=gamma, draws=draws, warmup=warmup, step_size=step_size,
        target_acceptance=target_acceptance, adapt_step_size=adapt_step_size,
        adapt_mass_matrix=adapt_mass_matrix, chains=chains, disperse=disperse,
    )
