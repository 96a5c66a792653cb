"""`lh promote`: plots and a static gallery of a sweep's finished runs, idempotent.

Layout of a gallery (default `gallery/`; every file is keyed by IDs, so nothing overwrites
anything and two sweeps can share a gallery folder):

    index.html                      one section per target, a card per run
    gallery.md                      the same for a README
    targets/<target_id>/compare.png λ̂ ± SEM per run, exact λ where known, disagreements marked
    trajectories/<trajectory_id>/llc.png  checkpoints: λ̂ ± SEM per sampler against the training
                                    step, the training and test loss below, flagged points hollow
    runs/<run_id>/trace.png         λ̂ per chain and draw
    runs/<run_id>/running_mean.png  running mean of λ̂ with a 95 % band, against FGEs and seconds
    runs/<run_id>/rank.png          rank plot of λ̂ (one histogram per chain)
    runs/<run_id>/energy.png        HMC/NUTS: energy and energy-transition histograms; MCLMC: energy change
    runs/<run_id>/examples.png      a run that recorded per-example losses: the λ̂ contributions and,
                                    with a query set, the Bayesian influence function
    .promote.json                   what each file was made from (to skip what is up to date)

Plots never go into `runs/<run_id>/` of the store: an artifact directory is complete and
checksummed when it is renamed into place, and `lh verify` reports any file added later.

Runs are chosen by sweep (its run IDs, in sweep order) or, without a sweep, every finished
run in the store, grouped by target and ordered by sampler and ID; never by file time.
A run not finished yet is left out, so promote on a store being written shows what is done.

Idempotent: a file is rendered only when what it is made from changed (its runs' manifest
checksums and this module's PLOTS_VERSION), and written only when its bytes differ, so a
second promote rewrites nothing.
"""

from __future__ import annotations

import hashlib
import html
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from lambda_hat.errors import BadInput
from lambda_hat.store import enclosing_store
from lambda_hat.text import plural

PLOTS_VERSION = "7"  # bump when a plot's code changes, so existing galleries are redrawn
RUN_PLOTS = ("trace", "running_mean", "rank", "energy", "examples")
TARGET_PLOTS = ("compare",)
TRAJECTORY_PLOTS = ("trajectory",)
ALL_PLOTS = RUN_PLOTS + TARGET_PLOTS + TRAJECTORY_PLOTS
DISAGREE_SIGMAS = 3.0  # two estimates disagree when they differ by more than this many combined SEMs
STATE_FILE = ".promote.json"


def _sampler_color(name: str) -> str:
    """The colour the sampler's registration declares (matplotlib's first colour if none)."""
    from lambda_hat import registry

    entry = registry.samplers().get(name)
    return (entry.color if entry is not None else None) or "C0"


@dataclass
class PromoteReport:
    outdir: Path
    written: list[Path] = field(default_factory=list)
    unchanged: list[Path] = field(default_factory=list)
    runs: int = 0
    runs_wanted: int = 0
    targets: int = 0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (ID, why): left out, or drawn without its plots


def parse_plots(text: str | None) -> tuple[str, ...]:
    if not text:
        return ALL_PLOTS
    chosen = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [p for p in chosen if p not in ALL_PLOTS]
    if unknown:
        raise BadInput(f"--plots {text!r}: unknown {', '.join(unknown)}; choose from {','.join(ALL_PLOTS)}")
    return chosen


# --------------------------------------------------------------------------- writing only what changed


def _refuse(outdir: Path, path: Path, st: os.stat_result, wanted: str, flag: str = "--outdir") -> None:
    from lambda_hat.files import file_type

    what = "a file" if stat.S_ISREG(st.st_mode) else file_type(st)
    raise BadInput(f"{flag} {outdir}: {path} is {what}, not {wanted}; a gallery holds only "
                   "regular files and directories of its own (move it away)")


def check_gallery(outdir: Path, flag: str = "--outdir", store_root: Path | None = None) -> None:
    """Everything promote may write under `outdir`, checked before any work: its pages and
    state file are regular files or absent, `runs/`, `targets/`, `trajectories/` and their entries are
    directories (not links to them), and the plots in those are regular files or absent. A
    symbolic link, FIFO or device there is refused, never replaced nor written through.
    `store_root`, the store the command reads or is about to make: the gallery's folders are
    not it and do not hold it (`lh execute --promote` checks before the store exists)."""
    def lstat(p: Path) -> os.stat_result | None:
        try:
            return os.lstat(p)
        except FileNotFoundError:
            return None

    for name in ("index.html", "gallery.md", STATE_FILE):
        st = lstat(outdir / name)
        if st is not None and not stat.S_ISREG(st.st_mode):
            _refuse(outdir, outdir / name, st, "a regular file", flag)
    for sub in ("runs", "targets", "trajectories"):
        st = lstat(outdir / sub)
        store = enclosing_store((outdir / sub).resolve()) if st is not None else None
        if store is not None:  # `--outdir .` beside the default store ./runs: plots would go into it
            raise BadInput(f"{flag} {outdir}: its {sub}/ folder is in the store {store}, whose files only "
                           "lh execute writes; name another directory")
        if store_root is not None:
            try:
                folder, root = (outdir / sub).resolve(), store_root.resolve()
            except (OSError, RuntimeError):  # a loop: refused below, or by the output-path check
                folder = root = None
            if folder is not None and (root == folder or root.is_relative_to(folder)):
                raise BadInput(f"{flag} {outdir}: its {sub}/ folder would be the store {store_root} (or hold it), "
                               "whose files only lh execute writes; name another directory")
        if st is None:
            continue
        if not stat.S_ISDIR(st.st_mode):
            _refuse(outdir, outdir / sub, st, "a directory", flag)
        with os.scandir(outdir / sub) as entries:
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False):
                    _refuse(outdir, Path(entry.path), entry.stat(follow_symlinks=False), "a directory", flag)
                with os.scandir(entry.path) as files:
                    for f in files:
                        if f.name.endswith(".png") and not f.is_file(follow_symlinks=False):
                            _refuse(outdir, Path(f.path), f.stat(follow_symlinks=False), "a regular file", flag)


