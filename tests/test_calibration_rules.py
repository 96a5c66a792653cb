"""`lh calibrate`'s arithmetic (lambda_hat/science/calibration.py) against theory.

On a quadratic loss with Hessian eigenvalues hᵢ, SGLD with step ε (noise variance ε, full-batch
gradient) is a discretised Ornstein-Uhlenbeck process whose stationary variance per coordinate
is known exactly: ε / (1 − (1 − εaᵢ/2)²), aᵢ = nβhᵢ + γ. So E[λ̂(ε)] = ½nβ Σ hᵢ·varᵢ(ε) is exact
at every step, and its ε → 0 limit is the posterior's ½ Σ nβhᵢ/aᵢ. The extrapolation from three
exact rungs must land on that limit to O(ε²), while the largest rung is biased by far more."""

import math

import numpy as np
import pytest

from lambda_hat.science.calibration import BIAS_REL, BIAS_Z, Rung, choose, extrapolate, ladder

N_BETA, GAMMA = 1000.0, 1.0
H = np.array([0.02, 0.5, 2.0, 5.0, 8.0])  # eigenvalues of the loss's Hessian


def exact_llc(eps_nbeta: float) -> float:
    eps = eps_nbeta / N_BETA
    a = N_BETA * H + GAMMA
    var = eps / (1 - (1 - eps * a / 2) ** 2)
    return float(0.5 * N_BETA * np.sum(H * var))


LIMIT = float(0.5 * np.sum(N_BETA * H / (N_BETA * H + GAMMA)))


def test_the_extrapolation_removes_the_step_size_bias():
    rungs = ladder(30000, 5000, 20, reference=0.02, top=0.08)
    eps = [r.step_size_nbeta for r in rungs]
    llc = [exact_llc(e) for e in eps]
    assert (llc[0] - LIMIT) / LIMIT > 0.06  # the top rung is 7 % high: something to remove
    fit = extrapolate(eps, llc, [0.01 * LIMIT] * 3)
    # What is left is the O(ε²) term: -0.3 % here, against +1.6 % at the smallest rung.
    assert abs(fit.llc0 - LIMIT) / LIMIT < 0.005, (fit.llc0, LIMIT)
    assert abs(fit.llc0 - LIMIT) < abs(llc[-1] - LIMIT) / 4  # far better than the smallest step alone


def test_a_straight_line_is_recovered_with_its_standard_errors():
    rng = np.random.default_rng(0)
    eps, truth, slope, sem = np.array([0.04, 0.02, 0.01]), 7.2, 30.0, np.array([0.26, 0.2, 0.15])
    fits = [extrapolate(eps, truth + slope * eps + sem * rng.normal(size=3), sem) for _ in range(4000)]
    llc0 = np.array([f.llc0 for f in fits])
    # Unbiased, with the spread its standard error claims (the SE is inflated only by χ² > dof).
    assert abs(llc0.mean() - truth) < 4 * llc0.std() / math.sqrt(len(fits))
    nominal = extrapolate(eps, truth + slope * eps, sem).llc0_se
    assert 0.95 < llc0.std() / nominal < 1.05
    assert abs(np.mean([f.slope for f in fits]) - slope) < 1.0


def test_ladder_keeps_the_langevin_time_and_the_draws():
    rungs = ladder(30000, 5000, 20, reference=0.02)
    assert [r.step_size_nbeta for r in rungs] == [0.04, 0.02, 0.01]
    for r in rungs:
        assert r.steps * r.step_size_nbeta == pytest.approx(30000 * 0.02)
        assert r.warmup * r.step_size_nbeta == pytest.approx(5000 * 0.02)
        assert (r.steps - r.warmup) // r.eval_every == (30000 - 5000) // 20


