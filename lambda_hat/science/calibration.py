"""Choosing SGLD's step size from pilot runs, and removing its bias; choosing the localizer γ on
the plateau of λ̂(γ) (`lh calibrate`).

An unadjusted Langevin step biases λ̂ by a term that is, to first order, linear in the step
ε: λ̂(ε) = λ̂(0) + b·ε + O(ε²) (docs/sgld-step.md measured it on deep linear networks and the
quick example's MLPs). So pilots on a ladder ε, ε/2, ε/4, each covering the same Langevin time
(steps, warm-up and thinning scaled by the same factor), give

* λ̂(0), the intercept of a weighted least-squares line through (εₖ, λ̂ₖ ± SEMₖ), with its
  standard error: the step-size bias extrapolated away;
* the bias of each rung against it, and so the largest step whose bias is within its error.

The localizer γ is chosen on a ladder of decades (`gamma_plateau`): λ̂(γ) falls once γ rivals the
curvature nβ·h of the steep directions (for an exactly quadratic loss, each direction gives
½·nβh/(nβh + γ)), and at small γ the chains are free to leave the basin of w* along flat or
unstable directions. Between, where neither matters, λ̂ does not depend on γ within its error:
that range is the plateau, and its middle the choice.

nβ is not calibrated (the tempering is part of the question asked), but how λ̂ depends on it is
read from each pilot's draws (`nbeta_slope`).

Everything here is arithmetic on the pilots' numbers: no I/O, no sampling.
"""

from __future__ import annotations

import math
from typing import NamedTuple, Sequence

# The ladder: RUNGS steps, each half the one before, from the top ε·nβ down.
RUNGS = 3
# Top of the ladder, ε·nβ: twice SGLD's default (0.02): docs/sgld-step.md saw +14 % at 0.04 on
# the quick example's MLPs, in the range where the bias is still linear.
TOP_STEP_SIZE_NBETA = 0.04
# A line through 3 points has 1 degree of freedom; above this χ² (its 99 % quantile) the pilots
# do not lie on a line within their errors: the steps are past the linear range, or the SEMs
# understate the error (unconverged chains).
CHI2_99 = {1: 6.635, 2: 9.210, 3: 11.345, 4: 13.277}
# A rung is acceptable when its λ̂ is within BIAS_Z combined standard errors of λ̂(0), or within
# BIAS_REL of it: with long pilots the SEM gets small enough that any finite step is "biased",
# and 3 % is below what docs/accuracy.md accepts of any sampler against an exact λ.
BIAS_Z = 2.0
BIAS_REL = 0.03


class Rung(NamedTuple):
    step_size_nbeta: float
    steps: int
    warmup: int
    eval_every: int


def ladder(steps: int, warmup: int, eval_every: int, reference: float, top: float = TOP_STEP_SIZE_NBETA,
           rungs: int = RUNGS) -> list[Rung]:
    """The pilots' settings, largest step first: ε·nβ = top, top/2, …, each with steps, warm-up
    and thinning scaled so that it covers the Langevin time of (steps, warmup, eval_every) at
    ε·nβ = `reference` (and so records the same number of draws)."""
    out = []
    for k in range(rungs):
        eps = top / 2**k
        scale = reference / eps
        out.append(Rung(eps, max(1, round(steps * scale)), round(warmup * scale), max(1, round(eval_every * scale))))
    return out


class Extrapolation(NamedTuple):
    llc0: float  # λ̂ at ε → 0
    llc0_se: float
    slope: float  # dλ̂/d(ε·nβ)
    slope_se: float
    chi2: float  # of the pilots about the line
    dof: int


