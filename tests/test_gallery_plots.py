"""The gallery's figures show what matters (issue 27): energy axes that a divergent transition
cannot stretch, per-chain traces that can be told apart, comparisons that mark flagged runs,
judge against the finite-n reference where there is one and say nothing vacuous, and target
descriptions that name what defines them. Real matplotlib figures (Agg), inspected through
their axes, lines and texts."""

import numpy as np
import pytest

from lambda_hat.promote import (TRACE_POINTS, compare_figure, describe_model, energy_figure, fmt_estimate,
                                reference_of, robust_range, trace_figure)
from lambda_hat.store.manifest import Manifest


def run(sampler="hmc", **metrics):
    return Manifest(id="run_0123456789ab", type="run", spec={"sampler": {"name": sampler}}, metrics=metrics)


def texts(fig) -> str:
    """Every string drawn on the figure: titles, labels, annotations."""
    parts = [t.get_text() for t in fig.findobj(lambda a: hasattr(a, "get_text"))]
    return "\n".join(p for p in parts if p)


def hmc_energy(rng, chains=4, draws=500):
    energy = 50.0 + rng.normal(size=(chains, draws))
    return energy, np.zeros((chains, draws), bool)


# --------------------------------------------------------------------------- energy


def test_energy_axis_is_not_stretched_by_divergent_outliers_and_says_so():
    """A divergent transition records its rejected proposal's energy (3.8e9 and inf seen in a real
    run): the old plot's axis spanned ±4e9 with one bar, or raised on inf. The axis must stay on
    the bulk (standard normal here), the divergences be counted, the clipping stated."""
    rng = np.random.default_rng(1)
    energy, diverging = hmc_energy(rng)
    energy[1, 100], diverging[1, 100] = 3.8e9, True
    energy[2, 50], diverging[2, 50] = np.inf, True
    energy[0, 7], diverging[0, 7] = np.nan, True
    energy[3, 200] = -2.5e8  # an outlier the sampler did not flag: clipped, not drawn
    fig = energy_figure(run(), {"energy": energy, "diverging": diverging})
    lo, hi = fig.axes[0].get_xlim()
    assert -12 < lo < -3 and 3 < hi < 12, (lo, hi)
    words = texts(fig)
    assert "divergent transitions: 3 of 2,000" in words and "left out" in words
    assert "clipped to the 1-99 % quantiles" in words and "values\nbeyond" in words
    bfmi = words.split("E-BFMI per chain ")[1].split(" (")[0].split(", ")
    # iid draws: E-BFMI = E[ΔE²]/Var(E) ≈ 2 per chain; chain 3 carries the unflagged outlier
    assert all(1.6 < float(b) < 2.4 for b in bfmi[:3]), bfmi


def test_energy_of_a_clean_run_says_no_divergences_and_shows_its_whole_bulk():
    rng = np.random.default_rng(2)
    energy, diverging = hmc_energy(rng)
    fig = energy_figure(run(), {"energy": energy, "diverging": diverging})
    lo, hi = fig.axes[0].get_xlim()
    assert lo < -3 and hi > 3 and hi - lo < 20
    assert "no divergent transitions" in texts(fig) and "clipped" not in texts(fig)


def test_mclmc_energy_change_is_clipped_the_same_way():
    rng = np.random.default_rng(3)
    change = rng.normal(scale=0.01, size=(4, 400))
    change[0, 3], change[1, 4] = 1e7, np.nan
    fig = energy_figure(run("mclmc"), {"energy_change": change})
    lo, hi = fig.axes[0].get_xlim()
    assert -0.1 < lo < 0 < hi < 0.1
    assert "1 non-finite left out" in texts(fig) and "1 values\nbeyond" in texts(fig)


def test_robust_range_keeps_every_value_of_a_clean_bulk_and_drops_only_escapes():
    rng = np.random.default_rng(4)
    bulk = rng.exponential(size=10_000)  # a skewed bulk: its tail is data, not outliers
    lo, hi, outside = robust_range(bulk, 10.0, (1.0, 99.0))
    assert outside == 0 and lo == bulk.min() and hi == bulk.max()
    lo, hi, outside = robust_range(np.r_[bulk, 1e6, -1e6, np.inf], 10.0, (1.0, 99.0))
    assert outside == 2 and hi < 100 and lo > -100


# --------------------------------------------------------------------------- traces