def test_choose_takes_the_largest_step_within_its_error():
    rungs = ladder(30000, 5000, 20, reference=0.02)
    # The quick example's seed-1 MLP (docs/sgld-step.md): +14.6 %, +7.9 %, +2.5 % against NUTS 7.258.
    llc, sem = [8.319, 7.832, 7.439], [0.265, 0.197, 0.153]
    c = choose(rungs, llc, sem, ["ok"] * 3)
    assert c.fit is not None and abs(c.fit.llc0 - 7.258) < 3 * math.hypot(c.fit.llc0_se, 0.05)
    chosen = c.rung
    assert chosen is not None
    def fine(v, s):
        return abs(v - c.fit.llc0) <= max(BIAS_Z * math.hypot(s, c.fit.llc0_se), BIAS_REL * c.fit.llc0)

    assert fine(llc[chosen], sem[chosen]) and not any(fine(v, s) for v, s in zip(llc[:chosen], sem[:chosen]))


def test_choose_accepts_a_bias_below_3_percent_when_the_errors_are_tiny():
    # The [3,8,4] rank-2 DLN of docs/sgld-step.md (exact λ = 6): λ̂ at 0.04, 0.02, 0.01.
    rungs = ladder(30000, 5000, 20, reference=0.02)
    c = choose(rungs, [6.511, 6.207, 6.133], [0.042, 0.044, 0.042], ["ok"] * 3)
    assert abs(c.fit.llc0 - 6.0) < 0.01 * 6.0  # the bias (+8.5 % at the top) extrapolated away
    assert c.rung == 2 and "+2.5%" in c.reason  # 0.02 is 3.8 % high, 0.01 2.5 %: 0.01


def test_choose_says_uncalibrated_with_the_reason():
    rungs = [Rung(0.04, 15000, 2500, 10), Rung(0.02, 30000, 5000, 20), Rung(0.01, 60000, 10000, 40)]
    c = choose(rungs, [None, 7.8, 7.4], [None, 0.2, 0.15], ["nonfinite", "ok", "ok"])
    assert c.rung is None and "ε·nβ = 0.04" in c.reason and "nonfinite" in c.reason
    bent = choose(rungs, [9.0, 7.0, 7.5], [0.05, 0.05, 0.05], ["ok"] * 3)  # far off any line
    assert bent.rung is None and "not linear" in bent.reason


# --------------------------------------------------------------------------- γ


def _exact_llc(h, n_beta, gamma):
    """The localized posterior's E[nβ(L − L0)] on a quadratic loss: ½ Σ nβhᵢ/(nβhᵢ + γ)."""
    return 0.5 * sum(n_beta * x / (n_beta * x + gamma) for x in h)


GAMMAS = [0.1, 1.0, 10.0, 100.0, 1000.0]


def test_the_gamma_plateau_on_a_quadratic_sits_where_the_localizer_does_not_pull():
    """Eigenvalues spread over 1.5 decades, nβ = 145, each pilot at the exact value with a 1 %
    SEM: the plateau is the γ where λ(γ) is within the errors of d/2, every γ above the ceiling is
    left out, and the chosen γ's exact λ is within BIAS_REL of d/2."""
    from lambda_hat.science.calibration import GAMMA_CEILING, gamma_plateau

    h, n_beta = list(np.geomspace(0.1, 4.0, 10)), 145.0
    llc = [_exact_llc(h, n_beta, g) for g in GAMMAS]
    ceiling = GAMMA_CEILING * n_beta * max(h)
    c = gamma_plateau(GAMMAS, llc, [0.01 * v for v in llc], ["ok"] * 5, ceiling)
    assert c.rung is not None and c.plateau and len(c.plateau) >= 2, c
    assert all(GAMMAS[k] <= ceiling for k in c.plateau)
    assert abs(llc[c.rung] - 5.0) <= BIAS_REL * 5.0, (llc, c)
    # a γ whose exact λ is 10 % under d/2 is in no plateau
    assert all(llc[k] > 0.9 * 5.0 for k in c.plateau), (llc, c)
    assert "above 0.1·nβ·h_max" in c.reason and "1000" in c.reason


