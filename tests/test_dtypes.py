"""Every sampler × every dtype: target float32/float64 × sampler float32/float64, with the
process-wide `jax_enable_x64` on (in-process) and off (a subprocess). Each spec runs in the x64
mode its dtype needs (`science.models.precision`), so a float32 run gives the same numbers
whatever the global flag, and nothing changes that flag.

The slow test checks that float32 and float64 agree within their combined standard error on a
small deep linear network, per sampler.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from lambda_hat.specs import DataSpec, MLPSpec, RunSpec, TargetSpec, TrainingSpec

TINY = dict(model=MLPSpec(in_dim=3, depth=1, widths=[4]), data=DataSpec(n_data=200, n_test=50),
            training=TrainingSpec(steps=300, learning_rate=0.01), seed=3)
SAMPLERS = {
    "sgld": dict(name="sgld", chains=2, steps=300, warmup=100, eval_every=10, batch_size=32),
    "hmc": dict(name="hmc", chains=2, draws=20, warmup=20, num_integration_steps=3),
    "nuts": dict(name="nuts", chains=2, draws=20, warmup=20, max_num_doublings=4),
    "mclmc": dict(name="mclmc", chains=2, draws=20, num_steps=50),
}
DTYPES = ["float32", "float64"]

_targets: dict = {}


def _target(dtype):
    if dtype not in _targets:
        from lambda_hat.science import build_target

        spec = TargetSpec(**TINY, dtype=dtype)
        _targets[dtype] = (spec, build_target(spec))
    return _targets[dtype]


def _run(sampler: str, target_dtype: str, sampler_dtype: str):
    from lambda_hat.science import sample_run

    spec, arrays = _target(target_dtype)
    run = RunSpec(target_id="t", sampler={**SAMPLERS[sampler], "dtype": sampler_dtype}, seed=1)
    return sample_run(run, spec, arrays)


@pytest.mark.parametrize("sampler", list(SAMPLERS))
@pytest.mark.parametrize("target_dtype,sampler_dtype", [(t, s) for t in DTYPES for s in DTYPES])
def test_every_sampler_and_dtype_with_x64_on(jax64, sampler, target_dtype, sampler_dtype):
    spec, arrays = _target(target_dtype)
    assert arrays.X.dtype == np.dtype(target_dtype) and all(v.dtype == np.dtype(target_dtype) for v in arrays.params.values())
    r = _run(sampler, target_dtype, sampler_dtype)
    assert jax64.config.jax_enable_x64  # the run did not switch the process's flag
    sampler_traces = {"loss", "step_size", "accept_rate", "energy", "energy_change", "L"} & set(r.traces)
    assert len(sampler_traces) >= 2
    for k in sampler_traces:
        assert r.traces[k].dtype == np.dtype(sampler_dtype), k
    assert r.traces["llc"].dtype == np.float64  # λ̂ = nβ·(L − L0) is formed in float64
    assert np.isfinite(r.traces["llc"]).all() and math.isfinite(r.metrics["llc_mean"])
    assert r.metrics["status"] != "nonfinite"
    assert math.isfinite(r.metrics["r_hat"]) and r.metrics["ess_bulk"] > 0


X64_OFF_SAMPLERS = ("sgld", "hmc", "nuts", "mclmc")
_X64_OFF_SCRIPT = """
import json, jax
from lambda_hat.specs import RunSpec, TargetSpec
from lambda_hat.science import build_target, sample_run
import test_dtypes as t
assert not jax.config.jax_enable_x64
out = {}
spec = TargetSpec(**t.TINY, dtype="float32")
arrays = build_target(spec)
for name in t.X64_OFF_SAMPLERS:
    r = sample_run(RunSpec(target_id="t", sampler={**t.SAMPLERS[name], "dtype": "float32"}, seed=1), spec, arrays)
    out[name] = {"llc_mean": r.metrics["llc_mean"], "loss_dtype": str(r.traces["loss"].dtype), "status": r.metrics["status"]}
