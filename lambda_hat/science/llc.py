"""LLC estimate and diagnostics from loss traces.

Per draw: llc = nβ·(L_n(w) − L0). Reported:

* llc_mean       mean over all chains and draws
* llc_std        std over chains of the per-chain means (ddof=1; NaN with one chain)
* llc_std_draws  std over all draws pooled (ddof=1)
* ess_bulk, ess_tail  BlackJAX rank-normalized split-chain bulk / tail ESS of the llc trace
* r_hat          BlackJAX rank-normalized split R-hat (max of bulk and folded)
* llc_sem        llc_std_draws / sqrt(ess_bulk): Monte-Carlo standard error of llc_mean
* llc_ref, llc_ref_se, llc_ref_method, rel_error   the exact finite-n expectation of λ̂ under the
                 run's posterior, where the target's kind has one (`finite_n_reference`)

If any llc draw is non-finite, status = "nonfinite" and every statistic above is NaN.
Otherwise the run is checked for convergence (Vehtari et al. 2021, "Rank-normalization,
folding, and localization: an improved R-hat"): R-hat above R_HAT_MAX, bulk ESS below
ESS_BULK_MIN, or an R-hat that cannot be computed each add a reason to `flags` (e.g.
"r_hat 1.148 > 1.01"), and a run with any is status = "unconverged": its numbers are kept,
but they are not yet an estimate to trust. `status_reason` joins the flags ("" when none).
The thresholds are settings of this module, not of a run's spec: changing them re-labels
runs, never re-identifies them.

The three BlackJAX diagnostics run, in float64, inside one `jax.jit`-ted function (built once per
process, cached at module level), so a run pays one XLA compile per trace shape instead
of ~170 op-by-op compiles. If R-hat cannot be computed for a trace shape (BlackJAX raises
while tracing, e.g. too few draws), a jitted ESS-only function is used and r_hat is NaN.
"""

from __future__ import annotations

import math

import numpy as np

STAT_KEYS = ("llc_mean", "llc_std", "llc_std_draws", "ess_bulk", "ess_tail", "r_hat", "llc_sem")

from lambda_hat.specs import ESS_BULK_MIN, R_HAT_MAX  # noqa: E402  (defaults of a sweep's `diagnostics:`)


def llc_from_loss(loss, L0: float, n_beta: float) -> np.ndarray:
    return n_beta * (np.asarray(loss, dtype=np.float64) - L0)


_DIAGNOSTICS: dict = {}


def _diagnostics_fn(with_rhat: bool, shape: tuple):
    """The compiled x -> {"ess_bulk", "ess_tail"[, "r_hat"]} over blackjax.diagnostics for float64
    traces of `shape`, built once per shape (and compiled once across workers: `compiling`)."""
    key = (with_rhat, tuple(shape))
    fn = _DIAGNOSTICS.get(key)
    if fn is None:
        import jax
        from blackjax import diagnostics

        from . import compiling

        def diag(x):
            out = {"ess_bulk": diagnostics.ess_bulk(x), "ess_tail": diagnostics.ess_tail(x)}
            if with_rhat:
                out["r_hat"] = diagnostics.rhat(x)
            return out

        arg = jax.ShapeDtypeStruct(tuple(shape), jax.numpy.float64)
        fn = _DIAGNOSTICS[key] = compiling.compile(("diagnostics",) + key, lambda: jax.jit(diag).lower(arg))
    return fn


def _diagnostics(llc: np.ndarray) -> dict:
    import jax
    import jax.numpy as jnp

    # In float64 whatever the sampler's dtype or the process's x64 setting (scoped, no global change).
    with jax.enable_x64(True):
        x = jnp.asarray(llc, jnp.float64)
        try:
            out = _diagnostics_fn(True, x.shape)(x)
        except Exception:  # e.g. too few draws to split for R-hat
            out = dict(_diagnostics_fn(False, x.shape)(x), r_hat=math.nan)
        return {k: float(v) for k, v in out.items()}


