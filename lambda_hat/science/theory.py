"""Exact learning coefficients λ (real log canonical thresholds) where theory knows them.

No JAX. The learning coefficients are computed in exact rational arithmetic with
`fractions.Fraction` and returned as floats (all of them are multiples of 1/(4ℓ), so the
float is exact for every practical size); the finite-n expectations use numpy (and scipy's
complex log-Gamma), imported when called.

Conventions. λ is the learning coefficient of the model at a true parameter, for the loss
L_n(w) = (1/n) Σ‖y − f_w(x)‖² of `losses.py` (λ does not depend on the scale of the loss).
A "width list" [H_1, ..., H_{L+1}] lists every layer size, input first and output last:
the network is x ↦ x W_1 ⋯ W_L with W_j of shape (H_j, H_{j+1}), d = Σ H_j H_{j+1}
parameters.

Functions
  regular_lambda(d)               d/2, a regular (identifiable, non-degenerate) model.
  rrr_lambda(M, H, N, r)          reduced rank regression y = B A x (Aoyagi & Watanabe 2005).
  dln_lambda(widths, r)           deep linear network with a rank-r true map (Aoyagi 2024).
  normal_crossing_lambda(powers)  y = x·∏ wᵢ^pᵢ at w = 0: (λ, multiplicity m).
  normal_crossing_reference(...)  its exact finite-n E[nβ(L − L0)] (any powers) and numerical error.
  quadratic_expected_llc(...)     exact finite-n E[nβ(L − L0)] for an exactly quadratic loss.

References
  M. Aoyagi, S. Watanabe (2005). Stochastic complexities of reduced rank regression in
    Bayesian estimation. Neural Networks 18(7), 924–933. (Main theorem.)
  M. Aoyagi (2024). Consideration on the learning efficiency of multiple-layered neural
    networks with linear units. Neural Networks 172, 106132. (Theorem 1; restated in
    Furman & Lau 2024, "Estimating the local learning coefficient at scale", appendix.)
  E. Lau, Z. Furman, G. Wang, D. Murfet, S. Wei (2023/2025). The local learning
    coefficient: a singularity-aware complexity measure. (Restates the RRR formula.)
"""

from __future__ import annotations

import math
import operator
from fractions import Fraction
from typing import Iterable, Sequence

__all__ = [
    "regular_lambda",
    "rrr_lambda",
    "dln_lambda",
    "dln_subset",
    "normal_crossing_lambda",
    "normal_crossing_expected_llc",
    "normal_crossing_reference",
    "quadratic_expected_llc",
]


def _check_int(name: str, v, minimum: int) -> int:
    if isinstance(v, bool):
        raise TypeError(f"{name} must be an integer, got {v!r}")
    try:
        v = operator.index(v)  # int, numpy integer; not float
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {v!r}") from None
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {v}")
    return v


def regular_lambda(d: int | float) -> float:
    """λ = d/2 for a regular model with d parameters."""
    if d < 0:
        raise ValueError(f"d must be >= 0, got {d}")
    return d / 2


# --------------------------------------------------------------------------- RRR


def _rrr_fraction(M: int, H: int, N: int, r: int) -> Fraction:
    """Aoyagi & Watanabe (2005), main theorem. M: input dim, H: hidden (inner) dim,
    N: output dim, r: rank of the true map (0 <= r <= min(M, H, N)).

    Case 1  N + r <= M + H,  M + r <= N + H,  H + r <= M + N:
              M + H + N + r even:  λ = [2(H+r)(M+N) − (M−N)² − (H+r)²] / 8
              M + H + N + r odd:   λ = [2(H+r)(M+N) − (M−N)² − (H+r)² + 1] / 8
    Case 2  M + H < N + r:        λ = [HM − Hr + Nr] / 2
    Case 3  N + H < M + r:        λ = [HN − Hr + Mr] / 2
    Case 4  M + N < H + r:        λ = MN / 2
    (Cases 2–4 are mutually exclusive given r <= min(M, H, N), and case 1 is their complement.)
    """
    if M + H < N + r:
        return Fraction(H * M - H * r + N * r, 2)
    if N + H < M + r:
        return Fraction(H * N - H * r + M * r, 2)
    if M + N < H + r:
        return Fraction(M * N, 2)
    num = 2 * (H + r) * (M + N) - (M - N) ** 2 - (H + r) ** 2
    if (M + H + N + r) % 2 == 1:
        num += 1
    return Fraction(num, 8)


