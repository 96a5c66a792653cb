"""More spellings that an ID keeps apart but that are one computation (see
test_same_computation.py): training `batch_size` at or above `n_data` (the full batch, as null
is); stopping rules of a training of at most train.CHECK_EVERY steps (it ends after its only
chunk); training settings of targets that train nothing (polynomial models, dln and mlp targets
measured at the teacher, dln's `init` then too, a python factory that hands over w*); data fields
the chosen `x_dist` and `noise_model` never read; a python model's data but n_data (the factory
supplies the data); MCLMC's tuning settings without tuning (`tune: false` or `num_steps: 0`).
The slow tests build and sample such pairs and find them bit for bit alike."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.planner import TRAIN_CHECK_EVERY, describe_same_computations, expand, same_computations
from lambda_hat.sweep import sweep_from_dict

SMALL = {"model": "small", "data": "small", "teacher": "_null", "seed": 1}  # n_data 100


def pairs_of(targets, samplers=({"name": "hmc"},), base_dir=None):
    ex = expand(sweep_from_dict({"targets": list(targets), "samplers": list(samplers)}, base_dir=base_dir))
    index = {r.run_id: i for i, r in enumerate(ex.runs)} | {t.target_id: f"t{i}" for i, t in enumerate(ex.targets)}
    return [(index[a], index[b], why) for a, b, why in same_computations(ex)], ex


def target(training=None, data=None, **rest):
    out = {**SMALL, **rest}
    if training is not None:
        out["overrides"] = {"training": training}
    if data is not None:
        out["data"] = data
    return out


def test_the_planners_check_every_is_the_trainers():
    from lambda_hat.science.train import CHECK_EVERY

    assert TRAIN_CHECK_EVERY == CHECK_EVERY


def test_a_training_batch_at_or_above_n_is_the_full_batch():
    pairs, ex = pairs_of([target({"steps": 300}), target({"steps": 300, "batch_size": 100}),
                          target({"steps": 300, "batch_size": 5000}), target({"steps": 300, "batch_size": 99})])
    assert len({t.target_id for t in ex.targets}) == 4
    assert pairs == [("t0", "t1", "training.batch_size None and 100 train alike"),
                     ("t0", "t2", "training.batch_size None and 5000 train alike")], pairs


def test_a_batch_is_full_on_the_targets_own_n():
    big = {"n_data": 200}
    pairs, _ = pairs_of([target({"steps": 300}, big), target({"steps": 300, "batch_size": 150}, big),
                         target({"steps": 300, "batch_size": 200}, big)])
    assert [(a, b) for a, b, _ in pairs] == [("t0", "t2")], pairs


def test_stopping_rules_of_a_training_of_one_chunk_are_unused():
    n = TRAIN_CHECK_EVERY
    pairs, _ = pairs_of([target({"steps": n}), target({"steps": n, "early_stop_tol": 0.5}),
                         target({"steps": n, "grad_tol": 10.0}), target({"steps": n + 1}),
                         target({"steps": n + 1, "early_stop_tol": 0.5})])
    assert pairs == [("t0", "t1", "training.early_stop_tol 1e-06 and 0.5 train alike"),
                     ("t0", "t2", "training.grad_tol None and 10.0 train alike")], pairs


def test_training_of_targets_that_train_nothing_is_unused():
    poly = {"model": {"kind": "polynomial", "powers": [1, 2]}, "data": {"n_data": 50}, "seed": 2}
    dln = {"model": {"kind": "dln", "widths": [3, 2, 3]}, "data": {"n_data": 50}, "seed": 2}
    teacher = {**SMALL, "w_star": "teacher"}
    pairs, _ = pairs_of([
        poly, poly | {"training": {"steps": 7, "optimizer": "sgd"}},
        dln, dln | {"training": {"steps": 7}, "model": {**dln["model"], "init": "he"}},
        dln | {"w_star": "refined"}, dln | {"w_star": "refined", "training": {"learning_rate": 0.5}},
        dln | {"w_star": "trained", "training": {"steps": 7}},
        dln | {"w_star": "trained", "training": {"steps": 7}, "model": {**dln["model"], "init": "he"}},
        teacher, teacher | {"training": {"steps": 9}},
        teacher | {"model": {"kind": "mlp", "depth": 1, "widths": [5], "init": "xavier"}}])
    assert pairs == [
        ("t0", "t1", "training.optimizer 'adam' and 'sgd'; training.steps 5000 and 7 build alike "
                     "(w* is the teacher: nothing is trained)"),
        ("t2", "t3", "training.steps 5000 and 7; model.init 'xavier' and 'he' build alike "
                     "(w* is the teacher: nothing is trained)"),
        ("t4", "t5", "training.learning_rate 0.001 and 0.5 build alike "
                     "(w* is the refined teacher: nothing is trained)"),
        ("t8", "t9", "training.steps 5000 and 9 build alike (w* is the teacher: nothing is trained)")], pairs


def test_data_fields_the_distribution_and_noise_never_read_are_unused():
    def d(**f):
        return {"n_data": 100, **f}

    pairs, _ = pairs_of([target({"steps": 300}, d()),
                         target({"steps": 300}, d(cov_decay=0.5, mixture_k=2, mixture_spread=1.0, x_dim_latent=3,
                                                  hetero_scale=1.0, student_df=9.0, outlier_frac=0.5,
                                                  outlier_scale=9.0)),
                         target({"steps": 300}, d(x_dist="gauss_aniso")),
                         target({"steps": 300}, d(x_dist="gauss_aniso", cov_decay=0.5)),
                         target({"steps": 300}, d(x_dist="gauss_aniso", mixture_k=2)),
                         target({"steps": 300}, d(noise_model="hetero", hetero_scale=0.5)),
                         target({"steps": 300}, d(noise_model="hetero", hetero_scale=0.5, student_df=9.0)),
                         target({"steps": 300}, d(noise_model="student_t")),
                         target({"steps": 300}, d(noise_model="student_t", student_df=9.0)),
                         target({"steps": 300}, d(x_dist="heavy_tail", outlier_frac=0.5)),
                         target({"steps": 300}, d(x_dist="heavy_tail", student_df=9.0))])
    assert [(a, b) for a, b, _ in pairs] == [("t0", "t1"), ("t2", "t4"), ("t5", "t6")], pairs
    assert pairs[0][2].startswith("data.cov_decay 0.95 and 0.5; data.mixture_k 4 and 2;")
    assert pairs[0][2].endswith("data.outlier_scale 2.0 and 9.0 build alike")
    assert pairs[2][2] == "data.student_df 4.0 and 9.0 build alike"


def test_the_note_names_the_targets(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"targets": [target({"steps": 300, "batch_size": 100}),
                                             target({"steps": 300, "batch_size": 5000})],
                                 "samplers": [{"name": "hmc"}]}))
    result = CliRunner().invoke(app, ["plan", str(sweep), "--store", str(tmp_path / "st")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "note: 1 of the sweep's targets and runs repeat another's computation under another ID" in result.output
    assert "training.batch_size 100 and 5000 train alike" in result.output


FACTORY = '''\
import numpy as np


def make(seed, n=20, trained=False):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 2))
    y = x @ np.array([[1.0], [0.5]]) + 0.1 * rng.normal(size=(n, 1))
    return {"params": {"w": np.full((2, 1), 0.1)}, "predict": lambda p, x: x @ p["w"], "loss": "mse",
            "data": {"x": x, "y": y}, "trained": trained}
'''


def test_a_python_models_data_but_n_and_a_handed_over_w_star_training_are_unused(tmp_path):
    (tmp_path / "mine.py").write_text(FACTORY)
    model = {"kind": "python", "factory": "mine:make"}
    handed = {"kind": "python", "factory": "mine:make", "kwargs": {"trained": True}}
    pairs, ex = pairs_of([{"model": model, "training": {"steps": 50}},
                          {"model": model, "training": {"steps": 50}, "data": {"n_test": 7, "x_dist": "mixture"}},
                          {"model": model, "training": {"steps": 60}},
                          {"model": handed}, {"model": handed, "training": {"steps": 3}}], base_dir=str(tmp_path))
    assert ex.targets[0].spec.data.n_data == 20  # the factory's
    assert pairs == [("t0", "t1", "data.n_test 100 and 7; data.x_dist 'gauss_iso' and 'mixture' build alike"),
                     ("t3", "t4", "training.steps 5000 and 3 build alike "
                                  "(w* is handed over: nothing is trained)")], pairs


def mclmc(**o):
    return {"name": "mclmc", "overrides": {"draws": 20, "chains": 2, **o}}


def test_mclmc_tuning_settings_are_unused_without_tuning():
    pairs, _ = pairs_of([SMALL], [
        mclmc(tune=False), mclmc(tune=False, num_steps=10, frac_tune1=0.3, diagonal_preconditioning=True,
                                 trust_in_estimate=2.0, num_effective_samples=10.0, desired_energy_var=1e-3),
        mclmc(tune=True, num_steps=0), mclmc(tune=True, num_steps=0, frac_tune3=0.5),
        mclmc(tune=False, step_size=0.05), mclmc(num_steps=10), mclmc(num_steps=10, frac_tune1=0.3),
        mclmc(num_steps=10, trust_in_estimate=2.0)])
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (0, 2), (0, 3)], pairs
    assert pairs[1][2] == "tune False and True; num_steps 2000 and 0 run alike"
    assert pairs[0][2].startswith("num_steps 2000 and 10; frac_tune1 0.1 and 0.3;")


def test_the_note_lines_name_the_pairs():
    _, ex = pairs_of([SMALL], [mclmc(tune=False), mclmc(tune=False, num_steps=5)])
    lines = describe_same_computations(same_computations(ex))
    assert lines[0].startswith("note: 1 of the sweep's targets and runs repeat another's computation")
    assert lines[1] == f"  {ex.runs[1].run_id} = {ex.runs[0].run_id}: num_steps 2000 and 5 run alike"


@pytest.mark.slow
def test_paired_targets_are_built_bit_for_bit_alike():
    from lambda_hat.science import build_target

    poly = {"model": {"kind": "polynomial", "powers": [1, 2]}, "data": {"n_data": 30}, "seed": 2}
    pairs, ex = pairs_of([
        target({"steps": 120, "batch_size": 30}, {"n_data": 30}),
        target({"steps": 120, "batch_size": 31}, {"n_data": 30, "mixture_k": 2, "student_df": 7.0}),
        target({"steps": 50, "batch_size": 10}, {"n_data": 30}),
        target({"steps": 50, "batch_size": 10, "early_stop_tol": 10.0}, {"n_data": 30}),
        poly, poly | {"training": {"steps": 7}}])
    assert [(a, b) for a, b, _ in pairs] == [("t0", "t1"), ("t2", "t3"), ("t4", "t5")], pairs
    built = [build_target(t.spec) for t in ex.targets]
    for i in (0, 2, 4):
        a, b = built[i], built[i + 1]
        assert set(a.params) == set(b.params)
        assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
        assert np.array_equal(a.X, b.X) and np.array_equal(a.Y, b.Y)
        assert a.metrics == b.metrics
    assert not np.array_equal(built[0].params["W_0"], built[2].params["W_0"])  # a used setting differs


@pytest.mark.slow
def test_paired_mclmc_runs_are_sampled_bit_for_bit_alike():
    from lambda_hat.science import build_target, sample_run

    samplers = [mclmc(tune=False, draws=8), mclmc(tune=True, num_steps=0, draws=8, frac_tune1=0.5,
                                                 desired_energy_var=1e-2, diagonal_preconditioning=True),
                mclmc(tune=False, draws=8, step_size=0.05)]
    pairs, ex = pairs_of([target({"steps": 20})], samplers)
    assert [(a, b) for a, b, _ in pairs] == [(0, 1)], pairs
    t = ex.targets[0]
    arrays = build_target(t.spec)
    first, again, other = (sample_run(r.spec, t.spec, arrays).traces for r in ex.runs)
    assert all(np.array_equal(first[k], again[k]) for k in first if k != "walltime")
    assert not np.array_equal(first["loss"], other["loss"])


@pytest.mark.slow
def test_paired_python_and_dln_targets_are_built_bit_for_bit_alike(tmp_path):
    from lambda_hat.science import build_target

    (tmp_path / "mine.py").write_text(FACTORY)
    model = {"kind": "python", "factory": "mine:make"}
    handed = {"kind": "python", "factory": "mine:make", "kwargs": {"trained": True}}
    dln = {"model": {"kind": "dln", "widths": [3, 2, 3]}, "data": {"n_data": 30}, "seed": 2}
    pairs, ex = pairs_of([{"model": model, "training": {"steps": 30}},
                          {"model": model, "training": {"steps": 30}, "data": {"n_test": 7, "x_dist": "mixture"}},
                          {"model": handed}, {"model": handed, "training": {"steps": 3}},
                          dln, dln | {"training": {"steps": 7}, "model": {**dln["model"], "init": "he"}}],
                         base_dir=str(tmp_path))
    assert [(a, b) for a, b, _ in pairs] == [("t0", "t1"), ("t2", "t3"), ("t4", "t5")], pairs
    built = [build_target(t.spec) for t in ex.targets]
    for i in (0, 2, 4):
        a, b = built[i], built[i + 1]
        assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
        assert np.array_equal(a.Y, b.Y) and a.metrics == b.metrics
    assert not np.array_equal(built[0].params["w"], built[2].params["w"])  # trained, and handed over