def extrapolate(step_size_nbeta: Sequence[float], llc: Sequence[float], sem: Sequence[float]) -> Extrapolation:
    """The weighted least-squares line λ̂ = llc0 + slope·ε through the pilots (weights 1/SEM²).
    Standard errors from the fit's covariance, inflated by √(χ²/dof) when the points scatter
    more than their SEMs say (never deflated). Needs at least 2 pilots with SEM > 0."""
    if len(step_size_nbeta) != len(llc) or len(llc) != len(sem) or len(llc) < 2:
        raise ValueError("extrapolate needs at least 2 pilots, each with ε, λ̂ and SEM")
    if any(not (s > 0 and math.isfinite(s)) for s in sem) or not all(map(math.isfinite, llc)):
        raise ValueError("extrapolate needs finite λ̂ and positive finite SEMs")
    w = [1.0 / s**2 for s in sem]
    sw = sum(w)
    sx = sum(wi * x for wi, x in zip(w, step_size_nbeta))
    sy = sum(wi * y for wi, y in zip(w, llc))
    sxx = sum(wi * x * x for wi, x in zip(w, step_size_nbeta))
    sxy = sum(wi * x * y for wi, x, y in zip(w, step_size_nbeta, llc))
    det = sw * sxx - sx * sx
    if det <= 0:
        raise ValueError("extrapolate needs at least 2 different step sizes")
    slope = (sw * sxy - sx * sy) / det
    llc0 = (sxx * sy - sx * sxy) / det
    dof = len(llc) - 2
    chi2 = sum(wi * (y - llc0 - slope * x) ** 2 for wi, x, y in zip(w, step_size_nbeta, llc))
    inflate = max(1.0, chi2 / dof) if dof > 0 else 1.0
    return Extrapolation(llc0, math.sqrt(sxx / det * inflate), slope, math.sqrt(sw / det * inflate), chi2, dof)


class Choice(NamedTuple):
    rung: int | None  # index into the ladder of the chosen step (or γ); None: uncalibrated
    reason: str  # why, in words
    fit: Extrapolation | None
    plateau: tuple[int, ...] | None = None  # γ: the ladder's indices of the plateau


def choose(rungs: Sequence[Rung], llc: Sequence[float | None], sem: Sequence[float | None],
           status: Sequence[str]) -> Choice:
    """The largest step whose λ̂ is within BIAS_Z combined standard errors of the extrapolated
    λ̂(0), given each pilot's λ̂, SEM and status (largest step first, as `ladder` gives them).
    Uncalibrated (rung None), with the reason, when a pilot has no finite estimate, when fewer
    than 2 remain, or when the pilots do not lie on a line (χ² above its 99 % quantile)."""
    bad = [k for k, (v, s, st) in enumerate(zip(llc, sem, status))
           if v is None or s is None or not math.isfinite(v) or not (s > 0) or st in ("nonfinite", "divergent")]
    if bad:
        worst = rungs[bad[0]].step_size_nbeta
        return Choice(None, f"the pilot at ε·nβ = {worst:g} has no usable estimate ({status[bad[0]]}): "
                            "start the ladder lower (--top)", None)
    fit = extrapolate([r.step_size_nbeta for r in rungs], llc, sem)
    if fit.dof > 0 and fit.chi2 > CHI2_99.get(fit.dof, 6.635 + 2.5 * (fit.dof - 1)):
        return Choice(None, f"λ̂ is not linear in the step over ε·nβ {rungs[-1].step_size_nbeta:g}–"
                            f"{rungs[0].step_size_nbeta:g} (χ² {fit.chi2:.1f} on {fit.dof} degree of freedom): "
                            "steps past the linear range, or pilots whose SEMs understate their error", fit)
    for k, (r, v, s) in enumerate(zip(rungs, llc, sem)):
        z = (v - fit.llc0) / math.sqrt(s**2 + fit.llc0_se**2)
        if abs(z) <= BIAS_Z or abs(v - fit.llc0) <= BIAS_REL * abs(fit.llc0):
            return Choice(k, f"the largest step whose λ̂ is within {BIAS_Z:g} standard errors or "
                             f"{BIAS_REL:.0%} of λ̂(ε→0) (bias {v - fit.llc0:+.3g}, {(v - fit.llc0) / fit.llc0:+.1%}, "
                             f"z = {z:+.1f})", fit)
    return Choice(None, f"no pilot's λ̂ is within {BIAS_Z:g} standard errors or {BIAS_REL:.0%} of λ̂(ε→0) = "
                        f"{fit.llc0:.4g}: use the extrapolated value, or a smaller step (--top)", fit)