def summarize(llc: np.ndarray, r_hat_max: float = R_HAT_MAX, ess_bulk_min: float = ESS_BULK_MIN) -> dict:
    """Statistics of an llc trace of shape (chains, draws); flagged `unconverged` against the
    thresholds given (a sweep's `diagnostics:`; Vehtari et al.'s by default)."""
    llc = np.asarray(llc, dtype=np.float64)
    chains, draws = llc.shape
    nonfinite = int(np.sum(~np.isfinite(llc)))
    out: dict = {"nonfinite_draws": nonfinite}
    if nonfinite:
        out.update({k: math.nan for k in STAT_KEYS})
        return flag_run(out, [f"{nonfinite} non-finite draws"], "nonfinite")
    chain_means = llc.mean(axis=1)
    out["llc_mean"] = float(llc.mean())
    out["llc_std"] = float(chain_means.std(ddof=1)) if chains > 1 else math.nan
    out["llc_std_draws"] = float(llc.std(ddof=1)) if llc.size > 1 else math.nan
    out.update(_diagnostics(llc))
    ess = out["ess_bulk"]
    out["llc_sem"] = out["llc_std_draws"] / math.sqrt(ess) if ess > 0 else math.nan
    flag_run(out, convergence_flags(out["r_hat"], ess, r_hat_max, ess_bulk_min), "unconverged")
    return out


def convergence_flags(r_hat: float, ess_bulk: float, r_hat_max: float = R_HAT_MAX,
                      ess_bulk_min: float = ESS_BULK_MIN) -> list[str]:
    """Reasons a run's estimate is not yet trustworthy (empty when it converged)."""
    flags = []
    if not math.isfinite(r_hat):
        flags.append("r_hat unavailable")
    elif r_hat > r_hat_max:
        flags.append(f"r_hat {r_hat:.3f} > {r_hat_max:g}")
    if not ess_bulk >= ess_bulk_min:
        flags.append(f"ess_bulk {ess_bulk:.0f} < {ess_bulk_min:g}")
    return flags


# Model kinds whose targets have an exact finite-n expectation of λ̂ for a given posterior: the kind's
# function (target spec, arrays, nβ, γ) -> {llc_ref, llc_ref_se, llc_ref_method}, or {} where none exists.
FINITE_N_REFERENCES = {"polynomial": "lambda_hat.science.polynomial:finite_n_reference"}


def finite_n_reference(target, arrays, n_beta: float, gamma: float, llc_mean: float) -> dict:
    """A run's exact finite-n reference where its target's kind has one (`FINITE_N_REFERENCES`):
    llc_ref (E[nβ·(L_n(w) − L0)] under the run's own posterior, what λ̂ estimates), llc_ref_se (its
    numerical error), llc_ref_method, and rel_error = (λ̂ − llc_ref)/llc_ref. The asymptotic λ
    (`llc_true`) stays what it is; a run with a reference is judged against the reference."""
    ref = FINITE_N_REFERENCES.get(getattr(target.model, "kind", None))
    if ref is None:
        return {}
    from lambda_hat.registry import resolve

    out = dict(resolve(ref)(target, arrays, n_beta, gamma))
    if out.get("llc_ref") is not None:
        out["rel_error"] = (llc_mean - out["llc_ref"]) / out["llc_ref"] if out["llc_ref"] else math.nan
    return out


# A run's status, most severe first: its statistics are NaN ("nonfinite"); the integrator failed
# on too many draws ("divergent"); the chains have not converged ("unconverged"); else "ok".
STATUS_PRECEDENCE = ("nonfinite", "divergent", "unconverged", "ok")


def flag_run(metrics: dict, flags: list[str], status: str) -> dict:
    """Add `flags` to metrics["flags"] / ["status_reason"] and, when there are any, raise
    metrics["status"] to `status` unless it already holds a more severe one."""
    metrics["flags"] = list(metrics.get("flags", [])) + list(flags)
    metrics["status_reason"] = "; ".join(metrics["flags"])
    current = metrics.get("status", "ok")
    if flags and STATUS_PRECEDENCE.index(status) < STATUS_PRECEDENCE.index(current):
        current = status
    metrics["status"] = current
    return metrics
