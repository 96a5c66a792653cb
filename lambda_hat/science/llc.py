"""LLC estimate and diagnostics from loss traces.

Per draw: llc = nβ·(L_n(w) − L0). Reported:

* llc_mean       mean over all chains and draws
* llc_std        std over chains of the per-chain means (ddof=1; NaN with one chain)
* llc_std_draws  std over all draws pooled (ddof=1)
* ess, ess_tail  BlackJAX rank-normalized split-chain bulk / tail ESS of the llc trace
* r_hat          BlackJAX rank-normalized split R-hat (max of bulk and folded)
* llc_sem        llc_std_draws / sqrt(ess): Monte-Carlo standard error of llc_mean

If any llc draw is non-finite, status = "nonfinite" and every statistic above is NaN.
"""

from __future__ import annotations

import math

import numpy as np

STAT_KEYS = ("llc_mean", "llc_std", "llc_std_draws", "ess", "ess_tail", "r_hat", "llc_sem")


def llc_from_loss(loss, L0: float, n_beta: float) -> np.ndarray:
    return n_beta * (np.asarray(loss, dtype=np.float64) - L0)


def summarize(llc: np.ndarray) -> dict:
    """Statistics of an llc trace of shape (chains, draws)."""
    import jax.numpy as jnp
    from blackjax import diagnostics

    llc = np.asarray(llc, dtype=np.float64)
    chains, draws = llc.shape
    nonfinite = int(np.sum(~np.isfinite(llc)))
    out: dict = {"nonfinite_draws": nonfinite}
    if nonfinite:
        out.update({k: math.nan for k in STAT_KEYS})
        out["status"] = "nonfinite"
        return out
    chain_means = llc.mean(axis=1)
    out["llc_mean"] = float(llc.mean())
    out["llc_std"] = float(chain_means.std(ddof=1)) if chains > 1 else math.nan
    out["llc_std_draws"] = float(llc.std(ddof=1)) if llc.size > 1 else math.nan
    x = jnp.asarray(llc)
    out["ess"] = float(diagnostics.ess_bulk(x))
    out["ess_tail"] = float(diagnostics.ess_tail(x))
    try:
        out["r_hat"] = float(diagnostics.rhat(x))
    except Exception:  # e.g. too few draws to split
        out["r_hat"] = math.nan
    ess = out["ess"]
    out["llc_sem"] = out["llc_std_draws"] / math.sqrt(ess) if ess > 0 else math.nan
    out["status"] = "ok"
    return out