# The γ ladder: decades. The 1e6-parameter deep linear network of docs/large-models.md needed
# γ ≈ 1,000 (λ̂ 11,864 at 100, 522.7 at 1,000, 180.6 at 10,000 against 500); the quick example's
# targets sit at the default 1. `--gammas` gives another ladder.
GAMMA_LADDER = (0.1, 1.0, 10.0, 100.0, 1000.0)
# A γ above this fraction of nβ·h_max (h_max: the largest Hessian eigenvalue of L_n at w*, which
# every target records) shrinks even the steepest direction's share by ≥ 9 % (½·1/(1 + 0.1)): the
# localizer, not the loss, shapes the posterior there. Such rungs are reported, never chosen.
GAMMA_CEILING = 0.1
# Agreement within 2 SEMs means nothing when the SEMs are wide: SGLD on a normal-crossing target at
# n = 10,000 gave λ̂ 0.27 ± 0.06, 0.23 ± 0.06 and 0.12 ± 0.05 at γ 0.1, 1 and 10, a "plateau" over
# which the exact finite-n value halves. Two pilots whose SEMs are s·λ̂ agree up to 2·√2·s apart, so
# a plateau whose pilots agree must be flat within 10 % only if s ≤ 0.1/(2√2) = 3.5 %: a pilot with
# a wider SEM is too imprecise to be part of one.
PLATEAU_MAX_REL_SEM = 0.035