def rrr_lambda(M: int, H: int, N: int, r: int) -> float:
    """Learning coefficient of reduced rank regression y = B A x, A: H×M, B: N×H, at a true
    map of rank r (Aoyagi & Watanabe 2005). As a width list this is [M, H, N]."""
    M = _check_int("M", M, 1)
    H = _check_int("H", H, 1)
    N = _check_int("N", N, 1)
    r = _check_int("r", r, 0)
    if r > min(M, H, N):
        raise ValueError(f"true rank r={r} exceeds min(M, H, N)={min(M, H, N)}")
    return float(_rrr_fraction(M, H, N, r))


# --------------------------------------------------------------------------- DLN


def dln_subset(widths: Sequence[int], r: int) -> tuple[list[int], int]:
    """The index set Σ of Aoyagi (2024), Theorem 1, and ℓ = |Σ| − 1.

    With reduced widths M_j = H_j − r (j = 1..L+1), Σ has ℓ + 1 elements and satisfies
        (a) max{M_σ : σ ∈ Σ} < min{M_k : k ∉ Σ},
        (b) Σ_{σ∈Σ} M_σ >= ℓ · max{M_σ : σ ∈ Σ},
        (c) Σ_{σ∈Σ} M_σ <  ℓ · min{M_k : k ∉ Σ}     (vacuous when Σ is everything).
    By (a), Σ holds the ℓ + 1 smallest M's. Sort them, m_1 <= ... <= m_{L+1}, and let
    P(k) be "m_1 + ... + m_{k+1} >= k · m_{k+1}" (condition (b) for the first k+1). Then
    (c) for the first k+1 is exactly not-P(k+1), and P is monotone (P(k) false ⇒ P(k+1)
    false, since m_1+…+m_{k+2} < k·m_{k+1} + m_{k+2} <= (k+1)·m_{k+2}); P(0) and P(1) always
    hold. So Σ is unique: the first k+1 with k the largest such that P(k) holds (k >= 1
    when L >= 1). A cut inside a tie can never pass both (b) and (c), so ties in the sort
    do not matter and (a) holds with strict inequality.

    Returns (sorted list of 0-based indices into `widths`, ℓ).
    """
    Ms = [h - r for h in widths]
    order = sorted(range(len(Ms)), key=lambda j: (Ms[j], j))
    m = [Ms[j] for j in order]
    ell = 1
    prefix = m[0] + m[1]
    for k in range(2, len(m)):
        prefix += m[k]
        if prefix >= k * m[k]:
            ell = k
        else:
            break
    return sorted(order[: ell + 1]), ell


def _dln_fraction(widths: list[int], r: int) -> Fraction:
    """Aoyagi (2024), Theorem 1. With Σ, ℓ from `dln_subset`, S = Σ_{σ∈Σ} M_σ and
    a = S mod ℓ (equivalently a = S − ℓ(⌈S/ℓ⌉ − 1) ∈ {1..ℓ}; a(ℓ − a) is the same):

        λ = [−r² + r(H_1 + H_{L+1})]/2 + a(ℓ − a)/(4ℓ) − [ℓ(ℓ − 1)/4]·(S/ℓ)²
            + ½ Σ_{σ<σ' ∈ Σ} M_σ M_σ'.
    """
    H1, Hout = widths[0], widths[-1]
    Ms = [h - r for h in widths]
    idx, ell = dln_subset(widths, r)
    sub = [Ms[j] for j in idx]
    S = sum(sub)
    a = S % ell
    pair_sum = (S * S - sum(x * x for x in sub)) // 2  # Σ_{i<j} M_i M_j, exact integer
    lam = Fraction(-r * r + r * (H1 + Hout), 2)
    lam += Fraction(a * (ell - a), 4 * ell)
    lam -= Fraction(ell * (ell - 1), 4) * Fraction(S, ell) ** 2
    lam += Fraction(pair_sum, 2)
    return lam


def dln_lambda(widths: Iterable[int], r: int) -> float:
    """Learning coefficient of the deep linear network with layer sizes `widths`
    ([H_1 (input), ..., H_{L+1} (output)]) at a true parameter whose end-to-end map has
    rank r (Aoyagi 2024, Theorem 1). A single layer ([H_1, H_2]) is regular: H_1·H_2/2.
    For two layers this equals `rrr_lambda(H_1, H_2, H_3, r)`.
    """
    ws = [_check_int("widths[i]", w, 1) for w in widths]
    if len(ws) < 2:
        raise ValueError(f"widths needs at least 2 entries (input and output), got {ws}")
    r = _check_int("r", r, 0)
    if r > min(ws):
        raise ValueError(f"true rank r={r} exceeds the smallest width {min(ws)}")
    return float(_dln_fraction(ws, r))


