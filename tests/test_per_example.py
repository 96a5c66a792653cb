"""Per-example losses (`record: {per_example: ...}`) and what they give without more sampling:
ν, WAIC and per-example λ̂ contributions (science/per_example.py), checked against theory.

The pure checks draw from the exact tempered posterior of linear regression (conjugate: Gaussian),
so only the estimators are on trial; the end-to-end one samples it with NUTS through `lh execute`."""

import json
import math

import numpy as np
import pytest

from lambda_hat.science.per_example import (example_rows, fluctuation, generalisation, influence, likelihood_scale,
                                            query_columns)

from lhproc import lh, start


def _regression(rng, n, d_in, D, sigma):
    X = rng.normal(size=(n, d_in))
    W = rng.normal(size=(d_in, D))
    return X, W, X @ W + sigma * rng.normal(size=(n, D))


def _posterior_draws(rng, X, Y, beta, draws):
    """Exact draws from exp(−nβ·L_n(W)), L_n = mean ‖y − Wᵀx‖² (γ = 0): each output's column is
    Gaussian with precision 2β·XᵀX around the least-squares W."""
    P = 2 * beta * X.T @ X
    W_hat = np.linalg.solve(X.T @ X, X.T @ Y)
    L = np.linalg.cholesky(np.linalg.inv(P))
    Z = rng.normal(size=(draws, X.shape[1], Y.shape[1]))
    return W_hat, W_hat + np.einsum("ij,sjk->sik", L, Z), np.linalg.inv(P)


def _losses(W, X, Y):
    """ℓ_i(W) = ‖y_i − Wᵀx_i‖² for draws W (s, d_in, D): (s, n)."""
    return ((Y[None] - np.einsum("ni,sik->snk", X, W)) ** 2).sum(-1)


@pytest.mark.parametrize("sigma", [0.05, 1.0])
def test_nu_matches_the_exact_posterior_variance_at_any_noise_level(sigma):
    """ν from draws against its value from the Gaussian posterior in closed form: with Δx_i ~
    N(0, s_i·I_D), s_i = x_iᵀP⁻¹x_i and r_i the residual at w*, Var‖r_i − Δx_i‖² = 4s_i‖r_i‖² + 2D·s_i²,
    so ν = β/(4σ̂²)·Σ_i (4s_i‖r_i‖² + 2D·s_i²). At σ = 1 this is d/2 to 1 %; at σ = 0.05 the
    posterior is wide against the noise (nβσ² ≈ 0.9) and ν is far above d/2, which the draws must
    show too."""
    rng = np.random.default_rng(3)
    n, d_in, D = 2000, 4, 3
    beta = 1 / math.log(n)
    X, _, Y = _regression(rng, n, d_in, D, sigma)
    W_hat, draws, C = _posterior_draws(rng, X, Y, beta, 4000)
    loss = _losses(draws, X, Y).reshape(4, 1000, n)  # 4 "chains" of 1000 draws
    r = Y - X @ W_hat
    L0 = float(np.mean((r ** 2).sum(-1)))
    s = np.einsum("ni,ij,nj->n", X, C, X)
    exact = beta / (4 * L0 / D) * np.sum(4 * s * (r ** 2).sum(-1) + 2 * D * s ** 2)
    got = fluctuation(loss, n, beta, likelihood_scale("mse", L0, D))
    print(sigma, got, "exact", exact, "d/2", d_in * D / 2)
    assert abs(got["nu"] - exact) < 3 * got["nu_se"], (got, exact)
    assert got["nu_se"] < 0.03 * exact  # the test has power
    if sigma == 1.0:
        assert abs(exact - d_in * D / 2) < 0.01 * d_in * D / 2
    else:
        assert exact > 1.5 * d_in * D / 2


