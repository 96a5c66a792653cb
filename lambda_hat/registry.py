"""What lambda-hat can build and run: one registry of model kinds, one of samplers.

A model kind is its spec class (a `specs.ModelSpecBase`: `kind`, parameter count, memory
estimate, its description in `lh plan`, its teacher rules) and its science, named by
"module:function" references that are imported only when a target is built or sampled. A
sampler is its spec class (a `specs.SamplerSpecBase`) and the module that runs it (what that
module provides: `science/samplers/__init__.py`), with its capabilities declared here. So the
sweep loader, the planner and `lh plan` know every kind and sampler without importing JAX.

Everything that lists kinds or samplers reads them from here: the spec unions
(`TargetSpec.model`, `RunSpec.sampler`; registering rebuilds them), the sweep loader's names,
the pipeline's dispatch. Adding a kind or a sampler is one module and one registration:

    from typing import Literal
    from lambda_hat.registry import ModelKind, Sampler, register_model_kind, register_sampler
    from lambda_hat.specs import ModelSpecBase, SamplerSpecBase

    class LineSpec(ModelSpecBase):
        kind: Literal["line"] = "line"
        ...                                   # n_params, layer_dims, forward_key(), ...

    class LangevinSpec(SamplerSpecBase):
        name: Literal["langevin"] = "langevin"
        draws: int = 1000
        step_size: float = 1e-3

    register_model_kind(ModelKind(LineSpec, build="my_plugin:build", forward="my_plugin:forward"))
    register_sampler(Sampler(LangevinSpec, module="my_plugin.langevin"))

Plugins reach every process through the environment: `LH_PLUGINS=module[,module...]` names
modules that are imported, once per process, when `lambda_hat.specs` is first imported (the
planner's process and every worker's, which inherit the environment); importing them registers
their kinds and samplers. A stored artifact of a plugin's kind is read back only where the plugin
is loaded.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable, Literal, Mapping, get_args, get_origin

from lambda_hat.errors import BadInput

PLUGINS_ENV = "LH_PLUGINS"


def resolve(ref: str) -> Any:
    """The object a "module:attribute" reference names (the module is imported on first use)."""
    module, sep, attr = ref.partition(":")
    if not sep or not module or not attr:
        raise ValueError(f"{ref!r} is not a 'module:attribute' reference")
    obj: Any = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def _tag(spec: type, field: str) -> str:
    """The one value of a spec class's `Literal` discriminator field (`kind` or `name`)."""
    info = getattr(spec, "model_fields", {}).get(field)
    args = get_args(info.annotation) if info is not None and get_origin(info.annotation) is Literal else ()
    if len(args) != 1 or not isinstance(args[0], str):
        raise TypeError(f"{spec.__name__}.{field} must be declared as Literal['<its name>']")
    return args[0]


@dataclass(frozen=True)
class ModelKind:
    """A model kind. `spec` is a `specs.ModelSpecBase` subclass with `kind: Literal["<name>"]`;
    the science is named by "module:function" references, imported when used:

    * `build(target_spec) -> science.TargetArrays`: data, initialisation, training and the w*
      checks (metrics hold L0 = L_n(w*)); runs inside the target dtype's precision;
    * `forward(key) -> apply(params, X)`: the forward pass for a model key (the spec's
      `forward_key()`, a hashable value that says everything the pass depends on);
    * `exact_lambda(target_spec) -> float | None`: the exact learning coefficient at w* where
      theory gives one, judged from the spec alone (a build may withhold it after looking at
      the data: its metrics' `llc_true` is what runs carry);
    * `training(target_spec) -> science.trajectory.TrainingProblem`: the data, the initial
      student and the training key, for kinds whose w* is trained; what checkpoint targets
      (`checkpoints:`, `TargetSpec.step`) are built from. None: the kind has no trajectories;
    * `heldout(target_spec) -> (X_test, Y_test) | None`: the held-out examples the target
      declares, exactly those its build measured `test_loss` on (None: it declares none);
      called inside the target dtype's precision. None: the kind has no held-out data."""

    spec: type
    build: str
    forward: str
    exact_lambda: str | None = None
    training: str | None = None
    heldout: str | None = None

    @property
    def name(self) -> str:
        return _tag(self.spec, "kind")

    def build_target(self, target):
        return resolve(self.build)(target)

    def apply(self, key) -> Callable:
        return resolve(self.forward)(key)

    def training_problem(self, target):
        if self.training is None:
            raise ValueError(f"model kind {self.name} has no training to take checkpoints of")
        return resolve(self.training)(target)

    def heldout_data(self, target):
        from lambda_hat.science.models import precision

        if self.heldout is None:
            return None
        with precision(target.dtype):
            return resolve(self.heldout)(target)

    def llc_exact(self, target) -> float | None:
        return None if self.exact_lambda is None else resolve(self.exact_lambda)(target)