class Writer:
    """Writes a gallery's files only when their content changed; remembers what each was made
    from, so a plot whose inputs did not change is not even rendered again."""

    def __init__(self, outdir: Path, report: PromoteReport):
        self.outdir = outdir
        self.report = report
        self.state_path = outdir / STATE_FILE
        from lambda_hat.files import read_regular_text

        try:
            state = json.loads(read_regular_text(self.state_path) or "{}")
        except ValueError:
            state = {}
        # What we wrote is {file: {"key", "sha256"}}; anything else there is forgotten, not trusted.
        self.state: dict[str, dict] = {rel: v for rel, v in state.items() if isinstance(v, dict)} if isinstance(
            state, dict) else {}
        self.new_state: dict[str, dict] = {}

    def file(self, rel: str, key: str, render: Callable[[], bytes]) -> None:
        path = self.outdir / rel
        self._check(path)
        digest = _sha(path) if path.is_file() else None
        known = self.state.get(rel)
        if known and known.get("key") == key and digest == known.get("sha256"):
            self.new_state[rel] = known
            self.report.unchanged.append(path)
            return
        data = render()
        new_digest = hashlib.sha256(data).hexdigest()
        if digest != new_digest:
            from lambda_hat.files import write_atomic

            self._check(path)
            write_atomic(path, data)  # makes the folders it needs
            self.report.written.append(path)
        else:
            self.report.unchanged.append(path)
        self.new_state[rel] = {"key": key, "sha256": new_digest}

    def close(self) -> None:
        merged = {**self.state, **self.new_state}  # keep entries of other sweeps' pages
        data = (json.dumps(merged, indent=1, sort_keys=True) + "\n").encode()
        old = self.state_path.read_bytes() if os.path.isfile(self.state_path) and not os.path.islink(self.state_path) else None
        if old != data:
            from lambda_hat.files import write_atomic

            self._check(self.state_path)
            write_atomic(self.state_path, data)

    def _check(self, path: Path) -> None:
        """Again at write time (`check_gallery` did it before any work): no link between the
        gallery folder and `path`, and `path` a regular file or absent."""
        here = self.outdir
        for part in path.relative_to(self.outdir).parts:
            here = here / part
            try:
                st = os.lstat(here)
            except FileNotFoundError:
                return
            if here != path and not stat.S_ISDIR(st.st_mode):
                _refuse(self.outdir, here, st, "a directory")
            if here == path and not stat.S_ISREG(st.st_mode):
                _refuse(self.outdir, path, st, "a regular file")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps([PLOTS_VERSION, *parts], sort_keys=True, default=str).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 110, "font.size": 10, "axes.titlesize": 10,
                         "legend.fontsize": 8, "xtick.labelsize": 9, "ytick.labelsize": 9,
                         "axes.spines.top": False, "axes.spines.right": False,
                         "svg.hashsalt": "lambda-hat"})
    return plt


def _png(fig) -> bytes:
    import io

    buf = io.BytesIO()
    # No "Software" stamp and no date: the same figure gives the same bytes every time.
    fig.savefig(buf, format="png", metadata={"Software": None}, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _title(m) -> str:
    s = m.spec.get("sampler", {})
    return f"{s.get('name', '?')} · {m.id}"


# --------------------------------------------------------------------------- what λ̂ is judged against


@dataclass(frozen=True)
class Reference:
    """What a run's λ̂ is compared with: the finite-n reference where the project computes one
    (`llc_ref`: the expectation of λ̂ under the exact posterior at this n, with its numerical
    error `llc_ref_se`), else the asymptotic learning coefficient (`llc_true`), which a finite-n
    estimate can miss by many standard errors (multiplicity-2 normal crossings: ~0.14 vs 0.25)."""

    value: float
    se: float | None = None
    finite_n: bool = False
    method: str | None = None
    asymptote: float | None = None  # the asymptotic λ beside a finite-n reference, drawn dotted

    @property
    def name(self) -> str:
        return "finite-n reference" if self.finite_n else "asymptotic λ"

    def z(self, mean: float | None, sem: float | None) -> float | None:
        """How many standard errors (λ̂'s and the reference's combined) λ̂ lies above the reference."""
        if mean is None or not sem:
            return None
        return (mean - self.value) / math.hypot(sem, self.se or 0.0)

    def key(self) -> tuple:
        return (self.value, self.se, self.finite_n, self.method, self.asymptote)

    def text(self) -> str:
        """"0.1546", or "0.137 ± 0.001" when the numerical error shows at 4 significant digits."""
        shown = self.se is not None and self.se >= 5e-5 * abs(self.value)
        return _fmt(self.value) + (f" ± {_fmt(self.se, 2)}" if shown else "")


def reference_of(run_metrics: dict | None, target_metrics: dict | None) -> Reference | None:
    """The run's own reference first (a reference that depends on the run's posterior belongs
    to the run), then its target's."""
    sources = [x for x in (run_metrics, target_metrics) if x]

    def first(name: str) -> tuple[float | None, dict | None]:
        for metrics in sources:
            v = _finite(metrics.get(name))
            if v is not None:
                return v, metrics
        return None, None

    true, _ = first("llc_true")
    ref, where = first("llc_ref")
    if ref is not None:
        method = where.get("llc_ref_method")
        return Reference(ref, _finite(where.get("llc_ref_se")), True, str(method) if method else None, true)
    return Reference(true) if true is not None else None


def _ref_lines(ax, ref: Reference | None, vertical: bool = False, label: bool = True) -> None:
    if ref is None:
        return
    line = ax.axvline if vertical else ax.axhline
    line(ref.value, color="k", ls="--", lw=1.1, label=ref.name if label else None)
    if ref.asymptote is not None and ref.asymptote != ref.value:
        line(ref.asymptote, color="0.45", ls=":", lw=1.1, label="asymptotic λ" if label else None)


# --------------------------------------------------------------------------- robust axis ranges


# An energy axis spans the 1-99 % quantiles of the non-divergent draws widened by their distance
# on each side (±7σ for a normal bulk): only outliers rarer than 1 % are clipped.
FENCE, ENERGY_QUANTILES = 1.0, (1.0, 99.0)
# λ̂'s right tail is real (a normal crossing's draws sit near 0 with spikes 500x the median):
# a trace's axis spans its 1-99 % quantiles ± 10 times their distance, clipping only escapes.
TRACE_FENCE, TRACE_QUANTILES = 10.0, (1.0, 99.0)
TRACE_POINTS = 600  # draws drawn per chain at most: more only blacken the panel


def robust_range(values, fence: float = FENCE, quantiles: tuple[float, float] = ENERGY_QUANTILES
                 ) -> tuple[float, float, int]:
    """(low, high, how many finite values lie outside): the two quantiles (percent) widened by
    `fence` times their distance, narrowed to the finite values' own extent. Robust to outliers
    fewer than the lower quantile's share (a divergent transition's energy of 1e9 next to a bulk
    of width 10)."""
    import numpy as np

    v = np.asarray(values, dtype=float).reshape(-1)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return -1.0, 1.0, 0
    q1, q3 = np.percentile(v, quantiles)
    spread = q3 - q1
    lo, hi = max(float(v.min()), q1 - fence * spread), min(float(v.max()), q3 + fence * spread)
    if hi <= lo:  # most values equal: a unit-wide axis around them
        lo, hi = lo - 0.5, hi + 0.5
    outside = int(np.count_nonzero((v < lo) | (v > hi)))
    return float(lo), float(hi), outside


def _count(n: int, total: int) -> str:
    return f"{n:,} of {total:,} ({100 * n / total:.2g} %)" if total else "0"


def trace_figure(m, traces: dict, ref: Reference | None = None):
    """One small panel per chain (so that no chain hides another), shared axes, the draws
    thinned to at most TRACE_POINTS per chain, each chain's running mean over all its draws on
    top, and the reference λ dashed."""
    import numpy as np

    plt = _pyplot()
    llc = np.asarray(traces["llc"], dtype=float)
    chains, draws = llc.shape
    shown = min(chains, 16)
    cols = 1 if shown <= 4 else 2
    rows = math.ceil(shown / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 if cols == 1 else 7.4, 0.95 * rows + 1.3), sharex=True,
                             sharey=True, squeeze=False)
    stride = max(1, math.ceil(draws / TRACE_POINTS))
    x = np.arange(draws)
    with np.errstate(invalid="ignore"):
        running = np.cumsum(np.where(np.isfinite(llc), llc, np.nan), axis=1) / (x + 1)
    lo, hi, outside = robust_range(llc, TRACE_FENCE, TRACE_QUANTILES)
    if ref is not None:
        lo, hi = min(lo, ref.value), max(hi, ref.value)
    pad = 0.05 * (hi - lo)
    for c, ax in enumerate(axes.reshape(-1)):
        if c >= shown:
            ax.set_visible(False)
            continue
        ax.plot(x[::stride], llc[c, ::stride], lw=0.6, color=f"C{c % 10}", alpha=0.75)
        ax.plot(x, running[c], lw=1.4, color="k", label="running mean of the chain")
        _ref_lines(ax, ref)
        ax.set_ylim(lo - pad, hi + pad)
        ax.set_ylabel(f"chain {c}", color=f"C{c % 10}", fontsize=9, fontweight="bold")
    for ax in axes[-1]:
        ax.set_xlabel("draw" + (f" (1 in {stride} drawn; running means use all)" if stride > 1 else ""))
    fig.supylabel("λ̂ of the draw", fontsize=10, x=0.0)
    notes = []
    if shown < chains:
        notes.append(f"first {shown} of {chains} chains")
    if outside:
        q_lo, q_hi = TRACE_QUANTILES
        notes.append(f"y clipped to the {q_lo:g}-{q_hi:g} % quantiles ± {TRACE_FENCE:g}× their distance: "
                     f"{_count(outside, llc.size)} draws beyond")
    fig.suptitle(f"λ̂ per chain — {_title(m)}" + ("\n" + "; ".join(notes) if notes else ""), fontsize=10)
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    fig.legend(handles, names, loc="lower center", ncol=3, frameon=False, bbox_to_anchor=(0.5, 0.0))
    return fig


