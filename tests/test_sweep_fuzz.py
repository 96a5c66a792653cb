"""Property-based tests of the sweep loader (issue 8).

Valid sweeps are generated from the presets and the fields of `lambda_hat/specs.py` (types and
bounds read from the pydantic models, so a new field is fuzzed without touching this file); a
mutation then makes one of them invalid in a known way: an unknown key, a wrong type, a number
out of range, NaN or infinity, a boolean for a number, an integer past 2^53, a bad grid, a
duplicate or non-string key, an alias bomb, bad bytes, a too-large file, too many runs, a job
too large for memory, MCLMC on one parameter. Invariants:

- every valid sweep loads and expands without error;
- every invalid one raises `SweepError` whose message is one line starting with the file,
  naming the entry and the field that was broken;
- through the real CLI (`python -m lambda_hat.cli plan`): exit 2, exactly one line on stderr
  with the field's path, and no file written in the working directory or the store.

Default suite: a fixed-seed few hundred documents in-process, a handful through the CLI.
`pytest -m slow`: a few thousand in-process, a few dozen through the CLI. With `-s`, the counts
(documents generated, valid, invalid, refused correctly, by mutation) are printed at the end.
"""

from __future__ import annotations

import copy
import math
import shutil
import subprocess
import sys
import tempfile
import types
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import annotated_types
import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from lambda_hat.planner import expand
from lambda_hat.presets import PRESETS
from lambda_hat.specs import (
    SAFE_INT_MAX,
    SEED_MAX_FLOAT32,
    DataSpec,
    DLNSpec,
    MLPSpec,
    PosteriorSpec,
    SamplerRun,
    TargetSpec,
    TeacherSpec,
    TrainingSpec,
)
from lambda_hat.sweep import MAX_SWEEP_BYTES, SAMPLER_CLASSES, SweepError, load_sweep

COUNTS: Counter = Counter()


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    shutil.rmtree(_scratch, ignore_errors=True)
    if COUNTS:
        kinds = ", ".join(f"{k[9:]} {n}" for k, n in sorted(COUNTS.items()) if k.startswith("mutation:"))
        print(
            f"\nsweep fuzzing: {COUNTS['generated']} documents generated, {COUNTS['valid']} valid (all planned), "
            f"{COUNTS['invalid']} invalid, {COUNTS['refused']} refused correctly; "
            f"through the CLI: {COUNTS['cli']} ({COUNTS['cli_invalid']} invalid, exit 2 and one line each)\n"
            f"mutations: {kinds}"
        )


# --------------------------------------------------------------------------- field types from specs.py


@dataclass
class FieldType:
    kind: str  # int | float | bool | choice | int_list | other
    optional: bool
    lo: float = -math.inf
    lo_strict: bool = False
    hi: float = math.inf
    hi_strict: bool = False
    choices: tuple = ()


def _constraints(items: list) -> list:
    out = []
    for m in items:
        if isinstance(m, FieldInfo):
            out += _constraints(list(m.metadata))
        elif isinstance(m, (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le)):
            out.append(m)
    return out


def field_type(info: FieldInfo) -> FieldType:
    ann, meta = info.annotation, list(info.metadata)
    optional = False
    if get_origin(ann) in (Union, types.UnionType) and type(None) in get_args(ann):
        optional = True
        ann = next(a for a in get_args(ann) if a is not type(None))
    while get_origin(ann) is Annotated:
        ann, *extra = get_args(ann)
        meta += extra
    if get_origin(ann) is Literal:
        return FieldType("choice", optional, choices=get_args(ann))
    if get_origin(ann) is list:
        return FieldType("int_list", optional)
    kind = {int: "int", float: "float", bool: "bool"}.get(ann, "other")
    ft = FieldType(kind, optional)
    for c in _constraints(meta):  # pydantic applies every bound: the tightest wins
        if isinstance(c, annotated_types.Gt) and c.gt >= ft.lo:
            ft.lo, ft.lo_strict = c.gt, True
        elif isinstance(c, annotated_types.Ge) and c.ge > ft.lo:
            ft.lo, ft.lo_strict = c.ge, False
        elif isinstance(c, annotated_types.Lt) and c.lt <= ft.hi:
            ft.hi, ft.hi_strict = c.lt, True
        elif isinstance(c, annotated_types.Le) and c.le < ft.hi:
            ft.hi, ft.hi_strict = c.le, False
    return ft


