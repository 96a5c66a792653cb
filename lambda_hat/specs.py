"""Pydantic specs: what a target is, what a run is, what a sweep is.

Validation lives here and only here. Every model forbids unknown keys and non-finite
floats, so a typo (`stepsize`) or a `.nan` never reaches a worker; integers lie within
±(2^53 - 1) (what an ID can hash) and are never booleans, booleans are never numbers.
`memory_needs` gives each job's least memory, which the sweep loader bounds (MAX_JOB_BYTES).
A spec is *resolved* when every default and preset is written out; IDs (see `ids.py`) hash
resolved specs.

A target's model is one of the registered model kinds and a run's sampler one of the registered
samplers (`registry.py`): each kind's spec is a `ModelSpecBase`, each sampler's a
`SamplerSpecBase`; the built-in ones are defined and registered here, a plugin's in its own
module. The unions `ModelSpec` and `SamplerSpec` (and the models that hold them: TargetSpec,
RunSpec, SamplerRun, Sweep) are rebuilt whenever one is registered.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Hashable
from typing import Annotated, Any, ClassVar, Literal, NamedTuple, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Discriminator,
    Field,
    StrictBool,
    Tag,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError

from lambda_hat import registry
from lambda_hat.registry import ModelKind, Sampler

Dtype = Literal["float32", "float64"]

# IDs hash specs as RFC 8785 JSON, whose numbers are IEEE doubles: an integer beyond ±(2^53 - 1)
# cannot be hashed (and would not round-trip), so no integer field accepts one.
SAFE_INT_MAX = 2**53 - 1


def _not_bool(value: Any) -> Any:
    # Pydantic's lax mode reads `true` as 1; in a sweep that is a typo, never a count or a seed.
    # Everything else lax mode allows (100.0, "100") still passes and hashes as the integer.
    if isinstance(value, bool):
        raise PydanticCustomError("bool_not_number", "Input should be a number, not {value}", {"value": str(value).lower()})
    return value


NotBool = BeforeValidator(_not_bool)
Int = Annotated[int, NotBool, Field(ge=-SAFE_INT_MAX, le=SAFE_INT_MAX)]
PositiveInt = Annotated[Int, Field(gt=0)]
Float = Annotated[float, NotBool]
PositiveFloat = Annotated[Float, Field(gt=0)]
NonNegativeFloat = Annotated[Float, Field(ge=0)]
# Strict: `bias: 1` or `tune: "no"` is a type error, not a boolean.
Bool = StrictBool


class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True)


# Key in a field's json_schema_extra: the value at which the field is left out of the ID.
ID_NEUTRAL = "id_neutral"


def added_field(neutral, *, since: str, **kwargs):
    """Declare a spec field added after IDs were published (`since`: the lambda-hat version).

    `neutral` is its default and the value that reproduces the behaviour from before the
    field existed; while a spec holds it, the field is not hashed, so existing IDs stay
    valid (see `ids.py`). Example: `thin: int = added_field(1, since="0.2", ge=1)`."""
    return Field(neutral, json_schema_extra={ID_NEUTRAL: neutral, "since": since}, **kwargs)


# --------------------------------------------------------------------------- resource estimate

# A job (one target build or one run) whose estimate exceeds this is refused when the sweep is
# loaded: it could not fit a large node, and would otherwise fail only after hours of other work.
MAX_JOB_BYTES = 64 * 2**30
# Per chain: position, momentum or noise, gradient, preconditioner (mass matrix, RMSProp/Adam moments).
STATE_COPIES = 4
# Per chain and draw: loss, llc, cumulative_fge, walltime and the sampler's own (step size,
# acceptance, energy, divergences, gradient evaluations, L, ...): at most 12.
TRACES_PER_DRAW = 12
ITEMSIZE = {"float32": 4, "float64": 8}


class MemoryNeed(NamedTuple):
    """One part of a job's memory estimate: the arrays it must hold at once, in bytes, and the
    field that drives their size (what an error names; empty: not the job's own field)."""

    field: str
    what: str
    bytes: int


def _at_fault(*factors: tuple[str, float, float]) -> str:
    """Of the fields whose sizes multiply into one part of an estimate, given as (field, size, its
    size in the default spec), the one furthest above its default: what made the part large
    (`chains: 1000000` with the default draws is the chains' fault, not the draws')."""
    return max(factors, key=lambda f: f[1] / f[2])[0]


def _largest_layer_field(dims: list[int], hidden: str) -> str:
    """The field behind the largest weight matrix of layers `dims` (input, hidden..., output)."""
    i = max(range(len(dims) - 1), key=lambda j: dims[j] * dims[j + 1])
    if i == 0 and dims[0] >= dims[1]:
        return "model.in_dim"
    if i == len(dims) - 2 and dims[-1] >= dims[-2]:
        return "model.out_dim"
    return hidden


# --------------------------------------------------------------------------- seeds

# A seed becomes a PRNG key (jax.random.PRNGKey) in the integer width of the x64 mode its spec's
# dtype runs in (science/models.precision): float64 keeps all 64 bits of it, float32 only the low
# 32, so there seeds s and s + 2^32 (and -1 and 2^32 - 1) would give the same numbers under two
# IDs. Seeds 0 ... 2^32 - 1 give the same key in both modes. Checked when a sweep is loaded, not
# by the models, so that a stored spec from before still parses (and is found, not quarantined).
SEED_MAX_FLOAT32 = 2**32 - 1


def seed_problem(seed: int, dtype: str) -> str | None:
    """Why `seed` cannot be honoured by a spec computed in `dtype` (None: it can)."""
    if dtype == "float32" and not 0 <= seed <= SEED_MAX_FLOAT32:
        return (f"{seed} does not fit the 32-bit random key of a float32 spec (it would give the numbers of "
                f"seed {seed % 2**32}): use 0 to {SEED_MAX_FLOAT32} (or dtype float64, whose key holds 64 bits)")
    return None


@functools.cache
def _default_spec(cls: type[BaseModel]) -> Any:
    """`cls()`: the sizes an estimate's parts are compared with to find the field at fault."""
    return cls()


# --------------------------------------------------------------------------- target


# Lambda-Hat searched hidden widths 1..4096 for `target_params`; the bound stays, so that every
# target resolves to the widths (and the ID) it always had.
TARGET_PARAMS_MAX_WIDTH = 4096
# More hidden layers than any sweep here needs; a bound keeps `depth: 1e15` from allocating.
MAX_DEPTH = 1024


def mlp_param_count(in_dim: int, out_dim: int, widths: list[int], bias: bool) -> int:
    dims = [in_dim, *widths, out_dim]
    return sum(a * b + (b if bias else 0) for a, b in zip(dims[:-1], dims[1:]))


def widths_for_target_params(in_dim: int, out_dim: int, depth: int, target_params: int, bias: bool) -> list[int]:
    """Equal hidden widths h in 1..4096 whose parameter count is closest to `target_params`,
    the narrower on a tie (Lambda-Hat's rule), in closed form.

    With equal widths the count is (depth-1)·h² + (in_dim + out_dim + depth·bias)·h + out_dim·bias,
    increasing in h, so the distance to the target is smallest at the widest h whose count does
    not exceed it, or at the next one. That h is the floor of the quadratic's positive root,
    exact in integers via isqrt; the two neighbours are then compared by Lambda-Hat's key."""
    quad, lin, const = depth - 1, in_dim + out_dim + depth * int(bias), out_dim * int(bias)
    room = target_params - const  # what the h-dependent terms may add without overshooting
    if room < 0:
        below = 0
    elif quad == 0:
        below = room // lin
    else:
        below = (math.isqrt(lin * lin + 4 * quad * room) - lin) // (2 * quad)
    candidates = {min(max(h, 1), TARGET_PARAMS_MAX_WIDTH) for h in (below, below + 1)}

    def distance(h: int) -> tuple[int, int]:
        return abs(mlp_param_count(in_dim, out_dim, [h] * depth, bias) - target_params), h

    return [min(candidates, key=distance)] * depth


class ModelSpecBase(_Spec):
    """What every model kind's spec provides (`registry.ModelKind`). A subclass declares
    `kind: Literal["<name>"]` and `in_dim`, `out_dim`, `layer_dims` (input, every layer's
    outputs) and `n_params`; the methods below have defaults it may override."""

    @property
    def row_width(self) -> int:
        """Numbers per data row (inputs and outputs): what the data arrays hold per row."""
        return self.in_dim + self.out_dim

    @property
    def activation_width(self) -> int:
        """Outputs of all layers per data row: what one forward pass holds per row."""
        return sum(self.layer_dims[1:])

    @property
    def shape(self) -> str:
        """The architecture as the user wrote it (error messages, `lh plan`)."""
        return str(self.layer_dims)

    def describe(self) -> str:
        """The model in `lh plan`'s table."""
        return f"{self.kind}{self.shape}"

    def forward_key(self) -> Hashable:
        """A hashable value saying everything the forward pass depends on (what
        `science.models.forward`, training and the compiled programs are keyed on): a string is
        the built-in network pass with that activation; else a tuple whose first item is the kind."""
        raise NotImplementedError(f"model kind {self.kind!r} has no forward_key")

    def resolve_teacher(self, teacher: "TeacherSpec", w_star: str | None) -> tuple["TeacherSpec", str]:
        """The target's teacher and w_star written out for this model (so that defaults and the same
        choice spelled out hash alike); ValueError for a combination it cannot honour. Default: a
        kind without a teacher, measured at its trained w*."""
        for name in ("rank", "depth", "widths", "activation"):
            if getattr(teacher, name) is not None:
                raise ValueError(f"teacher.{name} is set, but a {self.kind} model has no teacher")
        if w_star not in (None, "trained"):
            raise ValueError(f"a {self.kind} model is measured at its trained w* (w_star: trained)")
        return teacher, "trained"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        """{parameter leaf name: shape} of the model's w*, as the target stores it (what a
        sampler's `restrict` globs select from). The MLP layout: W_i (fan_in, fan_out), b_i."""
        dims, out = self.layer_dims, {}
        for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
            out[f"W_{i}"] = (a, b)
            if getattr(self, "bias", False):
                out[f"b_{i}"] = (b,)
        return out

    def memory_fields(self) -> tuple[str, str, str]:
        """The fields that size a target's data rows, its parameters and its activations (what a
        memory error names)."""
        return "model", "model", "model"

    def teacher_memory_needs(self, target: "TargetSpec", rows: int, rows_field: str, usual_outputs: int
                             ) -> list[MemoryNeed]:
        """What labelling `rows` rows with this model's teacher holds besides the student's arrays."""
        return []

    def target_memory_needs(self, target: "TargetSpec") -> list[MemoryNeed]:
        """A lower bound on the memory building `target` takes: the arrays that must be resident at
        once (data, parameters with their gradients and Adam moments, one training step's
        activations), not what XLA adds on top. Compared with MAX_JOB_BYTES."""
        m, d, item = self, target.data, ITEMSIZE[target.dtype]
        usual = _default_spec(TargetSpec)
        rows = max(d.n_data, d.n_test)  # train and test sets are drawn (and labelled) one after the other
        rows_field = "data.n_data" if d.n_data >= d.n_test else "data.n_test"
        batch = min(target.training.batch_size or d.n_data, d.n_data)
        batch_field = "training.batch_size" if target.training.batch_size else "data.n_data"
        io_field, params_field, outputs_field = m.memory_fields()
        outputs, usual_outputs = m.activation_width, usual.model.activation_width
        needs = [
            MemoryNeed(_at_fault((rows_field, rows, usual.data.n_data),
                                 (io_field, m.row_width, usual.model.row_width)),
                       "data arrays", (d.n_data + d.n_test) * m.row_width * item),
            MemoryNeed(params_field, "parameters, gradients and optimizer moments", 4 * m.n_params * item),
            MemoryNeed(_at_fault((batch_field, batch, usual.data.n_data), (outputs_field, outputs, usual_outputs)),
                       "activations of a training step", batch * outputs * item),
        ]
        needs += m.teacher_memory_needs(target, rows, rows_field, usual_outputs)
        if d.x_dist == "mixture":
            needs.append(MemoryNeed("data.mixture_k", "mixture centers", d.mixture_k * m.in_dim * item))
        elif d.x_dist == "lowdim_manifold":
            needs.append(MemoryNeed("data.x_dim_latent", "latent inputs", (rows + m.in_dim) * d.x_dim_latent * item))
        return needs


class MLPSpec(ModelSpecBase):
    """A fully connected student network. `depth` counts hidden layers."""

    kind: Literal["mlp"] = "mlp"
    in_dim: PositiveInt = 4
    out_dim: PositiveInt = 1
    depth: Annotated[PositiveInt, Field(le=MAX_DEPTH)] = 2
    widths: list[PositiveInt] | None = None
    activation: Literal["relu", "tanh", "gelu", "identity"] = "relu"
    bias: Bool = True
    init: Literal["he", "xavier", "lecun"] = "he"
    # Input convenience only: resolved into `widths`, then dropped so that a preset and
    # the same architecture written out by hand hash to the same ID.
    target_params: PositiveInt | None = None

    @model_validator(mode="after")
    def _resolve_widths(self) -> "MLPSpec":
        if self.widths is None:
            tp = self.target_params if self.target_params is not None else 50
            widths = widths_for_target_params(self.in_dim, self.out_dim, self.depth, tp, self.bias)
            object.__setattr__(self, "widths", widths)
        elif len(self.widths) != self.depth:
            n = f"{len(self.widths)} {'entry' if len(self.widths) == 1 else 'entries'}"
            if "depth" not in self.model_fields_set:  # the user wrote widths only: name what to add
                raise ValueError(f"widths has {n}, and depth (not given) is {self.depth}: add depth: {len(self.widths)}")
            raise ValueError(f"widths has {n} but depth is {self.depth}")
        object.__setattr__(self, "target_params", None)
        return self

    @property
    def layer_dims(self) -> list[int]:
        return [self.in_dim, *self.widths, self.out_dim]

    @property
    def n_params(self) -> int:
        return mlp_param_count(self.in_dim, self.out_dim, self.widths, self.bias)

    def forward_key(self) -> str:
        return self.activation

    def resolve_teacher(self, teacher, w_star):
        t, m = teacher, self
        if t.rank is not None:
            raise ValueError("teacher.rank applies to dln models only")
        if w_star == "refined":
            raise ValueError("w_star: refined applies to dln models only (an mlp's w* is trained: set training.grad_tol)")
        depth = t.depth if t.depth is not None else m.depth
        widths = t.widths
        if widths is None:
            widths = list(m.widths) if depth == m.depth else widths_for_target_params(
                m.in_dim, m.out_dim, depth, m.n_params, m.bias
            )
        elif len(widths) != depth:
            raise ValueError(f"teacher.widths has {len(widths)} entries but teacher.depth is {depth}")
        resolved = t.model_copy(update={"depth": depth, "widths": widths, "activation": t.activation or m.activation})
        if w_star == "teacher" and (resolved.widths != m.widths or resolved.activation != m.activation):
            raise ValueError("w_star: teacher needs the teacher's architecture to equal the student's")
        return resolved, w_star or "trained"

    def memory_fields(self) -> tuple[str, str, str]:
        return ("model.in_dim" if self.in_dim >= self.out_dim else "model.out_dim",
                _largest_layer_field(self.layer_dims, "model.widths"),
                "model.out_dim" if self.out_dim > max(self.widths) else "model.widths")

    def teacher_memory_needs(self, target, rows, rows_field, usual_outputs):
        m, t, item = self, target.teacher, ITEMSIZE[target.dtype]
        usual = _default_spec(TargetSpec)
        teacher_params = mlp_param_count(m.in_dim, m.out_dim, t.widths, m.bias)
        t_outputs = sum(t.widths) + m.out_dim
        t_field = "model.out_dim" if m.out_dim > max(t.widths) else "teacher.widths"
        return [
            MemoryNeed(_largest_layer_field([m.in_dim, *t.widths, m.out_dim], "teacher.widths"),
                       "teacher parameters", teacher_params * item),
            MemoryNeed(_at_fault((rows_field, rows, usual.data.n_data), (t_field, t_outputs, usual_outputs)),
                       "teacher activations", rows * t_outputs * item),
        ]


class DLNSpec(ModelSpecBase):
    """A deep linear network x -> W_L ... W_1 x. `widths` lists every layer's size, input and
    output included: [5, 3, 5] is 5 -> 3 -> 5. No biases. Its learning coefficient is known
    exactly (Aoyagi 2024), which makes it the calibration target of the samplers."""

    kind: Literal["dln"]
    widths: Annotated[list[PositiveInt], Field(min_length=2, max_length=MAX_DEPTH + 1)]
    init: Literal["he", "xavier", "lecun"] = "xavier"

    @property
    def in_dim(self) -> int:
        return self.widths[0]

    @property
    def out_dim(self) -> int:
        return self.widths[-1]

    @property
    def layer_dims(self) -> list[int]:
        return list(self.widths)

    @property
    def n_params(self) -> int:
        return sum(a * b for a, b in zip(self.widths[:-1], self.widths[1:]))

    def forward_key(self) -> str:
        return "identity"  # the MLP pass without biases or nonlinearity

    def resolve_teacher(self, teacher, w_star):
        # Its teacher has the student's architecture and rank `rank` (full rank: the smallest width).
        for name in ("depth", "widths", "activation"):
            if getattr(teacher, name) is not None:
                raise ValueError(f"teacher.{name} is set, but a dln teacher takes only `rank` (its architecture is the student's)")
        full = min(self.widths)
        if teacher.rank is not None and teacher.rank > full:
            raise ValueError(f"teacher.rank {teacher.rank} exceeds the smallest width {full}")
        rank = full if teacher.rank is None else teacher.rank
        return teacher.model_copy(update={"rank": rank}), w_star or "teacher"

    def memory_fields(self) -> tuple[str, str, str]:
        return "model.widths", "model.widths", "model.widths"  # its in and out dimensions are its widths


class PolynomialSpec(ModelSpecBase):
    """A normal-crossing model y = x·∏ wᵢ^pᵢ (scalar x and y, one parameter per power), measured
    at w* = 0 on data from the zero function plus noise: its λ = 1/(2·max p) and multiplicity are
    known exactly (`theory.normal_crossing_lambda`; devinterp's test cases). Powers of 0 make
    parameters the model ignores."""

    kind: Literal["polynomial"]
    powers: Annotated[list[Annotated[Int, Field(ge=0, le=64)]], Field(min_length=1, max_length=64)]

    @field_validator("powers")
    @classmethod
    def _some_positive(cls, v: list[int]) -> list[int]:
        if max(v) == 0:
            raise ValueError("powers needs at least one positive entry (all zero: the model is constant)")
        return v

    in_dim: ClassVar[int] = 1
    out_dim: ClassVar[int] = 1

    @property
    def layer_dims(self) -> list[int]:
        return [1, 1]

    @property
    def n_params(self) -> int:
        return len(self.powers)

    @property
    def shape(self) -> str:
        return f"powers={self.powers}"  # its layer dims are always [1, 1]

    def describe(self) -> str:
        return f"{self.kind} {self.shape}"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {"w": (len(self.powers),)}

    def forward_key(self) -> tuple:
        return ("polynomial", tuple(int(p) for p in self.powers))

    def resolve_teacher(self, teacher, w_star):
        # The truth is the zero function, w* its point at the origin: nothing to resolve.
        for name in ("rank", "depth", "widths", "activation"):
            if getattr(teacher, name) is not None:
                raise ValueError(f"teacher.{name} is set, but a polynomial model's teacher is fixed (the zero function)")
        if w_star not in (None, "teacher"):
            raise ValueError("a polynomial model is measured at its true parameter w* = 0 (w_star: teacher)")
        return teacher, "teacher"

    def memory_fields(self) -> tuple[str, str, str]:
        return "model.powers", "model.powers", "model.powers"


# Key in a field's json_schema_extra: the field is never hashed (where a user's code lives: the
# worker needs it, the ID must not depend on it).
NOT_HASHED = "not_hashed"


class PythonModelSpec(ModelSpecBase):
    """A user's own model: `factory` ("module:function") is called as `make(seed=..., **kwargs)`
    and returns params, a loss (a function, or "mse"/"cross_entropy" with predict) and data
    (`user_models.py`).
    The user writes `factory` and `kwargs`; the sweep loader fills in the rest from the factory
    (its code and data digests, which the ID covers; its shapes; where its module lives)."""

    kind: Literal["python"]
    factory: Annotated[str, Field(pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")]
    kwargs: dict[str, Any] = {}
    # filled in by `user_models.resolve` when the sweep is loaded
    loss: Literal["mse", "cross_entropy", "callable"] | None = None
    trained: Bool = False
    code_digest: str = ""
    # {module: digest} of the files code_digest covers: what `lh plan` names when code changed
    code_files: dict[str, str] = Field({}, json_schema_extra={NOT_HASHED: True})
    # {leaf path: shape} of the factory's params (derived from the hashed code, kwargs and seed)
    params: dict[str, list[int]] = Field({}, json_schema_extra={NOT_HASHED: True})
    data_digest: str = ""
    # sha256 of w* when the factory hands it over ("trained": True): it comes from outside the code.
    # Empty otherwise (initial params are the code's, from kwargs and seed), so untrained targets
    # kept the IDs they had before the field existed.
    params_digest: str = added_field("", since="0.1")
    factory_seed: Int = 0
    n_params: Annotated[Int, Field(ge=0)] = 0
    in_dim: Annotated[Int, Field(ge=0)] = 0
    out_dim: Annotated[Int, Field(ge=0)] = 0
    source_dir: str | None = Field(None, json_schema_extra={NOT_HASHED: True})
    # a checkpoint trained elsewhere (`checkpoints: {from: ...}`): the .npz its w* is read from;
    # its content is params_digest, so the path is not hashed (a moved directory keeps the ID)
    params_file: str | None = Field(None, json_schema_extra={NOT_HASHED: True})

    @property
    def layer_dims(self) -> list[int]:
        return [self.in_dim, self.out_dim]

    @property
    def shape(self) -> str:
        return f"{self.factory} ({self.n_params} params)"

    def describe(self) -> str:
        return f"{self.kind} {self.shape}"

    def param_shapes(self) -> dict[str, tuple[int, ...]]:
        return {k: tuple(v) for k, v in self.params.items()}

    def forward_key(self) -> tuple:
        import json

        return ("python", self.factory, json.dumps(self.kwargs, sort_keys=True), self.factory_seed, self.loss,
                self.code_digest, self.source_dir)

    def memory_fields(self) -> tuple[str, str, str]:
        return "model.factory", "model.factory", "model.factory"


for _kind in (
    ModelKind(MLPSpec, build="lambda_hat.science.mlp:build_mlp_target", forward="lambda_hat.science.models:mlp_forward",
              training="lambda_hat.science.mlp:training_problem", heldout="lambda_hat.science.mlp:heldout"),
    ModelKind(DLNSpec, build="lambda_hat.science.dln:build_dln_target", forward="lambda_hat.science.models:mlp_forward",
              exact_lambda="lambda_hat.science.dln:llc_true", training="lambda_hat.science.dln:training_problem",
              heldout="lambda_hat.science.dln:heldout"),
    ModelKind(PolynomialSpec, build="lambda_hat.science.polynomial:build_polynomial_target",
              forward="lambda_hat.science.polynomial:forward", exact_lambda="lambda_hat.science.polynomial:exact_lambda",
              heldout="lambda_hat.science.polynomial:heldout"),
    ModelKind(PythonModelSpec, build="lambda_hat.user_models:build", forward="lambda_hat.user_models:forward",
              training="lambda_hat.user_models:training_problem", heldout="lambda_hat.user_models:heldout"),
):
    registry.register_model_kind(_kind)


def _model_kind(v) -> str:
    return (v.get("kind", "mlp") if isinstance(v, dict) else getattr(v, "kind", "mlp")) or "mlp"


def _model_union() -> Any:
    """The model spec of a target: one of the registered kinds, told apart by `kind` (default mlp)."""
    kinds = registry.model_kinds().values()
    return Annotated[Union[tuple(Annotated[k.spec, Tag(k.name)] for k in kinds)], Discriminator(_model_kind)]


ModelSpec = _model_union()


class DataSpec(_Spec):
    # At least 2: the default β = 1/log n is infinite at n = 1, and w*'s checks use it too.
    n_data: Annotated[PositiveInt, Field(ge=2)] = 100
    n_test: PositiveInt = 100
    x_dist: Literal["gauss_iso", "gauss_aniso", "mixture", "lowdim_manifold", "heavy_tail"] = "gauss_iso"
    cov_decay: Annotated[Float, Field(gt=0, le=1)] = 0.95
    mixture_k: PositiveInt = 4
    mixture_spread: NonNegativeFloat = 2.0
    x_dim_latent: PositiveInt = 2
    noise_model: Literal["gauss", "hetero", "student_t", "outliers"] = "gauss"
    noise_scale: NonNegativeFloat = 0.1
    hetero_scale: NonNegativeFloat = 0.1
    student_df: Annotated[Float, Field(gt=2)] = 4.0
    outlier_frac: Annotated[Float, Field(ge=0, le=1)] = 0.05
    outlier_scale: NonNegativeFloat = 2.0


class TeacherSpec(_Spec):
    """The network that generates Y. `None` fields mean "as the student" (Lambda-Hat's `_null`).

    For a deep linear network only `rank` applies: every teacher layer has rank exactly
    `rank` (balanced, aligned factors), so the end-to-end map has rank `rank`; `None` means
    full rank (the smallest width)."""

    rank: Annotated[Int, Field(ge=0)] | None = None
    depth: Annotated[PositiveInt, Field(le=MAX_DEPTH)] | None = None
    widths: list[PositiveInt] | None = None
    activation: Literal["relu", "tanh", "gelu", "identity"] | None = None
    dropout_rate: Annotated[Float, Field(ge=0, lt=1)] = 0.0

    @field_validator("dropout_rate")
    @classmethod
    def _no_dropout(cls, v: float) -> float:
        # Lambda-Hat accepted the key; a dropout teacher is not a fixed function, so the
        # learning coefficient at its weights is undefined. Refuse rather than ignore.
        if v != 0.0:
            raise ValueError("teacher dropout is not supported (set dropout_rate: 0)")
        return v


class TrainingSpec(_Spec):
    """How the student is trained to w* (`science/train.py`). Training stops after `steps`, or
    earlier: with `grad_tol` set, once the full-data gradient norm ‖∇L_n‖ ≤ grad_tol (w* is then
    a stationary point to that tolerance; `early_stop_tol` is not used); without it (the rule
    from before 0.2), once the loss changed by less than `early_stop_tol` over CHECK_EVERY steps,
    a plateau that can stop well above a minimum."""

    optimizer: Literal["adam", "sgd", "adamw"] = "adam"
    learning_rate: PositiveFloat = 0.001
    steps: PositiveInt = 5000
    early_stop_tol: NonNegativeFloat | None = 1e-6
    batch_size: PositiveInt | None = None  # None: full batch
    grad_tol: PositiveFloat | None = added_field(None, since="0.2")
    # adamw's decoupled weight decay (None: optax's default, 1e-4, as before the field existed);
    # grokking needs strong decay (~1)
    weight_decay: NonNegativeFloat | None = added_field(None, since="0.2")

    @model_validator(mode="after")
    def _decay_is_adamws(self) -> "TrainingSpec":
        if self.weight_decay is not None and self.optimizer != "adamw":
            raise ValueError(f"weight_decay applies to optimizer adamw (this is {self.optimizer})")
        return self


class CheckpointsSpec(_Spec):
    """Which steps of a trajectory a sweep's target entry measures (`checkpoints:`): the union of
    `steps`, `log` steps spaced evenly in log(step) from 1 to `until`, and `linear` steps spaced
    evenly up to `until` (its last is `until`). `until` is the trajectory's length
    (training.steps; default: that field's value). Not part of any ID: each step is its own
    target (`TargetSpec.step`), so adding steps changes no existing ID."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, frozen=True, populate_by_name=True)

    steps: list[Annotated[Int, Field(ge=0)]] = []
    log: Annotated[Int, Field(ge=0, le=100_000)] = 0
    linear: Annotated[Int, Field(ge=0, le=100_000)] = 0
    until: PositiveInt | None = None
    # checkpoints trained elsewhere (a python model): a glob of .npz files, relative to the sweep
    # file, the step the last number in each file's name; each file's params hashed by content
    from_: str | None = Field(None, alias="from", min_length=1)

    @model_validator(mode="after")
    def _from_alone(self) -> "CheckpointsSpec":
        if self.from_ is not None and (self.steps or self.log or self.linear or self.until is not None):
            raise ValueError("from names the checkpoints itself: give it without steps, log, linear or until")
        return self

    def resolve(self, total: int) -> list[int]:
        """The sorted distinct steps, given the trajectory's length `total`."""
        chosen = set(self.steps)
        if self.log == 1:
            chosen.add(total)
        elif self.log:
            chosen.update(int(round(total ** (i / (self.log - 1)))) for i in range(self.log))
        if self.linear:
            chosen.update(int(round(total * (i + 1) / self.linear)) for i in range(self.linear))
        return sorted(chosen)


class TargetSpec(_Spec):
    """A trained network w* on generated data: the point the LLC is measured at."""

    model: ModelSpec = MLPSpec()
    data: DataSpec = DataSpec()
    teacher: TeacherSpec = TeacherSpec()
    training: TrainingSpec = TrainingSpec()
    seed: Int = 0
    dtype: Dtype = "float64"
    # Where the LLC is measured: the trained student, or the teacher's own weights (a true
    # parameter, where the exact λ is known), or (dln only) the teacher refined by descent to
    # the nearest minimum of L_n, which is what a noisy teacher needs (science/dln.py).
    # Default: teacher for dln, trained for mlp. The dln default stays "teacher" even with
    # noise: it is written into every resolved spec, so changing it would change the ID of
    # every published dln target (ids.py); noisy teachers are flagged (w_star_status) and lose
    # llc_true instead, and new specs opt in with `w_star: refined`.
    w_star: Literal["trained", "teacher", "refined"] | None = None
    # A checkpoint of a training trajectory: w* is the student after exactly `step` steps of a
    # training run of `training.steps` steps (no early stopping; step k's key is
    # fold_in(training key, k), so every step's numbers are the same however the run is split
    # into jobs: `science/trajectory.py`). None: an ordinary target, trained by `train.train`.
    step: Annotated[Int, Field(ge=0)] | None = added_field(None, since="0.2")

    @model_validator(mode="after")
    def _resolve_teacher(self) -> "TargetSpec":
        # Written out in full (the model kind's rules) so that `teacher: _null` and the same
        # network spelled out hash alike.
        teacher, w_star = self.model.resolve_teacher(self.teacher, self.w_star)
        object.__setattr__(self, "teacher", teacher)
        object.__setattr__(self, "w_star", w_star)
        if self.step is not None:
            if w_star != "trained":
                raise ValueError(f"checkpoints are steps of training, but this target's w* is its {w_star} "
                                 "(set w_star: trained)")
            if self.training.grad_tol is not None:
                raise ValueError("a trajectory trains for exactly training.steps steps: training.grad_tol does not apply")
            if self.step > self.training.steps and not getattr(self.model, "trained", False):
                raise ValueError(f"checkpoint step {self.step} is past the training's last step ({self.training.steps})")
            # Written out as what a checkpoint does (it never stops early), so the spec says it.
            object.__setattr__(self, "training", self.training.model_copy(update={"early_stop_tol": None}))
        return self

    def trajectory(self) -> "TargetSpec":
        """The training run a checkpoint belongs to: this spec without its step (and, for a
        checkpoint trained elsewhere, without its params' digest and file)."""
        model = self.model
        if getattr(model, "params_file", None) is not None:
            model = model.model_copy(update={"params_digest": "", "params_file": None})
        return self.model_copy(update={"step": None, "model": model})

    def memory_needs(self) -> list[MemoryNeed]:
        """A lower bound on the memory building this target takes (`ModelSpecBase.target_memory_needs`)."""
        return self.model.target_memory_needs(self)


# --------------------------------------------------------------------------- samplers


class SamplerSpecBase(_Spec):
    """What every sampler's spec provides (`registry.Sampler`). A subclass declares
    `name: Literal["<name>"]` and `draws` (a field or a property: the draws a run records)."""

    chains: PositiveInt = 4
    dtype: Dtype = "float64"
    # The fewest parameters a target must have for this sampler to run on it.
    min_params: ClassVar[int] = 1
    # The field that sets the number of draws (what a memory error names).
    draws_field: ClassVar[str] = "draws"

    def step_batch(self, n_data: int) -> tuple[int, str]:
        """(data rows one step evaluates, the field that sets them, "" for none): the full batch by default."""
        return n_data, ""

    def memory_needs(self, target: TargetSpec) -> list[MemoryNeed]:
        """A lower bound on the memory a run of this sampler on `target` takes: the target's
        training data, every chain's state and loss activations (chains are vmapped), and the
        traces of all draws, which one compiled call returns together. See MAX_JOB_BYTES."""
        m, d, item = target.model, target.data, ITEMSIZE[self.dtype]
        usual = _default_spec(type(self))
        chains = ("chains", self.chains, usual.chains)
        batch, field = self.step_batch(d.n_data)
        # a minibatch's field shares the blame with the chains; the full batch is the chains' alone
        batch_field = _at_fault(chains, (field, batch, getattr(usual, field))) if field else "chains"
        draws_field = _at_fault(chains, (self.draws_field, self.draws, usual.draws))
        return [
            MemoryNeed("", "the target's data", d.n_data * m.row_width * ITEMSIZE[target.dtype]),
            MemoryNeed("chains", "chain states", self.chains * STATE_COPIES * m.n_params * item),
            MemoryNeed(batch_field, "activations of a step", self.chains * batch * m.activation_width * item),
            MemoryNeed(draws_field, "traces", self.chains * self.draws * TRACES_PER_DRAW * item),
        ]


class SGLDSpec(SamplerSpecBase):
    """Minibatch SGLD around w*.

    `step_size: null` picks ε = `step_size_nbeta` / (nβ): SGLD's bias and mixing depend on
    ε·nβ, not on ε alone, so this default transfers across data sizes and temperatures.
    Defaults are the calibrated settings of docs/accuracy.md (within 6 % of the exact λ on
    deep linear networks); ε·nβ ≈ 0.1 biases high, ε·nβ ≈ 0.001 does not settle in 20k steps.
    """

    name: Literal["sgld"] = "sgld"
    draws_field: ClassVar[str] = "steps"
    steps: PositiveInt = 30000
    warmup: Annotated[Int, Field(ge=0)] = 5000
    batch_size: PositiveInt = 256
    step_size: PositiveFloat | None = None
    step_size_nbeta: PositiveFloat = 0.02
    precond: Literal["none", "rmsprop", "adam"] = "none"
    eval_every: PositiveInt = 20
    # What a draw records as L_n(w): "full", the full-data loss at the end of each block of
    # `eval_every` steps; "minibatch", the mean of the block's minibatch losses (each an unbiased
    # estimate of L_n at the step's position, already computed for its gradient), which costs no
    # pass over the data: what keeps SGLD on large n·d affordable (docs/performance.md).
    loss_trace: Literal["full", "minibatch"] = added_field("full", since="0.2")

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

    def step_batch(self, n_data: int) -> tuple[int, str]:
        return min(self.batch_size, n_data), "batch_size"


class HMCSpec(SamplerSpecBase):
    """HMC after BlackJAX window adaptation of step size and diagonal mass matrix (per chain)."""

    name: Literal["hmc"] = "hmc"
    draws: Annotated[Int, Field(ge=4)] = 1000
    warmup: Annotated[Int, Field(ge=0)] = 300
    num_integration_steps: PositiveInt = 10
    step_size: PositiveFloat = 0.01
    # BlackJAX's 0.8. With a fixed number of integration steps a higher target shortens the
    # trajectory: at 0.9 the bulk ESS of λ̂ on a regular 100-parameter model fell from 0.22 to
    # 0.03 per draw. Divergences are counted and flagged instead (`divergence_rate`).
    target_acceptance: Annotated[Float, Field(gt=0, lt=1)] = 0.8
    adapt_step_size: Bool = True
    adapt_mass_matrix: Bool = True


class NUTSSpec(SamplerSpecBase):
    """NUTS after BlackJAX window adaptation of step size and diagonal mass matrix (per chain).

    `max_num_doublings` defaults to 6, not BlackJAX's 10: on near-singular LLC posteriors
    NUTS otherwise builds 1,000-step trees (26 min for one [5,3,5] DLN run on 2 cores) for
    no gain in accuracy (docs/accuracy.md: within 3 % with 6)."""

    name: Literal["nuts"] = "nuts"
    draws: Annotated[Int, Field(ge=4)] = 1000
    warmup: Annotated[Int, Field(ge=0)] = 300
    max_num_doublings: Annotated[Int, Field(ge=1, le=15)] = 6
    step_size: PositiveFloat = 0.01
    # 0.9, not BlackJAX's 0.8: NUTS adapts its trajectory length, so a smaller step costs only
    # gradients, and divergences on DLNs fell (a [4,3,8] case: 11 → 1 of 1,600 draws, 53 s vs 59 s).
    target_acceptance: Annotated[Float, Field(gt=0, lt=1)] = 0.9
    adapt_step_size: Bool = True
    adapt_mass_matrix: Bool = True


class MCLMCSpec(SamplerSpecBase):
    """Microcanonical Langevin MC. With `tune` (default), L and step_size are found by
    `blackjax.mclmc_find_L_and_step_size`, starting from the given values; as in BlackJAX,
    its three phases take round(num_steps × frac_tune1/2/3) steps (600 with the defaults).
    With `tune: false` L and step_size are used as they are."""

    name: Literal["mclmc"] = "mclmc"
    # BlackJAX's MCLMC needs a position of more than one dimension (its tuning fails at run time).
    min_params: ClassVar[int] = 2
    draws: Annotated[Int, Field(ge=4)] = 1000
    L: PositiveFloat = 1.0
    step_size: PositiveFloat = 0.1
    tune: Bool = True
    num_steps: Annotated[Int, Field(ge=0)] = 2000
    frac_tune1: Annotated[Float, Field(ge=0, le=1)] = 0.1
    frac_tune2: Annotated[Float, Field(ge=0, le=1)] = 0.1
    frac_tune3: Annotated[Float, Field(ge=0, le=1)] = 0.1
    # 5e-5, not BlackJAX's 5e-4: at 5e-4 the O(step²) bias put λ̂ 6-14 % low on deep linear
    # networks; 5e-5 with 2000 tuning steps measured -3.8 … +1.8 % (docs/accuracy.md).
    desired_energy_var: PositiveFloat = 5e-5
    trust_in_estimate: PositiveFloat = 1.5
    num_effective_samples: PositiveFloat = 150.0
    diagonal_preconditioning: Bool = False
    integrator: Literal["isokinetic_mclachlan", "isokinetic_leapfrog", "isokinetic_yoshida"] = "isokinetic_mclachlan"


_PER_DRAW = {"loss": "float", "step_size": "float"}
_HMC_PER_DRAW = {**_PER_DRAW, "accept_rate": "float", "energy": "float", "diverging": "bool", "num_grad_evals": "int"}
for _sampler in (
    Sampler(SGLDSpec, "lambda_hat.science.samplers.sgld", scalars=("step_size",),
            scalar_fields=frozenset({"step_size", "step_size_nbeta"}), report=True, traces=_PER_DRAW, color="#1b9e77"),
    Sampler(HMCSpec, "lambda_hat.science.samplers.hmc", report=True, traces=_HMC_PER_DRAW, color="#d95f02"),
    Sampler(NUTSSpec, "lambda_hat.science.samplers.nuts", report=True, traces=_HMC_PER_DRAW, color="#7570b3"),
    Sampler(MCLMCSpec, "lambda_hat.science.samplers.mclmc", report=True,
            traces={**_PER_DRAW, "energy_change": "float", "L": "float"}, color="#e7298a"),
):
    registry.register_sampler(_sampler)


def _sampler_union() -> Any:
    """The sampler spec of a run: one of the registered samplers, told apart by `name`."""
    return Annotated[Union[tuple(s.spec for s in registry.samplers().values())], Field(discriminator="name")]


SamplerSpec = _sampler_union()
SAMPLER_NAMES = tuple(registry.samplers())


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
    seed: Int = 0
    # the parameter leaves the sampler moves, sorted (`RestrictSpec` resolved against the target);
    # None: all of them, the only behaviour before the field existed
    free: list[str] | None = added_field(None, since="0.2")
    # what the run records beyond its traces (per-example losses); None: nothing more, as before
    record: RecordSpec | None = added_field(None, since="0.2")

    @field_validator("record")
    @classmethod
    def _record(cls, v: RecordSpec | None) -> RecordSpec | None:
        return _nothing_recorded_is_none(v)

    def batch_key(self) -> str:
        """What runs must share to be sampled in one batch (`pipeline.sample_runs`): the run spec
        less its seed, its posterior's beta0 and gamma, and the sampler's runtime scalars."""
        exclude = set(registry.sampler(self.sampler.name).scalar_fields)
        return "|".join((self.target_id, self.sampler.model_dump_json(exclude=exclude),
                         self.posterior.model_dump_json(exclude={"beta0", "gamma"}), repr(self.free),
                         self.record.model_dump_json() if self.record else ""))


# Vehtari et al. (2021): trust a posterior mean only with rank-normalized split R-hat ≤ 1.01 and
# bulk ESS ≥ 400 (100 per chain for 4 chains), so that the Monte-Carlo error estimate itself is
# reliable. More than 1 % divergent HMC/NUTS transitions marks a region the integrator fails in;
# isolated divergences are routine on near-singular posteriors (NUTS on the deep narrow [2,2,2,2]
# network diverges on 1-2.5 % of draws and still comes within 3.3 % of the exact λ).
R_HAT_MAX = 1.01
ESS_BULK_MIN = 400
DIVERGENCE_MAX = 0.01


class DiagnosticsSpec(_Spec):
    """When a finished run's estimate is flagged (its numbers are always kept): `unconverged` when
    split R-hat exceeds `r_hat_max` or the bulk ESS of λ̂ (all chains) is below `ess_bulk_min`
    (Vehtari et al. 2021's 1.01 and 400), `divergent` when more than `divergence_max` of the
    HMC/NUTS draws diverged. A judgement on a run, not part of what it computes: not in any ID;
    a run keeps the status it was given with the thresholds of the sweep that sampled it."""

    r_hat_max: Annotated[Float, Field(gt=1.0)] = R_HAT_MAX
    ess_bulk_min: Annotated[Float, Field(ge=0)] = ESS_BULK_MIN
    divergence_max: Annotated[Float, Field(ge=0, le=1)] = DIVERGENCE_MAX


class Sweep(_Spec):
    """A resolved sweep: concrete targets and (sampler, posterior, seed) triples, crossed into runs."""

    name: str | None = None  # names its results file (sweep.results_file); not part of any ID
    store_root: str | None = None
    jax_enable_x64: Bool = True
    diagnostics: DiagnosticsSpec = DiagnosticsSpec()
    targets: list[TargetSpec]
    samplers: list["SamplerRun"]


class RestrictSpec(_Spec):
    """Which parameter leaves a sampler moves (the others stay bitwise at w*): the leaves whose
    '/'-joined path matches an `include` glob and no `exclude` glob (`fnmatch`, as `lh show`
    lists them). Resolved against each target to a sorted list of leaves (`RunSpec.free`) before
    hashing: two spellings of one selection share a run ID, and selecting every leaf is no
    restriction."""

    include: list[str] = ["*"]
    exclude: list[str] = []


def free_leaves(target: "TargetSpec", restrict: RestrictSpec | None) -> list[str] | None:
    """The sorted parameter leaves `restrict` selects on `target`; None when it selects all of
    them (or is None). ValueError when a glob matches nothing or nothing is left, naming the
    target's leaves."""
    import fnmatch

    if restrict is None:
        return None
    names = sorted(target.model.param_shapes())
    listed = ", ".join(names[:20]) + (f", ... ({len(names)} leaves)" if len(names) > 20 else "")
    for field, globs in (("include", restrict.include), ("exclude", restrict.exclude)):
        for g in globs:
            if not any(fnmatch.fnmatchcase(n, g) for n in names):
                raise ValueError(f"{field} glob {g!r} matches no parameter of the target (its parameters: {listed})")
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, g) for g in restrict.include)
              and not any(fnmatch.fnmatchcase(n, g) for g in restrict.exclude)]
    if not chosen:
        raise ValueError(f"restrict selects no parameter of the target (its parameters: {listed})")
    return None if chosen == names else chosen


