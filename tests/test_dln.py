"""Deep linear network targets (lambda_hat.science.dln)."""

from __future__ import annotations

import numpy as np
import pytest

from lambda_hat.science.dln import SINGULAR_VALUE_RANGE, build_dln_target, llc_true, make_dln_teacher
from lambda_hat.science.theory import rrr_lambda as rrr
from lambda_hat.science.wstar import shift_tol
from lambda_hat.specs import DataSpec, TargetSpec, TeacherSpec, TrainingSpec


def _spec(widths, rank=None, **kw):
    kw.setdefault("data", DataSpec(n_data=64, n_test=32, noise_scale=0.1))
    return TargetSpec(model={"kind": "dln", "widths": widths}, teacher=TeacherSpec(rank=rank), **kw)


def _product(params):
    L = len(params)
    P = params["W_0"]
    for l in range(1, L):
        P = P @ params[f"W_{l}"]
    return P


@pytest.mark.parametrize("widths,rank", [([5, 3, 5], 2), ([4, 6, 3, 5], 3), ([3, 7, 2, 6], 1), ([6, 4], 4)])
def test_teacher_ranks_shapes_and_balance(widths, rank):
    t = build_dln_target(_spec(widths, rank))
    P = t.params
    assert sorted(P) == [f"W_{l}" for l in range(len(widths) - 1)]
    for l in range(len(widths) - 1):
        W = P[f"W_{l}"]
        assert W.shape == (widths[l], widths[l + 1]) and W.dtype == np.float64
        assert np.linalg.matrix_rank(W) == rank
    for l in range(len(widths) - 2):  # balanced: W_lᵀW_l = W_{l+1}W_{l+1}ᵀ
        A, B = P[f"W_{l}"], P[f"W_{l + 1}"]
        np.testing.assert_allclose(A.T @ A, B @ B.T, atol=1e-10)
    prod = _product(P)
    assert np.linalg.matrix_rank(prod) == rank
    sv = np.linalg.svd(prod, compute_uv=False)[:rank]
    lo, hi = SINGULAR_VALUE_RANGE
    assert np.all((sv >= lo - 1e-9) & (sv <= hi + 1e-9))
    assert t.X.shape == (64, widths[0]) and t.Y.shape == (64, widths[-1])
    # Y = X·prod + 0.1·noise
    resid = t.Y - t.X @ prod
    assert 0.05 < resid.std() < 0.2
    m = t.metrics
    assert m["L0"] == pytest.approx(np.mean(np.sum(resid**2, axis=1)), rel=1e-10)
    assert m["train_steps"] == 0 and m["final_train_loss"] == m["L0"]
    assert m["n_params"] == sum(a * b for a, b in zip(widths[:-1], widths[1:]))
    assert (m["n_data"], m["n_test"]) == (64, 32)
    assert m["test_loss"] > 0


def test_rank_zero_teacher_is_zero_and_full_rank_default():
    t = build_dln_target(_spec([4, 3, 4], 0))
    assert all(np.all(W == 0) for W in t.params.values())
    assert t.metrics["llc_true"] == 5.0  # Aoyagi–Watanabe case 1, odd: (2·3·8 − 0 − 9 + 1)/8
    s = _spec([4, 3, 4])  # rank None → full (min width)
    assert s.teacher.rank == 3 and s.w_star == "teacher"
    assert llc_true(s) == 7.5  # 3·(4 + 4 − 3)/2


def test_llc_true_values():
    assert llc_true(_spec([5, 3, 5], 0)) == 6.5
    assert llc_true(_spec([5, 3, 5], 1)) == 8.0
    assert llc_true(_spec([2, 2, 2, 2], 0)) == 1.5
    assert llc_true(_spec([10, 10, 10, 10, 10], 0)) == 31.5
    assert llc_true(_spec([10, 10], 3)) == 50.0
    assert llc_true(_spec([5, 3, 5], 1, w_star="trained")) is None


def test_deterministic_and_seeded():
    a = build_dln_target(_spec([5, 3, 4], 2, seed=3))
    b = build_dln_target(_spec([5, 3, 4], 2, seed=3))
    c = build_dln_target(_spec([5, 3, 4], 2, seed=4))
    for k in a.params:
        np.testing.assert_array_equal(a.params[k], b.params[k])
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.Y, b.Y)
    assert a.metrics == b.metrics
    assert not np.allclose(a.params["W_0"], c.params["W_0"])


def test_float32():
    t = build_dln_target(_spec([4, 3, 2], 1, dtype="float32"))
    assert all(W.dtype == np.float32 for W in t.params.values())
    assert t.X.dtype == np.float32 and t.Y.dtype == np.float32
    assert np.linalg.matrix_rank(_product(t.params), tol=1e-4) == 1


def test_trained_student():
    spec = _spec(
        [4, 3, 2], 1, w_star="trained",
        training=TrainingSpec(learning_rate=0.02, steps=600, early_stop_tol=None),
    )
    t = build_dln_target(spec)
    m = t.metrics
    assert m["train_steps"] == 600
    # The llc_true rule: trained to the refined teacher's loss (a λ̂ shift within shift_tol(d) = 1 % of d/2), so it
    # carries the exact λ of the rank-1 truth (reduced rank regression 4 -> 3 -> 2, r = 1)...
    n_beta0 = 64 / np.log(64)
    assert n_beta0 * abs(m["L0"] - m["L0_refined"]) <= shift_tol(m["n_params"])
    assert m["llc_true"] == rrr(4, 3, 2, 1) == 3.5
    # Trained to (near) the least-squares fit: L0 near the noise level (0.1² · out_dim = 0.02).
    assert m["L0"] < 0.03
    assert m["final_train_loss"] == pytest.approx(m["L0"], rel=1e-6)
    assert sorted(t.params) == ["W_0", "W_1"]
    # ... while a student stopped far above that minimum carries none.
    short = build_dln_target(_spec([4, 3, 2], 1, w_star="trained",
                                   training=TrainingSpec(learning_rate=0.001, steps=100, early_stop_tol=None)))
    assert n_beta0 * (short.metrics["L0"] - short.metrics["L0_refined"]) > shift_tol(m["n_params"])
    assert short.metrics["llc_true"] is None


def test_other_data_distributions_are_supported():
    aniso = DataSpec(n_data=16, n_test=8, x_dist="gauss_aniso", noise_model="hetero")
    t = build_dln_target(_spec([3, 2, 3], 1, data=aniso))
    assert t.X.shape == (16, 3) and t.metrics["llc_true"] == rrr(3, 2, 3, 1)
    low = DataSpec(n_data=16, n_test=8, x_dist="lowdim_manifold", x_dim_latent=2)
    assert llc_true(_spec([3, 2, 3], 1, data=low)) is None  # singular input covariance


def test_teacher_builder_validates():
    import jax

    with pytest.raises(ValueError):
        make_dln_teacher(jax.random.PRNGKey(0), [3, 2, 3], 3, np.float64)
    with pytest.raises(ValueError):
        build_dln_target(TargetSpec())  # an mlp target