def fields_of(model: type[BaseModel], skip: tuple = ()) -> dict[str, FieldType]:
    out = {n: field_type(f) for n, f in model.model_fields.items() if n not in skip}
    return {n: ft for n, ft in out.items() if ft.kind != "other"}


SECTION_FIELDS = {
    "data": fields_of(DataSpec),
    "training": fields_of(TrainingSpec),
    "teacher": fields_of(TeacherSpec),
}
MODEL_FIELDS = {"mlp": fields_of(MLPSpec, skip=("kind",)), "dln": fields_of(DLNSpec, skip=("kind",))}
SAMPLER_FIELDS = {name: fields_of(cls, skip=("name",)) for name, cls in SAMPLER_CLASSES.items()}
POSTERIOR_FIELDS = fields_of(PosteriorSpec)
TARGET_ENTRY_FIELDS = {n: ft for n, ft in fields_of(TargetSpec).items() if n in ("seed", "dtype", "w_star")}
RUN_SEED = fields_of(SamplerRun)["seed"]


def bad_values(ft: FieldType) -> st.SearchStrategy:
    """Values no field of this type accepts, whatever the rest of the document says."""
    words = st.from_regex(r"zz[a-z]{0,6}", fullmatch=True)
    options = [st.just({"a": 1}), words] + ([st.just([1])] if ft.kind != "int_list" else [])
    if not ft.optional:
        options.append(st.none())
    past_safe = st.one_of(st.integers(SAFE_INT_MAX + 1, 10**30), st.integers(-(10**30), -SAFE_INT_MAX - 1))
    non_finite = st.sampled_from([math.nan, math.inf, -math.inf])
    if ft.kind in ("int", "float"):
        options += [st.booleans(), non_finite]
        if ft.lo > -math.inf:
            below = ft.lo - 1 if ft.kind == "int" else ft.lo * (1 - 1e-3) - 1e-3
            options.append(st.just(ft.lo if ft.lo_strict else below))
            options.append(st.just(ft.lo - 1000))
        if ft.hi < math.inf and ft.hi < SAFE_INT_MAX:
            options.append(st.just(ft.hi if ft.hi_strict else ft.hi + 1))
    if ft.kind == "int":
        options += [past_safe, st.floats(0.1, 0.9).map(lambda f: max(ft.lo, 1) + f)]  # fractional
    elif ft.kind == "bool":
        options += [st.integers(0, 2), st.sampled_from(["yes", "true", "on", "1"])]
    elif ft.kind == "choice":
        options += [st.integers(0, 3), st.booleans(), st.just(list(ft.choices[:1]))]
    elif ft.kind == "int_list":
        options += [st.sampled_from([[], [0], [-3], [True], "4, 4", 7, [1.5], [2**53], [math.nan]])]
    return st.one_of(options)


# --------------------------------------------------------------------------- valid documents

finite = dict(allow_nan=False, allow_infinity=False)
seeds = st.one_of(st.integers(-5, 100), st.integers(-SAFE_INT_MAX, SAFE_INT_MAX))
# A float32 spec's random key keeps 32 bits of its seed: only 0 ... 2^32 - 1 are valid there.
seeds_float32 = st.one_of(st.integers(0, 100), st.integers(0, SEED_MAX_FLOAT32))


def seeds_for(dtype: str) -> st.SearchStrategy:
    return seeds if dtype == "float64" else seeds_float32


@st.composite
def model_section(draw):
    kind = draw(st.sampled_from(["preset", "mlp", "dln"]))
    if kind == "preset":
        return draw(st.sampled_from(sorted(PRESETS["model"]))), "mlp", None
    if kind == "dln":
        widths = draw(st.lists(st.integers(1, 6), min_size=2, max_size=4).filter(
            lambda w: sum(a * b for a, b in zip(w[:-1], w[1:])) >= 2))
        model = {"kind": "dln", "widths": widths}
        if draw(st.booleans()):
            model["init"] = draw(st.sampled_from(["he", "xavier", "lecun"]))
        return model, "dln", widths
    depth = draw(st.integers(1, 4))
    model = {"in_dim": draw(st.integers(1, 8)), "out_dim": draw(st.integers(1, 3)), "depth": depth}
    how = draw(st.sampled_from(["widths", "target_params", "default"]))
    if how == "widths":
        model["widths"] = draw(st.lists(st.integers(1, 16), min_size=depth, max_size=depth))
    elif how == "target_params":
        model["target_params"] = draw(st.integers(1, 20000))
    for name, values in (("activation", ["relu", "tanh", "gelu", "identity"]), ("init", ["he", "xavier", "lecun"])):
        if draw(st.booleans()):
            model[name] = draw(st.sampled_from(values))
    if draw(st.booleans()):
        model["bias"] = draw(st.booleans())
    return model, "mlp", None


