"""Exact learning coefficients (lambda_hat.science.theory): pure Python, fast."""

from __future__ import annotations

import itertools
import math
import random
from fractions import Fraction

import pytest

from lambda_hat.science.theory import (
    _dln_fraction,
    _rrr_fraction,
    dln_lambda,
    dln_subset,
    normal_crossing_reference,
    quadratic_expected_llc,
    quadratic_expected_llc_at,
    regular_lambda,
    rrr_lambda,
)

# (widths, r, λ): worked values (Aoyagi & Watanabe 2005 cases; Aoyagi 2024 examples).
WORKED = [
    ([5, 3, 5], 0, 6.5),  # RRR case 1, M+H+N+r odd
    ([5, 3, 5], 1, 8.0),  # case 1, even
    ([5, 3, 5], 3, 10.5),  # full rank: (H(M+N) − H²)/2
    ([5, 4, 5], 0, 8.0),  # case 1, even
    ([4, 3, 8], 0, 6.0),  # case 2: M + H < N + r
    ([3, 8, 4], 0, 6.0),  # case 4: M + N < H + r
    ([3, 8, 4], 1, 6.0),
    ([3, 8, 4], 2, 6.0),
    ([3, 8, 4], 3, 6.0),
    ([2, 2, 2, 2], 0, 1.5),
    ([2, 2, 2, 2], 2, 2.0),
    ([10, 10, 10, 10, 10], 0, 31.5),
    ([10, 10, 10, 10, 10], 10, 50.0),
    ([10, 10], 0, 50.0),  # single layer: regular, d/2
    ([10, 10], 10, 50.0),
]


@pytest.mark.parametrize("widths,r,expected", WORKED)
def test_worked_values(widths, r, expected):
    assert dln_lambda(widths, r) == expected
    if len(widths) == 3:
        assert rrr_lambda(*widths, r) == expected


def test_rrr_case_examples():
    # One example per Aoyagi–Watanabe case (M, H, N, r).
    assert rrr_lambda(2, 1, 2, 0) == 1.0  # case 1 odd: (2·1·4 − 0 − 1 + 1)/8
    assert rrr_lambda(3, 2, 3, 0) == 2.5  # case 1 even: (2·2·6 − 0 − 4)/8
    assert rrr_lambda(2, 1, 4, 0) == 1.0  # case 2: HM/2
    assert rrr_lambda(8, 3, 4, 0) == 6.0  # case 3: HN/2
    assert rrr_lambda(4, 1, 2, 1) == 2.5  # case 3: (HN − Hr + Mr)/2 = (2 − 1 + 4)/2
    assert rrr_lambda(1, 4, 2, 0) == 1.0  # case 4: MN/2


def test_dln_equals_rrr_for_all_small_two_layer_networks():
    n = 0
    for M, H, N in itertools.product(range(1, 9), repeat=3):
        for r in range(min(M, H, N) + 1):
            assert _dln_fraction([M, H, N], r) == _rrr_fraction(M, H, N, r), (M, H, N, r)
            n += 1
    assert n > 1000


def test_single_layer_is_regular():
    for a, b in itertools.product(range(1, 8), repeat=2):
        for r in range(min(a, b) + 1):
            assert dln_lambda([a, b], r) == regular_lambda(a * b) == a * b / 2


def _all_valid_subsets(widths, r):
    """Brute force over every subset: the conditions of Aoyagi (2024), Theorem 1."""
    Ms = [h - r for h in widths]
    out = []
    idx = range(len(Ms))
    for size in range(2, len(Ms) + 1):
        for sub in itertools.combinations(idx, size):
            ell = size - 1
            vals = [Ms[j] for j in sub]
            rest = [Ms[j] for j in idx if j not in sub]
            S = sum(vals)
            if rest and not max(vals) < min(rest):
                continue
            if not S >= ell * max(vals):
                continue
            if rest and not S < ell * min(rest):
                continue
            out.append((list(sub), ell))
    return out


def _random_cases(seed, count, max_layers=6, max_width=9):
    rng = random.Random(seed)
    for _ in range(count):
        L = rng.randint(1, max_layers)
        widths = [rng.randint(1, max_width) for _ in range(L + 1)]
        yield widths