def test_trace_draws_each_chain_in_its_own_panel_thinned_with_its_running_mean():
    """4 chains x 8,000 draws was a hairball in one panel. Chains centred at 0, 1, 2, 3: panel c
    must hold chain c (its mean near c), at most TRACE_POINTS points, and a running mean over all
    8,000 draws ending at the chain's mean."""
    rng = np.random.default_rng(5)
    llc = np.arange(4.0)[:, None] + rng.normal(scale=0.3, size=(4, 8000))
    fig = trace_figure(run(), {"llc": llc})
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert len(panels) == 4
    for c, ax in enumerate(panels):
        raw, mean = ax.lines[0], ax.lines[1]
        assert len(raw.get_ydata()) <= TRACE_POINTS
        assert abs(np.mean(raw.get_ydata()) - c) < 0.05
        assert len(mean.get_ydata()) == 8000 and mean.get_ydata()[-1] == pytest.approx(llc[c].mean())
        assert ax.get_ylabel() == f"chain {c}"
    assert "1 in 14 drawn" in texts(fig)


def test_trace_axis_survives_a_chain_that_escapes_and_says_how_many_draws_are_off_it():
    rng = np.random.default_rng(6)
    llc = 3.0 + rng.normal(size=(4, 1000))
    llc[2, 500:505] = 1e6
    fig = trace_figure(run(), {"llc": llc}, reference_of(None, {"llc_true": 3.5}))
    lo, hi = fig.axes[0].get_ylim()
    assert hi < 100, (lo, hi)
    assert "5 of 4,000" in texts(fig) and "asymptotic λ" in texts(fig)


# --------------------------------------------------------------------------- comparison


def row(run_id, mean, sem, status="ok", sampler="hmc", reason=None):
    return {"run_id": run_id, "sampler": sampler, "status": status, "status_reason": reason, "llc_mean": mean,
            "llc_sem": sem, "r_hat": 1.0, "ess_bulk": 1000.0}


def test_comparison_with_one_run_claims_no_agreement():
    rows = [row("run_a", 2.0, 0.1)]
    words = texts(compare_figure("tgt_x", rows, {"run_a": None}, {"run_a": "hmc run_a"}))
    assert "agree" not in words and "differs" not in words


def test_comparison_marks_flagged_runs_hollow_red_with_their_status():
    rows = [row("run_a", 2.0, 0.1), row("run_b", 2.1, 0.1, "divergent", "nuts", "divergence_rate 0.07 > 0.01")]
    fig = compare_figure("tgt_x", rows, {}, {"run_a": "hmc run_a", "run_b": "nuts run_b"})
    ax = fig.axes[0]
    ticks = {t.get_text(): t.get_color() for t in ax.get_yticklabels()}
    assert ticks["nuts run_b  (divergent)"] == "#b3261e" and ticks["hmc run_a"] != "#b3261e"
    faces = [line.get_markerfacecolor() for line in ax.lines if line.get_marker() in ("o", "X")]
    assert faces.count("white") == 1
    assert "the 2 runs agree" in texts(fig) and "flagged (1 run)" in texts(fig)


def test_comparison_uses_the_finite_n_reference_and_draws_the_asymptote_dotted():
    """Multiplicity-2 normal crossing: λ = 0.25 asymptotically, ~0.137 at n = 1,000. λ̂ = 0.14
    sits on the reference, 27 SEM below the asymptote."""
    target = {"llc_true": 0.25, "llc_ref": 0.137, "llc_ref_se": 0.001, "llc_ref_method": "quadrature"}
    ref = reference_of({"llc_true": 0.25}, target)
    assert ref.finite_n and ref.value == 0.137 and ref.asymptote == 0.25
    assert abs(ref.z(0.14, 0.004)) < 1
    rows = [row("run_a", 0.14, 0.004), row("run_b", 0.135, 0.004, sampler="nuts")]
    fig = compare_figure("tgt_x", rows, {"run_a": ref, "run_b": ref}, {"run_a": "a", "run_b": "b"})
    ax = fig.axes[0]
    verticals = {(tuple(line.get_xdata()), line.get_linestyle()) for line in ax.lines
                 if len(set(line.get_xdata())) == 1 and len(line.get_xdata()) == 2}
    assert ((0.137, 0.137), "--") in verticals and ((0.25, 0.25), ":") in verticals
    words = texts(fig)
    assert "dashed: finite-n reference = 0.137 ± 0.001" in words and "dotted: asymptotic λ = 0.25" in words


def test_reference_without_llc_ref_is_the_asymptotic_lambda_and_the_run_s_own_comes_first():
    ref = reference_of({"llc_true": 0.25}, {"llc_true": 0.25})
    assert not ref.finite_n and ref.name == "asymptotic λ" and ref.z(0.137, 0.004) == pytest.approx(-28.25)
    mine = reference_of({"llc_ref": 0.14, "llc_ref_se": 0.002}, {"llc_ref": 0.137, "llc_true": 0.25})
    assert mine.value == 0.14 and mine.se == 0.002 and mine.asymptote == 0.25
    assert mine.z(0.146, 0.006) == pytest.approx(0.006 / np.hypot(0.006, 0.002))
    assert reference_of({}, {"llc_ref": float("nan")}) is None