def plot_trace(m, traces: dict, ref: Reference | None = None) -> bytes:
    return _png(trace_figure(m, traces, ref))


def _running_mean_band(llc):
    """Pooled running mean over chains and its 95 % band from the spread between the chains'
    own running means (what a reader of one run can trust about its average so far)."""
    import numpy as np

    n = np.arange(1, llc.shape[1] + 1)
    per_chain = np.cumsum(llc, axis=1) / n
    pooled = per_chain.mean(axis=0)
    chains = llc.shape[0]
    half = 1.96 * per_chain.std(axis=0, ddof=1) / math.sqrt(chains) if chains > 1 else np.zeros_like(pooled)
    return pooled, half


def plot_running_mean(m, traces: dict, ref: Reference | None = None) -> bytes:
    import numpy as np

    plt = _pyplot()
    llc = np.asarray(traces["llc"], dtype=float)
    pooled, half = _running_mean_band(llc)
    axes_x = []
    if "cumulative_fge" in traces:
        axes_x.append(("gradient evaluations\n(all chains, with warmup)", np.asarray(traces["cumulative_fge"]).sum(axis=0)))
    if "walltime" in traces:
        axes_x.append(("seconds of sampling", np.asarray(traces["walltime"]).mean(axis=0)))
    if not axes_x:
        axes_x.append(("draw", np.arange(llc.shape[1])))
    fig, axes = plt.subplots(1, len(axes_x), figsize=(2.9 * len(axes_x) + 0.6, 3.4), sharey=True, squeeze=False)
    for ax, (label, x) in zip(axes[0], axes_x):
        ax.fill_between(x, pooled - half, pooled + half, alpha=0.25, color="C0", lw=0, label="95 % band (chains)")
        ax.plot(x, pooled, color="C0", lw=1.2, label="mean over chains")
        _ref_lines(ax, ref)
        ax.set_xlabel(label)
        ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
    axes[0][0].set_ylabel("running mean of λ̂")
    handles, names = axes[0][0].get_legend_handles_labels()
    axes[0][0].set_title(f"Running mean of λ̂ — {_title(m)}", loc="left", pad=8)
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.legend(handles, names, loc="lower center", bbox_to_anchor=(0.5, 0.0), ncol=4, frameon=False)
    return _png(fig)


def plot_rank(m, traces: dict, ref: Reference | None = None) -> bytes:
    import numpy as np

    plt = _pyplot()
    llc = np.asarray(traces["llc"], dtype=float)
    chains, draws = llc.shape
    ranks = np.argsort(np.argsort(llc.reshape(-1), kind="stable"), kind="stable").reshape(chains, draws)
    bins = max(5, min(20, draws // 10))
    edges = np.linspace(0, chains * draws, bins + 1)
    fig, ax = plt.subplots(figsize=(5.6, 3.4))
    expected = draws / bins
    for c in range(chains):
        counts, _ = np.histogram(ranks[c], bins=edges)
        ax.step(np.arange(bins + 1), np.r_[counts, counts[-1]] / expected, where="post", lw=1, label=f"chain {c}")
    ax.axhline(1.0, color="k", ls="--", lw=1, label="uniform")
    ax.set_xlabel(f"rank of λ̂ among all {chains * draws} draws ({bins} bins)")
    ax.set_ylabel("count / expected")
    ax.set_title(f"Rank plot — {_title(m)}", pad=22)
    ax.set_xticks([])
    ax.legend(ncol=min(5, chains + 1), loc="lower left", bbox_to_anchor=(0, 1.0), frameon=False,
              handlelength=1.2, columnspacing=1.0, borderaxespad=0.2)
    return _png(fig)


def energy_figure(m, traces: dict):
    """HMC/NUTS: the energy (centred per chain) and energy-transition histograms, without the
    divergent transitions (a rejected proposal's energy, up to 1e9 or inf, is no draw's) and on
    an axis clipped to ENERGY_QUANTILES widened by FENCE times their distance, both stated on the plot with the count of
    divergences. E-BFMI per chain from the same draws. MCLMC: the energy change per step, clipped
    the same way. (ArviZ's plot_energy draws the same two histograms, unclipped.)"""
    import numpy as np

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.6, 3.6))
    notes = []
    if "energy" in traces:
        energy = np.asarray(traces["energy"], dtype=float)
        total = energy.size
        diverging = np.asarray(traces.get("diverging", np.zeros(energy.shape, bool)), dtype=bool)
        kept = np.where(diverging | ~np.isfinite(energy), np.nan, energy)
        centre = np.nanmedian(kept, axis=1, keepdims=True) if np.isfinite(kept).any() else np.zeros((energy.shape[0], 1))
        centred = kept - centre
        transitions = np.diff(kept, axis=1)  # NaN where either draw was left out
        bfmi = [np.nanmean(t ** 2) / np.nanvar(e) if np.isfinite(t).sum() > 1 and np.nanvar(e) > 0 else math.nan
                for t, e in zip(transitions, kept)]
        both = np.concatenate([centred.reshape(-1), transitions.reshape(-1)])
        lo, hi, outside = robust_range(both)
        edges = np.linspace(lo, hi, 41)
        for values, label in ((centred, "energy (centred per chain)"), (transitions, "energy transition")):
            v = values.reshape(-1)
            v = v[np.isfinite(v)]
            if v.size:
                ax.hist(v[(v >= lo) & (v <= hi)], bins=edges, alpha=0.5, density=True, label=label)
        ax.set_xlim(lo, hi)
        n_div = int(diverging.sum())
        nonfinite = int(np.count_nonzero(~np.isfinite(energy) & ~diverging))
        div_text = (f"divergent transitions: {_count(n_div, total)}, left out" if n_div
                    else "no divergent transitions")
        if nonfinite:
            div_text += f"; {nonfinite:,} non-finite energies left out"
        ax.set_xlabel("energy")
        ax.set_title(f"Energy — {_title(m)}\n{div_text}\nE-BFMI per chain "
                     + ", ".join("–" if not math.isfinite(b) else f"{b:.2f}" for b in bfmi)
                     + " (below 0.3: poor exploration)", fontsize=9,
                     color="#b3261e" if m.status == "divergent" else "k")
        ax.set_ylim(top=ax.get_ylim()[1] * 1.2)  # room for the legend above the bars
        ax.legend(fontsize=7, frameon=False, loc="upper left")
    else:
        change = np.asarray(traces["energy_change"], dtype=float)
        finite = change[np.isfinite(change)]
        lo, hi, outside = robust_range(finite)
        ax.hist(finite[(finite >= lo) & (finite <= hi)], bins=np.linspace(lo, hi, 41), density=True, color="C4")
        ax.set_xlim(lo, hi)
        ax.set_xlabel("energy change per step")
        bad = change.size - finite.size
        ax.set_title(f"Energy change per step — {_title(m)}\nvariance {np.var(finite) if finite.size else math.nan:.2g}"
                     + (f"; {bad:,} non-finite left out" if bad else ""), fontsize=9)
        total = change.size
    if outside:
        q_lo, q_hi = ENERGY_QUANTILES
        notes.append(f"axis clipped to the {q_lo:g}-{q_hi:g} % quantiles\n± {FENCE:g}× their distance: "
                     f"{outside:,} values\nbeyond, not drawn")
        ax.text(0.99, 0.98, notes[-1], transform=ax.transAxes, ha="right", va="top", fontsize=7, color="0.3")
    ax.set_ylabel("density")
    return fig