@st.composite
def data_section(draw):
    if draw(st.booleans()):
        return draw(st.sampled_from(sorted(PRESETS["data"])))
    data = {}
    if draw(st.booleans()):
        data["n_data"] = draw(st.integers(2, 500))
    if draw(st.booleans()):
        data["n_test"] = draw(st.integers(1, 200))
    if draw(st.booleans()):
        data["x_dist"] = draw(st.sampled_from(["gauss_iso", "gauss_aniso", "mixture", "lowdim_manifold", "heavy_tail"]))
        data["mixture_k"] = draw(st.integers(1, 8))
    if draw(st.booleans()):
        data["noise_model"] = draw(st.sampled_from(["gauss", "hetero", "student_t", "outliers"]))
        data["noise_scale"] = draw(st.floats(0, 2, **finite))
        data["student_df"] = draw(st.floats(2.01, 30, **finite))
        data["outlier_frac"] = draw(st.floats(0, 1, **finite))
    return data


@st.composite
def target_entry(draw, x64: bool):
    model, kind, dln_widths = draw(model_section())
    entry: dict[str, Any] = {"model": model}
    if draw(st.booleans()):
        entry["data"] = draw(data_section())
    if kind == "dln":
        options = [None, "_null", {"rank": draw(st.integers(0, min(dln_widths)))}]
        entry["w_star"] = draw(st.sampled_from(["trained", "teacher"]))
    else:
        options = [None, "_null", "small", "base", {"activation": "tanh"}, {"depth": draw(st.integers(1, 3))}]
    if draw(st.booleans()):
        entry["teacher"] = draw(st.sampled_from(options))
    if draw(st.booleans()):
        entry["training"] = {"steps": draw(st.integers(1, 10000)), "learning_rate": draw(st.floats(1e-5, 1, **finite)),
                             "optimizer": draw(st.sampled_from(["adam", "sgd", "adamw"]))}
    if draw(st.booleans()):
        entry["dtype"] = "float64" if x64 and draw(st.booleans()) else "float32"
    dtype_seeds = seeds_for(entry.get("dtype", "float64" if x64 else "float32"))
    if draw(st.booleans()):
        entry["seed"] = draw(dtype_seeds)
    if draw(st.booleans()):
        entry["overrides"] = {"training": {"steps": draw(st.integers(1, 5000))}, "data": {"noise_scale": 0.2}}
    if draw(st.booleans()):
        entry["grid"] = draw(st.sampled_from([
            {"seed": draw(st.lists(dtype_seeds, min_size=1, max_size=3))},
            {"training.learning_rate": [0.01, 0.001]},
            {"data.n_data": [50, 60], "seed": [1, 2]},
        ]))
    return entry


@st.composite
def sampler_fields(draw, name: str) -> dict:
    chains = draw(st.integers(1, 4))
    if name == "sgld":
        warmup, every, draws = draw(st.integers(0, 100)), draw(st.integers(1, 10)), draw(st.integers(4, 50))
        fields = {"chains": chains, "warmup": warmup, "eval_every": every, "steps": warmup + every * draws,
                  "batch_size": draw(st.integers(1, 256)), "precond": draw(st.sampled_from(["none", "rmsprop", "adam"]))}
        if draw(st.booleans()):
            fields["step_size"] = draw(st.floats(1e-8, 1e-2, **finite))
    elif name in ("hmc", "nuts"):
        fields = {"chains": chains, "draws": draw(st.integers(4, 1000)), "warmup": draw(st.integers(0, 300)),
                  "target_acceptance": draw(st.floats(0.05, 0.99, **finite)), "adapt_step_size": draw(st.booleans())}
        if name == "hmc":
            fields["num_integration_steps"] = draw(st.integers(1, 20))
        else:
            fields["max_num_doublings"] = draw(st.integers(1, 15))
    else:
        fields = {"chains": chains, "draws": draw(st.integers(4, 1000)), "L": draw(st.floats(0.01, 10, **finite)),
                  "tune": draw(st.booleans()), "num_steps": draw(st.integers(0, 3000)),
                  "frac_tune1": draw(st.floats(0, 1, **finite)),
                  "integrator": draw(st.sampled_from(["isokinetic_mclachlan", "isokinetic_leapfrog", "isokinetic_yoshida"]))}
    keep = set(draw(st.lists(st.sampled_from(sorted(fields)), unique=True)))
    if name == "sgld" and keep & {"steps", "warmup", "eval_every"}:
        keep |= {"steps", "warmup", "eval_every"}  # they must fit together (enough draws after warmup)
    return {k: fields[k] for k in fields if k in keep}


