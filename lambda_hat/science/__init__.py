"""Numerical core: build a trained target, sample its localized tempered posterior, estimate
the LLC. Import-light: JAX and BlackJAX are imported only when a function runs.

Public API: `TargetArrays`, `RunResult`, `build_target(spec)`, `sample_run(run, target, arrays)`.
Conventions (loss, posterior, samplers, diagnostics) are documented in `losses.py`,
`posterior.py`, `samplers/`, `llc.py` and `pipeline.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..specs import RunSpec, TargetSpec

__all__ = ["TargetArrays", "RunResult", "build_target", "sample_run"]


@dataclass
class TargetArrays:
    """A trained target: params {"W_i": (fan_in, fan_out), "b_i": (fan_out,)} (a user model's
    '/'-joined leaf paths), training data, and metrics (L0 = L_n(w*), train_steps,
    final_train_loss, test_loss, n_params, ...). X is an (n, features) array, or a user's data
    dict {name: (n, ...)} when its model brings its own loss (Y is then an empty (n, 0) column)."""

    params: dict[str, np.ndarray]
    X: np.ndarray | dict[str, np.ndarray]
    Y: np.ndarray
    metrics: dict[str, float | int] = field(default_factory=dict)
    # A checkpoint target's optimizer state, by stored name ("optimizer/0000", ...;
    # `trajectory.optimizer_payload`): what the next checkpoint resumes from. Empty otherwise.
    optimizer: dict[str, np.ndarray] = field(default_factory=dict)

    def to_payload(self) -> dict[str, np.ndarray]:
        """The arrays by their stored names: "params/<name>", "Y", "X" (a data dict's arrays
        as "X/<name>") and a checkpoint's "optimizer/<i>"."""
        payload = {f"params/{k}": v for k, v in self.params.items()} | self.optimizer
        if isinstance(self.X, dict):
            payload.update({f"X/{k}": v for k, v in self.X.items()})
        else:
            payload["X"] = self.X
        payload["Y"] = self.Y
        return payload

    @classmethod
    def from_payload(cls, loaded: dict[str, np.ndarray], metrics: dict) -> "TargetArrays":
        """The inverse of `to_payload`."""
        params = {k.removeprefix("params/"): v for k, v in loaded.items() if k.startswith("params/")}
        X = loaded["X"] if "X" in loaded else {k.removeprefix("X/"): v for k, v in loaded.items() if k.startswith("X/")}
        optimizer = {k: v for k, v in loaded.items() if k.startswith("optimizer/")}
        return cls(params=params, X=X, Y=loaded["Y"], metrics=dict(metrics), optimizer=optimizer)


@dataclass
class RunResult:
    """Sampler traces, each (chains, draws): the sampler's own, as its registration declares them
    (`registry.Sampler.traces`: "loss" always, HMC and NUTS add "accept_rate", "energy",
    "diverging", "step_size", "num_grad_evals", ...), and "llc", "cumulative_fge", "walltime".
    Summary metrics: see `llc.py` and `pipeline.sample_run`."""

    traces: dict[str, np.ndarray]
    metrics: dict[str, float | int | str] = field(default_factory=dict)
    # recorded per-example losses (`record.per_example`), stored as "examples/<name>": "loss"
    # (chains, draws, m) float32, "index" (m,) their rows, "loss_at_wstar" (m,) and
    # "llc_contribution" (m,); with a query set (`per_example.query`), "influence" (m, q) float32
    # and "query" (q,) its columns among the m; with held-out examples (`per_example.heldout`),
    # "heldout_loss" (chains, draws, h), "heldout_index" (h,) their rows in the held-out set,
    # "heldout_loss_at_wstar" (h,) and "heldout_influence" (m, h); empty when not recorded
    examples: dict[str, np.ndarray] = field(default_factory=dict)


def build_target(spec: "TargetSpec") -> TargetArrays:
    """Build the target with its model kind's `build` (`registry.ModelKind`): data and w*."""
    from .pipeline import build_target as _impl

    return _impl(spec)


def sample_run(run: "RunSpec", target: "TargetSpec", arrays: TargetArrays, **segments) -> RunResult:
    """Sample the localized tempered posterior of `target` at w* with `run.sampler`; `segments`
    (resume, on_segment, segment_draws): see `pipeline.sample_run`."""
    from .pipeline import sample_run as _impl

    return _impl(run, target, arrays, **segments)