def _agree(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Two pilots' λ̂ ± SEM agree: within BIAS_Z combined standard errors, or BIAS_REL of each other."""
    (va, sa), (vb, sb) = a, b
    return abs(va - vb) <= BIAS_Z * math.hypot(sa, sb) or abs(va - vb) <= BIAS_REL * max(abs(va), abs(vb))


def gamma_plateau(gammas: Sequence[float], llc: Sequence[float | None], sem: Sequence[float | None],
                  status: Sequence[str], ceiling: float | None) -> Choice:
    """The plateau of λ̂(γ) over a ladder of γ (ascending): the longest run of consecutive usable,
    precise pilots at γ ≤ `ceiling` whose λ̂ agree pairwise (`_agree`), at least two; on a tie, the
    one at smaller γ (less of the localizer's pull). The choice is its middle pilot (the lower of
    two middles). A pilot is unusable when it has no finite λ̂ and SEM or is nonfinite or
    divergent, imprecise when its SEM is above PLATEAU_MAX_REL_SEM of |λ̂|: either breaks a plateau. `ceiling` None: the curvature is unknown, nothing is excluded (said so).
    Uncalibrated (rung None) with the reason when no two neighbours agree."""
    if list(gammas) != sorted(gammas) or len(set(gammas)) != len(gammas):
        raise ValueError(f"gammas must be strictly increasing, got {list(gammas)}")
    usable = [v is not None and s is not None and math.isfinite(v) and s > 0 and math.isfinite(s)
              and st not in ("nonfinite", "divergent") for v, s, st in zip(llc, sem, status)]
    precise = [u and s <= PLATEAU_MAX_REL_SEM * abs(v) for u, v, s in zip(usable, llc, sem)]
    below = [ceiling is None or g <= ceiling for g in gammas]
    best: tuple[int, int] | None = None  # [i, j) of the longest plateau
    for i in range(len(gammas)):
        j = i
        while (j < len(gammas) and precise[j] and below[j]
               and all(_agree((llc[j], sem[j]), (llc[k], sem[k])) for k in range(i, j))):
            j += 1
        if j - i >= 2 and (best is None or j - i > best[1] - best[0]):
            best = (i, j)
    notes = []
    over = [f"{g:g}" for g, b in zip(gammas, below) if not b]
    if over:
        notes.append(f"γ {', '.join(over)} above {GAMMA_CEILING:g}·nβ·h_max = {ceiling:.3g}, where the localizer "
                     "dominates the steepest direction, not considered")
    elif ceiling is None:
        notes.append("the target has no Hessian estimate at w*, or no curvature there, so no γ was ruled out "
                     "as too large")
    bad = [f"{g:g} ({_pilot_problem(v, s, st)})" for g, v, s, u, st in zip(gammas, llc, sem, usable, status) if not u]
    if bad:
        notes.append(f"no usable estimate at γ {', '.join(bad)}")
    vague = [f"{g:g}" for g, u, p, b in zip(gammas, usable, precise, below) if u and not p and b]
    if vague:
        notes.append(f"too imprecise at γ {', '.join(vague)} (SEM above {PLATEAU_MAX_REL_SEM:.1%} of λ̂: "
                     "longer pilots, more draws or chains)")
    tail = f" ({'; '.join(notes)})" if notes else ""
    if best is None and sum(below) < 2:
        return Choice(None, f"no plateau: fewer than two γ of the ladder are at most the ceiling {ceiling:.3g}"
                            f"{tail}; give smaller γ (--gammas)", None)
    if best is None:
        shown = ", ".join(f"{g:g}: {v:.4g} ± {s:.2g}" if u else f"{g:g}: —"
                          for g, v, s, u in zip(gammas, llc, sem, usable))
        return Choice(None, f"no plateau: no two neighbouring γ give precise λ̂ (SEM at most "
                            f"{PLATEAU_MAX_REL_SEM:.1%} of it) within {BIAS_Z:g} standard errors or {BIAS_REL:.0%} "
                            f"of each other (λ̂ at γ {shown}){tail}; try a ladder of finer steps "
                            "(--gammas) or longer pilots", None)
    plateau = tuple(range(*best))
    pick = plateau[(len(plateau) - 1) // 2]
    span = f"γ {gammas[plateau[0]]:g}–{gammas[plateau[-1]]:g}"
    return Choice(pick, f"the middle of the plateau {span} ({len(plateau)} pilots whose λ̂ agree within "
                        f"{BIAS_Z:g} standard errors or {BIAS_REL:.0%}){tail}", None, plateau)


# HMC and NUTS adapt their step to a target acceptance rate: the higher it is, the smaller the step
# and the fewer divergent transitions. NUTS then builds longer trees (more gradients a draw); HMC,
# with a fixed number of integration steps, makes shorter trajectories and mixes worse. On the
# normal-crossing targets at n = 10,000 NUTS diverged on 3.4–4.3 % of its draws at 0.9 (flagged
# `divergent`, up to 5 SEMs off the exact value) and on at most 0.7 % at 0.99, for 1.2–2.4× the
# time (docs/accuracy.md).
class Accept(NamedTuple):
    target_acceptance: float


ACCEPT_LADDER = (0.8, 0.9, 0.95, 0.99)
# A pilot below the reference joins the descent only if its SEM is at most this multiple of the
# reference's: otherwise "agreeing" says nothing (a 9 ± 5 would agree with 6 ± 0.05).
ACCEPT_MAX_SEM_RATIO = 2.0


def _pilot_problem(v, s, st) -> str | None:
    """Why a pilot cannot be used (its status, "no estimate", "no SEM"), None if it can."""
    if st in ("nonfinite", "divergent", "unconverged", "missing"):
        return st
    if v is None or not math.isfinite(v):
        return "no estimate"
    if s is None or not math.isfinite(s) or not (s > 0):
        return "no SEM"
    return None


def choose_acceptance(accepts: Sequence[float], llc: Sequence[float | None], sem: Sequence[float | None],
                      status: Sequence[str]) -> Choice:
    """The smallest target acceptance (the largest adapted step) whose pilot and every pilot above it
    are usable (not `divergent`, i.e. flagged for divergent transitions by the run's own status, nor
    `unconverged`, `nonfinite`, without an estimate or SEM), with a SEM at most ACCEPT_MAX_SEM_RATIO
    times the most careful pilot's, each agreeing with the most careful pilot (the largest
    acceptance) within BIAS_Z combined standard errors or BIAS_REL. Uncalibrated, with the reason,
    when the most careful pilot itself cannot be used."""
    if list(accepts) != sorted(accepts) or len(set(accepts)) != len(accepts):
        raise ValueError(f"accepts must be strictly increasing, got {list(accepts)}")
    problems = [_pilot_problem(v, s, st) for v, s, st in zip(llc, sem, status)]
    last = len(accepts) - 1
    if problems[last] is not None:
        hint = {"divergent": "no setting tried samples this posterior without divergences",
                "unconverged": "more draws or chains (its SEM cannot be trusted as the reference)"}
        return Choice(None, f"even at target acceptance {accepts[last]:g} the pilot is {problems[last]}: "
                            f"{hint.get(problems[last], 'no reference to compare with')}", None)
    ref, ref_se = llc[last], sem[last]
    pick, stop = last, None
    for k in range(last - 1, -1, -1):
        if problems[k] is not None:
            stop = f"{accepts[k]:g} is {problems[k]}"
        elif sem[k] > ACCEPT_MAX_SEM_RATIO * ref_se:
            stop = f"{accepts[k]:g}'s SEM is {sem[k] / ref_se:.1f}× the reference's"
        elif not _agree((llc[k], sem[k]), (ref, ref_se)):
            stop = f"λ̂ at {accepts[k]:g} ({llc[k]:.4g} ± {sem[k]:.2g}) differs from the reference's"
        if stop:
            break
        pick = k
    tail = f" (below it, {stop})" if stop else ""
    return Choice(pick, f"the smallest target acceptance with no flag at or above it and λ̂ within "
                        f"{BIAS_Z:g} standard errors or {BIAS_REL:.0%} of the most careful pilot's "
                        f"({ref:.4g} ± {ref_se:.2g} at {accepts[last]:g}){tail}", None)


class NBetaSlope(NamedTuple):
    slope: float  # dλ̂/d ln(nβ) at the pilot's nβ
    se: float  # its approximate standard error


def nbeta_slope(llc_mean: float | None, llc_std_draws: float | None, llc_sem: float | None,
                ess_bulk: float | None) -> NBetaSlope | None:
    """How λ̂ depends on nβ, read from one run's draws at no cost: under the tempered posterior
    (localizer included, as it does not depend on β), d E_β[L_n]/dβ = −n·Var_β(L_n), so

        dλ̂/d ln(nβ) = λ̂ − Var(nβ·(L_n − L0)) = λ̂ − (std of the per-draw λ̂)².

    Zero where λ̂ does not depend on nβ (an exactly quadratic loss without localizer: both
    terms are d/2; a singular model in its asymptotic regime: both tend to λ); a localizer that
    rivals nβ·h, or n too small for the asymptote, leave it non-zero. The standard error treats
    the draws as `ess_bulk` independent normal ones (Var of a sample variance: 2σ⁴/ESS), added
    in quadrature to λ̂'s SEM. None where a number is missing or not finite."""
    values = (llc_mean, llc_std_draws, llc_sem, ess_bulk)
    if any(v is None or not math.isfinite(v) for v in values) or ess_bulk <= 0:
        return None
    var = llc_std_draws ** 2
    return NBetaSlope(llc_mean - var, math.sqrt(llc_sem ** 2 + 2 * var ** 2 / ess_bulk))
