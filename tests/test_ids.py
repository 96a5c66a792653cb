"""IDs are a function of the resolved spec alone."""

import pytest

from lambda_hat.ids import run_id, target_id
from lambda_hat.planner import expand
from lambda_hat.specs import HMCSpec, PosteriorSpec, RunSpec, SGLDSpec, TargetSpec
from lambda_hat.sweep import sweep_from_dict

SMALL = {"model": "small", "data": "small", "teacher": "_null", "seed": 42}


def _one_target(entry: dict) -> TargetSpec:
    return sweep_from_dict({"targets": [entry], "samplers": [{"name": "sgld"}]}).targets[0]


def test_golden_ids():
    # Pinned: if these change, every cached artifact is orphaned. Change them only with a
    # deliberate schema bump in ids.py.
    t = _one_target(SMALL)
    assert target_id(t) == "tgt_0242f47dfcba"
    r = RunSpec(target_id=target_id(t), sampler=SGLDSpec(), posterior=PosteriorSpec(), seed=12345)
    assert run_id(r) == "run_c5f55ccbd02f"
    assert target_id(TargetSpec()) == "tgt_ced0f1aa653f"


def test_key_order_int_float_and_yaml_vs_python_agree(write_yaml):
    from lambda_hat.sweep import load_sweep

    a = _one_target({"seed": 42, "teacher": "_null", "data": "small", "model": "small",
                     "overrides": {"training": {"learning_rate": 0.01, "steps": 100}}})
    b = _one_target({**SMALL, "overrides": {"training": {"steps": 100.0, "learning_rate": 1e-2}}})
    p = write_yaml(
        "targets:\n  - {model: small, data: small, teacher: _null, seed: 42,\n"
        "      overrides: {training: {steps: 100, learning_rate: 0.010}}}\nsamplers: [{name: sgld}]\n"
    )
    c = load_sweep(p).targets[0]
    py = TargetSpec(seed=42, training={"steps": 100, "learning_rate": 0.01})
    assert target_id(a) == target_id(b) == target_id(c) == target_id(py)


def test_preset_equals_values_written_out():
    preset = _one_target(SMALL)
    written = _one_target({
        "model": {"in_dim": 4, "out_dim": 1, "depth": 2, "widths": [4, 4], "activation": "relu", "bias": True, "init": "he"},
        "data": {"n_data": 100, "n_test": 100},
        "teacher": {"depth": 2, "widths": [4, 4], "activation": "relu"},
        "seed": 42,
    })
    assert target_id(preset) == target_id(written)
    base = _one_target({"model": "base", "data": "small", "seed": 42})
    assert base.model.widths == [62, 62, 62] and 9000 < base.model.n_params < 11000


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 43},
        {"overrides": {"training": {"steps": 4999}}},
        {"overrides": {"data": {"noise_scale": 0.1000001}}},
        {"overrides": {"model": {"activation": "tanh"}}},
        {"overrides": {"teacher": {"activation": "tanh"}}},
        {"data": "base"},
        {"dtype": "float32"},
    ],
)
def test_changing_any_value_changes_target_id(change):
    assert target_id(_one_target({**SMALL, **change})) != target_id(_one_target(SMALL))


def test_run_id_covers_target_sampler_posterior_seed():
    base = RunSpec(target_id="tgt_aaaaaaaaaaaa", sampler=HMCSpec(), seed=1)
    variants = [
        base.model_copy(update={"target_id": "tgt_bbbbbbbbbbbb"}),
        base.model_copy(update={"seed": 2}),
        base.model_copy(update={"sampler": HMCSpec(draws=1001)}),
        base.model_copy(update={"sampler": HMCSpec(chains=2)}),
        base.model_copy(update={"posterior": PosteriorSpec(gamma=2.0)}),
        base.model_copy(update={"sampler": SGLDSpec()}),
    ]
    ids = {run_id(v) for v in variants} | {run_id(base)}
    assert len(ids) == len(variants) + 1


def test_posterior_change_reuses_target():
    sweep = sweep_from_dict({
        "targets": [SMALL],
        "samplers": [{"name": "hmc", "posterior": {"gamma": 1.0}}, {"name": "hmc", "posterior": {"gamma": 10.0}}],
    })
    ex = expand(sweep)
    assert len(ex.targets) == 1 and len(ex.runs) == 2
    assert len({r.run_id for r in ex.runs}) == 2
    assert {r.spec.target_id for r in ex.runs} == {ex.targets[0].target_id}
