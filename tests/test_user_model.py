"""A user's own model as a target (`model: {kind: python, factory: ...}`, lambda_hat/user_models.py),
through the real CLI in child processes: plan, IDs, refusals, and (slow) execute and query."""

import json
import math
import shutil
from pathlib import Path

import pytest

from lhproc import lh

FACTORY = '''\
"""A two-layer MLP classifier (softmax logits) on three synthetic classes."""
import jax
import jax.numpy as jnp
import numpy as np


def predict(params, x):
    h = jnp.tanh(x @ params["layer1"]["W"] + params["layer1"]["b"])  # hidden layer
    return h @ params["layer2"]["W"] + params["layer2"]["b"]


def make(seed, n=200, hidden=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    x = np.array([[0.0, 2.0], [2.0, -1.0], [-2.0, -1.0]])[y] + rng.normal(size=(n, 2))
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    params = {"layer1": {"W": 0.5 * jax.random.normal(k1, (2, hidden)), "b": jnp.zeros(hidden)},
              "layer2": {"W": 0.5 * jax.random.normal(k2, (hidden, 3)), "b": jnp.zeros(3)}}
    return {"params": params, "predict": predict, "loss": "cross_entropy",
            "data": {"x": x, "y": y.astype(np.int32)}}
'''

SWEEP = """\
store_root: store
targets:
  - model: {kind: python, factory: "mymodel:make", kwargs: {n: 200}}
    seed: 0
    training: {steps: 2000, learning_rate: 0.02, early_stop_tol: null}
samplers:
  - {name: hmc, seed: 1, chains: 2, overrides: {draws: 200, warmup: 200, num_integration_steps: 10}}
"""


def project(root, factory=FACTORY, sweep=SWEEP):
    root.mkdir(parents=True, exist_ok=True)
    (root / "mymodel.py").write_text(factory)
    (root / "sweep.yaml").write_text(sweep)
    return root / "sweep.yaml"


def planned_target(sweep_path, cwd):
    # run from another directory: the factory is found beside the sweep file, not in the cwd
    out = lh(cwd, "plan", str(sweep_path), "--store", str(cwd / "store"), "--json")
    return json.loads(out.stdout)["targets_to_build"][0]


def in_process_id(root, factory=FACTORY, sweep=SWEEP):
    from lambda_hat.ids import target_id
    from lambda_hat.sweep import load_sweep

    return target_id(load_sweep(project(root, factory, sweep)).targets[0])


def test_the_id_follows_the_code_and_the_data_never_the_path(tmp_path):
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    base = planned_target(project(tmp_path / "a"), cwd)
    assert base.startswith("tgt_")
    # the same code in another directory, planned by another process: the same ID
    assert planned_target(project(tmp_path / "b"), cwd) == base
    assert in_process_id(tmp_path / "b2") == base
    # comments, docstrings and formatting do not count
    reformatted = FACTORY.replace("  # hidden layer", "").replace('"""A two-layer', '"""Another').replace(
        "0.5 * jax", "0.5*jax")
    assert reformatted != FACTORY and in_process_id(tmp_path / "c", reformatted) == base
    # one character of code: another ID
    assert in_process_id(tmp_path / "d", FACTORY.replace("jnp.tanh", "jnp.sinh")) != base
    # one data value: another ID
    assert in_process_id(tmp_path / "e", FACTORY.replace("[0.0, 2.0]", "[0.0, 2.5]")) != base
    # kwargs are part of the spec
    assert in_process_id(tmp_path / "f", sweep=SWEEP.replace("n: 200", "n: 201")) != base


BAD = [
    ("mymodel_missing:make", FACTORY, "cannot import 'mymodel_missing'"),
    ("mymodel", FACTORY, "String should match pattern"),
    ("mymodel:nothing", FACTORY, "has no 'nothing'"),
    ("mymodel:make", FACTORY.replace('    return {"params"', '    return [params]\n    return {"params"'),
     "must return a dict, got list"),
    ("mymodel:make", FACTORY.replace('"loss": "cross_entropy",', ""), "lacks 'loss'"),
    ("mymodel:make", FACTORY.replace('"y": y.astype(np.int32)', '"y": y[:-1].astype(np.int32)'),
     "must share a leading axis"),
    ("mymodel:make", FACTORY.replace('"cross_entropy"', '"hinge"'), "'loss' must be a function loss(params, batch)"),
    ("mymodel:make", FACTORY.replace("rng = np", "raise RuntimeError('boom')\n    rng = np"), "raised RuntimeError: boom"),
    ("mymodel:make", FACTORY.replace('"data": {"x": x, "y": y.astype(np.int32)}}',
                                     '"data": {"x": x, "y": y.astype(np.int32)}, "test_data": {"x": x[:, :1], '
                                     '"y": y.astype(np.int32)}}'), "'test_data' must hold the arrays of 'data'"),
]


