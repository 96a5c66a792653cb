"""Sweep YAML -> resolved `Sweep`.

The YAML is a superset of Lambda-Hat's `experiments.yaml`:

    targets:
      - {model: small, data: small, teacher: _null, seed: 42, overrides: {training: {steps: 10000}}}
    samplers:
      - {name: sgld, seed: 12345, overrides: {step_size: 1e-6, eval_every: 50}}

plus `grid:` on any entry (Cartesian product; keys name fields of the entry, dotted for
nested ones) and `posterior:` on sampler entries. Every error is raised as `SweepError`
whose message is one line naming the file, the entry and the field.

Nothing is expensive before it is bounded, so no input can hang the loader or exhaust memory:
only a regular file of at most MAX_SWEEP_BYTES is read, as UTF-8; the composed YAML must expand
(aliases followed) to at most MAX_YAML_VALUES values, MAX_YAML_DEPTH deep, with string keys, no
duplicate keys and only JSON-like tags; the grids' sizes are multiplied out before any point is
built and refused above `max_runs`; and a job whose memory estimate (specs.MAX_JOB_BYTES)
cannot fit a node is refused before anything runs.
"""

from __future__ import annotations

import codecs
import itertools
import math
import os
import re
import reprlib
import stat
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lambda_hat import registry
from lambda_hat.errors import SweepError
from lambda_hat.presets import PRESETS
from lambda_hat.specs import (
    MAX_JOB_BYTES,
    PER_EXAMPLE_MAX_BYTES,
    PER_EXAMPLE_MAX_ENV,
    PER_EXAMPLE_MAX_INFLUENCE,
    CheckpointsSpec,
    DiagnosticsSpec,
    MemoryNeed,
    PosteriorSpec,
    SamplerRun,
    Sweep,
    TargetSpec,
    free_leaves,
    seed_problem,
)


# What an unknown name may mean: a plugin's kind or sampler, not loaded in this process.
_PLUGIN_HINT = f"a plugin's are known once ${registry.PLUGINS_ENV} names its module"


class _SamplerClasses(Mapping):
    """Sampler name -> spec class, read from the registry (a plugin's sampler appears once registered)."""

    def __getitem__(self, name: str) -> type:
        return registry.samplers()[name].spec

    def __iter__(self) -> Iterator[str]:
        return iter(registry.samplers())

    def __len__(self) -> int:
        return len(registry.samplers())


SAMPLER_CLASSES: Mapping[str, type] = _SamplerClasses()

SWEEP_KEYS = {"name", "store_root", "jax_enable_x64", "diagnostics", "targets", "samplers"}
TARGET_ENTRY_KEYS = {"model", "data", "teacher", "training", "seed", "dtype", "w_star", "overrides", "grid", "checkpoints"}
TARGET_SECTIONS = ("model", "data", "teacher", "training")
SAMPLER_ENTRY_META = {"name", "seed", "overrides", "posterior", "grid", "restrict", "record"}

DEFAULT_MAX_RUNS = 1_000_000
# A sweep is a few kilobytes; a 20,000-value grid is about 150 KB.
MAX_SWEEP_BYTES = 2**20
# Values after following aliases: a 1 MiB file holds at most ~500,000 without them, so only an
# alias bomb (a few lines that expand a billion-fold) reaches this.
MAX_YAML_VALUES = 1_000_000
# A sweep nests about 6 deep; this leaves room and keeps recursion (ours, PyYAML's) shallow.
MAX_YAML_DEPTH = 64
# YAML 1.1 tags a sweep can use. Dates, binary, sets and custom tags are never a field's value.
_PLAIN_TAGS = {f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "seq", "map")}
_STR_TAG, _INT_TAG, _MERGE_TAG = "tag:yaml.org,2002:str", "tag:yaml.org,2002:int", "tag:yaml.org,2002:merge"
_FLOAT_TAG = "tag:yaml.org,2002:float"
# Plain numbers YAML 1.1 reads otherwise than they look: octal (010, -0_7) and base 60 (1:30).
_YAML11_SURPRISE = re.compile(r"^[-+]?(0[0-9_]+|[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?)$")
# Python refuses to parse integers of more than 4,300 digits; far beyond 2^53 anyway.
_MAX_INT_CHARS = 1000
# A sampler setting `lh calibrate` chooses (lambda_hat/calibrate.py); refused everywhere else.
AUTO = "auto"
# A sweep's `name:` is a file name under results/.
SWEEP_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# The libyaml parser when PyYAML has it (about 10x faster), else the pure-Python one.
_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)



# Values quoted in messages are cut short: a message stays one readable line whatever the input.
_short_repr = reprlib.Repr()
_short_repr.maxlevel, _short_repr.maxstring, _short_repr.maxother = 2, 40, 40
_short_repr.maxlist = _short_repr.maxdict = _short_repr.maxtuple = _short_repr.maxset = 4
_MAX_PROBLEM_CHARS = 400


def _short(value: Any) -> str:
    return _short_repr.repr(value)


