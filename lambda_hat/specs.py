"""Pydantic specs: what a target is, what a run is, what a sweep is.

Validation lives here and only here. Every model forbids unknown keys and non-finite
floats, so a typo (`stepsize`) or a `.nan` never reaches a worker. A spec is *resolved*
when every default and preset is written out; IDs (see `ids.py`) hash resolved specs.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, NonNegativeFloat, PositiveFloat, PositiveInt, model_validator

Dtype = Literal["float32", "float64"]


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


# --------------------------------------------------------------------------- target


def widths_for_target_params(in_dim: int, out_dim: int, depth: int, target_params: int, bias: bool) -> list[int]:
    """Equal hidden widths whose parameter count is closest to `target_params` (Lambda-Hat's rule)."""

    def count(h: int) -> int:
        dims = [in_dim] + [h] * depth + [out_dim]
        return sum(a * b + (b if bias else 0) for a, b in zip(dims[:-1], dims[1:]))

    best = min(range(1, 4097), key=lambda h: (abs(count(h) - target_params), h))
    return [best] * depth


class ModelSpec(_Spec):
    """A fully connected student network. `depth` counts hidden layers."""

    kind: Literal["mlp"] = "mlp"
    in_dim: PositiveInt = 4
    out_dim: PositiveInt = 1
    depth: PositiveInt = 2
    widths: list[PositiveInt] | None = None
    activation: Literal["relu", "tanh", "gelu", "identity"] = "relu"
    bias: bool = True
    init: Literal["he", "xavier", "lecun"] = "he"
    # Input convenience only: resolved into `widths`, then dropped so that a preset and
    # the same architecture written out by hand hash to the same ID.
    target_params: PositiveInt | None = None

    @model_validator(mode="after")
    def _resolve_widths(self) -> "ModelSpec":
        if self.widths is None:
            tp = self.target_params if self.target_params is not None else 50
            widths = widths_for_target_params(self.in_dim, self.out_dim, self.depth, tp, self.bias)
            object.__setattr__(self, "widths", widths)
        elif len(self.widths) != self.depth:
            raise ValueError(f"widths has {len(self.widths)} entries but depth is {self.depth}")
        object.__setattr__(self, "target_params", None)
        return self

    @property
    def layer_dims(self) -> list[int]:
        return [self.in_dim, *self.widths, self.out_dim]

    @property
    def n_params(self) -> int:
        d = self.layer_dims
        return sum(a * b + (b if self.bias else 0) for a, b in zip(d[:-1], d[1:]))


class DataSpec(_Spec):
    n_data: PositiveInt = 100
    n_test: PositiveInt = 100
    x_dist: Literal["gauss_iso", "gauss_aniso", "mixture", "lowdim_manifold", "heavy_tail"] = "gauss_iso"
    cov_decay: Annotated[float, Field(gt=0, le=1)] = 0.95
    mixture_k: PositiveInt = 4
    mixture_spread: NonNegativeFloat = 2.0
    x_dim_latent: PositiveInt = 2
    noise_model: Literal["gauss", "hetero", "student_t", "outliers"] = "gauss"
    noise_scale: NonNegativeFloat = 0.1
    hetero_scale: NonNegativeFloat = 0.1
    student_df: Annotated[float, Field(gt=2)] = 4.0
    outlier_frac: Annotated[float, Field(ge=0, le=1)] = 0.05
    outlier_scale: NonNegativeFloat = 2.0


class TeacherSpec(_Spec):
    """The network that generates Y. `None` fields mean "as the student" (Lambda-Hat's `_null`)."""

    depth: PositiveInt | None = None
    widths: list[PositiveInt] | None = None
    activation: Literal["relu", "tanh", "gelu", "identity"] | None = None
    dropout_rate: Annotated[float, Field(ge=0, lt=1)] = 0.0


class TrainingSpec(_Spec):
    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    learning_rate: PositiveFloat = 0.001
    steps: PositiveInt = 5000
    early_stop_tol: NonNegativeFloat | None = 1e-6
    batch_size: PositiveInt | None = None  # None: full batch


class TargetSpec(_Spec):
    """A trained network w* on generated data: the point the LLC is measured at."""

    model: ModelSpec = ModelSpec()
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    training: TrainingSpec = TrainingSpec()
    seed: int = 0
    dtype: Dtype = "float64"

    @model_validator(mode="after")
    def _resolve_teacher(self) -> "TargetSpec":
        # Write the teacher out in full so `teacher: _null` and the same network spelled
        # out hash alike.
        t, m = self.teacher, self.model
        depth = t.depth if t.depth is not None else m.depth
        widths = t.widths
        if widths is None:
            widths = list(m.widths) if depth == m.depth else widths_for_target_params(
                m.in_dim, m.out_dim, depth, m.n_params, m.bias
            )
        elif len(widths) != depth:
            raise ValueError(f"teacher.widths has {len(widths)} entries but teacher.depth is {depth}")
        resolved = t.model_copy(update={"depth": depth, "widths": widths, "activation": t.activation or m.activation})
        object.__setattr__(self, "teacher", resolved)
        return self


# --------------------------------------------------------------------------- samplers


class _SamplerBase(_Spec):
    chains: PositiveInt = 4
    dtype: Dtype = "float64"


class SGLDSpec(_SamplerBase):
    """Minibatch SGLD around w*.

    `step_size: null` picks ε = `step_size_nbeta` / (nβ): SGLD's bias and mixing depend on
    ε·nβ, not on ε alone, so this default transfers across data sizes and temperatures.
    """

    name: Literal["sgld"] = "sgld"
    steps: PositiveInt = 2000
    warmup: Annotated[int, Field(ge=0)] = 500
    batch_size: PositiveInt = 64
    step_size: PositiveFloat | None = None
    step_size_nbeta: PositiveFloat = 0.02
    precond: Literal["none", "rmsprop", "adam"] = "none"
    eval_every: PositiveInt = 10

    @model_validator(mode="after")
    def _check(self) -> "SGLDSpec":
        if self.warmup >= self.steps:
            raise ValueError(f"warmup ({self.warmup}) must be smaller than steps ({self.steps})")
        if (self.steps - self.warmup) // self.eval_every < 4:
            raise ValueError("(steps - warmup) / eval_every must leave at least 4 draws")
        return self

    @property
    def draws(self) -> int:
        return (self.steps - self.warmup) // self.eval_every


class HMCSpec(_SamplerBase):
    """HMC after BlackJAX window adaptation of step size and diagonal mass matrix (per chain)."""

    name: Literal["hmc"] = "hmc"
    draws: Annotated[int, Field(ge=4)] = 1000
    warmup: Annotated[int, Field(ge=0)] = 200
    num_integration_steps: PositiveInt = 10
    step_size: PositiveFloat = 0.01
    target_acceptance: Annotated[float, Field(gt=0, lt=1)] = 0.8
    adapt_step_size: bool = True
    adapt_mass_matrix: bool = True


SamplerSpec = Annotated[Union[SGLDSpec, HMCSpec], Field(discriminator="name")]
SAMPLER_NAMES = ("sgld", "hmc")


# --------------------------------------------------------------------------- posterior and run


class PosteriorSpec(_Spec):
    """Localized tempered posterior: log p(w) = -nβ·L_n(w) - (γ/2)‖w - w*‖²."""

    loss: Literal["mse"] = "mse"
    beta_mode: Literal["1_over_log_n", "fixed"] = "1_over_log_n"
    beta0: PositiveFloat = 1.0
    gamma: NonNegativeFloat = 1.0

    def beta(self, n: int) -> float:
        return self.beta0 / math.log(n) if self.beta_mode == "1_over_log_n" else self.beta0


class RunSpec(_Spec):
    """One sampler run on one target. Its ID hashes `target_id`, so a run is tied to its target."""

    target_id: str
    sampler: SamplerSpec
    posterior: PosteriorSpec = PosteriorSpec()
    seed: int = 0


class Sweep(_Spec):
    """A resolved sweep: concrete targets and (sampler, posterior, seed) triples, crossed into runs."""

    store_root: str | None = None
    jax_enable_x64: bool = True
    targets: list[TargetSpec]
    samplers: list["SamplerRun"]


class SamplerRun(_Spec):
    """A sweep's sampler entry once resolved: everything of a RunSpec but the target."""

    sampler: SamplerSpec
    posterior: PosteriorSpec = PosteriorSpec()
    seed: int = 0


Sweep.model_rebuild()