@pytest.mark.parametrize("factory,code,problem", BAD, ids=[b[2][:20] for b in BAD])
def test_a_bad_factory_is_refused_with_exit_2_naming_the_field(tmp_path, factory, code, problem):
    sweep = project(tmp_path, code, SWEEP.replace('"mymodel:make"', f'"{factory}"'))
    out = lh(tmp_path, "plan", str(sweep), "--store", str(tmp_path / "store"), check=False)
    assert out.returncode == 2, out.stdout + out.stderr
    lines = [ln for ln in out.stderr.strip().splitlines() if ln.strip()]
    assert len(lines) == 1, out.stderr
    assert str(sweep) in lines[0] and "targets[0]" in lines[0] and "model.factory" in lines[0], lines[0]
    assert problem in lines[0], lines[0]
    assert not (tmp_path / "store").exists()


@pytest.mark.slow
def test_execute_samples_a_user_classifier_and_query_shows_the_run(tmp_path):
    sweep = project(tmp_path / "proj")
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    store = str(cwd / "store")
    lh(cwd, "execute", str(sweep), "--store", store, "--workers", "1", timeout=900)
    out = lh(cwd, "query", "--store", store, "--format", "json",
             "select r.llc_mean, r.status, t.model, t.n_params, t.L0 from runs r join targets t using (target_id)")
    rows = json.loads(out.stdout)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["model"] == "python" and row["n_params"] == 2 * 3 + 3 + 3 * 3 + 3
    assert math.isfinite(row["llc_mean"]) and 0 < row["llc_mean"] < row["n_params"], row
    assert 0 < row["L0"] < math.log(3), row  # trained below chance level


def test_the_factory_directory_is_not_in_the_id_but_reaches_the_worker(tmp_path):
    from lambda_hat.ids import resolved_spec, target_id
    from lambda_hat.sweep import load_sweep

    a = load_sweep(project(tmp_path / "a")).targets[0]
    b = load_sweep(project(tmp_path / "b")).targets[0]
    assert a.model.source_dir != b.model.source_dir and target_id(a) == target_id(b)
    assert resolved_spec(a)["model"]["source_dir"] == str((tmp_path / "a").resolve())
    shutil.rmtree(tmp_path / "b")


# The example's regular model (examples/user_model/logistic.py), written beside a test sweep.
LOGISTIC = (Path(__file__).resolve().parents[1] / "examples" / "user_model" / "logistic.py").read_text()

LOGISTIC_SWEEP = """\
targets:
  - model: {kind: python, factory: "mymodel:make", kwargs: {n: 1000}}
    training: {steps: 20000, learning_rate: 0.05, grad_tol: 1.0e-7}
samplers:
  - {name: hmc, seed: 1, chains: 4, overrides: {draws: 1000, warmup: 500, num_integration_steps: 10}}
"""


@pytest.mark.slow
def test_a_regular_user_model_gives_half_its_dimension(tmp_path):
    # Multinomial logistic regression with class 0's logits pinned: identifiable and regular, so
    # λ = d/2 = 3 for d = 2 x (2 + 1). Measured: 2.959 ± 0.055 (R-hat 1.003), n = 1000.
    sweep = project(tmp_path, LOGISTIC, LOGISTIC_SWEEP)
    store = str(tmp_path / "store")
    lh(tmp_path, "execute", str(sweep), "--store", store, "--workers", "1", timeout=900)
    out = lh(tmp_path, "query", "--store", store, "--format", "json",
             "select r.llc_mean, r.llc_sem, t.w_star_status from runs r join targets t using (target_id)")
    (row,) = json.loads(out.stdout)
    assert row["w_star_status"] == "ok", row
    assert abs(row["llc_mean"] - 3.0) < max(4 * row["llc_sem"], 0.3), row


def test_trained_params_are_w_star_and_an_edited_factory_is_not_built(tmp_path):
    from lambda_hat.science import build_target
    from lambda_hat.sweep import load_sweep

    trained = LOGISTIC.replace('"data": {"x": x, "y": y}}', '"data": {"x": x, "y": y}, "trained": True}').replace(
        'np.zeros((features, classes - 1))', 'np.full((features, classes - 1), 0.25)')
    sweep = project(tmp_path, trained, LOGISTIC_SWEEP.replace("n: 1000", "n: 50"))
    spec = load_sweep(sweep).targets[0]
    assert spec.model.trained and spec.model.loss == "cross_entropy" and spec.data.n_data == 50
    arrays = build_target(spec)
    assert arrays.metrics["train_steps"] == 0
    assert set(arrays.params) == {"W", "b"} and (arrays.params["W"] == 0.25).all() and (arrays.params["b"] == 0).all()
    assert arrays.Y.shape == (50, 1) and 0 < arrays.metrics["L0"] < 10
    # the code changes after the plan: the worker refuses to build something else under the planned ID
    (tmp_path / "mymodel.py").write_text(trained.replace("0.25", "0.5"))
    with pytest.raises(RuntimeError, match="code changed since the sweep was planned"):
        build_target(spec)