def test_waic_estimates_the_generalisation_loss():
    """Over 40 datasets of n = 1,000, WAIC against the Bayes generalisation loss −E log E_w[p(y|x, w)]
    measured on 4,000 held-out examples (the Gaussian likelihood at the true σ, tempered at
    β' = 2σ²β ≈ 0.14 with the default β = 1/log n). Each is taken relative to the true model's
    loss on the same examples, which removes the O(1/√n) noise of the data and leaves the O(1/n)
    terms compared. The training loss T_n falls short of the generalisation loss by 2ν/n = d/n
    (Watanabe's equations of state for a regular model, any β'); WAIC must close that gap.
    Measured: WAIC − G = 0.00005 ± 0.00047, T − G = −0.00399 ± 0.00048 (theory −0.004). At n = 200
    and this β' the O(1/n²) terms show (WAIC − G = 0.0044 ± 0.0023, against 0.0007 at β' = 1)."""
    n, d_in, D, sigma = 1000, 4, 1, 0.7
    beta = 1 / math.log(n)
    s, c = likelihood_scale("mse", sigma ** 2 * D, D)
    gaps_waic, gaps_train = [], []
    for seed in range(40):
        rng = np.random.default_rng(100 + seed)
        X, W, Y = _regression(rng, n, d_in, D, sigma)
        Xt = rng.normal(size=(4000, d_in))
        Yt = Xt @ W + sigma * rng.normal(size=(4000, D))
        _, draws, _ = _posterior_draws(rng, X, Y, beta, 2000)
        loss = _losses(draws, X, Y).reshape(2, 1000, n)
        got = fluctuation(loss, n, beta, (s, c))
        T = _log_predictive(-s * loss.reshape(2000, n) + c)
        G = generalisation(_losses(draws, Xt, Yt).reshape(2, 1000, -1), (s, c))["gen_loss"]  # what a run reports
        S_train = -np.mean(-s * ((Y - X @ W) ** 2).sum(-1) + c)
        S_test = -np.mean(-s * ((Yt - Xt @ W) ** 2).sum(-1) + c)
        gaps_waic.append((got["waic"] - S_train) - (G - S_test))
        gaps_train.append((T - S_train) - (G - S_test))
    gw, gt = np.array(gaps_waic), np.array(gaps_train)
    se_w, se_t = gw.std(ddof=1) / math.sqrt(len(gw)), gt.std(ddof=1) / math.sqrt(len(gt))
    print("WAIC - G", gw.mean(), "+-", se_w, "  T - G", gt.mean(), "+-", se_t)
    assert gt.mean() < -5 * se_t  # the gap WAIC corrects is there, and resolved
    assert abs(gt.mean() + d_in * D / n) < 3 * se_t  # and it is d/n
    assert abs(gw.mean()) < 3 * se_w, (gw.mean(), se_w)