# --------------------------------------------------------------------------- normal crossing


def normal_crossing_lambda(powers: Sequence[int]) -> tuple[float, int]:
    """(λ, m) of the model y = x·∏ wᵢ^pᵢ at the origin, data from the zero function.

    Here K(w) = E[x²]·∏ wᵢ^(2pᵢ) is already in normal crossing form and the prior is positive
    at 0, so λ = min over pᵢ > 0 of (0 + 1)/(2pᵢ) = 1/(2·max p) and the multiplicity m is the
    number of coordinates attaining that maximum (Watanabe 2009, the standard form of the
    resolution theorem; devinterp's normal-crossing test cases). Coordinates with pᵢ = 0 do not
    enter the model: they add nothing to λ. At least one power must be positive (otherwise the
    model is a constant and K ≡ E[x²] has no zero).
    """
    ps = [_check_int("powers[i]", p, 0) for p in powers]
    if not ps or max(ps) == 0:
        raise ValueError(f"powers needs at least one positive entry, got {ps}")
    top = max(ps)
    return float(Fraction(1, 2 * top)), sum(1 for p in ps if p == top)


# The finite-n reference: E[nβ·(L_n(w) − L_n(0))] under exp(−nβ·(L_n(w) − L_n(0)) − (γ/2)‖w‖²).
#
# With u = ∏ wᵢ^kᵢ over the positive powers kᵢ, L_n(w) − L_n(0) = sxx·u² − 2·sxy·u exactly, so the
# d-dimensional integral is one over u, against the law of u under the localizer N(0, I/γ) (the
# coordinates with power 0 integrate out). log|u| = Σ kᵢ·log|wᵢ| is a sum of independent terms, so its
# density q is the convolution of theirs, and its characteristic function is a product of closed forms,
#     E[|wᵢ|^{iω}] = (σ√2)^{iω}·Γ((1 + iω)/2)/Γ(1/2),   σ = 1/√γ,
# inverted by one FFT on a grid in t = log|u|. The sign of u is independent of |u|: uniform ± when some
# power is odd, + when all are even. The expectation is then a 1-D trapezoid sum in t,
#     E = Σ_s π_s ∫ q(t)·E_s(t)·e^{−E_s(t)} dt / Σ_s π_s ∫ q(t)·e^{−E_s(t)} dt,
#     E_s(t) = nβ·(sxx·e^{2t} − 2s·sxy·e^t),
# which converges exponentially in the grid step (the integrands are analytic in a strip |Im t| < π/4);
# the grid spans the localizer's bulk, the energy's cut-off and, below, enough of q's left tail (which
# decays like |t|^{m−1}·e^{t/max k}) that what it leaves out is below 1e-16 of the normaliser.
# With γ = 0 and a single coordinate the measure of t is Lebesgue's, e^{t/k}·dt (up to a constant); with
# γ = 0 and more coordinates the posterior is improper (flat along the hyperplanes u = 0).
NORMAL_CROSSING_REF_METHOD = "log|u| density by FFT, trapezoid in log|u|"
_REF_STEP = 0.05  # grid step in t = log|u|; the error estimate compares it with twice this step
_REF_ROUNDING = 1e-12  # relative floor of the stated error: rounding in the FFT and the sums