def plot_energy(m, traces: dict, ref: Reference | None = None) -> bytes:
    return _png(energy_figure(m, traces))


def disagreements(rows: list[dict]) -> dict[str, list[str]]:
    """Run ID -> the runs whose λ̂ differs from its own by more than DISAGREE_SIGMAS combined SEMs."""
    out: dict[str, list[str]] = {}
    ok = [r for r in rows if r["llc_mean"] is not None and r["llc_sem"] is not None]
    for i, a in enumerate(ok):
        for b in ok[i + 1:]:
            if a.get("restrict") != b.get("restrict"):  # λ̂ of different parameter sets: no shared value
                continue
            sigma = math.hypot(a["llc_sem"], b["llc_sem"])
            if abs(a["llc_mean"] - b["llc_mean"]) > DISAGREE_SIGMAS * sigma:
                out.setdefault(a["run_id"], []).append(b["run_id"])
                out.setdefault(b["run_id"], []).append(a["run_id"])
    return out


def compare_note(rows: list[dict]) -> str:
    """What the comparison says about agreement: nothing with fewer than two estimates."""
    estimates = [r for r in rows if r["llc_mean"] is not None and r["llc_sem"] is not None]
    if len(estimates) < 2:
        return ""
    apart = " (runs compared only with runs of the same restriction)" if len(
        {r.get("restrict") for r in estimates}) > 1 else ""
    if disagreements(rows):
        return f"✕: differs from another run by > {DISAGREE_SIGMAS:g} combined SEMs" + apart
    return f"the {len(estimates)} runs agree within {DISAGREE_SIGMAS:g} combined SEMs" + apart


def compare_figure(target_id: str, rows: list[dict], refs: dict[str, Reference | None], labels: dict[str, str]):
    """λ̂ ± SEM per run; ✕ for a run that disagrees with another, a hollow marker and the status
    for a flagged one (status not ok), the reference dashed (one line when the runs share it,
    else a tick on each run's row)."""
    from lambda_hat.results import run_flags

    plt = _pyplot()
    shown = [r for r in rows if r["llc_mean"] is not None]
    clash = disagreements(rows)
    fig, ax = plt.subplots(figsize=(5.6, 1.6 + 0.45 * max(1, len(shown))))
    flagged = {r["run_id"] for r in shown if run_flags(r)}
    for y, r in enumerate(shown):
        color = _sampler_color(r["sampler"])
        marker = "X" if r["run_id"] in clash else "o"
        ax.errorbar(r["llc_mean"], y, xerr=r["llc_sem"] or 0.0, fmt=marker, color=color,
                    mfc="white" if r["run_id"] in flagged else color, mew=1.5,
                    ms=7 if marker == "X" else 6, capsize=3, lw=1.2)
    distinct = {ref.key(): ref for ref in (refs.get(r["run_id"]) for r in shown) if ref is not None}
    shared = next(iter(distinct.values())) if len(distinct) == 1 else None
    if shared is not None:
        _ref_lines(ax, shared, vertical=True, label=False)
    else:
        for y, r in enumerate(shown):
            ref = refs.get(r["run_id"])
            if ref is not None:
                ax.plot([ref.value] * 2, [y - 0.35, y + 0.35], color="k", ls="--", lw=1.1)
    ticks = []
    for r in shown:
        text = labels[r["run_id"]]
        if r["run_id"] in flagged:
            text += f"  ({r['status']})"
        if r["run_id"] in clash:
            text += "  ✕"
        ticks.append(text)
    ax.set_yticks(range(len(shown)), ticks)
    for tick, r in zip(ax.get_yticklabels(), shown):
        if r["run_id"] in flagged:
            tick.set_color("#b3261e")
    ax.invert_yaxis()
    ax.set_xlabel("λ̂ ± SEM")
    lines = []
    if shared is not None:
        lines.append(f"dashed: {shared.name} = {shared.text()}"
                     + (f"; dotted: asymptotic λ = {_fmt(shared.asymptote)}" if shared.asymptote is not None else ""))
    elif distinct:
        lines.append("dashed ticks: each run's own reference λ")
    note = compare_note(rows)
    if note:
        lines.append(note)
    if flagged:
        lines.append(f"hollow, red: flagged ({len(flagged)} run{'s' if len(flagged) > 1 else ''}), check before trusting")
    ax.set_title(f"{target_id}: λ̂ ± SEM per run" + "".join("\n" + x for x in lines), fontsize=9)
    missing = len(rows) - len(shown)
    if missing:
        ax.text(1.0, -0.02, f"{missing} run(s) without λ̂ (status not ok)", transform=ax.transAxes, ha="right",
                va="top", fontsize=7)
    return fig


def plot_compare(target_id: str, rows: list[dict], refs: dict[str, Reference | None], labels: dict[str, str]) -> bytes:
    return _png(compare_figure(target_id, rows, refs, labels))


def trajectory_points(rows_of: dict[str, list[dict]], targets: dict) -> dict[str, list[tuple[dict, Any]]]:
    """trajectory ID -> [(run row, checkpoint target manifest)] in step order, for trajectories
    with runs on at least two checkpoints."""
    out: dict[str, list[tuple[dict, Any]]] = {}
    for tid, rows in rows_of.items():
        t = targets.get(tid)
        traj = t.metrics.get("trajectory_id") if t is not None else None
        if traj and t.spec.get("step") is not None:
            out.setdefault(traj, []).extend((r, t) for r in rows)
    return {k: sorted(v, key=lambda rt: (rt[1].spec["step"], rt[0]["sampler"])) for k, v in out.items()
            if len({t.id for _, t in v}) >= 2}