def test_influence_matches_the_exact_posterior_covariance_of_losses():
    """The Bayesian influence function −Cov_w(ℓ_i, ℓ_q) from exact posterior draws of linear
    regression against its closed form: the residuals r_i = y_i − x_iᵀw are jointly Gaussian with
    means m_i (at the posterior mean) and covariances C_iq = x_iᵀΣx_q, so for D outputs
    Cov(‖r_i‖², ‖r_q‖²) = 2D·C_iq² + 4·C_iq·⟨m_i, m_q⟩. Every entry within 5 of its own standard
    error (the spread of the centred products over the draws), and the query block symmetric."""
    rng = np.random.default_rng(5)
    n, d_in, D, draws = 300, 3, 2, 20000
    beta = 1 / math.log(n)
    X, _, Y = _regression(rng, n, d_in, D, 0.5)
    W_hat, W, C = _posterior_draws(rng, X, Y, beta, draws)
    rows = example_rows(n, 60, 0)
    loss = _losses(W, X[rows], Y[rows]).reshape(4, draws // 4, len(rows))
    cols = query_columns(len(rows), 8, 0)
    got = influence(loss, cols)
    assert got.shape == (60, 8) and len(set(cols)) == 8 and cols.max() < 60
    Cx = X[rows] @ C @ X[rows].T
    m = Y[rows] - X[rows] @ W_hat
    exact = -(2 * D * Cx ** 2 + 4 * Cx * (m @ m.T))[:, cols]
    flat = loss.reshape(draws, -1) - loss.reshape(draws, -1).mean(0)
    se = np.sqrt(np.var(flat[:, :, None] * flat[:, None, cols], axis=0, ddof=1) / draws)
    z = (got - exact) / se
    print("max |z|", np.abs(z).max(), "median |exact|/se", np.median(np.abs(exact) / se))
    assert np.abs(z).max() < 5, np.abs(z).max()
    assert np.median(np.abs(exact) / se) > 5  # the test has power: most entries are resolved
    block = got[cols]
    assert np.allclose(block, block.T, rtol=1e-12, atol=1e-15)
    assert np.all(np.diag(block) < 0)  # −Var on the diagonal


def test_query_columns_are_recorded_examples_fixed_by_their_seed():
    a, b = query_columns(100, 10, 0), query_columns(100, 10, 1)
    assert len(set(a)) == 10 and np.all(np.diff(a) > 0) and a.max() < 100 and not np.array_equal(a, b)
    assert not np.array_equal(a, example_rows(100, 10, 0))  # not the stream that drew the examples
    assert np.array_equal(query_columns(5, 9, 0), np.arange(5)) and query_columns(5, 0, 0).size == 0


def _log_predictive(logp):
    """−(1/m)·Σ_i log E_w[p_i(w)] from log p of draws (draws, m)."""
    top = logp.max(0)
    return -np.mean(top + np.log(np.mean(np.exp(logp - top), axis=0)))


def test_example_rows_are_a_sorted_subset_fixed_by_their_seed():
    a, b = example_rows(1000, 100, 0), example_rows(1000, 100, 1)
    assert len(set(a)) == 100 and np.all(np.diff(a) > 0) and a.max() < 1000
    assert not np.array_equal(a, b)
    assert np.array_equal(example_rows(50, "all", 0), np.arange(50))
    assert np.array_equal(example_rows(50, 80, 0), np.arange(50))


@pytest.mark.slow
def test_recorded_runs_give_nu_and_contributions_that_match_theory(tmp_path):
    """NUTS on linear regression (a one-layer deep linear network: 12 parameters) through `lh
    execute`, every example recorded, at two noise levels. ν against its exact finite-n value
    (the Gaussian posterior with the localiser: precision 2β·XᵀX + γ per output, mean shifted
    toward w*); the contributions' mean against λ̂ (equal to rounding: the same draws); the
    array's layout; the `runs` view's columns. Measured: ν 6.04 ± 0.04 (exact 5.97) at σ = 1,
    12.22 ± 0.08 (exact 12.30) at σ = 0.1, where the tempered posterior is wide against the noise.

    With the targets' 2,000 held-out examples recorded (`heldout: all`): their losses at w* are
    the build's test set (their mean is the target's test_loss), and the run's gen_loss is the
    exact Bayes generalisation loss of the run's posterior on them (closed form) within 5 % of
    Jensen's gap between it and −E_w[log p_j(w)] (the log of a mean, not the mean of logs)."""

    from lambda_hat.science import build_target
    from lambda_hat.store import Store
    from lambda_hat.sweep import sweep_from_dict

    sweep = {"store_root": "store", "name": "pe", "targets": [
        {"model": {"kind": "dln", "widths": [4, 3]}, "data": {"n_data": 1000, "n_test": 2000, "noise_scale": sigma}}
        for sigma in (1.0, 0.1)],
        "samplers": [{"name": "nuts", "seed": 1, "chains": 4, "overrides": {"draws": 600, "warmup": 200},
                      "record": {"per_example": {"subset": "all", "query": 8, "heldout": "all"}}}]}
    (tmp_path / "pe.yaml").write_text(json.dumps(sweep))
    proc = start(tmp_path, "execute", "pe.yaml", "--workers", "2")
    exact, bif_exact, gen_exact = [], [], []
    for spec in sweep_from_dict(sweep).targets:  # while the runs sample
        arrays = build_target(spec)
        X, Y, W = arrays.X, arrays.Y, np.asarray(next(iter(arrays.params.values())))
        n, D = Y.shape
        beta, gamma = 1 / math.log(n), 1.0
        P = 2 * beta * X.T @ X + gamma * np.eye(X.shape[1])
        M = np.linalg.solve(P, 2 * beta * X.T @ Y + gamma * W)
        s = np.einsum("ni,ij,nj->n", X, np.linalg.inv(P), X)
        r = ((Y - X @ M) ** 2).sum(-1)
        L0 = float(np.mean(((Y - X @ W) ** 2).sum(-1)))
        exact.append(beta / (4 * L0 / D) * np.sum(4 * s * r + 2 * D * s ** 2))
        # the generalisation loss on the held-out set in closed form: Wᵀx_j ~ N(Mᵀx_j, s_j·I_D), so
        # E_w[exp(−‖y_j − Wᵀx_j‖²/2σ̂²)] = (σ̂²/(σ̂² + s_j))^(D/2)·exp(−‖y_j − Mᵀx_j‖²/2(σ̂² + s_j))
        from lambda_hat import registry

        Xt, Yt = registry.model_kind("dln").heldout_data(spec)  # in the target's precision, as a run draws it
        st, rt, var = np.einsum("ni,ij,nj->n", Xt, np.linalg.inv(P), Xt), ((Yt - Xt @ M) ** 2).sum(-1), L0 / D
        full = np.mean(rt / (2 * (var + st)) - 0.5 * D * np.log(var / (var + st))) + 0.5 * D * math.log(2 * math.pi * var)
        # −E_w[log p_j(w)], the mean of logs a wrong estimator would take: above G by Jensen's gap
        mean_log = np.mean((rt + D * st) / (2 * var)) + 0.5 * D * math.log(2 * math.pi * var)
        gen_exact.append((full, mean_log, float(np.mean(((Yt - Xt @ W) ** 2).sum(-1)))))
        # the influence function in closed form (test_influence_matches_the_exact_posterior_covariance_of_losses)
        Cx, mean_r = X @ np.linalg.solve(P, X.T), Y - X @ M
        bif_exact.append(-(2 * D * Cx ** 2 + 4 * Cx * (mean_r @ mean_r.T)))
    out, _ = proc.communicate(timeout=900)
    assert proc.returncode == 0, out
    rows = json.loads(lh(tmp_path, "query", "--sweep", "pe.yaml", "--format", "json",
                         "select run_id, target_noise_scale, llc_mean, nu, nu_se, waic, waic_se, examples_recorded, "
                         "heldout_recorded, gen_loss, gen_loss_se, target_test_loss from runs "
                         "order by target_noise_scale desc").stdout)
    print(rows, "exact", exact, "generalisation (exact, mean of logs, test loss at w*)", gen_exact)
    for row, nu, bif, (gen, mean_log, test_loss) in zip(rows, exact, bif_exact, gen_exact):
        assert row["examples_recorded"] == 1000 and row["heldout_recorded"] == 2000
        assert abs(row["nu"] - nu) < 3 * row["nu_se"] + 0.01 * nu, (row, nu)
        assert abs(row["gen_loss"] - gen) < 0.05 * (mean_log - gen), (row, gen, mean_log)
        assert abs(row["target_test_loss"] - test_loss) < 1e-9 * test_loss  # the held-out set is the build's test set
        arrays = Store.open(tmp_path / "store").read_examples(row["run_id"])
        assert abs(arrays["heldout_loss_at_wstar"].mean() - test_loss) < 1e-9 * test_loss
        assert arrays["heldout_loss"].shape == (4, 600, 2000) and np.array_equal(arrays["heldout_index"], np.arange(2000))
        held_view = json.loads(lh(tmp_path, "query", "--sweep", "pe.yaml", "--format", "json",
                                  f"select example, query_example, bif from influence where run_id = '{row['run_id']}' "
                                  "and heldout order by example, query_example").stdout)
        cross = -np.cov(np.concatenate([arrays["loss"], arrays["heldout_loss"]], -1).reshape(2400, -1).astype(np.float64),
                        rowvar=False)[:1000, 1000:]
        got_cross = np.array([v["bif"] for v in held_view]).reshape(1000, 2000)
        assert np.allclose(got_cross, cross, rtol=1e-5, atol=1e-7 * np.abs(cross).max())
        loss = arrays["loss"]
        assert loss.shape == (4, 600, 1000) and loss.dtype == np.float32
        assert np.array_equal(arrays["index"], np.arange(1000))
        contrib = arrays["llc_contribution"]
        assert abs(contrib.mean() - row["llc_mean"]) < 1e-6 * abs(row["llc_mean"]), (contrib.mean(), row)
        # the influence function: the `influence` view holds the stored matrix, which is a direct
        # covariance of the stored losses, symmetric on the query examples, and near the closed form
        view = json.loads(lh(tmp_path, "query", "--sweep", "pe.yaml", "--format", "json",
                             f"select example, query_example, bif from influence where run_id = '{row['run_id']}' "
                             "and not heldout order by example, query_example").stdout)
        q = arrays["query"]
        assert len(view) == 1000 * 8 and sorted({v["query_example"] for v in view}) == list(q)
        got = np.array([v["bif"] for v in view]).reshape(1000, 8)
        direct = -np.cov(loss.reshape(-1, 1000).astype(np.float64), rowvar=False)[:, q]
        assert np.allclose(got, direct, rtol=1e-5, atol=1e-7 * np.abs(direct).max())
        assert np.allclose(got[q], got[q].T, rtol=1e-5, atol=1e-7 * np.abs(direct).max())
        exported = tmp_path / f"bif-{row['run_id']}.csv"
        lh(tmp_path, "export", "pe.yaml", "--view", "influence", "-o", str(exported))
        lines = [ln.split(",") for ln in exported.read_text().splitlines()[1:] if ln.startswith(row["run_id"])]
        by_query = np.array([float(x[4]) for x in lines if x[3] == "false"]).reshape(8, 1000)  # by query, then example
        assert np.allclose(by_query.T, got, rtol=1e-12)
        closed = bif[:, q]
        rel = np.linalg.norm(got - closed) / np.linalg.norm(closed)
        print("influence: relative error against the closed form", rel)
        assert rel < 0.25, rel  # measured 0.12 at both noise levels (2,400 NUTS draws)
    assert abs(exact[0] - 6.0) < 0.1 and exact[1] > 9  # ν = d/2 needs nβσ² large against the inputs' dimension
    lh(tmp_path, "promote", "pe.yaml", "--outdir", "gallery", "--plots", "examples")
    assert sorted(p.parent.name for p in (tmp_path / "gallery" / "runs").glob("*/examples.png")) == sorted(
        r["run_id"] for r in rows)


@pytest.mark.parametrize("record,message", [
    ({"per_example": {"subset": 1}}, "record.per_example.subset: must be a number of examples (at least 2) or 'all', got 1"),
    ({"per_example": {"subset": "All"}}, "record.per_example.subset: must be a number of examples (at least 2) or 'all', got 'All'"),
    ({"per_example": {"seed": -1}}, "record.per_example.seed: "),
    ({"per_example": {"subsets": 5}}, "record.per_example.subsets: "),
    ([1], "record: must be a mapping"),
    ({"per_example": {"subset": 8, "query": 9}}, "record.per_example.query: must be at most subset (8)"),
    ({"per_example": {"query": 257}}, "record.per_example.query: "),
    ({"per_example": {"subset": "all", "query": 200}}, "record.per_example.query: 200 query examples, but "),
    ({"per_example": {"subset": 101}}, "record.per_example.subset: 101 examples, but targets[0] has only 100 (n_data)"),
    ({"per_example": {"subset": 10**12}}, "record.per_example.subset: 1000000000000 examples, but targets[0]"),
    ({"per_example": {"heldout": -1}}, "record.per_example.heldout: must be a number of held-out examples (0: none) "
                                       "or 'all', got -1"),
    ({"per_example": {"heldout": 101}}, "record.per_example.heldout: 101 held-out examples, but targets[0] declares "
                                        "100; record at most 100, or heldout: all"),
])
def test_bad_record_entries_are_one_line_naming_the_field(record, message):
    from lambda_hat.errors import SweepError
    from lambda_hat.sweep import sweep_from_dict

    sweep = {"targets": [{"model": "small", "data": "small"}], "samplers": [{"name": "nuts", "record": record}]}
    with pytest.raises(SweepError) as err:
        sweep_from_dict(sweep)
    text = str(err.value)
    print(text)
    assert "\n" not in text and message in text and "0x" not in text and "function-after" not in text


def test_a_subset_above_one_target_but_not_another_is_a_sweep_over_n_data_not_bad_input():
    from lambda_hat.errors import SweepError
    from lambda_hat.sweep import sweep_from_dict

    targets = [{"model": "small", "data": {"n_data": 100}}, {"model": "small", "data": {"n_data": 1000}}]
    sweep_from_dict({"targets": targets, "samplers": [{"name": "nuts", "record": {"per_example": {"subset": 512}}}]})
    with pytest.raises(SweepError, match="query: 256 query examples x 20,000 recorded on targets.0. is 5,120,000"):
        sweep_from_dict({"targets": [{"model": "small", "data": {"n_data": 20000}}],
                         "samplers": [{"name": "nuts", "record": {"per_example": {"subset": "all", "query": 256}}}]})


def test_the_default_subset_on_a_smaller_target_records_every_example():
    from lambda_hat.sweep import sweep_from_dict

    sweep = sweep_from_dict({"targets": [{"model": "small", "data": "small"}],
                             "samplers": [{"name": "nuts", "record": {"per_example": {}}}]})
    assert sweep.samplers[0].record.per_example.size(sweep.targets[0].data.n_data) == 100


def test_record_without_per_example_is_the_run_without_record():
    """`record: {}` records nothing more: same ID whether it comes through a sweep or a RunSpec built in Python."""
    from lambda_hat.ids import run_id
    from lambda_hat.specs import RunSpec

    plain = RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "nuts"}})
    empty = RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "nuts"}, "record": {}})
    recorded = RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "nuts"},
                                       "record": {"per_example": {"subset": 8}}})
    no_query = RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "nuts"},
                                       "record": {"per_example": {"subset": 8, "query": 0}}})
    queried = RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "nuts"},
                                      "record": {"per_example": {"subset": 8, "query": 2}}})
    assert run_id(empty) == run_id(plain) != run_id(recorded)
    assert run_id(no_query) == run_id(recorded) != run_id(queried)  # query: 0 is the run from before query existed


