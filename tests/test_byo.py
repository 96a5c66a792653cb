"""Bring your own model (examples/byo/, docs/byo.md): the contract pinned to the built-in path,
identity by what a target computes (its own modules, its data, handed-over params), and the
examples run end to end (slow)."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lhproc import lh

BYO = Path(__file__).resolve().parents[1] / "examples" / "byo"


def _targets(sweep: dict, base_dir=None):
    from lambda_hat.sweep import sweep_from_dict

    return sweep_from_dict(sweep, base_dir=None if base_dir is None else str(base_dir))


def test_the_builtin_mlp_as_a_factory_samples_bit_identical_traces():
    # The same MLP, data, initial params and training key, once as `model: small` and once through
    # the factory contract (examples/byo/builtin_mlp.py): w* and every sampler's traces must agree
    # bit for bit, in both dtypes, or the contract computes something other than the built-in path.
    from lambda_hat.ids import target_id
    from lambda_hat.science import build_target, sample_run
    from lambda_hat.specs import RunSpec

    samplers = [{"name": "sgld", "seed": 3, "chains": 2, "overrides": {"steps": 400, "warmup": 100}},
                {"name": "hmc", "seed": 3, "chains": 2, "overrides": {"draws": 20, "warmup": 20}}]
    for dtype in ("float64", "float32"):
        builtin = _targets({"targets": [{"model": "small", "data": "small", "seed": 0, "dtype": dtype,
                                         "training": {"steps": 200}}], "samplers": samplers})
        mine = _targets({"targets": [{"model": {"kind": "python", "factory": "builtin_mlp:make"}, "seed": 0,
                                      "dtype": dtype, "training": {"steps": 200}}], "samplers": samplers}, BYO)
        a, b = build_target(builtin.targets[0]), build_target(mine.targets[0])
        assert sorted(a.params) == sorted(b.params)
        for k in a.params:
            assert a.params[k].dtype == b.params[k].dtype and np.array_equal(a.params[k], b.params[k]), (dtype, k)
        assert a.metrics["L0"] == b.metrics["L0"]
        for setting in builtin.samplers:
            runs = [RunSpec(target_id=target_id(t.targets[0]), sampler=setting.sampler, posterior=setting.posterior,
                            seed=setting.seed) for t in (builtin, mine)]
            ra = sample_run(runs[0], builtin.targets[0], a)
            rb = sample_run(runs[1], mine.targets[0], b)
            assert np.isfinite(ra.traces["loss"]).all()
            assert np.array_equal(ra.traces["loss"], rb.traces["loss"]), (dtype, setting.sampler.name)
            assert ra.metrics["llc_mean"] == rb.metrics["llc_mean"]