def trajectory_figure(trajectory_id: str, points: list[tuple[dict, Any]]):
    """λ̂ ± SEM against the training step, one line per sampler (and restriction), with the
    exact λ where the checkpoint has one; below, L_n and the test loss of each checkpoint. A point
    whose run is flagged, or whose checkpoint is not a minimum (w* status), is hollow."""
    from lambda_hat.results import run_flags

    plt = _pyplot()
    fig, (ax, ax_loss) = plt.subplots(2, 1, figsize=(6.4, 5.2), sharex=True, height_ratios=(3, 2))
    lines: dict[tuple[str, str], list[tuple[dict, Any]]] = {}
    for r, t in points:
        lines.setdefault((r["sampler"], _restrict_label(r)), []).append((r, t))
    checkpoints = {t.id: t for _, t in points}
    # by step, then ID: two checkpoints of one step (files from two folders) never compare manifests
    steps = [(t.spec["step"], t) for t in sorted(checkpoints.values(), key=lambda t: (t.spec["step"], t.id))]
    exact = [(s, _finite(t.metrics.get("llc_true"))) for s, t in steps]
    exact = [(s, v) for s, v in exact if v is not None]
    # Far from a minimum λ̂ is meaningless and can be thousands below zero: the y range is that
    # of the checkpoints at a minimum (and the exact λ); others beyond it sit on the edge.
    at_minimum = [r["llc_mean"] for r, t in points if r["llc_mean"] is not None
                  and t.metrics.get("w_star_status") in (None, "ok")] + [v for _, v in exact]
    lo, hi = (min(at_minimum), max(at_minimum)) if at_minimum else (None, None)
    if lo is not None:
        pad = max(0.15 * (hi - lo), 0.1 * max(abs(hi), abs(lo)), 0.5)
        lo, hi = lo - pad, hi + pad
        # Others within one range's width of it are drawn where they are (the peak of a grokking
        # run's memorisation, before its checkpoints reach minima), the rest on the edge.
        span = hi - lo
        near = [r["llc_mean"] for r, _ in points if r["llc_mean"] is not None and lo - span <= r["llc_mean"] <= hi + span]
        lo, hi = min([lo] + [v - 0.05 * span for v in near]), max([hi] + [v + 0.05 * span for v in near])
    off_scale = 0
    for (sampler, restrict), pts in lines.items():
        color = _sampler_color(sampler)
        shown = [(r, t) for r, t in pts if r["llc_mean"] is not None]
        ys = [r["llc_mean"] if lo is None else min(max(r["llc_mean"], lo), hi) for r, _ in shown]
        ax.plot([t.spec["step"] for _, t in shown], ys, color=color, lw=1, alpha=0.6, label=sampler + restrict)
        for (r, t), y in zip(shown, ys):
            hollow = bool(run_flags(r)) or t.metrics.get("w_star_status") not in (None, "ok")
            if y != r["llc_mean"]:
                off_scale += 1
                ax.plot(t.spec["step"], y, "v" if y == lo else "^", color=color, mfc="white", mew=1.3, ms=7)
                continue
            ax.errorbar(t.spec["step"], r["llc_mean"], yerr=r["llc_sem"] or 0.0, fmt="o", color=color,
                        mfc="white" if hollow else color, mew=1.3, ms=5, capsize=2, lw=1)
    if exact:
        ax.plot(*zip(*exact), "k_", ms=14, mew=1.5, label="exact λ")
    if lo is not None:
        ax.set_ylim(lo, hi)
    ax.set_ylabel("λ̂ ± SEM")
    ax.legend(fontsize=8, loc="best")
    note = "hollow: run flagged or checkpoint not a minimum of L_n"
    if off_scale:
        note += f"\n▼▲: {off_scale} λ̂ off the scale of the checkpoints at a minimum (lh query for values)"
    ax.set_title(f"{trajectory_id}: λ̂ over training\n{note}", fontsize=9)
    for key, label, style in (("L0", "train loss L_n", "-"), ("test_loss", "test loss", "--")):
        pts = [(s, _finite(t.metrics.get(key))) for s, t in steps]
        pts = [(s, v) for s, v in pts if v is not None and v > 0]
        if pts:
            ax_loss.plot(*zip(*pts), style, color="k", marker=".", lw=1, label=label)
    if ax_loss.lines:
        ax_loss.set_yscale("log")
        ax_loss.legend(fontsize=8, loc="best")
    ax_loss.set_ylabel("loss")
    ax_loss.set_xlabel("training step")
    # step 0 is a checkpoint too: linear up to 1, logarithmic beyond
    ax_loss.set_xscale("symlog", linthresh=1)
    ax_loss.set_xlim(left=0 if steps[0][0] == 0 else 0.7 * steps[0][0], right=1.3 * steps[-1][0])
    return fig


def plot_trajectory(trajectory_id: str, points: list[tuple[dict, Any]]) -> bytes:
    return _png(trajectory_figure(trajectory_id, points))


def influential(bif, rows, query_rows, top: int = 3) -> list[int]:
    """Positions (among the recorded examples) of each query example's `top` most influential
    others by |BIF|, itself left out, in order of first appearance: a heatmap's rows."""
    import numpy as np

    chosen: dict[int, None] = {}
    for j, q in enumerate(query_rows):
        column = np.asarray(bif[:, j], float)
        strength = np.where((np.asarray(rows) == q) | ~np.isfinite(column), -np.inf, np.abs(column))
        for i in np.argsort(-strength, kind="stable")[:top]:
            if np.isfinite(strength[i]):
                chosen.setdefault(int(i), None)
    return list(chosen)


def examples_figure(m, examples: dict):
    """A run's recorded per-example quantities: the λ̂ contributions, sorted, against their mean
    (λ̂); with a query set, the Bayesian influence function of each query example's most
    influential training examples (−Cov over draws; blue: fitted together, red: competing)."""
    import numpy as np

    plt = _pyplot()
    contrib = np.asarray(examples["llc_contribution"], float)
    rows = np.asarray(examples["index"])
    has_bif = ("influence" in examples and "query" in examples and np.size(examples["query"]) > 0
               and bool(np.isfinite(examples["influence"]).any()))
    shown: list[int] = []
    if has_bif:
        bif = np.asarray(examples["influence"], float)
        query_rows = rows[np.asarray(examples["query"])]
        shown = influential(bif, rows, query_rows)
    # a heatmap row per influential example, tall enough for its label
    height = max(3.8, 1.6 + 0.16 * len(shown))
    fig, axes = plt.subplots(1, 2 if has_bif else 1, figsize=(9.6 if has_bif else 4.8, height), squeeze=False)
    ax = axes[0][0]
    order = np.argsort(contrib)[::-1]
    if not np.isfinite(contrib).any():  # a nonfinite run: nothing to draw, and say so
        ax.text(0.5, 0.5, "no finite contributions (the run's status says why)", transform=ax.transAxes, ha="center")
    ax.plot(np.arange(1, len(contrib) + 1), contrib[order], ".", ms=3, color="C0")
    llc = _finite(m.metrics.get("llc_mean"))
    ax.axhline(contrib.mean(), color="k", lw=1, ls="--", label=f"mean {contrib.mean():.4g}"
               + (f" (λ̂ {llc:.4g})" if llc is not None else ""))
    ax.axhline(0, color="0.6", lw=0.8)
    top = ", ".join(f"#{rows[i]} ({contrib[i]:.3g})" for i in order[:3])
    ax.text(0.98, 0.80, f"largest: {top}", transform=ax.transAxes, ha="right", va="top", fontsize=8)
    ax.set_xlabel("recorded example, by contribution")
    ax.set_ylabel("nβ·(E_w ℓ_i − ℓ_i(w*))")
    ax.set_title(f"λ̂ contributions of {len(contrib):,} examples", loc="left")
    ax.legend(loc="upper right")
    if has_bif:
        ax = axes[0][1]
        block = bif[shown].copy()
        block[np.asarray(rows)[shown][:, None] == query_rows[None, :]] = np.nan  # a query with itself: −Var, not influence
        limit = float(np.nanmax(np.abs(block))) if block.size and np.isfinite(block).any() else 1.0
        cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.85")
        im = ax.imshow(block, cmap=cmap, vmin=-limit, vmax=limit, aspect="auto", interpolation="nearest")
        ax.set_xticks(range(len(query_rows)), [str(q) for q in query_rows], rotation=90, fontsize=7)
        ax.set_yticks(range(len(shown)), [str(rows[i]) for i in shown], fontsize=7)
        ax.set_xlabel("query example (row)")
        ax.set_ylabel("training example (row)")
        ax.set_title("influence −Cov(ℓ_i, ℓ_q): each query's 3 strongest\nblue: fitted together, red: competing, grey: the query itself", loc="left")
        fig.colorbar(im, ax=ax, shrink=0.85)
    fig.suptitle(_title(m), x=0.01, ha="left", fontsize=9)
    fig.tight_layout()
    return fig