# --------------------------------------------------------------------------- words and numbers


@pytest.mark.parametrize("model, teacher, expected", [
    ({"kind": "polynomial", "powers": [1, 2]}, None, "polynomial, powers [1, 2] (y = x·w₁·w₂²)"),
    ({"kind": "polynomial", "powers": [0, 3]}, None, "polynomial, powers [0, 3] (y = x·w₂³)"),
    ({"kind": "dln", "widths": [5, 3, 5]}, {"rank": 1}, "deep linear network, widths 5-3-5, teacher rank 1"),
    ({"kind": "mlp", "in_dim": 4, "widths": [4, 4], "out_dim": 1, "activation": "relu"}, {}, "MLP 4-4-4-1, relu"),
    ({"kind": "python", "factory": "models:make_mlp", "kwargs": {"hidden": 8}}, None,
     "python model from models:make_mlp(hidden=8)"),
])
def test_target_descriptions_name_what_defines_them(model, teacher, expected):
    text = describe_model(model, teacher)
    assert text == expected and "None" not in text


@pytest.mark.parametrize("mean, sem, expected", [
    (3.2031, 0.0381, "3.203 ± 0.038"), (2.0, 0.05, "2.000 ± 0.050"), (3.8417, 0.38, "3.84 ± 0.38"),
    (1234.5, 25.0, "1234 ± 25"), (0.14137, 0.00553, "0.1414 ± 0.0055"), (2.5, None, "2.5"), (None, 0.1, "–"),
])
def test_estimates_are_written_to_the_precision_of_their_standard_error(mean, sem, expected):
    assert fmt_estimate(mean, sem) == expected


# --------------------------------------------------------------------------- per-example


def test_examples_plot_shows_each_query_s_strongest_influences_and_never_a_query_against_itself():
    """The influence heatmap's rows are, per query example, its 3 strongest influences by |BIF|
    (the query itself, whose −Var dominates, left out); the contributions panel's mean line
    names λ̂. A planted strong pair must be among the rows, and no cell pairs a query with itself."""
    from lambda_hat.promote import examples_figure, influential

    rng = np.random.default_rng(0)
    m, rows = 40, np.arange(100, 140)
    query = np.array([3, 17, 25])
    bif = 0.01 * rng.normal(size=(m, 3))
    bif[query, np.arange(3)] = -5.0  # −Var: the strongest of all, never a row for its own query
    bif[8, 1] = 0.9  # example 108 competes with query 117
    bif[30, 2] = -0.7  # example 130 is fitted with query 125
    chosen = influential(bif, rows, rows[query])
    assert 8 in chosen and 30 in chosen
    for j, q in enumerate(query):
        top = influential(bif[:, [j]], rows, rows[[q]])
        assert q not in top and len(top) == 3
    contrib = rng.gamma(2.0, size=m)
    fig = examples_figure(run("nuts", llc_mean=float(contrib.mean())),
                          {"index": rows, "llc_contribution": contrib, "influence": bif.astype(np.float32), "query": query})
    ax_c, ax_b = fig.axes[:2]
    image = ax_b.images[0].get_array()
    shown_rows = [int(t.get_text()) for t in ax_b.get_yticklabels()]
    shown_queries = [int(t.get_text()) for t in ax_b.get_xticklabels()]
    assert shown_queries == list(rows[query]) and 108 in shown_rows and 130 in shown_rows
    for r, i in enumerate(shown_rows):
        for c, q in enumerate(shown_queries):
            assert np.ma.is_masked(image[r, c]) or np.isnan(image[r, c]) if i == q else np.isfinite(image[r, c])
    assert f"{contrib.mean():.4g}" in texts(fig) and "λ̂" in texts(fig)


def test_examples_plot_without_a_query_set_is_the_contributions_alone():
    from lambda_hat.promote import examples_figure

    fig = examples_figure(run("sgld"), {"index": np.arange(10), "llc_contribution": np.linspace(0, 3, 10)})
    assert len(fig.axes) == 1 and "10 examples" in texts(fig)


def test_examples_plot_of_a_nonfinite_run_says_so_without_warnings():
    """A nonfinite recording run (all NaN) drew an empty figure reading "mean nan" after a
    matplotlib warning on stderr; a NaN influence entry took a top-3 slot from a finite one."""
    import warnings

    from lambda_hat.promote import examples_figure, influential

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fig = examples_figure(run("sgld"), {"index": np.arange(5), "llc_contribution": np.full(5, np.nan),
                                             "influence": np.full((5, 2), np.nan, np.float32), "query": np.array([0, 3])})
    assert len(fig.axes) == 1 and "no finite contributions" in texts(fig)
    bif = np.array([[0.0], [0.5], [np.nan], [0.2], [0.1]])
    assert influential(bif, np.arange(5), np.array([0])) == [1, 3, 4]
