"""Sweep YAML -> resolved `Sweep`.

The YAML is a superset of Lambda-Hat's `experiments.yaml`:

    targets:
      - {model: small, data: small, teacher: _null, seed: 42, overrides: {training: {steps: 10000}}}
    samplers:
      - {name: sgld, seed: 12345, overrides: {step_size: 1e-6, eval_every: 50}}

plus `grid:` on any entry (Cartesian product; keys name fields of the entry, dotted for
nested ones) and `posterior:` on sampler entries. Every error is raised as `SweepError`
whose message is one line naming the file, the entry and the field.
"""

from __future__ import annotations

import copy
import itertools
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from lambda_hat.presets import PRESETS
from lambda_hat.specs import (
    SAMPLER_NAMES,
    HMCSpec,
    MCLMCSpec,
    NUTSSpec,
    PosteriorSpec,
    SamplerRun,
    SGLDSpec,
    Sweep,
    TargetSpec,
)

SAMPLER_CLASSES: dict[str, type[BaseModel]] = {"sgld": SGLDSpec, "hmc": HMCSpec, "nuts": NUTSSpec, "mclmc": MCLMCSpec}
assert tuple(SAMPLER_CLASSES) == SAMPLER_NAMES

SWEEP_KEYS = {"store_root", "jax_enable_x64", "targets", "samplers"}
TARGET_ENTRY_KEYS = {"model", "data", "teacher", "training", "seed", "dtype", "w_star", "overrides", "grid"}
TARGET_SECTIONS = ("model", "data", "teacher", "training")
SAMPLER_ENTRY_META = {"name", "seed", "overrides", "posterior", "grid"}


class SweepError(ValueError):
    """Bad sweep input. `str(err)` is one line: `<file>: <entry>: <field>: <problem>`."""


def _fail(source: str, entry: str, field: str, problem: str) -> SweepError:
    parts = [p for p in (source, entry, field) if p]
    return SweepError(": ".join(parts + [" ".join(str(problem).split())]))


def _first_error(err: ValidationError, source: str, entry: str, prefix: str = "") -> SweepError:
    e = err.errors(include_url=False)[0]
    field = ".".join(str(p) for p in e["loc"])
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return _fail(source, entry, field, e["msg"] + more)


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            raise KeyError(dotted)
    d[leaf] = value


def _grid_points(grid: Any, source: str, entry: str) -> list[dict]:
    """`{a: [1, 2], b: [3]}` -> `[{a: 1, b: 3}, {a: 2, b: 3}]`, in the order written."""
    if grid is None:
        return [{}]
    if not isinstance(grid, dict) or not grid:
        raise _fail(source, entry, "grid", "must be a non-empty mapping of field -> list of values")
    for k, vals in grid.items():
        if not isinstance(vals, list) or not vals:
            raise _fail(source, entry, f"grid.{k}", "must be a non-empty list of values")
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def _label(base: str, point: dict) -> str:
    if not point:
        return base
    return base + " grid{" + ", ".join(f"{k}={v}" for k, v in point.items()) + "}"


# --------------------------------------------------------------------------- targets


def _section(value: Any, kind: str, source: str, entry: str) -> dict:
    """A section given as a preset name, a mapping, or null (teacher only) -> field mapping."""
    if value is None and kind == "teacher":
        value = "_null"
    if isinstance(value, str):
        presets = PRESETS[kind]
        if value not in presets:
            raise _fail(source, entry, kind, f"unknown {kind} preset {value!r} (known: {', '.join(presets)})")
        return dict(presets[value])
    if isinstance(value, dict):
        return dict(value)
    raise _fail(source, entry, kind, f"must be a preset name or a mapping, got {type(value).__name__}")


def _resolve_target(raw: dict, source: str, entry: str, default_dtype: str) -> TargetSpec:
    unknown = set(raw) - TARGET_ENTRY_KEYS
    if unknown:
        raise _fail(source, entry, sorted(unknown)[0], f"unknown key (allowed: {', '.join(sorted(TARGET_ENTRY_KEYS))})")
    fields: dict[str, Any] = {}
    for kind in TARGET_SECTIONS:
        if kind in raw or kind == "teacher":
            fields[kind] = _section(raw.get(kind), kind, source, entry)
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(source, entry, "overrides", "must be a mapping")
    for k, v in overrides.items():
        if k not in TARGET_SECTIONS:
            raise _fail(source, entry, f"overrides.{k}", f"unknown key (allowed: {', '.join(TARGET_SECTIONS)})")
        if not isinstance(v, dict):
            raise _fail(source, entry, f"overrides.{k}", "must be a mapping")
        fields[k] = _deep_merge(fields.get(k, {}), v)
    for k in ("seed", "dtype", "w_star"):
        if k in raw:
            fields[k] = raw[k]
    fields.setdefault("dtype", default_dtype)
    try:
        return TargetSpec.model_validate(fields)
    except ValidationError as err:
        raise _first_error(err, source, entry) from None