def normal_crossing_reference(powers: Sequence[int], n_beta: float, gamma: float, sxx: float,
                              sxy: float) -> tuple[float, float]:
    """(E, err): the exact finite-n expectation E[nβ·(L_n(w) − L_n(0))] for the normal-crossing model
    y = x·∏ wᵢ^pᵢ under the localized tempered posterior exp(−nβ·(L_n(w) − L_n(0)) − (γ/2)‖w‖²)
    (`posterior.py`'s density at w* = 0), for any number of powers, and a bound on its numerical error.

    sxx = mean(x²) and sxy = mean(x·y) of the data are all it depends on (L_n(w) − L_n(0) =
    sxx·u² − 2·sxy·u, u = ∏ wᵢ^pᵢ). Method: the comment above; err is the change from halving the
    grid step (the trapezoid converges exponentially, so this bounds the finer result's error), plus
    the FFT's rounding as read off the grid, plus a floor of 1e-12·|E| for the sums. This is what λ̂
    at w* = 0 estimates at this nβ and γ; it approaches `normal_crossing_lambda` only as nβ → ∞,
    slowly when another coordinate enters u (like 1/log nβ). Raises ValueError when the posterior is
    improper (γ = 0 with more than one coordinate).
    """
    ps = [_check_int("powers[i]", p, 0) for p in powers]
    ks = [p for p in ps if p > 0]
    if not ks:
        raise ValueError(f"powers needs at least one positive entry, got {ps}")
    n_beta, gamma, sxx, sxy = float(n_beta), float(gamma), float(sxx), float(sxy)
    if not (n_beta > 0 and math.isfinite(n_beta)) or not (gamma >= 0 and math.isfinite(gamma)):
        raise ValueError(f"need n_beta > 0 and gamma >= 0, got {n_beta}, {gamma}")
    if not (sxx >= 0 and math.isfinite(sxx) and math.isfinite(sxy)) or (sxx == 0 and sxy != 0):
        raise ValueError(f"need sxx >= 0 and a finite sxy (0 when sxx is), got {sxx}, {sxy}")
    if gamma == 0 and len(ps) > 1:
        raise ValueError(f"with gamma = 0 the posterior of powers {ps} is improper (flat along u = 0)")
    if sxx == 0:  # x ≡ 0: the loss does not depend on w
        return 0.0, 0.0
    fine, noise = _nc_expectation(ks, n_beta, gamma, sxx, sxy, _REF_STEP)
    coarse, _ = _nc_expectation(ks, n_beta, gamma, sxx, sxy, 2 * _REF_STEP)
    return fine, abs(fine - coarse) + (_REF_ROUNDING + noise) * abs(fine)