def test_subset_is_the_unique_one_of_the_theorem():
    for widths in _random_cases(0, 400):
        for r in range(min(widths) + 1):
            valid = _all_valid_subsets(widths, r)
            assert valid == [dln_subset(widths, r)], (widths, r, valid)


def test_bounds_and_monotonicity():
    for widths in _random_cases(1, 500, max_layers=7, max_width=12):
        d = sum(a * b for a, b in zip(widths[:-1], widths[1:]))
        lams = [_dln_fraction(widths, r) for r in range(min(widths) + 1)]
        for r, lam in enumerate(lams):
            assert 0 < lam <= Fraction(d, 2), (widths, r, lam)
            # λ is a multiple of 1/(4ℓ): float conversion is exact for these sizes.
            assert float(lam) == dln_lambda(widths, r)
        assert all(a <= b for a, b in zip(lams, lams[1:])), (widths, lams)


def test_full_rank_is_dimension_of_rank_r_matrices():
    # At r = min width the image is the manifold of rank-r H_1×H_{L+1} matrices, of
    # dimension r(H_1 + H_{L+1} − r); λ is half of it. Equal widths H: (L·H² − (L−1)·H²)/2,
    # the parameter count minus the GL(H)^{L−1} orbit, halved.
    for widths in _random_cases(2, 300, max_layers=6, max_width=10):
        r = min(widths)
        assert dln_lambda(widths, r) == r * (widths[0] + widths[-1] - r) / 2, widths
    for H, L in itertools.product(range(1, 6), range(1, 6)):
        assert dln_lambda([H] * (L + 1), H) == (L * H * H - (L - 1) * H * H) / 2


def test_dln_lambda_is_symmetric_under_reversal():
    # Transposing the network (y = x W_1⋯W_L ↔ xᵀ-side) swaps input and output.
    for widths in _random_cases(3, 200):
        for r in range(min(widths) + 1):
            assert dln_lambda(widths, r) == dln_lambda(widths[::-1], r)


def test_invalid_inputs():
    with pytest.raises(ValueError):
        dln_lambda([3, 2, 3], 3)
    with pytest.raises(ValueError):
        dln_lambda([3], 0)
    with pytest.raises(ValueError):
        dln_lambda([3, 0, 3], 0)
    with pytest.raises(TypeError):
        dln_lambda([3, 2.0, 3], 0)
    with pytest.raises(ValueError):
        rrr_lambda(3, 2, 3, -1)
    with pytest.raises(ValueError):
        rrr_lambda(3, 2, 3, 3)


def test_quadratic_expected_llc():
    assert quadratic_expected_llc([1.0, 2.0], n_beta=1e12, gamma=1.0) == pytest.approx(1.0, rel=1e-9)
    assert quadratic_expected_llc([1.0, 0.0, 3.0], n_beta=10.0, gamma=0.0) == 1.0
    h, nb, g = [0.5, 2.0, 4.0], 20.0, 3.0
    expected = 0.5 * sum(nb * x / (nb * x + g) for x in h)
    assert quadratic_expected_llc(h, nb, g) == pytest.approx(expected, rel=1e-15)
    assert quadratic_expected_llc([], 1.0, 1.0) == 0.0
    with pytest.raises(ValueError):
        quadratic_expected_llc([-1.0], 1.0, 1.0)
    with pytest.raises(ValueError):
        quadratic_expected_llc([1.0], 0.0, 1.0)
    assert regular_lambda(7) == 3.5


