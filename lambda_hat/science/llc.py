"""LLC estimate and diagnostics from loss traces.

Per draw: llc = nβ·(L_n(w) − L0). Reported:

* llc_mean       mean over all chains and draws
* llc_std        std over chains of the per-chain means (ddof=1; NaN with one chain)
* llc_std_draws  std over all draws pooled (ddof=1)
* ess_bulk, ess_tail  BlackJAX rank-normalized split-chain bulk / tail ESS of the llc trace
* r_hat          BlackJAX rank-normalized split R-hat (max of bulk and folded)
* llc_sem        llc_std_draws / sqrt(ess_bulk): Monte-Carlo standard error of llc_mean

If any llc draw is non-finite, status = "nonfinite" and every statistic above is NaN.

The three BlackJAX diagnostics run, in float64, inside one `jax.jit`-ted function (built once per
process, cached at module level), so a run pays one XLA compile per trace shape instead
of ~170 op-by-op compiles. If R-hat cannot be computed for a trace shape (BlackJAX raises
while tracing, e.g. too few draws), a jitted ESS-only function is used and r_hat is NaN.
"""

from __future__ import annotations

import math

import numpy as np

STAT_KEYS = ("llc_mean", "llc_std", "llc_std_draws", "ess_bulk", "ess_tail", "r_hat", "llc_sem")


def llc_from_loss(loss, L0: float, n_beta: float) -> np.ndarray:
    return n_beta * (np.asarray(loss, dtype=np.float64) - L0)


_DIAGNOSTICS: dict = {}


def _diagnostics_fn(with_rhat: bool):
    """jit(x -> {"ess_bulk", "ess_tail"[, "r_hat"]}) over blackjax.diagnostics, built once."""
    fn = _DIAGNOSTICS.get(with_rhat)
    if fn is None:
        import jax
        from blackjax import diagnostics

        def diag(x):
            out = {"ess_bulk": diagnostics.ess_bulk(x), "ess_tail": diagnostics.ess_tail(x)}
            if with_rhat:
                out["r_hat"] = diagnostics.rhat(x)
            return out

        fn = _DIAGNOSTICS[with_rhat] = jax.jit(diag)
    return fn


def _diagnostics(llc: np.ndarray) -> dict:
    import jax
    import jax.numpy as jnp

    # In float64 whatever the sampler's dtype or the process's x64 setting (scoped, no global change).
    with jax.enable_x64(True):
        x = jnp.asarray(llc, jnp.float64)
        try:
            out = _diagnostics_fn(True)(x)
        except Exception:  # e.g. too few draws to split for R-hat
            out = dict(_diagnostics_fn(False)(x), r_hat=math.nan)
        return {k: float(v) for k, v in out.items()}


def summarize(llc: np.ndarray) -> dict:
    """Statistics of an llc trace of shape (chains, draws)."""
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
    out.update(_diagnostics(llc))
    ess = out["ess_bulk"]
    out["llc_sem"] = out["llc_std_draws"] / math.sqrt(ess) if ess > 0 else math.nan
    out["status"] = "ok"
    return out
