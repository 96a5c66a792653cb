"""The registries of model kinds and samplers (lambda_hat/registry.py): a kind or a sampler from
outside lambda-hat (tests/plugins/toy_plugin.py) passes full validation, reaches the planner and
the workers through $LH_PLUGINS, and runs end to end through `lh execute`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from pydantic import BaseModel

from lambda_hat import registry
from lambda_hat.ids import run_id, target_id
from lambda_hat.specs import DLNSpec, MLPSpec, PolynomialSpec, RunSpec, SamplerSpecBase, TargetSpec
from lambda_hat.sweep import SAMPLER_CLASSES, SweepError, sweep_from_dict

TESTS = Path(__file__).resolve().parent
PLUGINS = TESTS / "plugins"
HEAVY = ("jax", "jaxlib", "parsl", "zarr", "blackjax", "optax")  # as tests/test_imports.py

SWEEP = {
    "targets": [{"model": {"kind": "line"}, "data": {"n_data": 50, "n_test": 10}, "seed": 3}],
    "samplers": [{"name": "toy_langevin", "seed": 1, "chains": 2, "overrides": {"draws": 40}}],
}
SWEEP_YAML = """\
store_root: store
diagnostics: {r_hat_max: 100, ess_bulk_min: 0}
targets:
  - {model: {kind: line}, data: {n_data: 50, n_test: 10}, seed: 3}
samplers:
  - {name: toy_langevin, seed: 1, chains: 2, overrides: {draws: 40}}
"""


@pytest.fixture
def toy():
    """tests/plugins/toy_plugin.py imported in this process (it registers itself), removed after."""
    sys.path.insert(0, str(PLUGINS))
    try:
        import toy_plugin

        yield toy_plugin
    finally:
        registry.unregister_model_kind("line")
        registry.unregister_sampler("toy_langevin")
        sys.modules.pop("toy_plugin", None)
        sys.path.remove(str(PLUGINS))


def plugin_env(plugins: str = "toy_plugin") -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200", "LH_PLUGINS": plugins,
           "PYTHONPATH": os.pathsep.join(p for p in (str(PLUGINS), os.environ.get("PYTHONPATH")) if p)}
    env.pop("LH_STORE", None)
    return env


def imported_modules(args: list[str], cwd: Path, env: dict) -> tuple[set[str], subprocess.CompletedProcess]:
    """Every module `lh *args` imports (`python -X importtime`, as tests/test_imports.py)."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lambda_hat.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
             if line.startswith("import time:") and "|" in line}
    return names - {"imported package"}, proc


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