@st.composite
def sampler_entry(draw, x64: bool):
    name = draw(st.sampled_from(sorted(SAMPLER_CLASSES)))
    fields = draw(sampler_fields(name))
    entry: dict[str, Any] = {"name": name}
    if draw(st.booleans()):
        entry.update(fields)
    else:
        entry["overrides"] = fields
    if draw(st.booleans()):
        entry["dtype"] = "float64" if x64 and draw(st.booleans()) else "float32"
    if draw(st.booleans()):
        entry["seed"] = draw(seeds_for(entry.get("dtype", "float64" if x64 else "float32")))
    if draw(st.booleans()):
        entry["posterior"] = {"gamma": draw(st.floats(0, 1000, **finite)), "beta0": draw(st.floats(0.01, 10, **finite)),
                              "beta_mode": draw(st.sampled_from(["1_over_log_n", "fixed"]))}
    if draw(st.booleans()):
        entry["grid"] = draw(st.sampled_from([{"seed": [1, 2]}, {"posterior.gamma": [1.0, 10.0]}, {"chains": [1, 2]}]))
    return entry


@st.composite
def valid_sweeps(draw) -> dict:
    x64 = draw(st.booleans())
    doc: dict[str, Any] = {}
    if draw(st.booleans()):
        doc["store_root"] = draw(st.sampled_from(["runs", "/tmp/lh-store", "a b/c"]))
    if draw(st.booleans()) or not x64:
        doc["jax_enable_x64"] = x64
    doc["targets"] = draw(st.lists(target_entry(x64), min_size=1, max_size=3))
    doc["samplers"] = draw(st.lists(sampler_entry(x64), min_size=1, max_size=3))
    return doc


# --------------------------------------------------------------------------- mutations


@dataclass
class Broken:
    """A mutated document and what its one-line error must say."""

    content: Any  # a document (dumped to YAML), or text / bytes written as they are
    fragments: list[str]  # the message names at least one of these (the field's path)
    entry: str = ""  # ... and this entry, when the fault lies inside one
    max_runs: int | None = None
    kind: str = ""


def _dump(doc: Any, flow: bool = False) -> str:
    return yaml.safe_dump(doc, sort_keys=False, default_flow_style=flow, allow_unicode=True)


unknown_keys = st.from_regex(r"zz[a-z_]{1,8}", fullmatch=True)


FIELD_SPOTS = ["target_section", "target_entry", "sampler", "posterior", "top"]