def plot_examples(m, examples: dict, ref: Reference | None = None) -> bytes:
    return _png(examples_figure(m, examples))


RUN_PLOT_FNS = {"trace": plot_trace, "running_mean": plot_running_mean, "rank": plot_rank, "energy": plot_energy,
                "examples": plot_examples}
PLOT_TITLES = {"trace": "trace", "running_mean": "running mean", "rank": "rank", "energy": "energy",
               "examples": "per-example"}


def _applies(plot: str, names: set[str], examples: set[str] = frozenset()) -> bool:
    if plot == "examples":
        return "llc_contribution" in examples
    if "llc" not in names:
        return False
    return plot != "energy" or bool(names & {"energy", "energy_change"})


# --------------------------------------------------------------------------- the gallery


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def fmt_estimate(mean: float | None, sem: float | None) -> str:
    """λ̂ ± SEM with the SEM to two significant digits and λ̂ to the same decimal place
    ("3.203 ± 0.038", "2.000 ± 0.050"), as one reads a measurement."""
    if mean is None:
        return "–"
    if not sem:
        return _fmt(mean)
    decimals = min(8, max(0, 1 - math.floor(math.log10(abs(sem)))))
    return f"{mean:.{decimals}f} ± {sem:.{decimals}f}"


def fmt_r_hat(v: float | None) -> str:
    return "–" if v is None else f"{v:.3f}"  # 3 decimals: "1.01" beside "r_hat 1.014 > 1.01" read as a contradiction


def fmt_ess(v: float | None) -> str:
    return "–" if v is None else f"{v:.0f}"


_SUBSCRIPT = str.maketrans("0123456789", "₀₁₂₃₄₅₆₇₈₉")
_SUPERSCRIPT = str.maketrans("0123456789", "⁰¹²³⁴⁵⁶⁷⁸⁹")


def describe_model(model: dict, teacher: dict | None = None) -> str:
    """What defines a target's model, in words: a polynomial's powers, a network's widths, a
    user model's factory."""
    kind = model.get("kind", "?")
    if kind == "polynomial":
        powers = list(model.get("powers") or [])
        text = f"polynomial, powers {powers}"
        if 0 < len(powers) <= 8:
            monomial = "·".join(f"w{str(i + 1).translate(_SUBSCRIPT)}" + (str(p).translate(_SUPERSCRIPT) if p != 1 else "")
                                for i, p in enumerate(powers) if p)
            text += f" (y = x·{monomial})"
        return text
    if kind == "python":
        kwargs = model.get("kwargs") or {}
        args = ", ".join(f"{k}={v!r}" for k, v in sorted(kwargs.items()))
        return f"python model from {model.get('factory', '?')}({args})"
    widths = model.get("widths")
    if kind == "dln":
        text = f"deep linear network, widths {'-'.join(map(str, widths or []))}"
        rank = (teacher or {}).get("rank")
        return text + (f", teacher rank {rank}" if rank is not None else "")
    if kind == "mlp":
        dims = [model.get("in_dim"), *(widths or []), model.get("out_dim")]
        return f"MLP {'-'.join(map(str, dims))}, {model.get('activation', 'relu')}"
    shown = {k: v for k, v in model.items() if k != "kind" and isinstance(v, (int, float, str, list)) and v not in ("", [])}
    return f"{kind} " + ", ".join(f"{k} {v}" for k, v in sorted(shown.items())) if shown else kind


def _describe_target(m) -> str:
    model, data = m.spec.get("model", {}), m.spec.get("data", {})
    n = m.metrics.get("n_data", data.get("n_data"))
    return f"{describe_model(model, m.spec.get('teacher'))}, n = {n}, {m.metrics.get('n_params', '?')} parameters"


def _row(m) -> dict:
    return {"run_id": m.id, "sampler": m.spec.get("sampler", {}).get("name", "?"), "status": m.status,
            "status_reason": m.metrics.get("status_reason"),
            "llc_mean": _finite(m.metrics.get("llc_mean")), "llc_sem": _finite(m.metrics.get("llc_sem")),
            "r_hat": _finite(m.metrics.get("r_hat")), "ess_bulk": _finite(m.metrics.get("ess_bulk")),
            "restrict": m.metrics.get("restrict")}


def _restrict_label(row: dict) -> str:
    free = row.get("restrict")
    if not free:
        return ""
    return f" [{free if len(free) <= 28 else free[:27] + '…'}]"


