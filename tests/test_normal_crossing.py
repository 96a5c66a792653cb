"""Normal-crossing targets y = x·∏ wᵢ^pᵢ (devinterp's accuracy cases): spec, model, exact λ and
multiplicity, the finite-n reference a run carries (`llc_ref`; its accuracy is tested in
tests/test_theory.py), NUTS against it on a small target, and (slow) on devinterp's six cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from lambda_hat.ids import target_id
from lambda_hat.science import build_target
from lambda_hat.science.theory import normal_crossing_lambda, normal_crossing_reference
from lambda_hat.specs import RunSpec, TargetSpec

# devinterp's cases (tests/slt/sampler_accuracy_test.py there): powers -> λ = 1/(2·max p), m.
CASES = {(0, 1): (0.5, 1), (1, 1): (0.5, 2), (1, 2): (0.25, 1), (2, 2): (0.25, 2), (0, 3): (1 / 6, 1), (3, 3): (1 / 6, 2)}


def _spec(powers, n=1000):
    return TargetSpec(model={"kind": "polynomial", "powers": list(powers)}, data={"n_data": n, "noise_scale": 0.25})


@pytest.mark.parametrize("powers", CASES)
def test_exact_lambda_and_multiplicity(powers):
    assert normal_crossing_lambda(powers) == pytest.approx(CASES[powers], rel=1e-15)


def test_exact_lambda_refuses_constant_models():
    with pytest.raises(ValueError, match="positive"):
        normal_crossing_lambda([0, 0])
    with pytest.raises(ValueError):
        TargetSpec(model={"kind": "polynomial", "powers": [0, 0]})
    with pytest.raises(ValueError, match="w_star: teacher"):
        TargetSpec(model={"kind": "polynomial", "powers": [1]}, w_star="trained")
    with pytest.raises(ValueError, match="teacher.rank"):
        TargetSpec(model={"kind": "polynomial", "powers": [1]}, teacher={"rank": 1})


def test_reference_approaches_lambda_from_below_as_n_beta_grows():
    # The finite-n reference (tests/test_theory.py checks it against closed forms and brute force)
    # tends to λ = 1/(2·max p): within 1 % at nβ = 1e8 for multiplicity 1 (γ's effect is
    # O(γ·(nβ)^{-1/p})), and from well below and slowly, like 1/log nβ, for multiplicity 2.
    for p in (1, 2, 3):
        assert normal_crossing_reference([p], 1e8, 1.0, 1.0, 0.0)[0] == pytest.approx(1 / (2 * p), rel=0.01)
    m2 = [normal_crossing_reference([2, 2], nb, 1.0, 4.0, 0.0)[0] for nb in (1e2, 1e4, 1e6, 1e8)]
    assert m2 == sorted(m2) and m2[-1] < 0.25 and m2[0] < 0.65 * 0.25  # 0.159, 0.185, 0.200, 0.209


def test_target_at_origin_with_exact_lambda():
    t = build_target(_spec((0, 3)))
    m = t.metrics
    assert list(t.params) == ["w"] and np.all(t.params["w"] == 0) and t.X.shape == (1000, 1)
    assert m["llc_true"] == pytest.approx(1 / 6) and m["llc_multiplicity"] == 1
    # L0 is the noise's mean square (the model is 0 at w = 0); the gradient is exact there (no NaN
    # from the zero power) and vanishes (power 3).
    assert m["L0"] == pytest.approx(float(np.mean(t.Y ** 2)), rel=1e-12)
    assert m["grad_norm"] == 0.0 and m["w_star_status"] == "ok"
    # (1, 1) at 0 is a saddle of L_n (the noise's correlation with x tilts it): flagged, λ kept.
    s = build_target(_spec((1, 1))).metrics
    assert s["w_star_status"] == "not_minimum" and s["llc_true"] == 0.5 and s["llc_multiplicity"] == 2


def _moments(arrays):
    x, y = arrays.X[:, 0].astype(np.float64), arrays.Y[:, 0].astype(np.float64)
    return float(np.mean(x * x)), float(np.mean(x * y))


# The two runs below share one target and one compiled NUTS program (nβ and γ are its arguments).
SMALL = _spec((1, 1), n=200)
NUTS_SMALL = {"name": "nuts", "draws": 500, "warmup": 300, "chains": 4}
_built: dict = {}


def _small():
    if "arrays" not in _built:
        _built["arrays"] = build_target(SMALL)
    return _built["arrays"]


def test_runs_carry_the_finite_n_reference_of_their_own_posterior():
    # The reference depends on the run's nβ and γ, so it is computed for the run (pipeline → llc.
    # finite_n_reference) from the target's data, and rel_error is measured against it.
    from lambda_hat.science import sample_run
    from lambda_hat.science.llc import finite_n_reference

    arrays = _small()
    run = RunSpec(target_id=target_id(SMALL), sampler=NUTS_SMALL, posterior={"gamma": 2.0, "beta0": 1.5})
    m = sample_run(run, SMALL, arrays).metrics
    assert m["n_params"] == 2 and np.isfinite(m["llc_mean"]) and m["status"] != "nonfinite"
    value, err = normal_crossing_reference([1, 1], 200 * 1.5 / math.log(200), 2.0, *_moments(arrays))
    assert m["llc_ref"] == value and m["llc_ref_se"] == err and "FFT" in m["llc_ref_method"]
    assert m["rel_error"] == pytest.approx((m["llc_mean"] - value) / value, rel=1e-12)
    assert value != finite_n_reference(SMALL, arrays, m["n_beta"], 1.0, 0.0)["llc_ref"]  # γ matters
    # no reference where the posterior is improper (γ = 0, two coordinates), nor for other kinds
    assert finite_n_reference(SMALL, arrays, m["n_beta"], 0.0, m["llc_mean"]) == {}
    dln = TargetSpec(model={"kind": "dln", "widths": [2, 2]}, data={"n_data": 10})
    assert finite_n_reference(dln, arrays, 1.0, 1.0, 0.0) == {}


def test_nuts_measures_the_finite_n_reference_not_the_asymptote():
    # Multiplicity 2 at n = 200: the finite-n expectation is 0.333, a third below λ = 0.5. NUTS
    # (4 × 500 draws) must land within 4 of its standard errors of the reference and more than 4 from
    # λ (measured: 0.354 ± 0.018, 1.1 SE from the reference and 8 from λ).
    from lambda_hat.science import sample_run

    arrays = _small()
    run = RunSpec(target_id=target_id(SMALL), sampler=NUTS_SMALL, seed=1)
    m = sample_run(run, SMALL, arrays).metrics
    info = {k: m.get(k) for k in ("llc_mean", "llc_sem", "llc_ref", "r_hat", "ess_bulk", "divergence_rate")}
    print(info)
    assert m["r_hat"] < 1.05 and m["ess_bulk"] > 300, info
    assert abs(m["llc_mean"] - m["llc_ref"]) < 4 * m["llc_sem"], info
    assert abs(m["llc_mean"] - 0.5) > 4 * m["llc_sem"], info


@pytest.mark.slow
@pytest.mark.parametrize("powers", CASES)
def test_nuts_matches_the_reference_and_the_reference_lies_below_theory(powers):
    # λ̂ estimates the finite-n expectation, which the run computes exactly for this very data: NUTS
    # must agree with it within 4 standard errors or 12 % (divergences on these cusps are counted, not
    # failed; where they are frequent they bias NUTS: [1,2] measured −10 %, 3.4 sem, 2.7 % divergent;
    # the other five within 2.1 sem, docs/accuracy.md). Against the asymptotic λ the finite-n value is
    # 1-17 % below for multiplicity 1 ([1,2] is the slowest, 0.209 vs 0.25 at nβ = 145) and 28-47 %
    # below for multiplicity 2 (the −(m−1)/log(nβ)-type correction: 0.36 vs 0.5 on [1,1]).
    from lambda_hat.science import sample_run

    spec = _spec(powers)
    arrays = build_target(spec)
    run = RunSpec(target_id=target_id(spec), sampler={"name": "nuts", "draws": 2000, "warmup": 500, "chains": 4}, seed=1)
    m = sample_run(run, spec, arrays).metrics
    ref = m["llc_ref"]
    print(powers, m["llc_mean"], m["llc_sem"], ref, CASES[powers])
    assert abs(m["llc_mean"] - ref) < max(4 * m["llc_sem"], 0.12 * ref), (m["llc_mean"], m["llc_sem"], ref)
    lam, mult = CASES[powers]
    if mult == 1:
        assert 0.8 * lam < ref < lam
    else:
        assert 0.4 * lam < ref < 0.75 * lam