@st.composite
def field_mutation(draw, doc: dict, where: str) -> Broken:
    if where == "top":
        key = draw(st.sampled_from(["jax_enable_x64", "store_root"]))
        bad = draw(st.sampled_from([1, "yes", [True], {"a": 1}, None]) if key == "jax_enable_x64"
                   else st.sampled_from([1, 2.5, True, ["runs"], {"a": "b"}]))
        doc[key] = bad
        return Broken(doc, [key], kind="wrong top-level type")
    if where.startswith("target"):
        i = draw(st.integers(0, len(doc["targets"]) - 1))
        entry = doc["targets"][i]
        label = f"targets[{i}]"
        if where == "target_entry":
            name = draw(st.sampled_from(sorted(TARGET_ENTRY_FIELDS)))
            bad = draw(bad_values(TARGET_ENTRY_FIELDS[name]))
            entry.pop("grid", None)  # a grid value would replace the bad one
            if draw(st.booleans()):
                entry[name] = bad
            else:
                entry["grid"] = {name: [bad]}
            return Broken(doc, [name], label, kind="bad target field")
        section = draw(st.sampled_from(["model", "data", "training", "teacher"]))
        model = entry["model"]
        table = (MODEL_FIELDS["dln" if isinstance(model, dict) and model.get("kind") == "dln" else "mlp"]
                 if section == "model" else SECTION_FIELDS[section])
        name = draw(st.sampled_from(sorted(table)))
        bad = draw(bad_values(table[name]))
        how = draw(st.sampled_from(["overrides", "section", "grid"]))
        entry.pop("grid", None)  # grid values win over overrides, and overrides over sections
        if how == "overrides":
            overrides = entry.get("overrides") or {}
            entry["overrides"] = {**overrides, section: {**overrides.get(section, {}), name: bad}}
        elif how == "section":
            current = entry.get(section)
            entry[section] = {**(current if isinstance(current, dict) else {}), name: bad}
            (entry.get("overrides") or {}).get(section, {}).pop(name, None)
            if section == "model" and not isinstance(current, dict):
                entry.pop("teacher", None)  # a preset teacher may not fit the plain mlp left behind
        else:
            entry["grid"] = {f"{section}.{name}": [bad]}
        return Broken(doc, [f"{section}.{name}", name], label, kind=f"bad {section} field")
    i = draw(st.integers(0, len(doc["samplers"]) - 1))
    entry = doc["samplers"][i]
    label = f"samplers[{i}]"
    if where == "posterior":
        name = draw(st.sampled_from(sorted(POSTERIOR_FIELDS)))
        bad = draw(bad_values(POSTERIOR_FIELDS[name]))
        entry.pop("grid", None)
        if draw(st.booleans()):
            entry["posterior"] = {**(entry.get("posterior") or {}), name: bad}
        else:
            entry["grid"] = {f"posterior.{name}": [bad]}
        return Broken(doc, [f"posterior.{name}"], label, kind="bad posterior field")
    table = {**SAMPLER_FIELDS[entry["name"]], "seed": RUN_SEED}
    name = draw(st.sampled_from(sorted(table)))
    bad = draw(bad_values(table[name]))
    how = draw(st.sampled_from(["entry", "overrides", "grid"]))
    entry.pop("grid", None)
    if name == "seed" and how == "overrides":
        how = "entry"  # the run's seed is an entry key, not a sampler field
    if how == "entry":
        entry.get("overrides", {}).pop(name, None)
        entry[name] = bad
    elif how == "overrides":
        entry.pop(name, None)
        entry["overrides"] = {**(entry.get("overrides") or {}), name: bad}
    else:
        entry["grid"] = {name: [bad]}
    return Broken(doc, [name], label, kind="bad sampler field")


STRUCTURE_MUTATIONS = [
    "unknown key", "wrong container", "bad section", "bad name", "bad entry", "bad list", "bad grid",
    "grid into non-mapping", "integer grid key", "memory", "mclmc on one parameter", "x64 off", "top level",
]