def _finite(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


@dataclass(frozen=True)
class Preface:
    """What a page shows above its targets: a heading, a figure (PNG bytes, written as
    `preface.png`) and a text in markdown (shown as it is). lh calibrate's report is one."""
    heading: str
    text: str
    figure: bytes | None = None


def promote(store: Any, outdir: Path, *, run_ids: list[str] | None = None, target_ids: list[str] | None = None,
            title: str = "lambda-hat gallery", plots: tuple[str, ...] = ALL_PLOTS,
            preface: Preface | None = None) -> PromoteReport:
    """Render what changed and write the gallery. `run_ids` (a sweep's, in order) or None for
    every run in the store; `preface`, shown first."""
    from lambda_hat.results import run_flags, unique_prefixes
    from lambda_hat.errors import ArtifactError

    check_gallery(outdir)
    report = PromoteReport(outdir)
    wanted = run_ids if run_ids is not None else store.ids("run")
    report.runs_wanted = len(wanted)
    runs, report.damaged = store.checked_manifests("run", wanted)
    report.runs = len(runs)
    if run_ids is None:
        runs.sort(key=lambda m: (m.spec.get("target_id", ""), m.spec.get("sampler", {}).get("name", ""), m.id))
    order = list(dict.fromkeys(target_ids or [])) + [m.spec.get("target_id") for m in runs]
    by_target: dict[str, list] = {tid: [] for tid in dict.fromkeys(order)}
    for m in runs:
        by_target[m.spec.get("target_id")].append(m)
    # A target's files are hashed too (a few MB each, once per promote): its page and the runs'
    # references stand on it, and a damaged one is named, as a run whose traces fail is.
    found, damaged_targets = store.checked_manifests("target", list(by_target), files=True)
    targets = {m.id: m for m in found}
    report.damaged += damaged_targets
    by_target = {tid: rs for tid, rs in by_target.items() if rs}  # a page shows targets with finished runs
    report.targets = len(by_target)
    writer = Writer(outdir, report)
    labels = unique_prefixes([m.id for m in runs] + list(by_target))
    run_files: dict[str, list[tuple[str, str]]] = {}
    refs: dict[str, Reference | None] = {}
    for m in runs:
        names = {k.removeprefix("traces/") for k in m.arrays if k.startswith("traces/")}
        recorded = {k.removeprefix("examples/") for k in m.arrays if k.startswith("examples/")}
        cache: dict[str, Any] = {}
        ex_cache: dict[str, Any] = {}
        t = targets.get(m.spec.get("target_id"))
        ref = refs[m.id] = reference_of(m.metrics, t.metrics if t else None)

        def traces(m=m, names=names, cache=cache):
            if not cache:
                cache.update(store.read_traces(m.id, ["llc", "cumulative_fge", "walltime", "energy", "energy_change",
                                                      "diverging"]))
            return cache

        def examples(m=m, cache=ex_cache):  # not "loss": the (chain, draw, example) array can be large
            if not cache:
                cache.update(store.read_examples(m.id, ["index", "llc_contribution", "influence", "query"]))
            return cache

        made = []
        try:
            for plot in RUN_PLOTS:
                if plot not in plots or not _applies(plot, names, recorded):
                    continue
                rel = f"runs/{m.id}/{plot}.png"
                source = examples if plot == "examples" else traces
                writer.file(rel, _key(plot, m.manifest_sha256 or m.id, ref and ref.key()),
                            lambda p=plot, m=m, t=source, ref=ref: RUN_PLOT_FNS[p](m, t(), ref))
                made.append((plot, rel))
        except ArtifactError as err:  # its traces do not check out: the card stays, without plots
            report.damaged.append((m.id, str(err).removeprefix(f"{m.id}: ")))
            made = []
        run_files[m.id] = made
    compare_files: dict[str, str] = {}
    rows_of: dict[str, list[dict]] = {}
    for tid, rs in by_target.items():
        rows_of[tid] = [_row(m) for m in rs]
        if "compare" in plots:
            rel = f"targets/{tid}/compare.png"
            run_labels = {r["run_id"]: f"{r['sampler']} {labels[r['run_id']]}" + _restrict_label(r) for r in rows_of[tid]}
            mine = {m.id: refs[m.id] for m in rs}
            writer.file(rel, _key("compare", [m.manifest_sha256 or m.id for m in rs],
                                  [r and r.key() for r in mine.values()]),
                        lambda tid=tid, mine=mine, rl=run_labels: plot_compare(tid, rows_of[tid], mine, rl))
            compare_files[tid] = rel
    trajectory_files: dict[str, str] = {}
    if "trajectory" in plots:
        for traj, points in trajectory_points(rows_of, targets).items():
            rel = f"trajectories/{traj}/llc.png"
            writer.file(rel, _key("trajectory", [m.manifest_sha256 or m.id for m in runs
                                                 if any(r["run_id"] == m.id for r, _ in points)],
                                  sorted({t.manifest_sha256 or t.id for _, t in points})),
                        lambda traj=traj, points=points: plot_trajectory(traj, points))
            trajectory_files[traj] = rel
    if preface is not None and preface.figure is not None:
        figure = preface.figure
        writer.file("preface.png", _key("preface", hashlib.sha256(figure).hexdigest()), lambda: figure)
    page = _Page(store, outdir, title, by_target, targets, rows_of, run_files, compare_files, labels, report, run_flags,
                 refs, trajectory_files, preface)
    writer.file("index.html", _key("html", hashlib.sha256(page.html().encode()).hexdigest()), lambda: page.html().encode())
    writer.file("gallery.md", _key("md", hashlib.sha256(page.markdown().encode()).hexdigest()), lambda: page.markdown().encode())
    writer.close()
    return report


@dataclass
class _Page:
    store: Any
    outdir: Path
    title: str
    by_target: dict
    targets: dict
    rows_of: dict
    run_files: dict
    compare_files: dict
    labels: dict
    report: PromoteReport
    run_flags: Callable
    refs: dict
    trajectory_files: dict = field(default_factory=dict)
    preface: Preface | None = None

    def _rel_store(self, kind: str, artifact_id: str) -> str:
        """A link from the gallery to an artifact's directory in the store."""
        target = self.store.layout.artifact_dir(kind, artifact_id).resolve()
        return Path(os.path.relpath(target, self.outdir.resolve())).as_posix()

    def _caption(self, m, row: dict) -> tuple[str, list[str]]:
        flags = self.run_flags(row)
        mean = f"λ̂ = {fmt_estimate(row['llc_mean'], row['llc_sem'])}" if row["llc_mean"] is not None else "λ̂: none"
        ref = self.refs.get(m.id)
        z = ref.z(row["llc_mean"], row["llc_sem"]) if ref is not None else None
        if z is not None:
            mean += f" ({abs(z):.1f} SE {'above' if z > 0 else 'below'} the {ref.name})"
        return (f"{mean} · R-hat {fmt_r_hat(row['r_hat'])} · bulk ESS {fmt_ess(row['ess_bulk'])} · {row['status']}",
                flags)

    def _target_line(self, tid: str) -> str:
        """The target in words and what its runs are judged against."""
        t = self.targets.get(tid)
        if t is None:
            return "target not in the store"
        text = _describe_target(t)
        finite = {r.key(): r for r in (self.refs.get(m.id) for m in self.by_target.get(tid, [])) if r and r.finite_n}
        own = reference_of(None, t.metrics)
        if own is not None and own.finite_n:
            finite.setdefault(own.key(), own)
        if len(finite) == 1:
            (ref,) = finite.values()
            text += f" · finite-n reference λ = {ref.text()}" + (f" ({ref.method})" if ref.method else "")
        elif finite:  # it depends on the run's posterior (nβ, γ)
            text += " · finite-n reference per run: " + ", ".join(sorted(_fmt(r.value) for r in finite.values()))
        true = _finite(t.metrics.get("llc_true"))
        mult = t.metrics.get("llc_multiplicity")
        if true is not None:
            text += f" · asymptotic λ = {_fmt(true)}" + (f" (multiplicity {mult})" if mult is not None else "")
        return text

    def _summary(self) -> str:
        r = self.report
        unfinished = r.runs_wanted - r.runs
        return (f"{plural(r.targets, 'target')}, {plural(r.runs, 'finished run')}" +
                (f" ({unfinished} of the {r.runs_wanted} chosen runs not finished yet)" if unfinished else ""))

    def html(self) -> str:
        e = html.escape
        parts = [
            "<!doctype html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
            '<meta name="viewport" content="width=device-width, initial-scale=1">',
            f"<title>{e(self.title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
            f"<header><h1>{e(self.title)}</h1><p>{e(self._summary())}. λ̂ ± SEM; a ✕ marks a run whose λ̂ differs "
            f"from another run's on the same target by more than {DISAGREE_SIGMAS:g} combined standard errors. "
            "Click a plot for full size.</p>",
        ]
        if len(self.by_target) > 1:
            parts.append("<nav>" + "".join(
                f'<div><a href="#{tid}">{e(self.labels[tid])}</a>'
                + (f' <span>{e(_describe_target(self.targets[tid]).split(", n =")[0])}</span>' if tid in self.targets else "")
                + "</div>" for tid in self.by_target) + "</nav>")
        parts.append("</header><main>")
        if self.preface is not None:
            parts.append(f'<section id="preface"><h2>{e(self.preface.heading)}</h2>')
            if self.preface.figure is not None:
                parts.append('<a href="preface.png"><img class="compare" src="preface.png" '
                             f'alt="{e(self.preface.heading)}"></a>')
            parts.append(f"<pre>{e(self.preface.text)}</pre></section>")
        for traj, rel in self.trajectory_files.items():
            parts.append(f'<section id="{traj}"><h2>{e(traj)}</h2><a href="{rel}"><img class="compare" src="{rel}" '
                         f'alt="λ̂ over training of {traj}"></a></section>')
        for tid, rs in self.by_target.items():
            t = self.targets.get(tid)
            clash = disagreements(self.rows_of[tid])
            parts.append(f'<section id="{tid}"><h2>{e(tid)}</h2>')
            parts.append(f"<p class=\"target\">{e(self._target_line(tid))}"
                         + (f' · <a href="{e(self._rel_store("target", tid))}/manifest.json">manifest</a>' if t else "")
                         + "</p>")
            if tid in self.compare_files:
                rel = self.compare_files[tid]
                parts.append(f'<a href="{rel}"><img class="compare" src="{rel}" alt="λ̂ ± SEM per run on {tid}"></a>')
            parts.append('<div class="runs">')
            for m, row in zip(rs, self.rows_of[tid]):
                caption, flags = self._caption(m, row)
                cls = "run flagged" if flags or m.id in clash else "run"
                parts.append(f'<article class="{cls}" id="{m.id}">')
                parts.append(f"<h3>{e(row['sampler'])} <code>{e(m.id)}</code>"
                             + (' <span class="clash">✕ disagrees</span>' if m.id in clash else "") + "</h3>")
                parts.append(f'<p class="numbers">{e(caption)}</p>')
                if flags:
                    parts.append(f'<p class="flags">check before trusting: {e("; ".join(flags))}</p>')
                parts.append('<div class="plots">')
                for plot, rel in self.run_files.get(m.id, []):
                    parts.append(f'<a href="{rel}"><img src="{rel}" loading="lazy" '
                                 f'alt="{PLOT_TITLES[plot]} of {m.id}"></a>')
                parts.append("</div>")
                store_dir = self._rel_store("run", m.id)
                parts.append(f'<p class="files"><a href="{e(store_dir)}/manifest.json">manifest.json</a> · '
                             f'<a href="{e(store_dir)}/">run directory</a> · <code>lh show {e(self.labels[m.id])}</code></p>')
                parts.append("</article>")
            parts.append("</div></section>")
        parts.append(f"</main><footer>Made by <code>lh promote</code> from the store {e(str(self.store.root))}. "
                     "Numbers: <code>lh query \"select * from runs\"</code>.</footer></body></html>")
        return "\n".join(parts) + "\n"

    def markdown(self) -> str:
        lines = [f"# {self.title}", "", f"{self._summary()}. λ̂ ± SEM; ✕ marks a run whose λ̂ differs from another "
                 f"run's on the same target by more than {DISAGREE_SIGMAS:g} combined standard errors.", ""]
        if self.preface is not None:
            lines += [f"## {self.preface.heading}", ""]
            if self.preface.figure is not None:
                lines += [f"![{self.preface.heading}](preface.png)", ""]
            lines += [self.preface.text.replace("\n# ", "\n### ").replace("\n## ", "\n### "), ""]
        for traj, rel in self.trajectory_files.items():
            lines += [f"## {traj}", "", f"![λ̂ over training of {traj}]({rel})", ""]
        for tid, rs in self.by_target.items():
            lines += [f"## {tid}", "", _md_text(self._target_line(tid)), ""]
            if tid in self.compare_files:
                lines += [f"![λ̂ ± SEM per run on {tid}]({self.compare_files[tid]})", ""]
            clash = disagreements(self.rows_of[tid])
            lines += ["| sampler | run | λ̂ ± SEM | R-hat | bulk ESS | status | plots |", "|---|---|---|---|---:|---|---|"]
            for m, row in zip(rs, self.rows_of[tid]):
                plots = " ".join(f"[{PLOT_TITLES[p]}]({rel})" for p, rel in self.run_files.get(m.id, []))
                status = _md_text(row["status"] + (f" ({row['status_reason']})" if self.run_flags(row) and row["status_reason"]
                                                   else ""))
                lines.append(f"| {row['sampler']} | `{m.id}`{' ✕' if m.id in clash else ''} | "
                             f"{fmt_estimate(row['llc_mean'], row['llc_sem'])} | {fmt_r_hat(row['r_hat'])} | "
                             f"{fmt_ess(row['ess_bulk'])} | {status} | {plots} |")
            lines.append("")
        return "\n".join(lines)


def _md_text(text: str) -> str:
    """Text from a spec (a factory's kwargs) as Markdown shows it literally: no HTML tag a
    renderer would run (`<img onerror=…>`: no `<`), no `|` that would split a table cell."""
    return text.replace("<", "&lt;").replace("|", "\\|")


_CSS = """
:root { --fg: #1d1d1f; --muted: #5f6368; --line: #e3e3e3; --warn: #b3261e; --card: #fafafa; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: var(--fg); }
header, main, footer { max-width: 1280px; margin: 0 auto; padding: 0 16px; }
header { padding-top: 16px; border-bottom: 1px solid var(--line); }
h1 { font-size: 1.5rem; margin: 0.2em 0; }
h2 { font-size: 1.2rem; margin: 1.2em 0 0.2em; font-family: ui-monospace, monospace; }
h3 { font-size: 1rem; margin: 0 0 0.3em; }
pre { white-space: pre-wrap; font-size: 13px; background: var(--card); border: 1px solid var(--line); padding: 8px; }
nav { margin: 0.5em 0 1em; display: flex; flex-direction: column; gap: 0.2em; }
nav a { font-family: ui-monospace, monospace; }
nav span { color: var(--muted); font-size: 0.9rem; }
p { margin: 0.3em 0; }
.target, .files, footer { color: var(--muted); font-size: 0.9rem; }
img { max-width: 100%; height: auto; display: block; }
img.compare { max-width: 640px; width: 100%; margin: 0.5em 0 1em; }
.runs { display: grid; grid-template-columns: 1fr; gap: 16px; }
.run { border: 1px solid var(--line); border-radius: 8px; padding: 12px; background: var(--card); min-width: 0; }
.run.flagged { border-color: #f0b8b3; }
.numbers { font-variant-numeric: tabular-nums; }
.flags, .clash { color: var(--warn); font-size: 0.9rem; }
.plots { display: grid; grid-template-columns: repeat(auto-fill, minmax(min(100%, 420px), 1fr)); gap: 8px; margin: 0.5em 0; }
.plots img { border: 1px solid var(--line); background: #fff; }
code { font-family: ui-monospace, monospace; font-size: 0.9em; overflow-wrap: anywhere; }
footer { padding: 24px 16px; border-top: 1px solid var(--line); margin-top: 24px; }
"""