def test_one_chain_gives_no_monte_carlo_error_rather_than_zero():
    rng = np.random.default_rng(0)
    got = fluctuation(rng.normal(size=(1, 200, 30)) ** 2, 30, 0.2, likelihood_scale("mse", 1.0, 1))
    assert math.isnan(got["nu_se"]) and math.isfinite(got["nu"])


def test_a_recording_run_is_a_batch_of_its_own():
    from lambda_hat.planner import batches, expand
    from lambda_hat.sweep import sweep_from_dict

    entry = {"name": "sgld", "chains": 2, "overrides": {"steps": 200, "warmup": 0, "eval_every": 10}}
    ex = expand(sweep_from_dict({"targets": [{"model": "small", "data": "small"}], "samplers": [
        {**entry, "grid": {"seed": [1, 2, 3]}},
        {**entry, "grid": {"seed": [1, 2]}, "record": {"per_example": {"subset": 8}}}]}))
    sizes = sorted(len(b) for b in batches(ex.runs))
    assert sizes == [1, 1, 3]


def _store_with_recorded_runs(tmp_path, forge):
    """A store of fake runs (tests/test_store.fill_store), two of them rewritten with recorded
    per-example arrays whose checksums hold: the first consistent, the second changed by `forge`."""
    import shutil

    from lambda_hat.store.artifacts import read_arrays, write_artifact
    from lambda_hat.store.store import Store
    from test_store import fill_store

    root = tmp_path / "store"
    ex, _ = fill_store(root)
    st = Store(root)
    rng = np.random.default_rng(0)
    good, bad = ex.runs[1].run_id, ex.runs[2].run_id
    for rid in (good, bad):
        m = st.read_manifest("run", rid)
        d = st.layout.run_dir(rid)
        arrays = read_arrays(d, list(m.arrays))
        loss = rng.gamma(2.0, size=(2, 50, 6)).astype(np.float32)
        arrays.update({"examples/loss": loss, "examples/index": np.arange(10, 16), "examples/loss_at_wstar": np.ones(6),
                       "examples/llc_contribution": np.linspace(0, 1, 6), "examples/query": np.array([1, 4]),
                       "examples/influence": influence(loss, np.array([1, 4])).astype(np.float32)})
        if rid == bad:
            forge(arrays)
        shutil.rmtree(d)
        write_artifact(d, arrays, m)
    st.reconcile()
    return root, good, bad


