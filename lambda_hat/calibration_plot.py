"""The figure of a calibration report (`calibration/NAME.json` of `lh calibrate`): one panel per
group (one target × one `auto` sampler entry), at most three panels a row, 4.5 in each.

* SGLD step ladder (kind "step"): the pilots' λ̂ ± SEM (1 SEM) against ε·nβ, the weighted line
  λ̂(ε) = λ̂(0) + b·ε from ε = 0 to the largest step, λ̂(ε → 0) at ε = 0 (a black diamond with
  its standard error), the chosen pilot ringed and labelled "chosen".
* Localizer γ ladder (kind "gamma"): λ̂ ± SEM against γ on a log axis, the plateau shaded from its
  first to its last γ, the ceiling (GAMMA_CEILING·nβ·h_max, the largest γ considered) dashed, the
  pilots above it grey, the chosen γ ringed (and the entry's γ dotted when it differs).

A pilot without an estimate (nonfinite, divergent, missing) is an 'x' on the x axis with its
status beside it; a group without a choice says "uncalibrated" in its title. Nothing here reads
the store or the report: the caller passes the report's groups.

Drawn on `matplotlib.figure.Figure` itself (no pyplot, so no global figure list and no window)
with the Agg canvas; `write_calibration_figure` writes the PNG atomically.
"""

from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Any

PANEL_W, PANEL_H = 4.5, 3.6  # inches per panel: three a row fit a docs page scaled to 80 columns
MAX_COLS = 3
MAX_PANELS = 48  # a sweep of many targets: the first 48 groups (a 16-row picture), the report's tables have all
DPI = 110
STYLE = {"font.size": 9, "axes.titlesize": 9, "axes.labelsize": 9, "legend.fontsize": 7,
         "xtick.labelsize": 8, "ytick.labelsize": 8, "axes.spines.top": False, "axes.spines.right": False}
POINT, CHOSEN, PLATEAU, ABOVE, FAILED = "C0", "C3", "C2", "0.65", "C3"
LOG_Y_RATIO = 30  # a γ panel whose λ̂ (all positive) span more than this factor gets a log y axis