@dataclass(frozen=True)
class Sampler:
    """A sampler. `spec` is a `specs.SamplerSpecBase` subclass with `name: Literal["<name>"]`;
    `module` (a module name, imported when a run starts; or a module object) provides
    `from_spec(spec) -> engine.Algorithm` and `costs(spec, traces, n, loss_eval_fge)`. Declared:

    * `scalars`: the runtime scalars `module.scalars(spec, n_beta) -> {name: float}` returns,
      arguments of the compiled program (so a sweep over them reuses one executable), and
      `scalar_fields` the spec fields they come from (left out of the compile key);
    * `report`: `module.report(spec, traces, metrics, scalars, loss_eval_fge)` adds the
      sampler's own traces and metrics (step size, acceptance, divergences, ...);
    * `traces`: the per-draw traces a run records besides llc, cumulative_fge and walltime,
      each with its type ("float", "int" or "bool");
    * `color`: its colour in `lh promote`'s plots."""

    spec: type
    module: str | ModuleType
    scalars: tuple[str, ...] = ()
    scalar_fields: frozenset[str] = frozenset()
    report: bool = False
    traces: Mapping[str, str] = field(default_factory=lambda: {"loss": "float"}, hash=False)
    color: str | None = None

    @property
    def name(self) -> str:
        return _tag(self.spec, "name")

    def load(self) -> ModuleType:
        return self.module if isinstance(self.module, ModuleType) else importlib.import_module(self.module)

    def runtime_scalars(self, spec, n_beta: float) -> dict[str, float]:
        return self.load().scalars(spec, n_beta) if self.scalars else {}


_MODEL_KINDS: dict[str, ModelKind] = {}
_SAMPLERS: dict[str, Sampler] = {}
# Called after every registration: `specs` rebuilds its unions.
_LISTENERS: list[Callable[[], None]] = []
_PLUGINS_LOADED: set[str] = set()


def _register(table: dict, entry, base: str, what: str):
    specs = importlib.import_module("lambda_hat.specs")  # the base classes (specs may still be loading)
    if not (isinstance(entry.spec, type) and issubclass(entry.spec, getattr(specs, base))):
        raise TypeError(f"a {what}'s spec must subclass lambda_hat.specs.{base}, got {entry.spec!r}")
    name = entry.name
    old = table.get(name)
    if old is not None and old != entry:
        raise ValueError(f"{what} {name!r} is already registered (by {old.spec.__module__}.{old.spec.__qualname__})")
    table[name] = entry
    if old is None:
        for listener in _LISTENERS:
            listener()
    return entry


def register_model_kind(kind: ModelKind) -> ModelKind:
    """Add a model kind: sweeps may name it (`model: {kind: <name>, ...}`) from now on."""
    return _register(_MODEL_KINDS, kind, "ModelSpecBase", "model kind")


def register_sampler(sampler: Sampler) -> Sampler:
    """Add a sampler: sweeps may name it (`samplers: [{name: <name>, ...}]`) from now on."""
    return _register(_SAMPLERS, sampler, "SamplerSpecBase", "sampler")


def _unregister(table: dict, name: str) -> None:
    if table.pop(name, None) is not None:
        for listener in _LISTENERS:
            listener()


def unregister_model_kind(name: str) -> None:
    """Remove a model kind (a test's toy; a plugin's stays for the life of the process)."""
    _unregister(_MODEL_KINDS, name)


def unregister_sampler(name: str) -> None:
    """Remove a sampler (a test's toy; a plugin's stays for the life of the process)."""
    _unregister(_SAMPLERS, name)


def model_kind(name: str) -> ModelKind:
    _builtins()
    try:
        return _MODEL_KINDS[name]
    except KeyError:
        raise NotImplementedError(f"model.kind={name!r} is not implemented") from None


def sampler(name: str) -> Sampler:
    _builtins()
    try:
        return _SAMPLERS[name]
    except KeyError:
        raise NotImplementedError(f"sampler.name={name!r} is not implemented") from None


def model_kinds() -> dict[str, ModelKind]:
    """Every registered model kind by name, in registration order (built-ins first)."""
    _builtins()
    return dict(_MODEL_KINDS)


def samplers() -> dict[str, Sampler]:
    """Every registered sampler by name, in registration order (built-ins first)."""
    _builtins()
    return dict(_SAMPLERS)


def _builtins() -> None:
    # The built-in kinds and samplers register when `lambda_hat.specs` is imported (their spec
    # classes live there); a reader of the registry must not see it empty because nothing
    # imported specs yet. Mid-import (specs registering), this returns the partial module.
    importlib.import_module("lambda_hat.specs")


def unregistered(kind: str, spec: Any) -> str | None:
    """What a stored spec (of a "target" or a "run", as JSON) names that is not registered in this
    process ("model kind 'line'", "sampler 'x'"), else None. Such an artifact is a plugin's, and
    reads back where the plugin is loaded ($LH_PLUGINS): not damaged."""
    _builtins()
    section, field, table, what = (("model", "kind", _MODEL_KINDS, "model kind") if kind == "target"
                                   else ("sampler", "name", _SAMPLERS, "sampler"))
    part = spec.get(section) if isinstance(spec, dict) else None
    name = part.get(field, "mlp" if kind == "target" else None) if isinstance(part, dict) else None
    return f"{what} {name!r}" if isinstance(name, str) and name not in table else None


def on_change(listener: Callable[[], None]) -> None:
    _LISTENERS.append(listener)


def load_plugins() -> None:
    """Import the modules named in $LH_PLUGINS (comma-separated) not imported yet; each
    registers its kinds and samplers. One that cannot be imported is bad input."""
    for name in (n.strip() for n in os.environ.get(PLUGINS_ENV, "").split(",")):
        if not name or name in _PLUGINS_LOADED:
            continue
        try:
            importlib.import_module(name)
        except Exception as err:
            raise BadInput(f"{PLUGINS_ENV}: cannot import plugin {name!r}: {type(err).__name__}: {err}") from err
        _PLUGINS_LOADED.add(name)
