"""Samplers, one module each, found by the spec's `name` (`get`).

A sampler module provides (see sgld.py, hmc.py, nuts.py, mclmc.py):

* ``from_spec(spec) -> engine.Algorithm``: keys / init / warmup / step, static settings closed over;
* ``costs(spec, traces, n, loss_eval_fge) -> (warmup fge (chains,), fge per draw (chains, draws))``;
* optionally ``scalars(spec, n_beta) -> {name: float}``: runtime scalars the algorithm reads from
  `problem.scalars` (arguments of the compiled function, so a sweep over them reuses it), with
  ``COMPILE_KEY_EXCLUDE`` the spec fields they come from;
* optionally ``report(spec, traces, metrics, scalars, loss_eval_fge)``: sampler-specific traces and
  metrics (step_size, acceptance, divergences, ...), added in place.
"""

from __future__ import annotations

import importlib
from types import ModuleType

_BUILTIN = {name: f"{__name__}.{name}" for name in ("sgld", "hmc", "nuts", "mclmc")}
_REGISTERED: dict[str, ModuleType] = {}


def register(name: str, module) -> None:
    """Make `module` the sampler for specs named `name` (a plugin, or a test's toy sampler)."""
    _REGISTERED[name] = module


def get(name: str):
    if name in _REGISTERED:
        return _REGISTERED[name]
    if name in _BUILTIN:
        return importlib.import_module(_BUILTIN[name])
    raise NotImplementedError(f"sampler.name={name!r} is not implemented")