@st.composite
def structure_mutation(draw, doc: dict, what: str) -> Broken:
    key = draw(unknown_keys)
    i = draw(st.integers(0, len(doc["targets"]) - 1))
    j = draw(st.integers(0, len(doc["samplers"]) - 1))
    target, sampler = doc["targets"][i], doc["samplers"][j]
    t_label, s_label = f"targets[{i}]", f"samplers[{j}]"
    not_a_mapping = st.sampled_from([False, True, "", "abc", [1], 0, 3.5])
    if what == "unknown key":
        spot = draw(st.sampled_from(["top", "target", "section", "overrides", "sampler", "sampler overrides",
                                     "posterior", "target grid", "target dotted grid", "sampler dotted grid"]))
        if spot == "top":
            doc[key] = 1
            return Broken(doc, [key], kind="unknown key")
        if spot == "target":
            target[key] = 1
        elif spot == "section":
            section = draw(st.sampled_from(["model", "data", "training", "teacher"]))
            overrides = target.get("overrides") or {}
            target["overrides"] = {**overrides, section: {**overrides.get(section, {}), key: 1}}
            return Broken(doc, [f"{section}.{key}"], t_label, kind="unknown key")
        elif spot == "overrides":
            target["overrides"] = {**(target.get("overrides") or {}), key: {}}
        elif spot == "sampler":
            sampler[key] = 1
        elif spot == "sampler overrides":
            sampler["overrides"] = {**(sampler.get("overrides") or {}), key: 1}
        elif spot == "posterior":
            sampler["posterior"] = {**(sampler.get("posterior") or {}), key: 1}
            return Broken(doc, [f"posterior.{key}"], s_label, kind="unknown key")
        elif spot == "target grid":
            target["grid"] = {key: [1]}
        elif spot == "target dotted grid":
            target["grid"] = {f"{key}.x": [1]}
        else:
            sampler["grid"] = {f"{key}.x": [1]}
        return Broken(doc, [key], s_label if "sampler" in spot else t_label, kind="unknown key")
    if what == "wrong container":
        spot = draw(st.sampled_from(["target overrides", "sampler overrides", "posterior", "target grid", "sampler grid"]))
        entry, label = (target, t_label) if spot.startswith("target") else (sampler, s_label)
        name = spot.split()[-1]
        entry[name] = draw(not_a_mapping if name != "grid" else st.sampled_from([False, "x", [1], 0, {}]))
        return Broken(doc, [name], label, kind="wrong container")
    if what == "bad section":
        section = draw(st.sampled_from(["model", "data", "training", "teacher"]))
        bad = draw(st.sampled_from([1, [1], True, 2.5, "zz_no_such_preset"] + ([None] if section != "teacher" else [])))
        target[section] = bad
        return Broken(doc, [section], t_label, kind="bad section")
    if what == "bad name":
        bad = draw(st.sampled_from(["zz", "HMC", 1, None, ["hmc"], {"n": 1}, True]))
        sampler["name"] = bad
        return Broken(doc, ["name"], s_label, kind="bad sampler name")
    if what == "bad entry":
        section, k = draw(st.sampled_from([("targets", i), ("samplers", j)]))
        doc[section][k] = draw(st.sampled_from(["x", 1, [], None, True]))
        return Broken(doc, [f"{section}[{k}]"], kind="bad entry")
    if what == "bad list":
        section = draw(st.sampled_from(["targets", "samplers"]))
        if draw(st.booleans()):
            del doc[section]
        else:
            doc[section] = draw(st.sampled_from([[], {}, "x", None, 3]))
        return Broken(doc, [section], kind="bad list")
    if what == "bad grid":
        entry, label = draw(st.sampled_from([(target, t_label), (sampler, s_label)]))
        entry["grid"] = {"seed": draw(st.sampled_from([3, [], "1, 2", None, {"a": 1}]))}
        return Broken(doc, ["grid.seed"], label, kind="bad grid values")
    if what == "grid into non-mapping":
        target["overrides"] = {**(target.get("overrides") or {}), "training": {"steps": 10}}
        target["grid"] = {"training.steps.x": [1]}
        return Broken(doc, ["grid.training.steps.x"], t_label, kind="grid into non-mapping")
    if what == "integer grid key":
        entry, label = draw(st.sampled_from([(target, t_label), (sampler, s_label)]))
        k = draw(st.integers(0, 99))
        entry["grid"] = {k: [1]}
        return Broken(doc, [f"grid.{k}"], label, kind="integer grid key")
    if what == "memory":
        if draw(st.booleans()):
            target["overrides"] = {**(target.get("overrides") or {}), "data": {"n_data": draw(st.integers(10**12, 10**15))}}
            target.pop("grid", None)
            return Broken(doc, ["data.n_data"], t_label, kind="memory")
        huge = {"chains": 10**4, "overrides": {}}
        if sampler["name"] == "sgld":
            huge.update(steps=10**9, warmup=0, eval_every=1, batch_size=1)
        else:
            huge.update(draws=10**9)
        doc["samplers"][j] = {"name": sampler["name"], **huge}
        return Broken(doc, ["draws", "steps", "chains"], s_label, kind="memory")
    if what == "mclmc on one parameter":
        doc["targets"].append({"model": {"kind": "dln", "widths": [1, 1]}})
        doc["samplers"].append({"name": "mclmc"})
        first_mclmc = next(k for k, s in enumerate(doc["samplers"]) if s["name"] == "mclmc")
        return Broken(doc, ["mclmc needs targets of at least 2 parameters"], f"samplers[{first_mclmc}]",
                      kind="mclmc on one parameter")
    if what == "x64 off":
        doc["jax_enable_x64"] = False
        for e in doc["targets"] + doc["samplers"]:  # float32 now: seeds must fit its 32-bit key
            if "seed" in e:
                e["seed"] %= 2**32
            if isinstance(e.get("grid"), dict) and "seed" in e["grid"]:
                e["grid"]["seed"] = [v % 2**32 for v in e["grid"]["seed"]]
        entry = draw(st.sampled_from([target, sampler]))
        entry["dtype"] = "float64"
        entry.pop("grid", None)
        return Broken(doc, ["dtype: float64 requested but jax_enable_x64 is false"], kind="float64 with x64 off")
    return Broken(draw(st.sampled_from([[], "targets", 3, None])), ["top level must be a mapping"], kind="top level")


