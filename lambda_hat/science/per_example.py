"""Quantities from per-example losses across draws (`record: {per_example: ...}`): each
example's λ̂ contribution, the singular fluctuation ν, WAIC and the Bayesian influence function.
Pure numpy, no sampling.

The run's posterior is exp(−nβ·L_n(w) − γ/2‖w − w*‖²) with L_n the mean of ℓ_i. Read as a
likelihood tempered at β', p_i(w)^β' with log p_i = −s·ℓ_i + c_i, it needs nβ·ℓ_i/n = β'·s·ℓ_i,
so β' = β/s:

* cross-entropy: ℓ_i = −log p_i already (s = 1, β' = β);
* squared error (ℓ_i = ‖y_i − f_w(x_i)‖² over D outputs): the Gaussian likelihood with the
  noise variance estimated at w*, σ̂² = L0/D, so s = 1/(2σ̂²), c_i = −(D/2)·log 2πσ̂² and
  β' = 2σ̂²β. On a well-specified regular model ν is then d/2 whatever the noise level, once
  nβσ² is large against the inputs' dimension (docs/theory.md: below that the posterior's own
  width adds to ν);
* a user's own loss ("callable"): not known to be a log-likelihood, so no ν and no WAIC.

Watanabe's definitions for a posterior tempered at β' (Watanabe 2010, "Asymptotic equivalence
of Bayes cross validation and WAIC"): the functional variance V_n = Σ_i Var_w[log p_i(w)], the
singular fluctuation ν = (β'/2)·V_n, the training loss T_n = −(1/n)·Σ_i log E_w[p_i(w)], and
WAIC = T_n + β'·V_n/n, whose expectation equals the Bayes generalisation loss's to O(1/n²) (in
nats per example). ArviZ's `waic` is the β' = 1 case, hence the formulas here. Sums over the n
examples are estimated from the m recorded ones (n/m times their sum). docs/theory.md has the
derivation; docs/per-sample.md the use.
"""

from __future__ import annotations

import math

import numpy as np

LIKELIHOOD_LOSSES = ("mse", "cross_entropy")


def example_rows(n: int, subset, seed: int) -> np.ndarray:
    """The recorded examples' rows, sorted: all n, or `subset` drawn without replacement."""
    if subset == "all" or int(subset) >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(subset), replace=False))


def query_columns(m: int, query: int, seed: int) -> np.ndarray:
    """Which of the m recorded examples form the influence function's query set: `query` of
    them drawn without replacement (a stream apart from the one that drew the examples), sorted."""
    if query <= 0:
        return np.zeros(0, np.int64)
    if query >= m:
        return np.arange(m)
    return np.sort(np.random.default_rng([seed, 1]).choice(m, size=int(query), replace=False))


def influence(loss: np.ndarray, columns: np.ndarray) -> np.ndarray:
    """The Bayesian influence function of every recorded example i on each query example q:
    −Cov_w(ℓ_i(w), ℓ_q(w)) over the draws of every chain pooled, (m, q). β·BIF is the change of
    E_w[ℓ_q] as example i gains weight: negative, the two are fitted together; positive, they
    compete (docs/theory.md)."""
    flat = np.asarray(loss, np.float64).reshape(-1, np.shape(loss)[-1])
    if flat.shape[0] < 2:
        return np.full((flat.shape[1], len(columns)), np.nan)
    flat = flat - flat.mean(axis=0)
    return -(flat.T @ flat[:, columns]) / (flat.shape[0] - 1)


def contributions(loss: np.ndarray, loss_at_wstar: np.ndarray, n_beta: float) -> np.ndarray:
    """nβ·(E_w[ℓ_i(w)] − ℓ_i(w*)) per example, the draws of every chain averaged: over all n
    examples their mean is λ̂ (with a full-data loss trace, to rounding)."""
    loss = np.asarray(loss, np.float64)
    return n_beta * (loss.mean(axis=(0, 1)) - np.asarray(loss_at_wstar, np.float64))


def likelihood_scale(loss_name: str, L0: float, out_dim: int) -> tuple[float, float] | None:
    """(s, c) with log p_i = −s·ℓ_i + c, or None when the loss is not a log-likelihood."""
    if loss_name == "cross_entropy":
        return 1.0, 0.0
    if loss_name == "mse":
        sigma2 = L0 / out_dim
        if not sigma2 > 0:
            return None
        return 1.0 / (2.0 * sigma2), -0.5 * out_dim * math.log(2.0 * math.pi * sigma2)
    return None