@pytest.mark.parametrize("what,forge", [
    ("query out of range", lambda a: a.update({"examples/query": np.array([999, 1])})),
    ("short index", lambda a: a.update({"examples/index": np.arange(3)})),
    ("1-d influence", lambda a: a.update({"examples/influence": a["examples/influence"][:, 0]})),
])
def test_recorded_arrays_that_disagree_are_damage_not_a_traceback(tmp_path, what, forge):
    """Fourth adversarial pass: arrays whose checksums hold but disagree with one another (an old
    layout, a writer's bug, a hand edit) made every execute's reconcile, export and promote end
    in a traceback, or export dropped the run's rows silently. Now the index skips them, and
    export and promote name the run as damaged (exit 1)."""
    from typer.testing import CliRunner

    from lambda_hat.cli import app
    from lambda_hat.results import run_query
    from lambda_hat.store.store import Store

    root, good, bad = _store_with_recorded_runs(tmp_path, forge)
    st = Store(root)
    rows = run_query(st, "select run_id, count(*) as n from influence group by run_id").rows
    assert rows == [(good, 12)], rows
    runner = CliRunner()
    out = tmp_path / "bif.csv"
    result = runner.invoke(app, ["export", "--store", str(root), "--view", "influence", "-o", str(out)])
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 1 and len(lines) == 1 and bad in lines[0], result.output
    assert "12 rows of the influence view" in result.stdout and bad not in out.read_text()
    result = runner.invoke(app, ["promote", "--store", str(root), "--plots", "examples", "--outdir", str(tmp_path / "g")])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert bad in result.output and (tmp_path / "g" / "runs" / good / "examples.png").is_file()