def test_a_pilot_without_an_estimate_breaks_the_plateau_and_ties_go_to_the_smaller_gamma():
    from lambda_hat.science.calibration import gamma_plateau

    llc, sem = [6.0, 6.0, 6.0, 6.0, 6.0], [0.1] * 5
    c = gamma_plateau(GAMMAS, llc, sem, ["ok", "ok", "divergent", "ok", "ok"], None)
    assert c.plateau == (0, 1) and c.rung == 0, c  # two plateaus of two: the smaller γ's
    assert "no usable estimate at γ 10 (divergent)" in c.reason and "no Hessian estimate" in c.reason
    c = gamma_plateau(GAMMAS, [50.0, 6.0, 6.0, 6.0, 4.0], sem, ["ok"] * 5, None)
    assert c.plateau == (1, 2, 3) and c.rung == 2, c  # the chains' escape at γ 0.1 and the pull at 1000 left out


def test_no_plateau_is_uncalibrated_with_the_values_in_the_reason():
    from lambda_hat.science.calibration import gamma_plateau

    # the 1e6-parameter deep linear network of docs/large-models.md: λ̂ 11,864 / 522.7 / 180.6 at γ 100 / 1,000 / 10,000
    c = gamma_plateau([100.0, 1000.0, 10000.0], [11864.0, 522.7, 180.6], [50.0, 3.0, 1.0], ["ok"] * 3, None)
    assert c.rung is None and c.plateau is None
    assert c.reason.startswith("no plateau") and "1000: 522.7 ± 3" in c.reason, c.reason
    with pytest.raises(ValueError):
        gamma_plateau([1.0, 0.1], [1.0, 1.0], [0.1, 0.1], ["ok"] * 2, None)


def test_pilots_too_imprecise_to_tell_a_10_percent_change_make_no_plateau():
    """SGLD on a normal-crossing target (n = 10,000, powers [1, 2]): λ̂ 0.27 ± 0.06, 0.23 ± 0.06,
    0.12 ± 0.05 at γ 0.1, 1, 10 agree within 2 SEMs while the exact finite-n value falls from 0.24
    to 0.12 over them: no plateau, and the reason says why. At the precision limit, pilots 9 %
    apart still agree and pilots 12 % apart no longer do: a plateau is flat within about 10 %."""
    from lambda_hat.science.calibration import PLATEAU_MAX_REL_SEM, gamma_plateau

    c = gamma_plateau([0.1, 1.0, 10.0], [0.2659, 0.2349, 0.1219], [0.0566, 0.0625, 0.0521], ["unconverged"] * 3, None)
    assert c.rung is None and "too imprecise at γ 0.1, 1, 10" in c.reason, c.reason
    for gap, agree in ((0.09, True), (0.12, False)):
        llc = [1.0, 1.0 - gap]
        c = gamma_plateau([0.1, 1.0], llc, [PLATEAU_MAX_REL_SEM * v for v in llc], ["ok"] * 2, None)
        assert (c.plateau == (0, 1)) is agree, (gap, c)


def test_the_ceiling_stops_a_plateau_that_would_go_on():
    """λ̂ flat at 6 over every γ: with the ceiling between 10 and 100 the plateau is 0.1–10, not
    0.1–1,000; with it below 1 there are too few γ left, and the reason says to go smaller."""
    from lambda_hat.science.calibration import gamma_plateau

    flat, sem = [6.0] * 5, [0.06] * 5
    assert gamma_plateau(GAMMAS, flat, sem, ["ok"] * 5, None).plateau == (0, 1, 2, 3, 4)
    c = gamma_plateau(GAMMAS, flat, sem, ["ok"] * 5, 50.0)
    assert c.plateau == (0, 1, 2) and c.rung == 1, c
    c = gamma_plateau(GAMMAS, flat, sem, ["ok"] * 5, 0.5)
    assert c.rung is None and "fewer than two γ" in c.reason and "smaller γ" in c.reason, c.reason
    c = gamma_plateau(GAMMAS, flat, [0.0] + sem[1:], ["ok"] * 5, None)
    assert "no usable estimate at γ 0.1 (no SEM)" in c.reason and c.plateau == (1, 2, 3, 4), c