def fluctuation(loss: np.ndarray, n: int, beta: float, scale: tuple[float, float]) -> dict:
    """ν and WAIC with standard errors from per-example losses (chains, draws, m).

    nu_se joins the chains' spread (each chain's own ν, the Monte-Carlo error; NaN with one
    chain, which gives no spread to measure) and, when m < n, the spread over examples of the m
    sampled (finite-population corrected). waic_se is WAIC's usual one, the spread of its
    per-example terms over the m examples."""
    s, c = scale
    logp = -s * np.asarray(loss, np.float64) + c  # (chains, draws, m)
    chains, draws, m = logp.shape
    beta_l = beta / s
    var = logp.reshape(chains * draws, m).var(axis=0, ddof=1)  # Var_w[log p_i]
    nu = 0.5 * beta_l * n * var.mean()
    per_chain = 0.5 * beta_l * n * logp.var(axis=1, ddof=1).mean(axis=1) if draws > 1 else np.full(chains, np.nan)
    mc = np.std(per_chain, ddof=1) / math.sqrt(chains) if chains > 1 else float("nan")
    fpc = max(0.0, 1.0 - m / n)
    sub = 0.5 * beta_l * n * np.std(var, ddof=1) / math.sqrt(m) * math.sqrt(fpc) if m > 1 else 0.0
    flat = logp.reshape(chains * draws, m)
    top = flat.max(axis=0)
    lppd = top + np.log(np.mean(np.exp(flat - top), axis=0))  # log E_w[p_i]
    terms = -lppd + beta_l * var  # per example: T_n's term plus β'·Var[log p_i]
    return {"nu": float(nu), "nu_se": float(math.hypot(mc, sub)), "waic": float(terms.mean()),
            "waic_se": float(np.std(terms, ddof=1) / math.sqrt(m)) if m > 1 else float("nan")}


def generalisation(heldout: np.ndarray, scale: tuple[float, float]) -> dict:
    """The Bayes generalisation loss of the predictive E_w[p(y|x, w)] that WAIC estimates,
    measured on h held-out examples' losses (chains, draws, h): G = −(1/h)·Σ_j log E_w[p_j(w)]
    in nats per example, with the standard error of that mean over the held-out examples."""
    s, c = scale
    h = int(np.shape(heldout)[-1])
    flat = (-s * np.asarray(heldout, np.float64) + c).reshape(-1, h)
    top = flat.max(axis=0)
    terms = -(top + np.log(np.mean(np.exp(flat - top), axis=0)))
    return {"gen_loss": float(terms.mean()),
            "gen_loss_se": float(np.std(terms, ddof=1) / math.sqrt(h)) if h > 1 else float("nan")}


def cross_influence(loss: np.ndarray, heldout: np.ndarray) -> np.ndarray:
    """The Bayesian influence function of every recorded training example on each held-out
    example: −Cov_w(ℓ_i(w), ℓ_j(w)) over the draws of every chain pooled, (m, h)."""
    m = int(np.shape(loss)[-1])
    joined = np.concatenate([np.asarray(loss, np.float64), np.asarray(heldout, np.float64)], axis=-1)
    return influence(joined, np.arange(m, joined.shape[-1]))[:m]


def summarize(loss: np.ndarray, loss_at_wstar: np.ndarray, *, n: int, beta: float, loss_name: str, L0: float,
              out_dim: int, query: int = 0, seed: int = 0, heldout: np.ndarray | None = None) -> tuple[dict, dict]:
    """(metrics, arrays) of a run that recorded per-example losses: examples_recorded, nu,
    nu_se, waic, waic_se (None where the loss is not a log-likelihood); the contributions and,
    with `query` > 0, the influence matrix (float32) and its query columns. With the held-out
    examples' losses (chains, draws, h): heldout_recorded, gen_loss and gen_loss_se (as ν), and
    the influence matrix on them (float32, m × h)."""
    contrib = contributions(loss, loss_at_wstar, n * beta)
    m = int(np.shape(loss)[-1])
    metrics: dict = {"examples_recorded": m}
    scale = likelihood_scale(loss_name, L0, out_dim)
    if scale is not None and np.all(np.isfinite(loss)):
        metrics.update(fluctuation(loss, n, beta, scale))
    arrays = {"llc_contribution": contrib}
    if query > 0:
        cols = query_columns(m, query, seed)
        arrays["influence"] = influence(loss, cols).astype(np.float32)
        arrays["query"] = cols.astype(np.int64)
    if heldout is not None:
        metrics["heldout_recorded"] = int(np.shape(heldout)[-1])
        if scale is not None and np.all(np.isfinite(heldout)):
            metrics.update(generalisation(heldout, scale))
        arrays["heldout_influence"] = cross_influence(loss, heldout).astype(np.float32)
    return metrics, arrays