def _mappings(node: yaml.Node, path: list) -> list[tuple[yaml.MappingNode, list]]:
    out = []
    if isinstance(node, yaml.MappingNode):
        out.append((node, path))
        for k, v in node.value:
            out += _mappings(v, path + [k.value])
    elif isinstance(node, yaml.SequenceNode):
        for n, item in enumerate(node.value):
            out += _mappings(item, path + [n])
    return out


def _entry_of(path: list) -> str:
    return f"{path[0]}[{path[1]}]" if len(path) >= 2 and path[0] in ("targets", "samplers") else ""


YAML_MUTATIONS = ["duplicate key", "non-string key", "alias bomb", "latin-1", "utf-16", "oversize",
                  "too many runs"]


@st.composite
def yaml_mutation(draw, doc: dict, what: str) -> Broken:
    """Mutations of the YAML itself: they cannot be written as a Python dict."""
    text = _dump(doc, flow=draw(st.booleans()))
    if what in ("duplicate key", "non-string key", "alias bomb"):
        root = yaml.compose(text)
        mapping, path = draw(st.sampled_from([m for m in _mappings(root, []) if m[0].value or what != "duplicate key"]))
        str_tag = "tag:yaml.org,2002:str"
        if what == "duplicate key":
            k, v = draw(st.sampled_from(mapping.value))
            mapping.value.append((yaml.ScalarNode(str_tag, k.value), v))
            fragments = [f"{k.value}: duplicate key"]
        elif what == "non-string key":
            value = draw(st.sampled_from(["7", "null", "true", "1.5"]))
            tag = {"7": "int", "null": "null", "true": "bool", "1.5": "float"}[value]
            mapping.value.append((yaml.ScalarNode(f"tag:yaml.org,2002:{tag}", value), yaml.ScalarNode(str_tag, "x")))
            fragments = [f"{value}: keys must be strings"]
        else:
            bomb: yaml.Node = yaml.ScalarNode("tag:yaml.org,2002:int", "1")
            for _ in range(draw(st.integers(7, 12))):  # 9^7 .. 9^12 values in a few hundred bytes
                bomb = yaml.SequenceNode("tag:yaml.org,2002:seq", [bomb] * 9)
            if mapping.value:
                n = draw(st.integers(0, len(mapping.value) - 1))
                mapping.value[n] = (mapping.value[n][0], bomb)
            else:
                mapping.value.append((yaml.ScalarNode(str_tag, "grid"), bomb))
            fragments = ["YAML aliases expand"]
        return Broken(yaml.serialize(root, Dumper=yaml.SafeDumper), fragments, _entry_of(path), kind=what)
    if what == "latin-1":
        lines = text.encode().split(b"\n")
        n = draw(st.integers(0, len(lines) - 1))
        lines.insert(n, b"# caf\xe9")
        return Broken(b"\n".join(lines), [f"line {n + 1}, column 6: not UTF-8"], kind=what)
    if what == "utf-16":
        return Broken(text.encode("utf-16"), ["UTF-16"], kind=what)
    if what == "oversize":
        return Broken(text + "#" * MAX_SWEEP_BYTES + "\n", [f"at most {MAX_SWEEP_BYTES:,}"], kind=what)
    # Past the default limit by the grids' sizes (the CLI's case), or past a lowered `max_runs`.
    if draw(st.booleans()):
        doc["targets"][0]["grid"] = {"seed": list(range(1001)), "training.steps": list(range(1, 1001))}
        return Broken(doc, ["more than the limit of 1,000,000 (max_runs)"], kind=what)
    runs = len(expand(load_sweep(_write_tmp(text))).runs)
    return Broken(text, [f"more than the limit of {runs - 1:,} (max_runs)"], max_runs=runs - 1, kind=what)


# Each mutation is its own parametrized test, so each gets the same share of examples
# (Hypothesis's choices within one test favour the first entries of a list).
MUTATIONS = ([f"field:{w}" for w in FIELD_SPOTS] + [f"structure:{w}" for w in STRUCTURE_MUTATIONS]
             + [f"yaml:{w}" for w in YAML_MUTATIONS])