def test_an_entry_takes_the_middle_of_the_gamma_its_targets_share():
    from lambda_hat.calibrate import Group, _chosen
    from lambda_hat.science.calibration import Choice

    def group(target, plateau):
        return Group(0, target, "seed 1", ["r"] * 5, choice=Choice(plateau[(len(plateau) - 1) // 2], "", None, plateau))

    chosen, why_not = _chosen([group("tgt_a", (0, 1, 2, 3)), group("tgt_b", (2, 3, 4))], {0: GAMMAS})
    assert chosen == {0: 10.0} and not why_not  # common range 10–100: its lower middle
    chosen, why_not = _chosen([group("tgt_a", (0, 1)), group("tgt_b", (3, 4))], {0: GAMMAS})
    assert chosen == {0: None} and "share no γ" in why_not[0] and "tgt_a: γ 0.1–1" in why_not[0]


# --------------------------------------------------------------------------- target acceptance

ACCEPTS = [0.8, 0.9, 0.95, 0.99]


def test_the_cheapest_target_acceptance_that_neither_diverges_nor_moves_the_estimate():
    from lambda_hat.science.calibration import choose_acceptance

    # NUTS on the normal crossing [1, 2] at n = 10,000 (docs/accuracy.md): 4.3 % divergent and 5 SEMs
    # off the exact value at 0.9, 0.5 % at 0.99: only 0.99 (0.95 flagged too)
    c = choose_acceptance(ACCEPTS, [0.19, 0.1883, 0.20, 0.2119], [0.007, 0.0067, 0.007, 0.0067],
                          ["divergent", "divergent", "divergent", "ok"])
    assert c.rung == 3 and "below it, 0.95 is divergent" in c.reason, c
    # nothing flagged and every estimate alike: the cheapest, 0.8
    assert choose_acceptance(ACCEPTS, [6.0, 6.05, 5.98, 6.02], [0.05] * 4, ["ok"] * 4).rung == 0
    # a pilot whose λ̂ moved away stops the descent, even below one that agrees again
    c = choose_acceptance(ACCEPTS, [6.0, 6.9, 6.02, 6.01], [0.05] * 4, ["ok"] * 4)
    assert c.rung == 2 and "λ̂ at 0.9 (6.9 ± 0.05) differs" in c.reason, c
    c = choose_acceptance(ACCEPTS, [6.0] * 4, [0.05] * 4, ["ok", "ok", "ok", "divergent"])
    assert c.rung is None and c.reason.startswith("even at target acceptance 0.99 the pilot is divergent")
    # the reference must be trusted: unconverged or without a SEM, nothing is chosen
    c = choose_acceptance(ACCEPTS, [6.0] * 4, [0.05] * 4, ["ok", "ok", "ok", "unconverged"])
    assert c.rung is None and "is unconverged: more draws or chains" in c.reason, c
    c = choose_acceptance(ACCEPTS, [6.0] * 4, [0.05, 0.05, 0.05, 0.0], ["ok"] * 4)
    assert c.rung is None and "is no SEM" in c.reason, c
    # a wide pilot "agrees" with anything: it stops the descent (9 ± 5 against 6 ± 0.05)
    c = choose_acceptance(ACCEPTS, [9.0, 6.0, 6.0, 6.0], [5.0, 0.05, 0.05, 0.05], ["ok"] * 4)
    assert c.rung == 1 and "0.8's SEM is 100.0× the reference's" in c.reason, c
    c = choose_acceptance(ACCEPTS, [6.0, 6.0, 6.0, 6.0], [0.05] * 4, ["ok", "unconverged", "ok", "ok"])
    assert c.rung == 2 and "0.9 is unconverged" in c.reason, c


def _theory_slope(hessian, gradient, n_beta, gamma, h=1e-4):
    """dλ̂/d ln(nβ) of the exact quadratic expectation, by a central difference in ln nβ."""
    from lambda_hat.science.theory import quadratic_expected_llc_at

    up = quadratic_expected_llc_at(hessian, gradient, n_beta * math.exp(h), gamma)
    down = quadratic_expected_llc_at(hessian, gradient, n_beta * math.exp(-h), gamma)
    return (up - down) / (2 * h)


@pytest.mark.parametrize("gamma", [1.0, 500.0, 5000.0])
def test_nbeta_slope_from_exact_posterior_draws_matches_the_derivative_of_theory(gamma):
    """Independent draws from the exact Gaussian posterior of a quadratic loss with a gradient
    left at w* (precision P = nβH + γI, mean −nβP⁻¹g): λ̂ − Var(per-draw λ̂) must equal the
    derivative of the exact E[λ̂] in ln nβ within 3 of its standard errors. The derivative is
    ≈ 0 at small γ (both terms d/2) and not at γ ~ nβ·h, where the test has power (a variance
    taken as a standard deviation, or a sign flipped, misses by many errors)."""
    from lambda_hat.science.calibration import nbeta_slope

    rng = np.random.default_rng(7)
    d, n_beta, draws = 12, 700.0, 40_000
    q = np.linalg.qr(rng.normal(size=(d, d)))[0]
    hessian = q @ np.diag(np.geomspace(0.05, 6.0, d)) @ q.T
    gradient = rng.normal(scale=2e-3, size=d)
    precision = n_beta * hessian + gamma * np.eye(d)
    mean = -n_beta * np.linalg.solve(precision, gradient)
    delta = rng.multivariate_normal(mean, np.linalg.inv(precision), size=draws)
    llc = n_beta * (delta @ gradient + 0.5 * np.einsum("ij,jk,ik->i", delta, hessian, delta))
    got = nbeta_slope(float(llc.mean()), float(llc.std(ddof=1)), float(llc.std(ddof=1) / math.sqrt(draws)), float(draws))
    want = _theory_slope(hessian, gradient, n_beta, gamma)
    assert abs(got.slope - want) < 3 * got.se, (got, want)
    if gamma >= 500:  # where the localizer rivals nβh the slope is far from 0: the check bites
        assert abs(want) > 10 * got.se, (got, want)


def test_unconverged_pilots_are_told_how_much_longer_to_run():
    from lambda_hat.calibrate import _more_steps

    rows = [{"status": "unconverged", "ess_bulk": 63.0}, {"status": "unconverged", "ess_bulk": 120.0},
            {"status": "ok", "ess_bulk": 20.0}, {"status": "unconverged", "ess_bulk": None}]
    assert _more_steps(rows, 400) == " (bulk ESS down to 63 against 400: 6.3× their steps at the least)"
    # flagged by R-hat alone: no budget follows from the ESS
    assert _more_steps([{"status": "unconverged", "ess_bulk": 900.0}], 400) == ""


@pytest.mark.slow
def test_the_suggested_budget_is_a_floor_not_an_overshoot():
    """SGLD on the normal crossing [1, 2] (n = 10,000, σ = 0.25) at its default 30,000 steps is
    unconverged (measured bulk ESS 63 of 400). Run for the factor `_more_steps` names (steps,
    warm-up and thinning alike, so the same number of draws): "at the least" must hold (the
    bulk ESS not past 400 by more than the estimate's roughness, 25 %; measured 225), and the
    longer run must gain ESS and precision (ESS at least doubled, SEM smaller)."""
    from lambda_hat.calibrate import _more_steps
    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import RunSpec, TargetSpec

    spec = TargetSpec(model={"kind": "polynomial", "powers": [1, 2]}, data={"n_data": 10_000, "noise_scale": 0.25}, seed=0)
    arrays = build_target(spec)

    def run(scale: float) -> dict:
        sampler = {"name": "sgld", "chains": 4, "steps": round(30_000 * scale), "warmup": round(5_000 * scale),
                   "eval_every": round(20 * scale)}
        return sample_run(RunSpec(target_id="t", sampler=sampler, seed=1), spec, arrays).metrics

    short = run(1.0)
    words = _more_steps([{"status": short["status"], "ess_bulk": short["ess_bulk"]}], 400)
    assert words, short  # the default budget is too short here: the premise of the test
    factor = float(words.split(": ")[1].split("×")[0])
    long = run(factor)
    print("short", short["ess_bulk"], "factor", factor, "long", long["ess_bulk"], long["status"])
    assert 2 * short["ess_bulk"] < long["ess_bulk"] < 1.25 * 400, (factor, short["ess_bulk"], long["ess_bulk"])
    assert long["llc_sem"] < short["llc_sem"], (short, long)
