"""Spellings that an ID keeps apart (a store's IDs never change) but that are one computation:
SGLD `batch_size` at or above `n_data` (the full batch), steps past warmup + draws × eval_every
(never run), `step_size_nbeta` beside a given `step_size` (unused); a per-example record of
every example with another seed; training with adam and adamw without decay, adamw's null decay
and optax's default, `early_stop_tol` beside `grad_tol`. `lh plan` and `lh execute` name such
pairs of a sweep's targets and runs; the slow test samples a pair and finds it bit for bit alike
(what the note claims), and a run that differs in a used setting not alike."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.planner import expand, same_computations
from lambda_hat.sweep import sweep_from_dict

SMALL = {"model": "small", "data": "small"}  # n_data 100


def sgld(**overrides):
    return {"name": "sgld", "overrides": {"warmup": 1000, "steps": 1100, "eval_every": 20, **overrides}}


def pairs_of(samplers, targets=(SMALL,)):
    ex = expand(sweep_from_dict({"targets": list(targets), "samplers": samplers}))
    index = {r.run_id: i for i, r in enumerate(ex.runs)} | {t.target_id: f"t{i}" for i, t in enumerate(ex.targets)}
    return [(index[a], index[b], why) for a, b, why in same_computations(ex)]


def test_each_spelling_of_one_computation_is_paired_with_the_first():
    pairs = pairs_of([sgld(batch_size=100), sgld(batch_size=256), sgld(batch_size=99),
                      sgld(steps=1119), sgld(steps=1120),
                      sgld(step_size=1e-3), sgld(step_size=1e-3, step_size_nbeta=0.5), sgld(step_size_nbeta=0.5)])
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (0, 3), (5, 6)], pairs
    assert pairs[0][2] == "batch_size 100 and 256 run alike on n_data 100"
    assert pairs[1][2] == "batch_size 100 and 256; steps 1100 and 1119 run alike on n_data 100"
    assert pairs[2][2] == "step_size_nbeta 0.02 and 0.5 run alike"


def test_a_record_of_every_example_pairs_across_seeds_but_a_subset_does_not():
    def record(**pe):
        return {"name": "hmc", "record": {"per_example": pe}}

    pairs = pairs_of([record(subset="all", seed=0), record(subset="all", seed=5),
                      record(subset=50, seed=0), record(subset=50, seed=5), record(subset="all", seed=7, query=3),
                      record(subset=100, seed=9), record(subset="all", query=100, seed=4),
                      record(subset="all", heldout=3, seed=1), record(subset="all", heldout=3, seed=2),
                      record(subset="all", query=100, seed=8)])
    assert pairs == [(0, 1, "record.per_example.seed 0 and 5 run alike on n_data 100"),
                     (0, 5, "record.per_example.subset 'all' and 100; record.per_example.seed 0 and 9 run alike "
                            "on n_data 100"),
                     (6, 9, "record.per_example.seed 4 and 8 run alike on n_data 100")], pairs


def test_hmc_and_nuts_settings_unused_without_adaptation_are_paired():
    def hmc(name="hmc", **o):
        return {"name": name, "overrides": {"draws": 20, **o}}

    pairs = pairs_of([hmc(warmup=0, target_acceptance=0.8), hmc(warmup=0, target_acceptance=0.95),
                      hmc(warmup=0, adapt_mass_matrix=False), hmc(warmup=10, target_acceptance=0.95),
                      hmc(warmup=10, adapt_step_size=False, adapt_mass_matrix=False),
                      hmc(warmup=10, adapt_step_size=False, adapt_mass_matrix=False, target_acceptance=0.6),
                      hmc("nuts", warmup=0), hmc("nuts", warmup=0, target_acceptance=0.5)])
    assert [(a, b) for a, b, _ in pairs] == [(0, 1), (0, 2), (4, 5), (6, 7)], pairs


def test_trainings_that_run_alike_are_paired():
    def target(**training):
        return {**SMALL, "seed": 3, "training": {"steps": 200, **training}}

    pairs = pairs_of([{"name": "hmc"}], targets=[
        target(optimizer="adam"), target(optimizer="adamw", weight_decay=0.0), target(optimizer="adamw"),
        target(optimizer="adamw", weight_decay=1e-4), target(optimizer="adamw", weight_decay=1e-3),
        target(grad_tol=1e-3), target(grad_tol=1e-3, early_stop_tol=1e-5), target(early_stop_tol=1e-5),
        target(early_stop_tol=0), target(early_stop_tol=None), target(optimizer="sgd")])
    assert [(a, b) for a, b, _ in pairs] == [("t0", "t1"), ("t2", "t3"), ("t5", "t6"), ("t8", "t9")], pairs
    assert pairs[0][2] == "training.optimizer 'adam' and 'adamw'; training.weight_decay None and 0.0 train alike"


def test_a_batch_below_n_on_one_target_is_full_on_another():
    big = {"model": "small", "data": {"n_data": 200}}
    pairs = pairs_of([sgld(batch_size=150), sgld(batch_size=300)], targets=(SMALL, big))
    # on n = 100 both are the full batch; on n = 200, 150 is a minibatch
    assert [(a, b) for a, b, _ in pairs] == [(0, 1)], pairs


def test_other_samplers_and_seeds_are_never_paired():
    assert pairs_of([{"name": "hmc"}, {"name": "hmc", "overrides": {"step_size": 0.01}}]) == []
    assert pairs_of([sgld(batch_size=100) | {"seed": 1}, sgld(batch_size=256) | {"seed": 2}]) == []


def test_lh_plan_names_the_pair(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"targets": [SMALL], "samplers": [sgld(batch_size=100), sgld(batch_size=256)]}))
    result = CliRunner().invoke(app, ["plan", str(sweep), "--store", str(tmp_path / "st")], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "note: 1 of the sweep's targets and runs repeat another's computation under another ID" in result.output
    assert "batch_size 100 and 256 run alike on n_data 100" in result.output


@pytest.mark.slow
def test_the_paired_runs_are_sampled_bit_for_bit_alike(tmp_path):
    import zarr

    samplers = [sgld(batch_size=100, chains=2), sgld(batch_size=256, steps=1119, chains=2),
                sgld(batch_size=90, chains=2)]
    sweep = tmp_path / "s.yaml"
    sweep.write_text(json.dumps({"targets": [SMALL], "samplers": samplers}))
    store = tmp_path / "st"
    result = CliRunner().invoke(app, ["execute", str(sweep), "--store", str(store), "--workers", "1",
                                      "--logs", str(tmp_path / "logs"), "--results", str(tmp_path / "r.csv")],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "repeat another's computation" in result.output
    ex = expand(sweep_from_dict(json.loads(sweep.read_text())))

    def traces(run):
        g = zarr.open_group(zarr.storage.ZipStore(store / "runs" / run.run_id / "arrays.zarr.zip", mode="r"), mode="r")
        return {k: np.asarray(g["traces"][k]) for k in g["traces"].keys() if k != "walltime"}

    first, again, other = (traces(r) for r in ex.runs)
    assert set(first) >= {"llc", "loss"}
    assert all(np.array_equal(first[k], again[k]) for k in first)
    assert not np.array_equal(first["llc"], other["llc"])  # a used setting differs: so do the draws