def _target_entries(raw: dict, source: str, entry: str, default_dtype: str) -> list[TargetSpec]:
    base = {k: v for k, v in raw.items() if k != "grid"}
    specs = []
    for point in _grid_points(raw.get("grid"), source, entry):
        r = copy.deepcopy(base)
        for key, value in point.items():
            head = key.split(".")[0]
            if "." in key and head in TARGET_SECTIONS:
                # Dotted keys refine the section after presets and overrides are applied.
                r.setdefault("overrides", {})
                _set_dotted(r["overrides"], key, value)
            elif key in TARGET_ENTRY_KEYS - {"overrides", "grid"}:
                r[key] = value
            else:
                raise _fail(source, entry, f"grid.{key}", "does not name a field of this target entry")
        specs.append(_resolve_target(r, source, _label(entry, point), default_dtype))
    return specs


# --------------------------------------------------------------------------- samplers


def _resolve_sampler(raw: dict, source: str, entry: str, default_dtype: str) -> SamplerRun:
    name = raw.get("name")
    if name not in SAMPLER_CLASSES:
        raise _fail(source, entry, "name", f"unknown sampler {name!r} (known: {', '.join(SAMPLER_NAMES)})")
    overrides = raw.get("overrides") or {}
    if not isinstance(overrides, dict):
        raise _fail(source, entry, "overrides", "must be a mapping")
    fields = {k: v for k, v in raw.items() if k not in SAMPLER_ENTRY_META}
    fields.update(overrides)
    fields.setdefault("dtype", default_dtype)
    cls = SAMPLER_CLASSES[name]
    try:
        sampler = cls.model_validate({**fields, "name": name})
    except ValidationError as err:
        raise _first_error(err, source, entry) from None
    posterior_raw = raw.get("posterior") or {}
    if not isinstance(posterior_raw, dict):
        raise _fail(source, entry, "posterior", "must be a mapping")
    try:
        posterior = PosteriorSpec.model_validate(posterior_raw)
    except ValidationError as err:
        raise _first_error(err, source, entry, prefix="posterior") from None
    seed = raw.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise _fail(source, entry, "seed", "must be an integer")
    return SamplerRun(sampler=sampler, posterior=posterior, seed=seed)


def _sampler_entries(raw: dict, source: str, entry: str, default_dtype: str) -> list[SamplerRun]:
    base = {k: v for k, v in raw.items() if k != "grid"}
    runs = []
    for point in _grid_points(raw.get("grid"), source, entry):
        r = copy.deepcopy(base)
        for key, value in point.items():
            if key.startswith("posterior."):
                r.setdefault("posterior", {})
                _set_dotted(r, key, value)
            elif key in ("seed", "name"):
                r[key] = value
            elif "." not in key:
                # A sampler field: grid values win over `overrides`.
                r.setdefault("overrides", {})
                r["overrides"][key] = value
            else:
                raise _fail(source, entry, f"grid.{key}", "does not name a field of this sampler entry")
        runs.append(_resolve_sampler(r, source, _label(entry, point), default_dtype))
    return runs


# --------------------------------------------------------------------------- sweep


def _dedupe(items: list) -> list:
    seen, out = set(), []
    for it in items:
        key = it.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append(it)
    return out


def sweep_from_dict(data: Any, source: str = "<sweep>") -> Sweep:
    if not isinstance(data, dict):
        raise _fail(source, "", "", "top level must be a mapping with `targets` and `samplers`")
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        raise _fail(source, "", sorted(unknown)[0], f"unknown key (allowed: {', '.join(sorted(SWEEP_KEYS))})")
    x64 = data.get("jax_enable_x64", True)
    if not isinstance(x64, bool):
        raise _fail(source, "", "jax_enable_x64", "must be true or false")
    default_dtype = "float64" if x64 else "float32"
    store_root = data.get("store_root")
    if store_root is not None and not isinstance(store_root, str):
        raise _fail(source, "", "store_root", "must be a path string")

    sections: dict[str, list] = {}
    for key in ("targets", "samplers"):
        entries = data.get(key)
        if not isinstance(entries, list) or not entries:
            raise _fail(source, key, "", "must be a non-empty list of entries")
        sections[key] = entries

    targets: list[TargetSpec] = []
    for i, raw in enumerate(sections["targets"]):
        entry = f"targets[{i}]"
        if not isinstance(raw, dict):
            raise _fail(source, entry, "", "must be a mapping")
        targets += _target_entries(raw, source, entry, default_dtype)
    samplers: list[SamplerRun] = []
    for i, raw in enumerate(sections["samplers"]):
        if not isinstance(raw, dict):
            raise _fail(source, f"samplers[{i}]", "", "must be a mapping")
        entry = f"samplers[{i}] ({raw.get('name')})"
        samplers += _sampler_entries(raw, source, entry, default_dtype)

    if not x64:
        for spec in [*targets, *(s.sampler for s in samplers)]:
            if spec.dtype == "float64":
                raise _fail(source, "", "dtype", "float64 requested but jax_enable_x64 is false")
    return Sweep(store_root=store_root, jax_enable_x64=x64, targets=_dedupe(targets), samplers=_dedupe(samplers))


def load_sweep(path: str | Path) -> Sweep:
    path = Path(path)
    source = str(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise _fail(source, "", "", f"cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise _fail(source, where, "", f"malformed YAML: {problem}") from None
    return sweep_from_dict(data, source)