def test_quadratic_expected_llc_at_reduces_and_matches_one_dimension():
    import numpy as np

    from lambda_hat.science.theory import quadratic_expected_llc, quadratic_expected_llc_at

    h = np.array([0.1, 1.0, 3.0])
    assert quadratic_expected_llc_at(np.diag(h), np.zeros(3), 200.0, 2.0) == pytest.approx(
        quadratic_expected_llc(h, 200.0, 2.0), rel=1e-12)
    # one dimension by hand: P = nβh + γ, m = −nβg/P, E = nβ(g·m + h·m²/2 + h/(2P))
    nb, gam, hh, g = 50.0, 1.0, 2.0, 0.3
    P = nb * hh + gam
    m = -nb * g / P
    assert quadratic_expected_llc_at([[hh]], [g], nb, gam) == pytest.approx(nb * (g * m + hh * m * m / 2 + hh / (2 * P)))
    # a rotation of the coordinates changes nothing
    Q, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(3, 3)))
    gv = np.array([0.2, -0.1, 0.05])
    assert quadratic_expected_llc_at(Q @ np.diag(h) @ Q.T, Q @ gv, 80.0, 1.0) == pytest.approx(
        quadratic_expected_llc_at(np.diag(h), gv, 80.0, 1.0), rel=1e-10)
    with pytest.raises(ValueError):
        quadratic_expected_llc_at(np.eye(2), np.zeros(3), 1.0, 1.0)


# --------------------------------------------------------------------------- normal-crossing finite-n reference
# theory.normal_crossing_reference: E[nβ·(L_n(w) − L_n(0))] under exp(−nβ·(sxx·u² − 2·sxy·u) − (γ/2)‖w‖²),
# u = ∏ wᵢ^pᵢ. Its stated error `err` must cover the difference from every independent value below
# (they are themselves accurate to ~1e-12 relative: the 1e-12·|E| allowance).

NB = 1000 / math.log(1000)  # the default β = 1/log n at n = 1,000


def _within(value, err, exact, rel=1e-12):
    return abs(value - exact) <= err + rel * abs(exact)


@pytest.mark.parametrize("sxx,sxy,n_beta,gamma", [(1.3, 0.02, 150.0, 1.0), (4.0, -0.01, NB, 1.0), (1.0, 0.3, 50.0, 2.0),
                                                  (2.0, 0.0, 1e6, 1e-3), (4.0, 0.05, 1e4, 100.0)])
def test_reference_is_the_gaussian_closed_form_for_one_linear_coordinate(sxx, sxy, n_beta, gamma):
    # One power of 1: L − L0 = sxx·w² − 2·sxy·w is exactly quadratic and the posterior Gaussian
    # (quadratic_expected_llc_at); a power-0 coordinate is ignored by the model and integrates out.
    exact = quadratic_expected_llc_at([[2 * sxx]], [-2 * sxy], n_beta, gamma)
    for powers in ([1], [0, 1], [1, 0, 0]):
        value, err = normal_crossing_reference(powers, n_beta, gamma, sxx, sxy)
        assert _within(value, err, exact), (powers, value, exact, err)
        assert err < 1e-8 * abs(exact)


@pytest.mark.parametrize("p", [1, 2, 3, 5, 8])
def test_reference_without_localizer_is_one_over_2p(p):
    # γ = 0, no noise: E[c·w^(2p)] under e^{−c·w^(2p)} is 1/(2p) for every c (a Gamma integral).
    for n_beta in (10.0, NB, 1e6):
        value, err = normal_crossing_reference([p], n_beta, 0.0, 0.7, 0.0)
        assert _within(value, err, 1 / (2 * p)), (p, n_beta, value)


@pytest.mark.parametrize("n_beta,gamma,sxx", [(NB, 1.0, 4.0), (1e4 / math.log(1e4), 1.0, 4.0), (50.0, 10.0, 1.0),
                                              (1e6, 1.0, 1.0), (10.0, 30.0, 1.0)])
def test_reference_of_two_linear_coordinates_is_the_bessel_closed_form(n_beta, gamma, sxx):
    # Powers [1, 1], sxy = 0: integrating w₂ out (Gaussian given w₁) leaves a 1-D integral in closed form,
    # E = ½ − (q/2)·(K₁(q/2)/K₀(q/2) − 1), q = γ²/(4nβ·sxx): the multiplicity-2 log correction below ½.
    from scipy.special import k0e, k1e

    q = gamma * gamma / (4 * n_beta * sxx)
    exact = 0.5 - 0.5 * q * (k1e(q / 2) / k0e(q / 2) - 1)
    value, err = normal_crossing_reference([1, 1], n_beta, gamma, sxx, 0.0)
    assert _within(value, err, exact), (value, exact, err)