# Recorded per-example losses are refused above this size per run (`lh plan`, exit 2): float32,
# chains × draws × examples. $LH_PER_EXAMPLE_MAX_GB raises or lowers it.
PER_EXAMPLE_MAX_BYTES = 2 * 2**30
PER_EXAMPLE_MAX_ENV = "LH_PER_EXAMPLE_MAX_GB"
# At most this many query examples of the Bayesian influence function: the `influence` view
# holds examples × queries rows per run.
PER_EXAMPLE_MAX_QUERY = 256
# ... and at most this many entries (recorded examples x query examples) of the influence matrix.
PER_EXAMPLE_MAX_INFLUENCE = 2**22


class PerExampleSpec(_Spec):
    """Record ℓ_i(w) of each recorded draw for `subset` training examples (drawn without
    replacement with `seed`, then sorted), or for every example ("all"): a float32 (chain,
    draw, example) array `examples/loss` beside the run's traces. From it the run reports
    per-example λ̂ contributions, the singular fluctuation ν and WAIC (docs/per-sample.md)."""

    subset: Int | Literal["all"] = 512
    seed: Annotated[Int, Field(ge=0)] = 0
    # The query set of the Bayesian influence function: `query` of the recorded examples (drawn
    # with `seed`), each against every recorded one, −Cov_w(ℓ_i, ℓ_q) over the draws
    # (`examples/influence`, the `influence` view). 0: none.
    query: Annotated[Int, Field(ge=0, le=PER_EXAMPLE_MAX_QUERY)] = added_field(0, since="0.2")
    # Held-out examples the target declares (a built-in's n_test set, a factory's test_data):
    # `heldout` of them (drawn with `seed`) or "all", their losses recorded per draw like the
    # training examples' (`examples/heldout_loss`). They give the Bayes generalisation loss of
    # the predictive that WAIC estimates (`gen_loss`), and are the influence function's query
    # set against every recorded training example (`heldout` rows of the `influence` view). 0: none.
    heldout: Int | Literal["all"] = added_field(0, since="0.2")

    @field_validator("subset", mode="before")
    @classmethod
    def _subset(cls, v: Any) -> Any:
        # checked here, before the union: pydantic's own message names the union's members
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 2):
            return v
        raise PydanticCustomError("subset", "must be a number of examples (at least 2) or 'all', got {got}",
                                  {"got": repr(v)})

    @field_validator("heldout", mode="before")
    @classmethod
    def _heldout(cls, v: Any) -> Any:
        if v == "all" or (isinstance(v, int) and not isinstance(v, bool) and v >= 0):
            return v
        raise PydanticCustomError("heldout", "must be a number of held-out examples (0: none) or 'all', got {got}",
                                  {"got": repr(v)})

    @field_validator("query")
    @classmethod
    def _query_within_subset(cls, v: int, info: ValidationInfo) -> int:
        subset = info.data.get("subset")  # validated first: declared first
        if isinstance(subset, int) and v > subset:
            raise PydanticCustomError("query", "must be at most subset ({subset}): the query examples are "
                                      "recorded ones, got {got}", {"subset": subset, "got": v})
        return v

    def size(self, n: int) -> int:
        return n if self.subset == "all" else min(int(self.subset), n)

    def heldout_size(self, n_test: int) -> int:
        return n_test if self.heldout == "all" else min(int(self.heldout), n_test)