@st.composite
def broken_sweeps(draw, mutation: str | None = None) -> Broken:
    doc = copy.deepcopy(draw(valid_sweeps()))
    family, what = (mutation or draw(st.sampled_from(MUTATIONS))).split(":")
    broken = draw({"field": field_mutation, "structure": structure_mutation, "yaml": yaml_mutation}[family](doc, what))
    if not isinstance(broken.content, (str, bytes)):
        broken.content = _dump(broken.content, flow=draw(st.booleans()))
    return broken


_scratch = Path(tempfile.mkdtemp(prefix="lh-fuzz-"))


def _write_tmp(content: str | bytes, directory: Path = _scratch) -> str:
    path = directory / "sweep.yaml"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return str(path)


# --------------------------------------------------------------------------- properties


def _check_valid(doc: dict) -> None:
    path = _write_tmp(_dump(doc))
    expanded = expand(load_sweep(path))
    assert expanded.runs and len(expanded.runs) == len(expanded.targets) * len(load_sweep(path).samplers)


def _check_refused(broken: Broken) -> None:
    path = _write_tmp(broken.content)
    kwargs = {} if broken.max_runs is None else {"max_runs": broken.max_runs}
    with pytest.raises(SweepError) as info:
        expand(load_sweep(path, **kwargs), **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and len(msg) < 600, msg
    assert msg.startswith(path + ": "), msg
    assert broken.entry in msg, (broken.kind, broken.entry, msg)
    assert any(f in msg for f in broken.fragments), (broken.kind, broken.fragments, msg)


def _property(kind: str, data) -> None:
    if kind == "valid":
        doc = data.draw(valid_sweeps())
        COUNTS["generated"] += 1
        _check_valid(doc)
        COUNTS["valid"] += 1
        event("valid")
        return
    broken = data.draw(broken_sweeps(kind))
    COUNTS["generated"] += 1
    COUNTS["invalid"] += 1
    COUNTS[f"mutation:{broken.kind}"] += 1
    event(broken.kind)
    _check_refused(broken)
    COUNTS["refused"] += 1


fuzz = settings(derandomize=True, database=None, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])


@settings(fuzz, max_examples=100)
@given(data=st.data())
def test_fuzzed_valid_sweeps_plan(data):
    _property("valid", data)


@pytest.mark.slow
@settings(fuzz, max_examples=1000)
@given(data=st.data())
def test_fuzzed_valid_sweeps_plan_many(data):
    _property("valid", data)


@pytest.mark.parametrize("mutation", MUTATIONS)
@settings(fuzz, max_examples=16)
@given(data=st.data())
def test_fuzzed_invalid_sweeps_are_refused_in_one_line(mutation, data):
    _property(mutation, data)


@pytest.mark.slow
@pytest.mark.parametrize("mutation", MUTATIONS)
@settings(fuzz, max_examples=160)
@given(data=st.data())
def test_fuzzed_invalid_sweeps_are_refused_in_one_line_many(mutation, data):
    _property(mutation, data)


def _cli_property(data) -> None:
    valid = data.draw(st.integers(0, 4)) == 0
    with tempfile.TemporaryDirectory() as tmp:
        cwd = Path(tmp)
        if valid:
            content, broken = _dump(data.draw(valid_sweeps())), None
        else:
            broken = data.draw(broken_sweeps().filter(lambda b: b.max_runs is None))  # the CLI uses the default
            content = broken.content
            COUNTS["cli_invalid"] += 1
        COUNTS["cli"] += 1
        _write_tmp(content, cwd)
        result = subprocess.run([sys.executable, "-m", "lambda_hat.cli", "plan", "sweep.yaml", "--store", "store"],
                                cwd=cwd, capture_output=True, text=True, timeout=60)
        assert sorted(p.name for p in cwd.iterdir()) == ["sweep.yaml"], "plan must write nothing"
        if valid:
            assert result.returncode == 0, result.stderr
            return
        assert result.returncode == 2, (result.returncode, result.stderr)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert len(lines) == 1, result.stderr
        assert "sweep.yaml: " in lines[0] and broken.entry in lines[0], lines[0]
        assert any(f in lines[0] for f in broken.fragments), (broken.kind, broken.fragments, lines[0])


@settings(fuzz, max_examples=6)
@given(st.data())
def test_fuzzed_sweeps_through_the_cli(data):
    _cli_property(data)


@pytest.mark.slow
@settings(fuzz, max_examples=60)
@given(st.data())
def test_fuzzed_sweeps_through_the_cli_many(data):
    _cli_property(data)