def _brute_force(powers, n_beta, gamma, sxx, sxy, nodes=12):
    """The same expectation as a plain 2-3-dimensional integral over w: a tensor grid of composite
    Gauss-Legendre nodes, panels refined towards the coordinate planes where the posterior sits."""
    import numpy as np

    s = 1 / math.sqrt(gamma)
    br = np.array([0, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.2, 0.4, 0.7, 1.0, 1.5, 2.2, 3.0, 4.5, 6.5, 9.0]) * s
    br = np.concatenate([-br[::-1], br[1:]])
    x, w = np.polynomial.legendre.leggauss(nodes)
    xs = ((br[1:, None] - br[:-1, None]) * (x + 1) / 2 + br[:-1, None]).ravel()
    ws = ((br[1:, None] - br[:-1, None]) / 2 * w).ravel() * np.exp(-0.5 * gamma * xs * xs)
    num = den = 0.0
    first = [(xs[i] ** powers[0], ws[i]) for i in range(len(xs))] if len(powers) == 3 else [(1.0, 1.0)]
    a, b = powers[-2:]
    for u0, w0 in first:
        u = u0 * xs[:, None] ** a * xs[None, :] ** b
        e = n_beta * (sxx * u * u - 2 * sxy * u)
        p = np.exp(-e) * w0 * ws[:, None] * ws[None, :]
        num, den = num + float((p * e).sum()), den + float(p.sum())
    return num / den


@pytest.mark.parametrize("powers,gamma,sxy", [([1, 1], 1.0, 0.01), ([1, 2], 1.0, -0.02), ([2, 2], 3.0, 0.01),
                                              ([3, 3], 1.0, 0.0), ([1, 1, 1], 1.0, 0.01), ([1, 2, 3], 1.0, 0.02),
                                              ([2, 2, 1], 0.5, -0.01)])
def test_reference_matches_a_brute_force_integral_in_two_and_three_dimensions(powers, gamma, sxy):
    # Measured: the two agree to 5e-12 relative (the grid's own error); 1e-9 leaves it room.
    value, err = normal_crossing_reference(powers, NB, gamma, 4.0, sxy)
    brute = _brute_force(powers, NB, gamma, 4.0, sxy)
    assert abs(value - brute) <= err + 1e-9 * abs(brute), (value, brute, err)


def test_reference_is_fast_for_any_number_of_powers():
    import time

    normal_crossing_reference([1], NB, 1.0, 4.0, 0.0)  # scipy's import, once
    for powers in ([1, 2, 3, 4], [3] * 10, [1, 64], [64] * 64):
        t0 = time.process_time()  # CPU time: other jobs on a shared machine do not count
        value, err = normal_crossing_reference(powers, NB, 1.0, 4.0, 0.01)
        assert time.process_time() - t0 < 1.0 and 0 < value < 1 / (2 * max(powers)) and err < 1e-6 * value
    # more coordinates at the top power only lower it at fixed n (the multiplicity's log correction)
    values = [normal_crossing_reference([2] * m, NB, 1.0, 4.0, 0.0)[0] for m in (1, 2, 3, 4)]
    assert values == sorted(values, reverse=True) and values[0] < 0.25


def test_reference_refuses_what_it_cannot_integrate():
    with pytest.raises(ValueError, match="improper"):
        normal_crossing_reference([1, 1], NB, 0.0, 4.0, 0.0)  # γ = 0: flat along the axes
    with pytest.raises(ValueError, match="improper"):
        normal_crossing_reference([0, 1], NB, 0.0, 4.0, 0.0)  # γ = 0: the ignored coordinate is flat
    with pytest.raises(ValueError, match="positive"):
        normal_crossing_reference([0, 0], NB, 1.0, 4.0, 0.0)
    with pytest.raises(ValueError):
        normal_crossing_reference([1], 0.0, 1.0, 4.0, 0.0)
    with pytest.raises(ValueError):
        normal_crossing_reference([1], NB, -1.0, 4.0, 0.0)
    assert normal_crossing_reference([2], NB, 1.0, 0.0, 0.0) == (0.0, 0.0)  # x ≡ 0: a constant loss