FACTORY = '''
import numpy as np


def make(seed, test=True):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(64, 2))
    y = x @ np.array([[1.0], [-1.0]]) + 0.1 * rng.normal(size=(64, 1))
    xt = rng.normal(size=(30, 2))
    out = {"params": {"w": np.zeros((2, 1))}, "loss": "mse", "predict": lambda p, x: x @ p["w"],
           "data": {"x": x, "y": y}}
    if test:
        out["test_data"] = {"x": xt, "y": xt @ np.array([[1.0], [-1.0]])}
    return out
'''


@pytest.mark.parametrize("test,heldout,message", [
    (False, "all", "record.per_example.heldout: targets[0] declares no held-out examples (a factory returns them "
                   "as test_data)"),
    (True, 31, "record.per_example.heldout: 31 held-out examples, but targets[0] declares 30"),
    (True, 30, None),
])
def test_a_factorys_held_out_examples_are_its_test_data(tmp_path, test, heldout, message):
    """A factory declares held-out examples by returning test_data: asking for more than it
    returns, or for any when it returns none, is refused when the sweep is read."""
    from lambda_hat.errors import SweepError
    from lambda_hat.sweep import sweep_from_dict

    (tmp_path / "lin.py").write_text(FACTORY)
    sweep = {"targets": [{"model": {"kind": "python", "factory": "lin:make", "kwargs": {"test": test}}}],
             "samplers": [{"name": "nuts", "record": {"per_example": {"subset": "all", "heldout": heldout}}}]}
    if message is None:
        (target,) = sweep_from_dict(sweep, base_dir=str(tmp_path)).targets
        from lambda_hat import registry

        X_test, Y_test = registry.model_kind("python").heldout_data(target)
        assert np.shape(X_test) == (30, 2) and np.shape(Y_test) == (30, 1)
        return
    with pytest.raises(SweepError) as err:
        sweep_from_dict(sweep, base_dir=str(tmp_path))
    assert message in str(err.value), err.value