class RecordSpec(_Spec):
    """What a run records beyond its traces."""

    per_example: PerExampleSpec | None = None


def _nothing_recorded_is_none(record: RecordSpec | None) -> RecordSpec | None:
    """`record: {}` records nothing more: the same run, and ID, as no `record`."""
    return None if record is not None and record.per_example is None else record


class SamplerRun(_Spec):
    """A sweep's sampler entry once resolved: everything of a RunSpec but the target, and the
    entry's `restrict` globs (resolved per target into the run's `free` leaves)."""

    sampler: SamplerSpec
    posterior: PosteriorSpec = PosteriorSpec()
    seed: Int = 0
    restrict: RestrictSpec | None = None
    free: list[str] | None = None  # `restrict` resolved on one target (the planner's per-target copy)
    record: RecordSpec | None = None

    @field_validator("record")
    @classmethod
    def _record(cls, v: RecordSpec | None) -> RecordSpec | None:
        return _nothing_recorded_is_none(v)


RunSpec.model_rebuild()
Sweep.model_rebuild()


def _rebuild() -> None:
    """Rebuild the spec unions from the registries (after a registration): pydantic builds a
    union into a model's validator when the class is defined, and into every model that holds it."""
    global ModelSpec, SamplerSpec, SAMPLER_NAMES
    ModelSpec, SamplerSpec, SAMPLER_NAMES = _model_union(), _sampler_union(), tuple(registry.samplers())
    for cls, name, union in ((TargetSpec, "model", ModelSpec), (RunSpec, "sampler", SamplerSpec),
                             (SamplerRun, "sampler", SamplerSpec)):
        default = cls.model_fields[name].default
        cls.model_fields[name] = FieldInfo.from_annotated_attribute(union, default)
        cls.model_rebuild(force=True)
    Sweep.model_rebuild(force=True)


registry.on_change(_rebuild)
# $LH_PLUGINS: their kinds and samplers are registered (and the unions rebuilt) before any spec is read.
registry.load_plugins()