def _num(x: Any) -> float | None:
    """A finite float, or None (None, NaN, ±inf, text: a failed pilot's numbers)."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def _same(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-15)


def _kind(group: dict) -> str:
    """"step", "gamma" or "accept"; a report written before "kind" existed had only step ladders."""
    kind = group.get("kind")
    if kind in ("step", "gamma", "accept"):
        return kind
    pilots = group.get("pilots") or []
    return "gamma" if pilots and all("gamma" in p and "step_size_nbeta" not in p for p in pilots) else "step"


def _pilots(group: dict, xkey: str, log: bool = False) -> tuple[list[tuple[float, float, float | None, dict]],
                                                                 list[tuple[float, dict]]]:
    """(usable pilots as (x, λ̂, SEM or None, pilot), failed pilots as (x, pilot)); a pilot whose
    x cannot be drawn (missing, or ≤ 0 on a log axis) is left out."""
    ok, failed = [], []
    for p in group.get("pilots") or []:
        if not isinstance(p, dict):
            continue
        x = _num(p.get(xkey))
        if x is None or (log and x <= 0):
            continue
        y = _num(p.get("llc_mean"))
        if y is None:
            failed.append((x, p))
        else:
            sem = _num(p.get("llc_sem"))
            ok.append((x, y, sem if sem is not None and sem >= 0 else None, p))
    return ok, failed


def _errorbars(ax, points, color, label=None, gid="pilots", zorder=3) -> None:
    """λ̂ ± 1 SEM; a pilot with a λ̂ but no SEM is drawn hollow, without a bar. The markers'
    lines carry `gid` (with "-nosem" for the hollow ones)."""
    with_sem = [(x, y, s) for x, y, s, _ in points if s is not None]
    without = [(x, y) for x, y, s, _ in points if s is None]
    if with_sem:
        xs, ys, ss = zip(*with_sem)
        bars = ax.errorbar(xs, ys, yerr=ss, fmt="o", ms=5, color=color, ecolor=color, elinewidth=1.1,
                           capsize=3, label=label, zorder=zorder)
        bars[0].set_gid(gid)
    if without:
        xs, ys = zip(*without)
        ax.plot(xs, ys, "o", ms=5, mfc="none", mec=color, label=label.replace(" ± SEM", "") + " (no SEM)" if label else None,
                zorder=zorder, gid=gid + "-nosem")


def _failed(ax, failed) -> None:
    """An 'x' on the x axis (data x, axes y = 0) for each failed pilot, its status above it."""
    if not failed:
        return
    tr = ax.get_xaxis_transform()
    xs = [x for x, _ in failed]
    ax.plot(xs, [0.0] * len(xs), "x", ms=8, mew=1.8, color=FAILED, transform=tr, clip_on=False, zorder=5,
            gid="failed", label="no estimate")
    for x, p in failed:
        ax.annotate(str(p.get("status") or "missing"), (x, 0.0), xycoords=tr, xytext=(0, 7),
                    textcoords="offset points", ha="center", va="bottom", fontsize=7, color=FAILED,
                    rotation=90, annotation_clip=False)


def _chosen(ax, x: float, points) -> None:
    """A ring round the chosen pilot and the word "chosen"; on the x axis if it has no λ̂."""
    y = next((py for px, py, _, _ in points if _same(px, x)), None)
    if y is None:
        tr = ax.get_xaxis_transform()
        ax.plot([x], [0.0], "o", ms=13, mfc="none", mec=CHOSEN, mew=1.8, transform=tr, clip_on=False,
                zorder=6, gid="chosen", label="chosen")
        ax.annotate("chosen", (x, 0.0), xycoords=tr, xytext=(0, 10), textcoords="offset points",
                    ha="center", fontsize=8, color=CHOSEN, annotation_clip=False)
        return
    ax.plot([x], [y], "o", ms=13, mfc="none", mec=CHOSEN, mew=1.8, zorder=6, gid="chosen", label="chosen")
    ax.annotate("chosen", (x, y), xytext=(9, 9), textcoords="offset points", ha="left", va="bottom",
                fontsize=8, color=CHOSEN, fontweight="bold")


def _title(ax, group: dict, what: str, chosen: str | None) -> None:
    head = str(group.get("target_id") or "?")
    label = group.get("label")
    if label:
        head += f" ({label})"
    ax.set_title(f"{head}\n{what}: " + (chosen if chosen is not None else "uncalibrated"), loc="left",
                 color="k" if chosen is not None else CHOSEN)


def _legend(ax) -> None:
    handles, names = ax.get_legend_handles_labels()
    if handles:
        ax.legend(handles, names, loc="best", frameon=False, handlelength=1.6, borderaxespad=0.3)


def _step_panel(ax, group: dict) -> None:
    points, failed = _pilots(group, "step_size_nbeta")
    llc0, se0, slope = _num(group.get("llc0")), _num(group.get("llc0_se")), _num(group.get("slope"))
    chosen = _num(group.get("chosen_step_size_nbeta"))
    usable = [x for x, *_ in points]
    xmax = max(usable) if usable else None  # the line's end: the largest step with an estimate
    shown = usable + [x for x, _ in failed] + ([chosen] if chosen is not None else [])
    right = max(shown) if shown else None

    _errorbars(ax, points, POINT, label="pilot λ̂ ± SEM")
    if llc0 is not None and slope is not None and xmax is not None:
        chi2 = _num(group.get("chi2"))
        ax.plot([0.0, xmax], [llc0, llc0 + slope * xmax], "-", lw=1.2, color="0.35", zorder=2, gid="fit",
                label="fit λ̂(0) + b·ε" + (f", χ² {chi2:.2f}" if chi2 is not None else ""))
    if llc0 is not None:
        lbl = f"λ̂(ε→0) = {llc0:.4g}" + (f" ± {se0:.2g}" if se0 is not None else "")
        bars = ax.errorbar([0.0], [llc0], yerr=[se0] if se0 is not None else None, fmt="D", ms=6, color="k",
                           ecolor="k", capsize=3, elinewidth=1.1, zorder=4, label=lbl)
        bars[0].set_gid("llc0")
        for artist in bars.get_children():
            artist.set_clip_on(False)  # half the diamond sits left of x = 0
    _failed(ax, failed)
    if chosen is not None:
        _chosen(ax, chosen, points)
    ax.set_xlim(0.0, 1.1 * right if right and right > 0 else 1.0)
    ax.set_xlabel("ε·nβ")
    ax.set_ylabel("λ̂")
    _title(ax, group, "SGLD step", None if chosen is None else f"chosen ε·nβ = {chosen:g}")
    _legend(ax)


def _accept_panel(ax, group: dict) -> None:
    """λ̂ ± SEM against HMC's/NUTS's target acceptance; pilots flagged divergent in red with their
    share of divergent transitions; the choice ringed."""
    points, failed = _pilots(group, "target_acceptance")
    chosen = _num(group.get("chosen_target_acceptance"))
    divergent = [p for p in points if p[3].get("status") == "divergent"]
    clean = [p for p in points if p[3].get("status") != "divergent"]
    _errorbars(ax, clean, POINT, label="pilot λ̂ ± SEM")
    _errorbars(ax, divergent, FAILED, label="flagged divergent", gid="divergent")
    for x, y, _, p in divergent:
        rate = _num(p.get("divergence_rate"))
        if rate is not None:
            ax.annotate(f"{100 * rate:.2g} %", (x, y), xytext=(6, -10), textcoords="offset points", fontsize=7,
                        color=FAILED)
    entry = _num(group.get("entry_target_acceptance"))
    if entry is not None and not _same(entry, chosen):
        ax.axvline(entry, color=CHOSEN, ls=":", lw=1.1, zorder=1, gid="entry_target_acceptance",
                   label=f"the entry's = {entry:g}")
    _failed(ax, failed)
    if chosen is not None:
        _chosen(ax, chosen, points)
    xs = [x for x, *_ in points] + [x for x, _ in failed]
    if xs:
        ax.set_xlim(min(xs) - 0.03, max(xs) + 0.03)
    ax.set_xlabel("target acceptance")
    ax.set_ylabel("λ̂")
    _title(ax, group, "target acceptance", None if chosen is None else f"chosen {chosen:g}")
    _legend(ax)


def _gamma_panel(ax, group: dict) -> None:
    from lambda_hat.science.calibration import GAMMA_CEILING

    ax.set_xscale("log")
    points, failed = _pilots(group, "gamma", log=True)
    ceiling = _num(group.get("ceiling"))
    chosen = _num(group.get("chosen_gamma"))
    entry = _num(group.get("entry_gamma"))
    plateau = [g for g in (_num(v) for v in (group.get("plateau") or [])) if g is not None and g > 0]

    if plateau:
        lo, hi = min(plateau), max(plateau)
        ax.axvspan(lo, hi, color=PLATEAU, alpha=0.18, lw=0, zorder=0, gid="plateau",
                   label=f"plateau γ {lo:g}–{hi:g}" if hi > lo else f"plateau γ {lo:g}")
        if hi == lo:  # a span of no width is invisible: a wide pale line marks it
            ax.axvline(lo, color=PLATEAU, alpha=0.3, lw=8, zorder=0)
    below = [p for p in points if ceiling is None or p[0] <= ceiling]
    above = [p for p in points if ceiling is not None and p[0] > ceiling]
    _errorbars(ax, below, POINT, label="pilot λ̂ ± SEM")
    _errorbars(ax, above, ABOVE, label="above the ceiling", gid="above_ceiling")
    if ceiling is not None and ceiling > 0:
        ax.axvline(ceiling, color="0.3", ls="--", lw=1.1, zorder=1, gid="ceiling",
                   label=f"{GAMMA_CEILING:g}·nβ·h_max = {ceiling:.3g}")
    if entry is not None and entry > 0 and not _same(entry, chosen):
        ax.axvline(entry, color=CHOSEN, ls=":", lw=1.1, zorder=1, gid="entry_gamma",
                   label=f"the entry's γ = {entry:g}")
    _failed(ax, failed)
    if chosen is not None and chosen > 0:
        _chosen(ax, chosen, points)
    xs = [x for x, *_ in points] + [x for x, _ in failed] + plateau
    xs += [v for v in (chosen, entry) if v is not None and v > 0]
    if xs:
        ax.set_xlim(min(xs) / 2.5, max(xs) * 2.5)  # room for the outer pilots' markers and the ceiling
    if ceiling is not None and ceiling > 0:
        lo, hi = ax.get_xlim()
        ax.set_xlim(min(lo, ceiling / 2.5), max(hi, ceiling * 2.5))
    ys = [y for _, y, *_ in points]
    if ys and not failed and min(ys) > 0 and max(ys) > LOG_Y_RATIO * min(ys):
        ax.set_yscale("log")  # λ̂ over decades (chains escaping at small γ): a linear axis shows one point
    ax.set_xlabel("γ")
    ax.set_ylabel("λ̂")
    _title(ax, group, "localizer γ", None if chosen is None else f"chosen γ = {chosen:g}")
    _legend(ax)


def calibration_figure(groups: list[dict]):
    """One panel per group, in the report's order, at most MAX_COLS a row (PANEL_W × PANEL_H
    inches each); `fig.axes[i]` is group i's panel; the first MAX_PANELS groups only. No groups:
    one line of text saying so."""
    import matplotlib
    from matplotlib.figure import Figure

    groups = list(groups or [])[:MAX_PANELS]
    with matplotlib.rc_context(STYLE):
        if not groups:
            fig = Figure(figsize=(PANEL_W, 1.0))
            fig.text(0.5, 0.5, "no calibration groups", ha="center", va="center")
            return fig
        cols = min(MAX_COLS, len(groups))
        rows = math.ceil(len(groups) / cols)
        fig = Figure(figsize=(PANEL_W * cols, PANEL_H * rows), layout="constrained")
        for i, group in enumerate(groups):
            ax = fig.add_subplot(rows, cols, i + 1)
            if not isinstance(group, dict):
                ax.set_title(f"group {i}: not a report group", loc="left", color=CHOSEN)
                continue
            {"gamma": _gamma_panel, "accept": _accept_panel}.get(_kind(group), _step_panel)(ax, group)
    return fig


def figure_png(fig) -> bytes:
    """The figure as PNG bytes, the same bytes for the same figure (no "Software" stamp)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    return buf.getvalue()


def write_calibration_figure(groups: list[dict], path: Path) -> None:
    """`calibration_figure(groups)` as a PNG at `path`, written atomically (a temporary file
    renamed into place; nothing on an error)."""
    from lambda_hat.files import write_atomic

    fig = calibration_figure(groups)
    try:
        data = figure_png(fig)
    finally:
        fig.clear()  # not pyplot's: nothing else holds it, clearing frees its artists now
    write_atomic(Path(path), data)
