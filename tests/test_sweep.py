"""The sweep loader: Lambda-Hat compatibility, grids, and one-line errors."""

import pytest

from lambda_hat.sweep import SweepError, load_sweep, sweep_from_dict

# Lambda-Hat's config/experiments.yaml, minus the samplers we do not ship yet (mclmc, vi).
LAMBDA_HAT_EXPERIMENTS = """\
store_root: "runs"
jax_enable_x64: true

targets:
  - { model: small, data: small, teacher: _null, seed: 42 }
  - { model: base,  data: base,  teacher: _null, seed: 43,
      overrides: { training: { steps: 10000 } } }

samplers:
  - { name: hmc }
  - { name: sgld, overrides: { step_size: 1e-6, eval_every: 50 }, seed: 12345 }
"""


def test_lambda_hat_experiments_yaml_loads_as_is(write_yaml):
    sweep = load_sweep(write_yaml(LAMBDA_HAT_EXPERIMENTS))
    assert sweep.store_root == "runs"
    small, base = sweep.targets
    assert small.seed == 42 and small.model.in_dim == 4 and small.data.n_data == 100
    assert base.model.in_dim == 32 and base.data.n_data == 20000 and base.training.steps == 10000
    assert small.teacher.widths == small.model.widths  # _null: the student's architecture
    hmc, sgld = sweep.samplers
    assert hmc.sampler.name == "hmc" and hmc.sampler.chains == 4
    assert sgld.sampler.step_size == 1e-6 and sgld.sampler.eval_every == 50 and sgld.seed == 12345


def test_grid_expands_to_cartesian_product():
    sweep = sweep_from_dict({
        "targets": [{"model": "small", "data": "small", "grid": {"seed": [1, 2, 3]}}],
        "samplers": [
            {"name": "sgld", "grid": {"step_size": [1e-5, 1e-6], "seed": [1, 2]}},
            {"name": "hmc", "grid": {"posterior.gamma": [1.0, 10.0]}},
        ],
    })
    assert [t.seed for t in sweep.targets] == [1, 2, 3]
    sg = [(s.sampler.step_size, s.seed) for s in sweep.samplers if s.sampler.name == "sgld"]
    assert sg == [(1e-5, 1), (1e-5, 2), (1e-6, 1), (1e-6, 2)]
    assert [s.posterior.gamma for s in sweep.samplers if s.sampler.name == "hmc"] == [1.0, 10.0]


def test_dotted_grid_keys_and_overrides_merge():
    sweep = sweep_from_dict({
        "targets": [{"model": "small", "data": "small",
                     "overrides": {"training": {"steps": 7}, "data": {"noise_scale": 0.3}},
                     "grid": {"training.learning_rate": [0.1, 0.2], "data.n_data": [50]}}],
        "samplers": [{"name": "hmc"}],
    })
    assert [(t.training.learning_rate, t.training.steps, t.data.n_data, t.data.noise_scale) for t in sweep.targets] == [
        (0.1, 7, 50, 0.3), (0.2, 7, 50, 0.3)]


def test_x64_off_makes_float32_the_default():
    sweep = sweep_from_dict({"jax_enable_x64": False, "targets": [{"model": "small"}], "samplers": [{"name": "hmc"}]})
    assert sweep.targets[0].dtype == "float32" and sweep.samplers[0].sampler.dtype == "float32"
    with pytest.raises(SweepError, match="jax_enable_x64"):
        sweep_from_dict({"jax_enable_x64": False, "targets": [{"model": "small"}],
                         "samplers": [{"name": "hmc", "dtype": "float64"}]})


BAD = [
    ("targets: [{model: small\nsamplers: []\n", "malformed YAML"),
    ("targets: [{model: small}]\nsamplers: [{name: sgld, stepsize: 1e-5}]\n", "samplers[0] (sgld): stepsize: Extra inputs"),
    ("targets: [{model: small}]\nsamplers: [{name: sgld, overrides: {stepsize: 1e-5}}]\n", "samplers[0] (sgld): stepsize"),
    ("targets: [{model: small}]\nsamplers: [{name: vi}]\n", "samplers[0] (vi): name: unknown sampler 'vi'"),
    ("targets: [{model: small, overrides: {data: {n_data: -5}}}]\nsamplers: [{name: hmc}]\n", "targets[0]: data.n_data"),
    ("targets: [{model: small}]\nsamplers: [{name: sgld, step_size: .nan}]\n", "samplers[0] (sgld): step_size: Input should be a finite number"),
    ("targets: [{model: tiny}]\nsamplers: [{name: hmc}]\n", "targets[0]: model: unknown model preset 'tiny'"),
    ("targets: [{model: small, grid: {seed: 3}}]\nsamplers: [{name: hmc}]\n", "targets[0]: grid.seed"),
    ("targets: [{model: small}]\nsamplers: [{name: hmc, posterior: {gamma: -1}}]\n", "samplers[0] (hmc): posterior.gamma"),
    ("targets: [{model: small}]\nsamplers: [{name: hmc}]\nparallelism: 3\n", "parallelism: unknown key"),
    ("targets: []\nsamplers: [{name: hmc}]\n", "targets: must be a non-empty list"),
]


@pytest.mark.parametrize("text,expected", BAD)
def test_bad_input_is_one_line_naming_file_entry_field(write_yaml, text, expected):
    path = write_yaml(text)
    with pytest.raises(SweepError) as info:
        load_sweep(path)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(str(path) + ": ")
    assert expected in msg