def test_the_byo_transformer_example_is_the_one_measured():
    """examples/byo/per_sample.yaml plans the runs docs/per-sample.md reports (their IDs), held-out
    pairs recorded on each: the factory's test_data, the 265 pairs it does not train on."""
    from pathlib import Path

    from lambda_hat import registry
    from lambda_hat.planner import expand
    from lambda_hat.sweep import load_sweep

    ex = expand(load_sweep(Path(__file__).resolve().parents[1] / "examples" / "byo" / "per_sample.yaml"))
    assert [t.target_id for t in ex.targets] == ["tgt_9e46ed2ad87c"]
    assert sorted(r.run_id for r in ex.runs) == sorted([
        "run_9c6c44dc3e89", "run_d846a8cee5e1", "run_711e512dcb6d", "run_8bbb62fc7890", "run_970c56d9084c",
        "run_d798359979ab"])
    assert all(r.setting.record.per_example.heldout == "all" for r in ex.runs)
    X_test, Y_test = registry.model_kind("python").heldout_data(ex.targets[0].spec)
    assert len(Y_test) == 265 and len(ex.targets[0].spec.model.kwargs) == 0


def test_held_out_influence_rows_count_against_the_influence_cap():
    """Every recorded training example against every held-out one is a row of the `influence`
    view: 3,000 x 3,000 is past PER_EXAMPLE_MAX_INFLUENCE, refused naming `heldout`."""
    from lambda_hat.errors import SweepError
    from lambda_hat.sweep import sweep_from_dict

    sweep = {"targets": [{"model": "small", "data": {"n_data": 3000, "n_test": 3000}}],
             "samplers": [{"name": "nuts", "record": {"per_example": {"subset": "all", "heldout": "all"}}}]}
    with pytest.raises(SweepError) as err:
        sweep_from_dict(sweep)
    assert "record.per_example.heldout: 3,000 held-out examples x 3,000 recorded on targets[0] is 9,000,000" in str(
        err.value), err.value
    sweep["samplers"][0]["record"]["per_example"]["heldout"] = 1000
    sweep_from_dict(sweep)  # 3,000,000 rows: within the cap
