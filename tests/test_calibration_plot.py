"""The calibration figure (`lambda_hat.calibration_plot`): one panel per report group, the step
panel's line through λ̂(ε → 0), the γ panel's log axis, plateau and ceiling, the chosen point
where it was chosen, failed pilots drawn and not fatal, and the PNG written atomically.
Real matplotlib (Agg), hand-made report groups."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.colors import to_rgb
from matplotlib.patches import Polygon, Rectangle

from lambda_hat.calibration_plot import calibration_figure, write_calibration_figure


def step_pilot(eps, mean, sem, status="ok"):
    return {"run_id": f"run_{int(eps * 1e4):012d}", "step_size_nbeta": eps, "steps": int(600 / eps),
            "warmup": int(60 / eps), "eval_every": int(1 / eps), "llc_mean": mean, "llc_sem": sem,
            "r_hat": None if mean is None else 1.002, "ess_bulk": None if mean is None else 900.0,
            "status": status, "sample_sec": 1.5, "total_fge": 1e5, "n_beta": 100.0 / math.log(100)}


def gamma_pilot(gamma, mean, sem, status="ok"):
    return {"run_id": f"run_g{gamma:g}", "gamma": gamma, "llc_mean": mean, "llc_sem": sem,
            "r_hat": None if mean is None else 1.001, "ess_bulk": 800.0, "status": status,
            "sample_sec": 2.0, "total_fge": 1e5, "n_beta": 21.7}


# Calibrated: the docs' seed-2 numbers (λ̂(ε→0) = 3.380, slope ≈ 7.2).
STEP_OK = {"entry": 0, "kind": "step", "target_id": "tgt_aaaaaaaaaaaa", "label": "seed 2, γ 1.0",
           "pilots": [step_pilot(0.04, 3.670, 0.091), step_pilot(0.02, 3.516, 0.044), step_pilot(0.01, 3.454, 0.042)],
           "llc0": 3.380, "llc0_se": 0.063, "slope": 7.25, "chi2": 0.03, "chosen_step_size_nbeta": 0.02,
           "reason": "the largest step within 2 standard errors or 3 % of λ̂(ε→0)"}
# Uncalibrated with a failed pilot: no fit, no choice.
STEP_FAILED = {"entry": 0, "kind": "step", "target_id": "tgt_bbbbbbbbbbbb", "label": "seed 3, γ 1.0",
               "pilots": [step_pilot(0.04, None, None, "divergent"), step_pilot(0.02, 5.1, 0.2),
                          step_pilot(0.01, 4.9, None, "unconverged")],
               "llc0": None, "llc0_se": None, "slope": None, "chi2": None, "chosen_step_size_nbeta": None,
               "reason": "a pilot has no usable estimate (divergent): --top lower"}
# A γ ladder with a ceiling at 50 (γ 100 and 1000 above it), plateau 1–10, chosen 1, entry takes 10.
GAMMA_OK = {"entry": 1, "kind": "gamma", "target_id": "tgt_cccccccccccc", "label": "sampler hmc, seed 1",
            "pilots": [gamma_pilot(0.1, 9.0, 0.5), gamma_pilot(1.0, 6.1, 0.1), gamma_pilot(10.0, 6.0, 0.1),
                       gamma_pilot(100.0, 5.0, 0.1), gamma_pilot(1000.0, 2.0, 0.05)],
            "ceiling": 50.0, "plateau": [1.0, 10.0], "chosen_gamma": 1.0, "entry_gamma": 10.0,
            "reason": "the middle of the plateau γ 1–10"}
# No Hessian estimate (ceiling None), a missing pilot, uncalibrated.
GAMMA_NONE = {"entry": 2, "kind": "gamma", "target_id": "tgt_dddddddddddd", "label": "seed 1",
              "pilots": [gamma_pilot(0.1, 3.0, 0.2), gamma_pilot(1.0, None, None, "missing"),
                         gamma_pilot(10.0, 1.0, 0.2)],
              "ceiling": None, "plateau": None, "chosen_gamma": None, "entry_gamma": None,
              "reason": "no plateau"}
GROUPS = [STEP_OK, STEP_FAILED, GAMMA_OK, GAMMA_NONE]


@pytest.fixture(scope="module")
def fig():
    return calibration_figure(GROUPS)


def by_gid(ax, gid):
    found = [a for a in ax.get_children() if a.get_gid() == gid]
    found += [line for line in ax.get_lines() if line.get_gid() == gid and line not in found]
    return found


def test_one_panel_per_group_at_most_three_a_row(fig):
    assert len(fig.axes) == len(GROUPS)
    geometry = [ax.get_subplotspec().get_geometry()[:2] for ax in fig.axes]
    assert set(geometry) == {(2, 3)}  # 4 panels: two rows of three columns, the last two cells empty
    width, height = fig.get_size_inches()
    assert width == pytest.approx(3 * 4.5) and height == pytest.approx(2 * 3.6)
    assert len(calibration_figure([STEP_OK]).axes) == 1
    assert len(calibration_figure([STEP_OK] * 7).axes) == 7


def test_the_step_panel_draws_the_line_through_the_extrapolated_point(fig):
    ax = fig.axes[0]
    assert ax.get_xscale() == "linear"
    assert ax.get_xlabel() == "ε·nβ" and ax.get_ylabel() == "λ̂"
    assert ax.get_xlim()[0] == 0.0
    (fit,) = by_gid(ax, "fit")
    x, y = np.asarray(fit.get_xdata(), float), np.asarray(fit.get_ydata(), float)
    assert x.min() == 0.0 and x.max() == pytest.approx(0.04)  # from 0 to the largest step
    assert np.interp(0.0, x, y) == pytest.approx(STEP_OK["llc0"])
    assert np.interp(0.04, x, y) == pytest.approx(STEP_OK["llc0"] + STEP_OK["slope"] * 0.04)
    (llc0,) = by_gid(ax, "llc0")
    assert list(llc0.get_xdata()) == [0.0] and list(llc0.get_ydata()) == pytest.approx([STEP_OK["llc0"]])
    assert llc0.get_marker() != "o"  # distinct from the pilots' markers
    assert "tgt_aaaaaaaaaaaa" in ax.get_title(loc="left") and "seed 2" in ax.get_title(loc="left")
    assert "uncalibrated" not in ax.get_title(loc="left")


def test_the_chosen_point_is_drawn_at_the_chosen_x(fig):
    (ring,) = by_gid(fig.axes[0], "chosen")
    assert list(ring.get_xdata()) == pytest.approx([0.02]) and list(ring.get_ydata()) == pytest.approx([3.516])
    assert any(t.get_text() == "chosen" for t in fig.axes[0].texts)
    (ring,) = by_gid(fig.axes[2], "chosen")
    assert list(ring.get_xdata()) == pytest.approx([1.0]) and list(ring.get_ydata()) == pytest.approx([6.1])


def test_failed_pilots_are_marked_and_uncalibrated_panels_say_so(fig):
    ax = fig.axes[1]
    assert "uncalibrated" in ax.get_title(loc="left")
    assert not by_gid(ax, "fit") and not by_gid(ax, "llc0") and not by_gid(ax, "chosen")
    (crosses,) = by_gid(ax, "failed")
    assert crosses.get_marker() == "x" and list(crosses.get_xdata()) == [0.04]
    assert "divergent" in [t.get_text() for t in ax.texts]
    (hollow,) = by_gid(ax, "pilots-nosem")  # a λ̂ without SEM: drawn, hollow, no bar
    assert list(hollow.get_xdata()) == [0.01] and hollow.get_markerfacecolor() == "none"
    assert ax.get_xlim()[0] == 0.0 and ax.get_xlim()[1] >= 0.04  # the failed step is still on the axis
    (crosses,) = by_gid(fig.axes[3], "failed")
    assert list(crosses.get_xdata()) == [1.0] and "missing" in [t.get_text() for t in fig.axes[3].texts]
    assert "uncalibrated" in fig.axes[3].get_title(loc="left")


def span_extent(patch):
    """(x0, x1) of an axvspan, in data coordinates, whatever patch class matplotlib uses."""
    if isinstance(patch, Rectangle):
        return patch.get_x(), patch.get_x() + patch.get_width()
    assert isinstance(patch, Polygon)
    xs = np.asarray(patch.get_xy(), float)[:, 0]
    return xs.min(), xs.max()


def test_the_gamma_panel_is_logarithmic_with_the_plateau_and_ceiling(fig):
    ax = fig.axes[2]
    assert ax.get_xscale() == "log"
    assert ax.get_xlabel() == "γ" and ax.get_ylabel() == "λ̂"
    (span,) = by_gid(ax, "plateau")
    assert span_extent(span) == pytest.approx((1.0, 10.0))
    (ceiling,) = by_gid(ax, "ceiling")
    assert list(ceiling.get_xdata()) == pytest.approx([50.0, 50.0]) and ceiling.get_linestyle() == "--"
    assert "0.1·nβ·h_max" in ceiling.get_label()
    lo, hi = ax.get_xlim()
    assert lo < 0.1 and hi > 1000.0
    (entry,) = by_gid(ax, "entry_gamma")
    assert list(entry.get_xdata()) == pytest.approx([10.0, 10.0])
    # γ 100 and 1000 lie above the ceiling: drawn grey, not in the pilots' colour
    (greyed,) = by_gid(ax, "above_ceiling")
    assert sorted(greyed.get_xdata()) == [100.0, 1000.0]
    (kept,) = by_gid(ax, "pilots")
    assert sorted(kept.get_xdata()) == [0.1, 1.0, 10.0]
    assert to_rgb(greyed.get_color()) != to_rgb(kept.get_color())
    assert len(set(to_rgb(greyed.get_color()))) == 1  # a grey: r = g = b


def test_a_gamma_panel_without_ceiling_or_plateau_draws_neither(fig):
    ax = fig.axes[3]
    assert ax.get_xscale() == "log"
    assert not by_gid(ax, "ceiling") and not by_gid(ax, "plateau")
    assert not by_gid(ax, "above_ceiling")
    (kept,) = by_gid(ax, "pilots")
    assert sorted(kept.get_xdata()) == [0.1, 10.0]


def test_nothing_crashes_on_odd_groups():
    odd = [{"kind": "step", "pilots": []}, {"kind": "gamma", "pilots": [gamma_pilot(0.0, 1.0, 0.1)]},
           {"pilots": [step_pilot(0.01, float("nan"), None, "nonfinite")], "llc0": 1.0, "slope": 2.0},
           {"kind": "gamma", "pilots": [gamma_pilot(1.0, 2.0, 0.1)], "plateau": [1.0], "chosen_gamma": 1.0}]
    fig = calibration_figure(odd)
    assert len(fig.axes) == 4
    assert all("uncalibrated" in ax.get_title(loc="left") for ax in fig.axes[:3])
    (span,) = by_gid(fig.axes[3], "plateau")
    assert span_extent(span) == pytest.approx((1.0, 1.0))
    fig.canvas.draw()  # the layout and every artist render
    assert not calibration_figure([]).axes


def test_the_png_is_written_atomically(tmp_path):
    import matplotlib.pyplot as plt

    open_before = plt.get_fignums()  # other tests in this worker may have left pyplot figures open
    out = tmp_path / "calibration" / "sweep.png"
    write_calibration_figure(GROUPS[1:3], out)
    data = out.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 10_000
    assert sorted(p.name for p in out.parent.iterdir()) == ["sweep.png"]  # no temporary file left
    write_calibration_figure(GROUPS[1:3], out)  # again, over the first: the same bytes, still one file
    assert out.read_bytes() == data
    assert sorted(p.name for p in out.parent.iterdir()) == ["sweep.png"]
    assert plt.get_fignums() == open_before  # the figures are not pyplot's: none added


def test_a_gamma_panel_over_decades_of_llc_gets_a_log_y_axis():
    """The 1.08e5-parameter network: λ̂ 5209 … 6.9 over γ 10 … 1e5; a linear axis shows one point."""
    from lambda_hat.calibration_plot import calibration_figure

    vals = [(10.0, 5209.0, 67.0), (100.0, 405.4, 2.2), (1000.0, 122.8, 0.39), (1e4, 30.1, 0.079)]
    group = {"kind": "gamma", "target_id": "tgt_x", "label": "seed 1", "ceiling": None, "plateau": None,
             "chosen_gamma": None, "entry_gamma": None, "reason": "no plateau",
             "pilots": [{"gamma": g, "llc_mean": v, "llc_sem": s, "status": "ok"} for g, v, s in vals]}
    (ax,) = calibration_figure([group]).axes
    assert ax.get_yscale() == "log"
    narrow = {**group, "pilots": [{**p, "llc_mean": 6.0 + i * 0.1} for i, p in enumerate(group["pilots"])]}
    (ax,) = calibration_figure([narrow]).axes
    assert ax.get_yscale() == "linear"


def test_a_report_of_many_groups_draws_the_first_max_panels():
    from lambda_hat.calibration_plot import MAX_PANELS, calibration_figure

    group = {"kind": "gamma", "target_id": "tgt_x", "label": "seed 1", "ceiling": None, "plateau": None,
             "chosen_gamma": None, "pilots": [{"gamma": 1.0, "llc_mean": 6.0, "llc_sem": 0.1, "status": "ok"}]}
    assert len(calibration_figure([group] * (MAX_PANELS + 5)).axes) == MAX_PANELS


def test_the_target_acceptance_panel_marks_divergent_pilots_and_the_choice():
    from lambda_hat.calibration_plot import calibration_figure

    rows = [(0.8, 0.2074, 0.049, 0.187, "divergent"), (0.9, 0.1901, 0.0088, 0.019, "divergent"),
            (0.95, 0.1933, 0.0092, 0.031, "divergent"), (0.99, 0.2334, 0.015, 0.0088, "ok")]
    group = {"kind": "accept", "target_id": "tgt_x", "label": "seed 1", "chosen_target_acceptance": 0.99,
             "pilots": [{"target_acceptance": a, "llc_mean": v, "llc_sem": s, "divergence_rate": d, "status": st}
                        for a, v, s, d, st in rows]}
    (ax,) = calibration_figure([group]).axes
    divergent = next(line for line in ax.lines if line.get_gid() == "divergent")
    assert list(divergent.get_xdata()) == [0.8, 0.9, 0.95]
    ring = next(line for line in ax.lines if line.get_gid() == "chosen")
    assert list(ring.get_xdata()) == [0.99] and list(ring.get_ydata()) == [0.2334]
    assert "19 %" in [t.get_text() for t in ax.texts] and "chosen 0.99" in ax.get_title(loc="left")