out["x64_after"] = bool(jax.config.jax_enable_x64)
print("RESULT" + json.dumps(out))
"""


@pytest.fixture(scope="module", autouse=True)
def x64_off_process():
    """The JAX_ENABLE_X64=0 process, started when this module's first test starts so that its
    compiles overlap the in-process ones (compiles are mostly single-threaded)."""
    # the platform of this process (conftest's cpu unless JAX_PLATFORMS says otherwise): bits
    # are compared, and a GPU's differ from a CPU's
    env = {**os.environ, "JAX_ENABLE_X64": "0", "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu"),
           "PYTHONPATH": os.pathsep.join([os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])}
    p = subprocess.Popen([sys.executable, "-c", _X64_OFF_SCRIPT], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    yield p
    if p.poll() is None:
        p.kill()
        p.communicate()


def test_float64_spec_runs_when_x64_is_off_here(jax64):
    """x64 off for this thread (as JAX_ENABLE_X64=0 would set it for the process): a float64
    target and sampler still run in float64, and leave the setting off."""
    with jax64.enable_x64(False):
        r = _run("hmc", "float64", "float64")
        assert not jax64.config.jax_enable_x64
    assert r.traces["loss"].dtype == np.float64 and np.isfinite(r.traces["llc"]).all()
    assert r.metrics["llc_mean"] == _run("hmc", "float64", "float64").metrics["llc_mean"]


def test_float32_with_x64_off_in_a_fresh_process_matches_x64_on(jax64, x64_off_process):
    """With JAX_ENABLE_X64=0 every sampler runs in float32, and gives bit for bit the numbers
    of the same float32 spec in this process, where x64 is on: the global flag does not leak
    into a spec's computation."""
    stdout, stderr = x64_off_process.communicate(timeout=300)
    assert x64_off_process.returncode == 0, stderr[-3000:]
    out = json.loads(next(line for line in stdout.splitlines() if line.startswith("RESULT"))[len("RESULT"):])
    assert out.pop("x64_after") is False
    assert set(out) == set(X64_OFF_SAMPLERS)
    for name, got in out.items():
        assert got["loss_dtype"] == "float32" and got["status"] != "nonfinite" and math.isfinite(got["llc_mean"]), (name, got)
        here = _run(name, "float32", "float32").metrics["llc_mean"]
        assert got["llc_mean"] == here, (name, got["llc_mean"], here)


# --------------------------------------------------------------------------- slow: agreement

DLN = TargetSpec(model={"kind": "dln", "widths": [5, 3, 5]}, teacher={"rank": 1},
                 data={"n_data": 2000, "noise_scale": 0.1}, seed=0)
AGREEMENT = {
    "sgld": {"name": "sgld", "steps": 30000, "warmup": 5000, "eval_every": 20, "batch_size": 256},
    "hmc": {"name": "hmc", "draws": 1000, "warmup": 300},
    # 500 draws, not 1000 (~80 s of CI): 4 chains of 500 leave a bulk ESS of ~830 and a standard
    # error of 1.2 % of λ̂, inside the 5 % power bound (measured: 7.81 ± 0.095 in float32, 7.72 ±
    # 0.096 in float64, z = 0.6; with 1000 draws ± 0.07 and z = 1.4)
    "nuts": {"name": "nuts", "draws": 500, "warmup": 300, "max_num_doublings": 6},
    "mclmc": {"name": "mclmc", "draws": 2000},
}


@pytest.mark.slow
@pytest.mark.parametrize("sampler", list(AGREEMENT))
def test_float32_and_float64_agree_on_a_dln(sampler):
    """The same DLN target (built in float64) sampled in float32 and in float64: the two λ̂
    differ by less than 3 combined standard errors, √(sem₃₂² + sem₆₄²)."""
    from lambda_hat.science import build_target, sample_run

    arrays = build_target(DLN)
    m = {}
    for dtype in DTYPES:
        run = RunSpec(target_id="t", sampler={**AGREEMENT[sampler], "chains": 4, "dtype": dtype}, seed=1)
        m[dtype] = sample_run(run, DLN, arrays).metrics
    a, b = m["float32"], m["float64"]
    info = {d: {k: m[d][k] for k in ("llc_mean", "llc_sem", "r_hat", "ess_bulk", "status")} for d in DTYPES}
    print(sampler, info)
    assert all(math.isfinite(x["llc_sem"]) and x["llc_sem"] < 0.05 * x["llc_mean"] for x in (a, b)), info  # power
    assert abs(a["llc_mean"] - b["llc_mean"]) < 3 * math.hypot(a["llc_sem"], b["llc_sem"]), info