def _cut(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _fail(source: str, entry: str, field: str, problem: str) -> SweepError:
    # The field may be a key the user typed (a 100 KB one included): cut like the problem.
    parts = [p for p in (source, _cut(entry, _MAX_PROBLEM_CHARS), _cut(field, _MAX_PROBLEM_CHARS // 2)) if p]
    return SweepError(": ".join(parts + [_cut(problem, _MAX_PROBLEM_CHARS)]))


def _first_error(err: ValidationError, source: str, entry: str, prefix: str = "") -> SweepError:
    e = err.errors(include_url=False)[0]
    loc = [str(p) for p in e["loc"]]
    if e["type"] == "union_tag_invalid" and loc == ["model"]:  # an unknown model kind
        e = {**e, "msg": f"{e['msg']} ({_PLUGIN_HINT})"}
    # Pydantic puts the model's union tag in the location (`model.mlp.depth`); the file says `model.depth`.
    if len(loc) >= 2 and loc[0] == "model" and loc[1] in registry.model_kinds():
        del loc[1]
    field = ".".join(loc)
    if prefix:
        field = f"{prefix}.{field}" if field else prefix
    more = f" (and {len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return _fail(source, entry, field, e["msg"] + more)


def _type_name(value: Any) -> str:
    return {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
            dict: "a mapping", type(None): "null"}.get(type(value), type(value).__name__)


# --------------------------------------------------------------------------- reading the file


def _read_text(path: Path, source: str) -> str:
    """The file's text, refusing anything but a regular UTF-8 file of at most MAX_SWEEP_BYTES."""
    # O_NONBLOCK: opening a FIFO must not wait for a writer; fstat on the open descriptor then
    # tells what it is, with no window for the path to change in between.
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise _fail(source, "", "", f"cannot read: {err.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            mode = info.st_mode
            kind = ("a directory" if stat.S_ISDIR(mode) else "a FIFO" if stat.S_ISFIFO(mode)
                    else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else "a socket" if stat.S_ISSOCK(mode)
                    else "not a regular file")
            raise _fail(source, "", "", f"is {kind}, not a sweep file")
        if info.st_size > MAX_SWEEP_BYTES:
            raise _fail(source, "", "", f"is {info.st_size:,} bytes; a sweep file may have at most {MAX_SWEEP_BYTES:,}")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(MAX_SWEEP_BYTES + 1)
    except OSError as err:
        raise _fail(source, "", "", f"cannot read: {err.strerror}") from None
    finally:
        os.close(fd)
    if len(raw) > MAX_SWEEP_BYTES:  # grew since fstat
        raise _fail(source, "", "", f"is more than {MAX_SWEEP_BYTES:,} bytes, the most a sweep file may have")
    if raw.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise _fail(source, "", "", "is UTF-16 or UTF-32 text (it starts with a byte-order mark); save it as UTF-8")
    try:
        return raw.decode("utf-8-sig")  # a UTF-8 byte-order mark is harmless
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        raise _fail(source, f"line {line}, column {column}", "",
                    f"not UTF-8 text (byte 0x{raw[err.start]:02x}); save the file as UTF-8") from None


def _where(path: list) -> tuple[str, str]:
    """A path in the document (["targets", 0, "overrides", "training"]) -> (entry, field)."""
    if len(path) >= 2 and path[0] in ("targets", "samplers") and isinstance(path[1], int):
        entry, rest = f"{path[0]}[{path[1]}]", path[2:]
    else:
        entry, rest = "", path
    field = ""
    for p in rest:
        field += f"[{p}]" if isinstance(p, int) else (f".{p}" if field else str(p))
    return entry, field


def _yaml_value(node: yaml.ScalarNode) -> Any:
    """What PyYAML makes of one scalar node."""
    return yaml.SafeLoader("").construct_object(node)


def _check_nodes(root: yaml.Node, source: str) -> None:
    """Refuse, before anything is built from it, a composed document that no sweep needs and that
    would hang or crash later: an alias bomb, deep nesting, a recursive alias, a key that is not a
    string, a duplicate key (PyYAML keeps the last silently), a date, binary or custom tag.

    Each distinct node is visited once: its expanded size (aliases followed) is memoised, so a
    bomb is measured in the time it takes to read it, not to expand it."""
    expanded: dict[int, int] = {}
    in_progress: set[int] = set()

    def refuse(path: list, problem: str) -> SweepError:
        return _fail(source, *_where(path), problem)

    def visit(node: yaml.Node, path: list, depth: int) -> int:
        if id(node) in expanded:
            return expanded[id(node)]
        if id(node) in in_progress:
            raise refuse(path, "an alias refers to a node that contains it")
        if depth > MAX_YAML_DEPTH:
            raise refuse(path[:4], f"nested more than {MAX_YAML_DEPTH} levels deep")
        if node.tag not in _PLAIN_TAGS and node.tag != _MERGE_TAG:
            raise refuse(path, f"YAML tag {node.tag.replace('tag:yaml.org,2002:', '!!')} is not allowed in a sweep")
        in_progress.add(id(node))
        size = 1
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key, value in node.value:
                if key.tag == _MERGE_TAG:  # `<<: *defaults` merges into this mapping; its keys may be overridden
                    size += visit(value, path, depth + 1)
                    continue
                if not (isinstance(key, yaml.ScalarNode) and key.tag == _STR_TAG):
                    shown = key.value if isinstance(key, yaml.ScalarNode) else "?"
                    raise refuse(path + [_short(shown)[1:-1]], "keys must be strings (quote it if it is one)")
                if key.value in seen:
                    raise refuse(path + [key.value], f"duplicate key (first on line {seen[key.value]})")
                seen[key.value] = key.start_mark.line + 1
                size += visit(value, path + [key.value], depth + 1)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                size += visit(item, path + [i], depth + 1)
        elif node.tag == _INT_TAG and len(node.value) > _MAX_INT_CHARS:
            raise refuse(path, f"integer of {len(node.value):,} characters; integers must lie within ±(2^53 - 1)")
        elif node.tag in (_INT_TAG, _FLOAT_TAG) and not node.style and _YAML11_SURPRISE.match(node.value):
            # PyYAML reads YAML 1.1: `seed: 010` is 8 and `1:30` is 90, silently another value
            value = _yaml_value(node)
            raise refuse(path, f"{node.value} is read as {value!r} by YAML 1.1 (a leading 0 is octal, a colon "
                               f"sexagesimal); write {value!r}, or quote it if it is text")
        in_progress.discard(id(node))
        if size > MAX_YAML_VALUES:
            raise refuse(path, f"YAML aliases expand this to more than {MAX_YAML_VALUES:,} values")
        expanded[id(node)] = size
        return size

    visit(root, [], 0)


def _parse_yaml(text: str, source: str) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_nodes(node, source)
        return loader.construct_document(node)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        context = getattr(err, "context", None)
        if context and problem.startswith("but "):  # "expected a single document ..., but found another"
            problem = f"{context}, {problem}"
        raise _fail(source, where, "", f"malformed YAML: {problem}") from None
    except RecursionError:  # PyYAML's composer recurses once per nesting level
        raise _fail(source, "", "", f"malformed YAML: nested more than {MAX_YAML_DEPTH} levels deep") from None
    finally:
        loader.dispose()


# --------------------------------------------------------------------------- entries and grids


def _deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _with_dotted(d: dict, parts: list[str], value: Any, source: str, entry: str, field: str) -> dict:
    """A copy of `d` with d[parts[0]][parts[1]]... = value; the mappings on the way are copied,
    so grid points share everything else with the entry they come from."""
    head, rest = parts[0], parts[1:]
    out = dict(d)
    if not rest:
        out[head] = value
        return out
    child = out.get(head)
    if child is None:
        child = {}
    elif not isinstance(child, dict):
        raise _fail(source, entry, field, f"{head} is {_type_name(child)}, not a mapping with a field {rest[0]!r}")
    out[head] = _with_dotted(child, rest, value, source, entry, field)
    return out


def _grid_axes(raw: dict, source: str, entry: str) -> list[tuple[str, list]]:
    """`grid: {a: [1, 2], b: [3]}` -> [("a", [1, 2]), ("b", [3])], checked, in the order written."""
    grid = raw.get("grid")
    if grid is None:
        return []
    if not isinstance(grid, dict) or not grid:
        raise _fail(source, entry, "grid", f"must be a non-empty mapping of field -> list of values, got {_type_name(grid)}")
    for key, values in grid.items():
        if not isinstance(key, str):
            raise _fail(source, entry, f"grid.{_short(key)}", "keys must be field names (strings)")
        if not key or any(not part for part in key.split(".")):
            raise _fail(source, entry, f"grid.{key}", "does not name a field of this entry")
        if not isinstance(values, list) or not values:
            raise _fail(source, entry, f"grid.{key}", f"must be a non-empty list of values, got {_type_name(values)}")
    return list(grid.items())


def _grid_points(axes: list[tuple[str, list]]):
    keys = [k for k, _ in axes]
    return (dict(zip(keys, combo)) for combo in itertools.product(*(values for _, values in axes)))


def _label(base: str, point: dict) -> str:
    if not point:
        return base
    return base + " grid{" + ", ".join(f"{k}={_short(v)}" for k, v in point.items()) + "}"


def _mapping_or_null(raw: dict, key: str, source: str, entry: str, what: str) -> None:
    # `overrides:` left empty is null, and means none; `overrides: false` or "" is a mistake.
    value = raw.get(key)
    if value is not None and not isinstance(value, dict):
        raise _fail(source, entry, key, f"must be a mapping of {what}, got {_type_name(value)}")


# --------------------------------------------------------------------------- targets


def _section(value: Any, kind: str, source: str, entry: str) -> dict:
    """A section given as a preset name, a mapping, or null (teacher only) -> field mapping."""
    if value is None and kind == "teacher":
        value = "_null"
    presets = PRESETS.get(kind, {})
    if isinstance(value, str) and presets:
        if value not in presets:
            raise _fail(source, entry, kind, f"unknown {kind} preset {_short(value)} (known: {', '.join(presets)})")
        return dict(presets[value])
    if isinstance(value, dict):
        return dict(value)
    expected = "a preset name or a mapping" if presets else "a mapping (there are no presets)"
    raise _fail(source, entry, kind, f"must be {expected}, got {_type_name(value)}")


def _check_target_entry(raw: dict, source: str, entry: str) -> list[tuple[str, list]]:
    unknown = set(raw) - TARGET_ENTRY_KEYS
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise _fail(source, entry, _short(first)[1:-1], f"unknown key (allowed: {', '.join(sorted(TARGET_ENTRY_KEYS))})")
    _mapping_or_null(raw, "overrides", source, entry, "section -> fields")
    return _grid_axes(raw, source, entry)


def _checkpoints(raw: dict, source: str, entry: str) -> CheckpointsSpec | None:
    if raw.get("checkpoints") is None:
        return None
    if not isinstance(raw["checkpoints"], dict):
        raise _fail(source, entry, "checkpoints", f"must be a mapping (steps, log, linear, until), got "
                    f"{_type_name(raw['checkpoints'])}")
    try:
        cp = CheckpointsSpec.model_validate(raw["checkpoints"])
    except ValidationError as err:
        raise _first_error(err, source, entry, "checkpoints") from None
    if not (cp.steps or cp.log or cp.linear or cp.from_):
        raise _fail(source, entry, "checkpoints", "names no step (give steps, log, linear, or from: files)")
    return cp


def _checkpoint_count(raw: dict) -> int:
    """An upper bound on the targets a target entry's `checkpoints` expand to (1 without them;
    the largest over a grid of them), read before anything is validated, so that run counts are
    bounded first. Files (`from:`) count once here: the loader counts them again once globbed."""
    grid = raw.get("grid")
    values = grid.get("checkpoints") if isinstance(grid, dict) else None
    return max(_one_checkpoint_count(cp) for cp in [raw.get("checkpoints"), *(values if isinstance(values, list) else [])])


def _one_checkpoint_count(cp: Any) -> int:
    if not isinstance(cp, dict):
        return 1
    steps = cp.get("steps")
    n = len(steps) if isinstance(steps, list) else 0
    for key in ("log", "linear"):
        n += cp[key] if isinstance(cp.get(key), int) and not isinstance(cp.get(key), bool) and cp[key] > 0 else 0
    return max(n, 1)


def _imported_checkpoints(spec: TargetSpec, pattern: str, source: str, entry: str, base_dir: str | None
                          ) -> list[tuple[str, TargetSpec]]:
    """Checkpoints trained elsewhere: one target per file, w* the file's params."""
    if spec.model.kind != "python":
        raise _fail(source, entry, "checkpoints.from", f"checkpoint files need a python model (this is {spec.model.kind})")
    from lambda_hat import user_models

    try:
        found = user_models.import_checkpoints(spec, pattern, base_dir)
    except ValueError as err:
        raise _fail(source, entry, "checkpoints.from", str(err)) from None
    return _at_steps(found, source, entry)


def _at_steps(found: list[tuple[int, TargetSpec]], source: str, entry: str) -> list[tuple[str, TargetSpec]]:
    """(label, spec at its step) for each (step, spec), validated again (a step has its own rules)."""
    out = []
    for step, s in found:
        try:
            out.append((f"{entry} step {step}", TargetSpec.model_validate({**s.model_dump(mode="json"), "step": step})))
        except ValidationError as err:
            raise _first_error(err, source, entry, "checkpoints") from None
    return out


def _resolve_checkpoints(spec: TargetSpec, cp: CheckpointsSpec, source: str, entry: str, base_dir: str | None = None
                         ) -> list[tuple[str, TargetSpec]]:
    """A trajectory entry's checkpoints: one target per step, each `spec` with its `step`."""
    if cp.from_ is not None:
        return _imported_checkpoints(spec, cp.from_, source, entry, base_dir)
    kind = spec.model.kind
    if registry.model_kind(kind).training is None:
        raise _fail(source, entry, "checkpoints", f"a {kind} model has no training to take checkpoints of")
    if getattr(spec.model, "params_digest", ""):
        raise _fail(source, entry, "checkpoints", "the factory hands over trained params: checkpoints need its "
                    "training (return untrained params, or drop checkpoints)")
    if cp.until is not None and cp.until != spec.training.steps:
        spec_json = spec.model_dump(mode="json")
        spec_json["training"]["steps"] = cp.until
        spec = TargetSpec.model_validate(spec_json)
    return _at_steps([(step, spec) for step in cp.resolve(spec.training.steps)], source, entry)


def _resolve_target(raw: dict, source: str, entry: str, default_dtype: str, base_dir: str | None = None
                    ) -> TargetSpec:
    fields: dict[str, Any] = {}
    for kind in TARGET_SECTIONS:
        if kind in raw or kind == "teacher":
            fields[kind] = _section(raw.get(kind), kind, source, entry)
    for k, v in (raw.get("overrides") or {}).items():
        if k not in TARGET_SECTIONS:
            raise _fail(source, entry, f"overrides.{_short(k)}", f"unknown key (allowed: {', '.join(TARGET_SECTIONS)})")
        if not isinstance(v, dict):
            raise _fail(source, entry, f"overrides.{k}", f"must be a mapping, got {_type_name(v)}")
        fields[k] = _deep_merge(fields.get(k, {}), v)
    for k in ("seed", "dtype", "w_star"):
        if k in raw:
            fields[k] = raw[k]
    fields.setdefault("dtype", default_dtype)
    try:
        spec = TargetSpec.model_validate(fields)
    except ValidationError as err:
        raise _first_error(err, source, entry) from None
    problem = seed_problem(spec.seed, spec.dtype)
    if problem:
        raise _fail(source, entry, "seed", problem)
    if spec.model.kind == "python":
        # A user's model is hashed by what its factory computes: import and call it (only here).
        from lambda_hat import user_models

        try:
            spec = user_models.resolve(spec, base_dir)
        except user_models.FactoryError as err:
            raise _fail(source, entry, f"model.{err.field}", str(err)) from None
    return spec


def _target_entries(raw: dict, axes: list, source: str, entry: str, default_dtype: str, base_dir: str | None = None
                    ) -> list[tuple[str, TargetSpec]]:
    base = {k: v for k, v in raw.items() if k != "grid"}
    if base.get("overrides") is None:
        base["overrides"] = {}
    specs = []
    for point in _grid_points(axes):
        r = base
        label = _label(entry, point)
        for key, value in point.items():
            parts = key.split(".")
            if len(parts) > 1 and parts[0] in TARGET_SECTIONS:
                # Dotted keys refine the section after presets and overrides are applied.
                r = {**r, "overrides": _with_dotted(r["overrides"], parts, value, source, label, f"grid.{key}")}
            elif key in TARGET_ENTRY_KEYS - {"overrides", "grid"}:
                r = {**r, key: value}
            else:
                raise _fail(source, entry, f"grid.{key}", "does not name a field of this target entry")
        spec = _resolve_target(r, source, label, default_dtype, base_dir)
        cp = _checkpoints(r, source, label)
        specs += [(label, spec)] if cp is None else _resolve_checkpoints(spec, cp, source, label, base_dir)
    return specs


# --------------------------------------------------------------------------- samplers


def _sampler_entry_label(raw: dict, i: int) -> str:
    name = raw.get("name")
    return f"samplers[{i}] ({name if isinstance(name, str) and len(name) <= 40 else _short(name)})"


def _check_sampler_entry(raw: dict, source: str, entry: str) -> list[tuple[str, list]]:
    _mapping_or_null(raw, "overrides", source, entry, "sampler fields")
    _mapping_or_null(raw, "posterior", source, entry, "posterior fields")
    for part in ("overrides", "posterior"):
        for key, value in (raw.get(part) or {}).items():
            if value == AUTO:
                raise _fail(source, entry, f"{part}.{key}", f"'{AUTO}' is for `lh calibrate {source}`, which "
                            "chooses it and writes a sweep with the value (then lh execute that one)")
    return _grid_axes(raw, source, entry)


def _resolve_sampler(raw: dict, source: str, entry: str, default_dtype: str) -> SamplerRun:
    name = raw.get("name")
    known = registry.samplers()
    if not isinstance(name, str) or name not in known:
        raise _fail(source, entry, "name",
                    f"unknown sampler {_short(name)} (known: {', '.join(known)}; {_PLUGIN_HINT})")
    fields = {k: v for k, v in raw.items() if k not in SAMPLER_ENTRY_META}
    fields.update(raw.get("overrides") or {})
    fields.setdefault("dtype", default_dtype)
    try:
        sampler = known[name].spec.model_validate({**fields, "name": name})
    except ValidationError as err:
        raise _first_error(err, source, entry) from None
    try:
        posterior = PosteriorSpec.model_validate(raw.get("posterior") or {})
    except ValidationError as err:
        raise _first_error(err, source, entry, prefix="posterior") from None
    restrict = raw.get("restrict")
    if restrict is not None and not isinstance(restrict, dict):
        raise _fail(source, entry, "restrict", f"must be a mapping with include/exclude globs, got {_type_name(restrict)}")
    record = raw.get("record")
    if record is not None and not isinstance(record, dict):
        raise _fail(source, entry, "record", f"must be a mapping (per_example: {{subset, seed, query}}), got {_type_name(record)}")
    try:
        run = SamplerRun.model_validate({"sampler": sampler, "posterior": posterior, "seed": raw.get("seed", 0),
                                         "restrict": restrict, "record": record})
    except ValidationError as err:
        raise _first_error(err, source, entry) from None
    problem = seed_problem(run.seed, sampler.dtype)  # the run's key is built in the sampler's dtype
    if problem:
        raise _fail(source, entry, "seed", problem)
    return run


def _sampler_entries(raw: dict, axes: list, source: str, entry: str, default_dtype: str) -> list[tuple[str, SamplerRun]]:
    base = {k: v for k, v in raw.items() if k != "grid"}
    for key in ("overrides", "posterior"):
        if base.get(key) is None:
            base[key] = {}
    runs = []
    for point in _grid_points(axes):
        r = base
        label = _label(entry, point)
        for key, value in point.items():
            parts = key.split(".")
            if parts[0] == "posterior" and len(parts) > 1:
                r = _with_dotted(r, parts, value, source, label, f"grid.{key}")
            elif key in ("seed", "name"):
                r = {**r, key: value}
            elif len(parts) == 1:
                # A sampler field: grid values win over `overrides`.
                r = {**r, "overrides": {**r["overrides"], key: value}}
            else:
                raise _fail(source, entry, f"grid.{key}", "does not name a field of this sampler entry")
        runs.append((label, _resolve_sampler(r, source, label, default_dtype)))
    return runs


# --------------------------------------------------------------------------- sweep


def _dedupe(items: list[tuple[str, Any]]) -> list[tuple[str, Any]]:
    """Drop repeated specs, keeping the first and its label."""
    seen, out = set(), []
    for label, it in items:
        key = it.model_dump_json()
        if key not in seen:
            seen.add(key)
            out.append((label, it))
    return out


def _bytes(n: int) -> str:
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:,.1f} {unit}"
    return f"{n} bytes"


def _too_big(needs: list[MemoryNeed], source: str, entry: str, subject: str) -> SweepError | None:
    total = sum(n.bytes for n in needs)
    if total <= MAX_JOB_BYTES:
        return None
    # Name the field that drives the most memory, summed over the parts it sizes.
    by_field: dict[str, int] = {}
    for n in needs:
        if n.field:
            by_field[n.field] = by_field.get(n.field, 0) + n.bytes
    blamed = max(by_field, key=by_field.__getitem__)
    parts = ", ".join(f"{n.what} {_bytes(n.bytes)}" for n in sorted(needs, key=lambda n: -n.bytes)[:3])
    return _fail(source, entry, blamed,
                 f"{subject} needs at least {_bytes(total)} of memory ({parts}), "
                 f"more than the {_bytes(MAX_JOB_BYTES)} a job may use")


def _check_restrictions(targets: list[tuple[str, TargetSpec]], samplers: list[tuple[str, SamplerRun]],
                        source: str) -> None:
    """Every sampler entry's `restrict` selects some parameters of every target it runs on."""
    for label, s in samplers:
        if s.restrict is None:
            continue
        for t_label, t in targets:
            try:
                free_leaves(t, s.restrict)
            except ValueError as err:
                raise _fail(source, label, "restrict", f"on {t_label}: {err}") from None


def _check_resources(targets: list[tuple[str, TargetSpec]], samplers: list[tuple[str, SamplerRun]], source: str) -> None:
    """Refuse a target build or a run that cannot fit a node (specs.MAX_JOB_BYTES), and a sampler
    that cannot run on one of the targets, before any of the sweep's jobs start."""
    for label, t in targets:
        err = _too_big(t.memory_needs(), source, label, "building this target")
        if err:
            raise err
    # A run's needs depend on its target only through these; most sweeps have a handful of shapes.
    shapes: dict[tuple, tuple[str, TargetSpec]] = {}
    for label, t in targets:
        m, d = t.model, t.data
        shapes.setdefault((m.n_params, m.activation_width, m.row_width, d.n_data, t.dtype), (label, t))
    fewest_label, fewest = min(targets, key=lambda lt: lt[1].model.n_params)
    for s_label, s in samplers:
        spec = s.sampler
        if fewest.model.n_params < spec.min_params:
            raise _fail(source, s_label, "name",
                        f"{spec.name} needs targets of at least {spec.min_params} parameters, but {fewest_label} "
                        f"has {fewest.model.n_params} (model {fewest.model.kind} {fewest.model.shape})")
        for t_label, t in shapes.values():
            err = _too_big(spec.memory_needs(t), source, s_label, f"a run on {t_label}")
            if err:
                raise err


def per_example_cap() -> int:
    """Bytes of recorded per-example losses a run may store: $LH_PER_EXAMPLE_MAX_GB, else
    specs.PER_EXAMPLE_MAX_BYTES."""
    raw = os.environ.get(PER_EXAMPLE_MAX_ENV)
    if raw is None:
        return PER_EXAMPLE_MAX_BYTES
    try:
        gb = float(raw)
        if not gb * 2**30 >= 1 or gb == float("inf"):  # at least a byte
            raise ValueError
    except ValueError:
        raise SweepError(f"{PER_EXAMPLE_MAX_ENV}={raw!r}: must be a number of GiB above 0") from None
    return int(gb * 2**30)


def per_example_bytes(sampler, per_example, n_data: int, n_heldout: int = 0) -> int:
    """What a run's recorded per-example losses take: float32, chains × draws × (examples +
    held-out examples), and the influence matrices, examples × (query + held-out examples)."""
    m = per_example.size(n_data)
    h = per_example.heldout_size(n_heldout)
    return (int(sampler.chains) * int(sampler.draws) * (m + h) + (min(per_example.query, m) + h) * m) * 4


def heldout_rows(target: TargetSpec) -> int:
    """How many held-out examples the target declares: a built-in's n_test, a factory's test_data
    rows (the factory is called again); 0 where it declares none."""
    if registry.model_kind(target.model.kind).heldout is None:
        return 0
    if target.model.kind != "python":
        return int(target.data.n_test)
    from lambda_hat import user_models

    got = user_models.heldout(target)
    return 0 if got is None else len(got[1])


def _check_records(targets: list[tuple[str, TargetSpec]], samplers: list[tuple[str, SamplerRun]], source: str) -> None:
    """Refuse a run whose recorded per-example losses would exceed the cap (`per_example_cap`)."""
    recording = [(label, s) for label, s in samplers if s.record is not None and s.record.per_example is not None]
    if not recording:
        return
    cap = per_example_cap()
    t_label, largest = max(targets, key=lambda lt: lt[1].data.n_data)
    s_label, smallest = min(targets, key=lambda lt: lt[1].data.n_data)
    # each target's held-out count, once (a factory is called for it), where an entry asks for any
    held = ({name: heldout_rows(t) for name, t in targets}
            if any(s.record.per_example.heldout != 0 for _, s in recording) else {})
    for label, s in recording:
        pe = s.record.per_example
        # A subset asked for above every target's n_data cannot be honoured anywhere: it would
        # record all, as 'all' does, under another ID. (Above a smaller target's alone, that
        # target records all: a sweep over n_data is not refused for it.)
        if "subset" in pe.model_fields_set and pe.subset != "all" and pe.subset > largest.data.n_data:
            raise _fail(source, label, "record.per_example.subset",
                        f"{pe.subset} examples, but {t_label} has only {largest.data.n_data} (n_data), the most of "
                        f"any target; record at most {largest.data.n_data}, or subset: all")
        entries = pe.size(largest.data.n_data) * min(pe.query, pe.size(largest.data.n_data))
        if entries > PER_EXAMPLE_MAX_INFLUENCE:
            raise _fail(source, label, "record.per_example.query",
                        f"{pe.query} query examples x {pe.size(largest.data.n_data):,} recorded on {t_label} is "
                        f"{entries:,} influence entries (rows of the influence view) a run, more than "
                        f"{PER_EXAMPLE_MAX_INFLUENCE:,}; query or record fewer examples")
        if pe.query > pe.size(smallest.data.n_data):
            raise _fail(source, label, "record.per_example.query",
                        f"{pe.query} query examples, but {s_label} records only {pe.size(smallest.data.n_data)} "
                        f"examples (the query examples are recorded ones)")
        n_heldout = 0
        if pe.heldout != 0:
            for t_name, declared in held.items():
                if declared == 0:
                    raise _fail(source, label, "record.per_example.heldout",
                                f"{t_name} declares no held-out examples (a factory returns them as test_data)")
                if pe.heldout != "all" and pe.heldout > declared:
                    raise _fail(source, label, "record.per_example.heldout",
                                f"{pe.heldout} held-out examples, but {t_name} declares {declared}; record at most "
                                f"{declared}, or heldout: all")
            n_heldout = max(held.values(), default=0)
        h = pe.heldout_size(n_heldout)
        held_entries = pe.size(largest.data.n_data) * h
        if held_entries + entries > PER_EXAMPLE_MAX_INFLUENCE and h:
            raise _fail(source, label, "record.per_example.heldout",
                        f"{h:,} held-out examples x {pe.size(largest.data.n_data):,} recorded on {t_label} is "
                        f"{held_entries:,} influence entries (rows of the influence view) a run, "
                        f"{held_entries + entries:,} with the query examples', more than "
                        f"{PER_EXAMPLE_MAX_INFLUENCE:,}; record fewer examples")
        size = per_example_bytes(s.sampler, s.record.per_example, largest.data.n_data, n_heldout)
        if size > cap:
            pe = s.record.per_example
            raise _fail(source, label, "record.per_example.subset",
                        f"on {t_label}, {s.sampler.chains} chains x {s.sampler.draws:,} draws x "
                        f"{pe.size(largest.data.n_data):,} examples of float32 (and the influence matrix) is "
                        f"{_bytes(size)}, more than the "
                        f"{_bytes(cap)} a run may record (record fewer examples, or raise {PER_EXAMPLE_MAX_ENV})")


def _check_run_count(target_counts: list[tuple[str, int]], sampler_counts: list[tuple[str, int]], source: str,
                     max_runs: int) -> None:
    """Refuse a sweep of more than `max_runs` runs from the grids' sizes alone, before one is built."""
    n_targets = sum(n for _, n in target_counts)
    n_samplers = sum(n for _, n in sampler_counts)
    n_runs = n_targets * n_samplers
    if n_runs <= max_runs:
        return
    largest, size = max(target_counts + sampler_counts, key=lambda en: en[1])
    entry, field = (largest, "grid") if size > 1 else ("", "")
    runs = f"{n_runs:,}" if n_runs < 10**15 else f"about 10^{len(str(n_runs)) - 1}"
    raise _fail(source, entry, field,
                f"the sweep expands to {runs} runs ({n_targets:,} target{'s' * (n_targets != 1)} x {n_samplers:,} sampler "
                f"setting{'s' * (n_samplers != 1)}), "
                f"more than the limit of {max_runs:,} (max_runs)")


def sweep_from_dict(data: Any, source: str = "<sweep>", *, max_runs: int = DEFAULT_MAX_RUNS,
                    base_dir: str | None = None) -> Sweep:
    """The sweep in `data`; `base_dir` (the sweep file's directory) is where a python model's
    factory module is looked up first."""
    if not isinstance(data, dict):
        raise _fail(source, "", "", "top level must be a mapping with `targets` and `samplers`")
    unknown = set(data) - SWEEP_KEYS
    if unknown:
        first = sorted(map(str, unknown))[0]
        raise _fail(source, "", _short(first)[1:-1], f"unknown key (allowed: {', '.join(sorted(SWEEP_KEYS))})")
    x64 = data.get("jax_enable_x64", True)
    if not isinstance(x64, bool):
        raise _fail(source, "", "jax_enable_x64", "must be true or false")
    default_dtype = "float64" if x64 else "float32"
    store_root = data.get("store_root")
    if store_root is not None and not isinstance(store_root, str):
        raise _fail(source, "", "store_root", "must be a path string")
    name = data.get("name")
    if name is not None and not (isinstance(name, str) and SWEEP_NAME.fullmatch(name)):
        raise _fail(source, "", "name", f"{_short(name)}: must be 1-100 letters, digits, '.', '_' or '-', "
                    "starting with a letter or digit (it names results/NAME.parquet)")

    diagnostics = DiagnosticsSpec()
    if data.get("diagnostics") is not None:
        if not isinstance(data["diagnostics"], dict):
            raise _fail(source, "diagnostics", "", f"must be a mapping, got {_type_name(data['diagnostics'])}")
        try:
            diagnostics = DiagnosticsSpec.model_validate(data["diagnostics"])
        except ValidationError as err:
            raise _first_error(err, source, "diagnostics") from None

    sections: dict[str, list] = {}
    for key in ("targets", "samplers"):
        entries = data.get(key)
        if not isinstance(entries, list) or not entries:
            raise _fail(source, key, "", "must be a non-empty list of entries")
        for i, raw in enumerate(entries):
            if not isinstance(raw, dict):
                raise _fail(source, f"{key}[{i}]", "", f"must be a mapping, got {_type_name(raw)}")
        sections[key] = entries

    target_entries = [(f"targets[{i}]", raw) for i, raw in enumerate(sections["targets"])]
    sampler_entries = [(_sampler_entry_label(raw, i), raw) for i, raw in enumerate(sections["samplers"])]
    target_axes = [_check_target_entry(raw, source, entry) for entry, raw in target_entries]
    sampler_axes = [_check_sampler_entry(raw, source, entry) for entry, raw in sampler_entries]
    _check_run_count([(e, math.prod(len(v) for _, v in axes) * _checkpoint_count(raw))
                      for (e, raw), axes in zip(target_entries, target_axes)],
                     [(e, math.prod(len(v) for _, v in axes)) for (e, _), axes in zip(sampler_entries, sampler_axes)],
                     source, max_runs)

    targets: list[tuple[str, TargetSpec]] = []
    for (entry, raw), axes in zip(target_entries, target_axes):
        targets += _target_entries(raw, axes, source, entry, default_dtype, base_dir)
    samplers: list[tuple[str, SamplerRun]] = []
    for (entry, raw), axes in zip(sampler_entries, sampler_axes):
        samplers += _sampler_entries(raw, axes, source, entry, default_dtype)

    if not x64:
        for label, spec in [*targets, *((label, s.sampler) for label, s in samplers)]:
            if spec.dtype == "float64":
                raise _fail(source, label, "dtype", "float64 requested but jax_enable_x64 is false")
    targets, samplers = _dedupe(targets), _dedupe(samplers)
    if len(targets) * len(samplers) > max_runs:  # checkpoint files are counted only once globbed
        raise _fail(source, "", "", f"the sweep expands to {len(targets) * len(samplers):,} runs ({len(targets):,} "
                    f"target{'s' * (len(targets) != 1)} x {len(samplers):,} sampler setting{'s' * (len(samplers) != 1)}), "
                    f"more than the limit of {max_runs:,} (max_runs)")
    _check_restrictions(targets, samplers, source)
    _check_records(targets, samplers, source)
    _check_resources(targets, samplers, source)
    return Sweep(name=name, store_root=store_root, jax_enable_x64=x64, diagnostics=diagnostics, targets=[t for _, t in targets],
                 samplers=[s for _, s in samplers])


def read_sweep_data(path: str | Path) -> Any:
    """A sweep file's YAML as plain data, read with the loader's limits (size, depth, tags),
    unchecked: what `lh calibrate` rewrites into the sweeps it writes."""
    path = Path(path)
    return _parse_yaml(_read_text(path, str(path)), str(path))


def files_read(targets) -> list[tuple[str, Path]]:
    """(what, path) of the files a sweep's python targets read as input: each factory's own
    modules (those its code digest covers) and each checkpoint trained elsewhere (`params_file`).
    An output a command writes must be none of them (a calibrated sweep written over the model's
    module). Files the factory opens itself are its own business: lh cannot know them."""
    out: dict[Path, str] = {}
    for t in targets:
        m = t.model
        if getattr(m, "kind", None) != "python":
            continue
        for module in m.code_files:
            path = getattr(sys.modules.get(module), "__file__", None)
            if path is None and m.source_dir is not None:
                from lambda_hat.user_models import _file_of  # numpy: only for a python target

                found = _file_of(module, [(Path(m.source_dir), None)])
                path = str(found) if found is not None else None
            if path is not None:
                out.setdefault(Path(path), f"the code of {m.factory} (module {module})")
        if m.params_file is not None:
            out.setdefault(Path(m.params_file), f"a checkpoint of {m.factory}")
    return [(what, path) for path, what in out.items()]


def results_file(sweep: Sweep, path: str | Path) -> Path:
    """Where `lh execute` and `lh export` write a sweep's runs by default: results/NAME.parquet,
    NAME being the sweep's `name:` or else its file's stem. One file per sweep, so that running
    one sweep never replaces another's results."""
    stem = Path(path).stem
    if sweep.name is None and not stem.isprintable():  # `name:` is checked where it is read
        from lambda_hat.text import shown

        raise SweepError(f"{shown(str(path))}: the file's name holds characters that cannot be shown "
                         "(control characters), and would name its results file; give the sweep a name: "
                         "(letters, digits, '.', '_', '-') or rename the file")
    return Path("results") / f"{sweep.name or stem}.parquet"


def load_sweep(path: str | Path, *, max_runs: int = DEFAULT_MAX_RUNS) -> Sweep:
    """Read, check and resolve a sweep file; any problem is one `SweepError` line.

    `max_runs` bounds the number of runs (targets x sampler settings) the grids may expand to."""
    path = Path(path)
    source = str(path)
    return sweep_from_dict(_parse_yaml(_read_text(path, source), source), source, max_runs=max_runs,
                           base_dir=str(path.resolve().parent))