def lh(cwd: Path, *args: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lambda_hat.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


# --------------------------------------------------------------------------- in this process


def test_a_plugins_kind_and_sampler_pass_full_validation(toy):
    sweep = sweep_from_dict(SWEEP)
    target, setting = sweep.targets[0], sweep.samplers[0]
    assert isinstance(target.model, toy.LineSpec) and target.w_star == "trained"
    assert isinstance(setting.sampler, toy.ToyLangevinSpec) and setting.sampler.draws == 40
    run = RunSpec(target_id=target_id(target), sampler=setting.sampler, posterior=setting.posterior, seed=1)
    # what a worker does with the specs it is sent: validated again from JSON, same IDs
    assert TargetSpec.model_validate(json.loads(target.model_dump_json())) == target
    again = RunSpec.model_validate(json.loads(run.model_dump_json()))
    assert again == run and run_id(again) == run_id(run)
    assert "toy_langevin" in SAMPLER_CLASSES and SAMPLER_CLASSES["toy_langevin"] is toy.ToyLangevinSpec
    # the rebuilt unions keep the fields' defaults and requirements
    assert TargetSpec().model == MLPSpec()
    with pytest.raises(ValueError, match="sampler\n  Field required"):
        RunSpec.model_validate({"target_id": "tgt_x"})

    def refused(change: dict) -> str:
        with pytest.raises(SweepError) as err:
            sweep_from_dict({**SWEEP, **change})
        return str(err.value)

    # every rule a built-in spec has: unknown keys, types, the kind's teacher rules
    assert refused({"targets": [{"model": {"kind": "line", "widths": [3]}}]}) == (
        "<sweep>: targets[0]: model.widths: Extra inputs are not permitted")
    assert refused({"targets": [{"model": {"kind": "line"}, "teacher": {"rank": 1}}]}) == (
        "<sweep>: targets[0]: Value error, teacher.rank is set, but a line model has no teacher")
    assert refused({"samplers": [{"name": "toy_langevin", "overrides": {"stepsize": 0.1}}]}) == (
        "<sweep>: samplers[0] (toy_langevin): stepsize: Extra inputs are not permitted")
    assert "memory" in refused({"samplers": [{"name": "toy_langevin", "chains": 10**6, "overrides": {"draws": 10**6}}]})


def test_unregistered_again_the_names_are_refused_and_builtin_ids_never_move():
    builtin = TargetSpec(model=DLNSpec(kind="dln", widths=[3, 2, 3]))
    before = target_id(builtin), run_id(RunSpec(target_id="tgt_x", sampler={"name": "nuts"}))
    sys.path.insert(0, str(PLUGINS))
    try:
        import toy_plugin  # noqa: F401

        assert sweep_from_dict(SWEEP).targets[0].model.kind == "line"
        assert (target_id(builtin), run_id(RunSpec(target_id="tgt_x", sampler={"name": "nuts"}))) == before
    finally:
        registry.unregister_model_kind("line")
        registry.unregister_sampler("toy_langevin")
        sys.modules.pop("toy_plugin", None)
        sys.path.remove(str(PLUGINS))
    with pytest.raises(SweepError, match=r"targets\[0\]: model: Input tag 'line' .* expected tags: 'mlp', 'dln', "
                                         r"'polynomial', 'python' \(a plugin's are known once \$LH_PLUGINS names its module\)"):
        sweep_from_dict(SWEEP)
    with pytest.raises(SweepError, match=r"samplers\[0\] \(toy_langevin\): name: unknown sampler 'toy_langevin'"):
        sweep_from_dict({**SWEEP, "targets": [{"model": "small"}]})
    with pytest.raises(ValueError, match="toy_langevin"):
        RunSpec.model_validate({"target_id": "tgt_x", "sampler": {"name": "toy_langevin"}})
    assert "toy_langevin" not in SAMPLER_CLASSES


def test_registration_checks_the_spec_class():
    class NoBase(BaseModel):
        name: Literal["nobase"] = "nobase"
        draws: int = 10

    class NoLiteral(SamplerSpecBase):
        name: str = "noliteral"
        draws: int = 10

    class Hmc2(SamplerSpecBase):
        name: Literal["hmc"] = "hmc"
        draws: int = 10

    with pytest.raises(TypeError, match="must subclass lambda_hat.specs.SamplerSpecBase"):
        registry.register_sampler(registry.Sampler(NoBase, module="x"))
    with pytest.raises(TypeError, match=r"NoLiteral.name must be declared as Literal"):
        registry.register_sampler(registry.Sampler(NoLiteral, module="x"))
    with pytest.raises(ValueError, match="sampler 'hmc' is already registered"):
        registry.register_sampler(registry.Sampler(Hmc2, module="x"))
    assert SAMPLER_CLASSES["hmc"].__module__ == "lambda_hat.specs"
    with pytest.raises(TypeError, match="must subclass lambda_hat.specs.ModelSpecBase"):
        registry.register_model_kind(registry.ModelKind(Hmc2, build="x:y", forward="x:z"))


def test_exact_lambda_where_theory_gives_one(toy):
    def exact(model) -> float | None:
        spec = TargetSpec(model=model)
        return registry.model_kind(spec.model.kind).llc_exact(spec)

    # one linear layer is a regular model (λ = d/2); a normal crossing's λ is 1/(2·max p); a
    # 2 → 1 → 2 network of rank 1 has Aoyagi's λ = 3/2 (= the rank-1 2x2 matrices' dimension / 2)
    assert exact(DLNSpec(kind="dln", widths=[3, 3])) == pytest.approx(4.5)
    assert exact(DLNSpec(kind="dln", widths=[2, 1, 2])) == pytest.approx(1.5)
    assert exact(PolynomialSpec(kind="polynomial", powers=[1, 3])) == pytest.approx(1 / 6)
    assert exact(toy.LineSpec(kind="line")) == 1.0
    assert exact(MLPSpec()) is None


def test_a_stored_spec_of_an_unregistered_kind_is_named(toy):
    # what the store can tell apart from damage: an artifact of a plugin not loaded here
    assert registry.unregistered("target", {"model": {"kind": "line"}}) is None
    assert registry.unregistered("target", {"model": {"kind": "conv"}}) == "model kind 'conv'"
    assert registry.unregistered("target", {"model": {"in_dim": 3}}) is None  # mlp by default
    assert registry.unregistered("run", {"sampler": {"name": "toy_langevin"}}) is None
    assert registry.unregistered("run", {"sampler": {"name": "vi"}}) == "sampler 'vi'"


@pytest.mark.slow  # four samplers compiled: about a minute on 2 busy cores
def test_declared_traces_are_what_runs_record(jax64):
    """Each built-in sampler's run records exactly the traces its registration declares, typed as declared."""
    import numpy as np

    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import DataSpec, TrainingSpec

    target = TargetSpec(model=MLPSpec(in_dim=2, depth=1, widths=[2]), data=DataSpec(n_data=40, n_test=10),
                        training=TrainingSpec(steps=100, learning_rate=0.01))
    arrays = build_target(target)
    small = {"sgld": {"steps": 60, "warmup": 20, "eval_every": 10}, "hmc": {"draws": 4, "warmup": 4},
             "nuts": {"draws": 4, "warmup": 4}, "mclmc": {"draws": 4, "num_steps": 20}}
    kinds = {"float": "f", "int": "i", "bool": "b"}
    for name, entry in registry.samplers().items():
        run = RunSpec.model_validate({"target_id": "t", "sampler": {"name": name, "chains": 1, **small[name]}})
        traces = sample_run(run, target, arrays).traces
        assert set(traces) == {*entry.traces, "llc", "cumulative_fge", "walltime"}, name
        assert {k: np.asarray(traces[k]).dtype.kind for k in entry.traces} == {
            k: kinds[t] for k, t in entry.traces.items()}, name


# --------------------------------------------------------------------------- through the environment


def test_lh_plan_loads_plugins_from_the_environment_without_jax(tmp_path):
    (tmp_path / "sweep.yaml").write_text(SWEEP_YAML)
    modules, proc = imported_modules(["plan", "sweep.yaml"], tmp_path, env=plugin_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    # (importlib.import_module, which loads a plugin, is not timed by -X importtime; what the plugin imports is)
    assert heavy_in(modules) == [], heavy_in(modules)[:10]
    assert "model=line[1, 1], data=n50/gauss_iso, seed=3" in proc.stdout and "toy_langevin on tgt_" in proc.stdout

    bad = lh(tmp_path, "plan", "sweep.yaml", env=plugin_env("no_such_plugin"))
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == ("error: LH_PLUGINS: cannot import plugin 'no_such_plugin': ModuleNotFoundError: "
                                  "No module named 'no_such_plugin'")
    unloaded = lh(tmp_path, "plan", "sweep.yaml", env=plugin_env(""))
    assert unloaded.returncode == 2 and "model: Input tag 'line'" in unloaded.stderr


def test_a_plugins_kind_and_sampler_run_end_to_end(tmp_path):
    """`lh execute` builds the toy target and samples it with the toy sampler in Parsl's worker
    processes, which load the plugin from the environment they inherit."""
    (tmp_path / "sweep.yaml").write_text(SWEEP_YAML)
    env = plugin_env()
    done = lh(tmp_path, "execute", "sweep.yaml", env=env)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 jobs completed, 0 failed" in done.stdout
    q = lh(tmp_path, "query", "select sampler, status, llc_true, draws, chains from runs", "--store", "store",
           "--format", "json", env=env)
    assert q.returncode == 0, q.stderr
    assert json.loads(q.stdout) == [{"sampler": "toy_langevin", "status": "ok", "llc_true": 1.0, "draws": 40,
                                     "chains": 2}]
    t = lh(tmp_path, "query", "select model, status from targets", "--store", "store", "--format", "json", env=env)
    assert json.loads(t.stdout) == [{"model": "line", "status": "ok"}]