def _nc_expectation(ks: list[int], n_beta: float, gamma: float, a: float, b: float,
                    step: float) -> tuple[float, float]:
    """(E, relative error from the FFT's rounding) on a grid of step about `step` in t = log|u|."""
    import numpy as np

    kmax, m = max(ks), len(ks)
    # where the energy becomes O(1) going up in t, and where its well (u = b/a) lies
    cut = -0.5 * math.log(n_beta * a)
    if b != 0.0:
        cut = min(cut, -math.log(2.0 * n_beta * abs(b)))
    well = math.log(abs(b) / a) if b != 0.0 else cut
    if gamma > 0:
        # the localizer's log|u|: mean and sd of Σ kᵢ·log|wᵢ|, wᵢ ~ N(0, 1/γ)
        e_log = -0.5 * math.log(gamma) - 0.5 * (0.5772156649015329 + math.log(2.0))
        mean = sum(ks) * e_log
        sd = math.sqrt(sum(k * k for k in ks) * math.pi ** 2 / 8)
        # left: q's tail ~ |t|^{m−1}·e^{t/kmax} (a Gamma(m) tail in units of kmax) is below 1e-16 there;
        # right: each |wᵢ|^{kᵢ} has a Gaussian tail in e^{t/kᵢ}, negligible 8 sd + 6·kmax above the mean
        lo = min(mean, cut) - kmax * (40.0 + 3.0 * m) - 8.0 * sd
        hi = max(mean + 8.0 * sd + 6.0 * kmax, cut, well) + 10.0
    else:  # one coordinate, Lebesgue measure: weight e^{t/k}, negligible 40·k below the cut-off
        lo = cut - 40.0 * kmax
        hi = max(cut, well) + 10.0
    N = 1 << max(8, math.ceil(math.log2((hi - lo) / step)))
    dt = (hi - lo) / N
    t = lo + dt * np.arange(N)
    if gamma > 0:
        from scipy.special import loggamma

        P = N * dt
        omega = 2.0 * math.pi * np.arange(N // 2 + 1) / P
        log_phi = np.zeros(N // 2 + 1, complex)
        for k in set(ks):  # E[|w|^{ikω}] for each distinct power, to the power of its count
            z = k * omega
            log_phi += ks.count(k) * (1j * z * (0.5 * math.log(2.0 / gamma)) + loggamma(0.5 + 0.5j * z)
                                      - 0.5 * math.log(math.pi))
        coef = np.exp(log_phi - 1j * omega * lo)  # shift the grid's origin to lo
        # q(t_j) = (1/P) Σ_ℓ φ(ω_ℓ) e^{−iω_ℓ t_j}, a real density: irfft of the conjugate
        weight = np.fft.irfft(np.conj(coef), n=N) * (N / P)
        # The FFT's rounding leaves an absolute error of about ε·max q at every point, which matters
        # where the posterior sits far out in q's left tail (γ ≪ nβ·sxx). Its size is read off the grid:
        # the last 10 units of t, where q is below 1e-300, and any negative value hold nothing else.
        rounding = max(float(np.max(np.abs(weight[t > hi - 10.0]))), float(-np.min(weight)), 0.0)
    else:
        weight = np.exp((t - hi) / kmax)  # e^{t/k}, scaled (the ratio below does not see it)
        rounding = 0.0
    signs = (1.0, -1.0) if any(k % 2 for k in ks) else (1.0,)
    eu = np.exp(np.minimum(t, 300.0))
    low = -n_beta * b * b / a  # the energy's minimum: e^{−(E − low)} ≤ 1, no overflow
    num = den = abs_num = abs_den = 0.0
    for s in signs:
        energy = n_beta * (a * eu * eu - 2.0 * s * b * eu)
        kept = energy - low < 740.0  # beyond, e^{−E} is below double precision's range
        boltz = np.where(kept, np.exp(-(np.where(kept, energy, low) - low)), 0.0)
        num += float(np.sum(weight * np.where(kept, energy, 0.0) * boltz))
        den += float(np.sum(weight * boltz))
        abs_num += float(np.sum(np.abs(np.where(kept, energy, 0.0)) * boltz))
        abs_den += float(np.sum(boltz))
    # |δnum| ≤ rounding·Σ|E|e^{−E}, |δden| ≤ rounding·Σe^{−E}: the ratio's relative error is at most their sum
    rel = rounding * (abs_num / abs(num) + abs_den / abs(den)) if num and den else 0.0
    return num / den, rel


def normal_crossing_expected_llc(powers: Sequence[int], n_beta: float, gamma: float, sxx: float,
                                 sxy: float) -> float:
    """The value of `normal_crossing_reference` (the exact finite-n expectation), without its error."""
    return normal_crossing_reference(powers, n_beta, gamma, sxx, sxy)[0]


# --------------------------------------------------------------------------- quadratic


def quadratic_expected_llc(hessian_eigs: Iterable[float], n_beta: float, gamma: float) -> float:
    """Exact E[nβ·(L_n(w) − L_n(w*))] under the localized tempered posterior
    exp(−nβ·L_n(w) − (γ/2)‖w − w*‖²) when L_n is exactly quadratic,
    L_n(w) = L0 + ½ (w − w*)ᵀ H (w − w*), with `hessian_eigs` the eigenvalues of H (the
    Hessian of L_n, in the `losses.py` convention). The posterior is Gaussian with precision
    nβH + γI, so the expectation is ½ Σ_i nβh_i / (nβh_i + γ): d/2 as γ/(nβ) → 0, and
    directions with h_i = 0 contribute nothing.
    """
    if n_beta <= 0:
        raise ValueError(f"n_beta must be > 0, got {n_beta}")
    if gamma < 0:
        raise ValueError(f"gamma must be >= 0, got {gamma}")
    total = 0.0
    for h in hessian_eigs:
        h = float(h)
        if h < 0:
            raise ValueError(f"Hessian eigenvalues must be >= 0, got {h}")
        if h == 0.0:
            continue
        total += n_beta * h / (n_beta * h + gamma)
    return 0.5 * total


def quadratic_expected_llc_at(hessian, gradient, n_beta: float, gamma: float) -> float:
    """Exact E[nβ·(L_n(w) − L_n(w*))] when L_n is exactly quadratic but w* need not be its
    minimum: L_n(w) = L0 + gᵀδ + ½ δᵀHδ, δ = w − w* (e.g. a linear model at the teacher's
    weights, where noise moves the least-squares minimum off w*). The posterior is Gaussian
    with precision P = nβH + γI and mean offset m = −nβ·P⁻¹g, so the expectation is
    nβ·(gᵀm + ½ mᵀHm + ½ tr(H P⁻¹)); with g = 0 it is `quadratic_expected_llc`.
    """
    import numpy as np

    H = np.asarray(hessian, dtype=np.float64)
    g = np.asarray(gradient, dtype=np.float64).reshape(-1)
    if H.shape != (g.size, g.size):
        raise ValueError(f"hessian has shape {H.shape} but the gradient has {g.size} entries")
    if n_beta <= 0 or gamma < 0:
        raise ValueError(f"need n_beta > 0 and gamma >= 0, got {n_beta}, {gamma}")
    P = n_beta * H + gamma * np.eye(g.size)
    m = -n_beta * np.linalg.solve(P, g)
    return float(n_beta * (g @ m + 0.5 * m @ H @ m + 0.5 * np.trace(np.linalg.solve(P, H))))
