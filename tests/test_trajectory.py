"""Checkpoint trajectories (`checkpoints:` on a target entry): IDs that adding checkpoints
leaves alone, plans that build only the new ones, builds that resume from the largest stored
step below them, and parameters that are the same bits however the training is split into
jobs (checked across processes: each `lh execute` below trains in its own workers)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from lambda_hat.errors import SweepError
from lambda_hat.ids import hashed_spec, target_id, trajectory_id
from lambda_hat.planner import expand
from lambda_hat.store.store import Store
from lambda_hat.store.worker import WorkerStore
from lambda_hat.sweep import sweep_from_dict
from lhproc import lh, start

# Minibatches (drawn per step from fold_in(key, step)) and adam's state both carried across a
# resume: what a wrong key or a dropped optimizer state would change.
TARGET = {"model": {"in_dim": 2, "out_dim": 1, "depth": 1, "widths": [4]}, "data": {"n_data": 64, "n_test": 32},
          "training": {"batch_size": 16, "learning_rate": 0.01}, "seed": 3}
SAMPLER = {"name": "sgld", "chains": 2, "overrides": {"steps": 200, "warmup": 50, "eval_every": 10}}


def sweep(checkpoints: dict, **target) -> dict:
    return {"store_root": "store", "targets": [{**TARGET, **target, "checkpoints": checkpoints}], "samplers": [SAMPLER]}


def checkpoint_ids(checkpoints: dict) -> dict[int, str]:
    ex = expand(sweep_from_dict(sweep(checkpoints)))
    return {t.spec.step: t.target_id for t in ex.targets}


def test_adding_checkpoints_changes_no_id():
    few = checkpoint_ids({"steps": [100, 300], "until": 300})
    more = checkpoint_ids({"steps": [0, 50, 100, 200, 300], "until": 300})
    assert set(few) == {100, 300}
    assert {s: more[s] for s in few} == few
    assert len(set(more.values())) == 5
    specs = expand(sweep_from_dict(sweep({"steps": [0, 300], "until": 300}))).targets
    assert len({trajectory_id(t.spec) for t in specs}) == 1
    # the trajectory is not the plain target of the same spec (that one trains by another rule)
    plain = expand(sweep_from_dict({**sweep({}), "targets": [{**TARGET, "training": {**TARGET["training"],
                                                                                         "steps": 300}}]})).targets[0]
    assert plain.target_id not in more.values() and plain.spec.step is None
    from lambda_hat.planner import describe_target

    assert describe_target(specs[1]).endswith(", seed=3, step=300") and "step" not in describe_target(plain)


def test_checkpoint_steps_log_and_linear():
    ids = checkpoint_ids({"log": 4, "linear": 2, "until": 1000})
    assert sorted(ids) == [1, 10, 100, 500, 1000]


@pytest.mark.parametrize("target, checkpoints, field", [
    ({}, {"steps": [400], "until": 300}, "checkpoints"),
    ({}, {}, "checkpoints"),
    ({}, {"steps": [-1]}, "checkpoints.steps.0"),
    ({}, {"every": 10}, "checkpoints.every"),
    ({"training": {"grad_tol": 1e-3}}, {"steps": [10]}, "checkpoints"),
    ({"model": {"kind": "dln", "widths": [2, 2, 2]}}, {"steps": [10]}, "checkpoints"),
    ({"model": {"kind": "polynomial", "powers": [1, 2]}}, {"steps": [10]}, "checkpoints"),
])
def test_bad_checkpoints_are_one_line_naming_the_field(target, checkpoints, field):
    with pytest.raises(SweepError) as err:
        sweep_from_dict(sweep(checkpoints, **target), "s.yaml")
    msg = str(err.value)
    assert "\n" not in msg and msg.startswith(f"s.yaml: targets[0]: {field}:"), msg


def _params(store_dir, tid: str) -> dict[str, np.ndarray]:
    manifest, loaded = WorkerStore(store_dir).read_target(tid)
    return {k: v for k, v in loaded.items() if k.startswith(("params/", "optimizer/"))}, manifest


@pytest.mark.slow  # three `lh execute`s, two of them at once
def test_adding_checkpoints_trains_only_the_gap_and_every_split_gives_the_same_bits(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
    (a / "sweep.yaml").write_text(yaml.safe_dump(sweep({"steps": [100, 300], "until": 300})))
    # b's execute (the comparison below, its own store and processes) runs alongside a's first
    (b / "sweep.yaml").write_text(yaml.safe_dump(sweep({"steps": [200, 300], "until": 300})))
    b_proc = start(b, "execute", "sweep.yaml")
    lh(a, "execute", "sweep.yaml")
    b_out, _ = b_proc.communicate(timeout=600)
    assert b_proc.returncode == 0, b_out

    # Two more checkpoints: the plan builds only them, each resuming from the largest stored step below it.
    (a / "sweep.yaml").write_text(yaml.safe_dump(sweep({"steps": [50, 100, 200, 300], "until": 300})))
    planned = json.loads(lh(a, "plan", "sweep.yaml", "--json").stdout)
    ids = checkpoint_ids({"steps": [50, 100, 200, 300], "until": 300})
    assert sorted(planned["targets_to_build"]) == sorted([ids[50], ids[200]])
    assert sorted(planned["targets_cached"]) == sorted([ids[100], ids[300]])
    lh(a, "execute", "sweep.yaml")
    froms = {s: _params(a / "store", tid)[1].metrics["trained_from_step"] for s, tid in ids.items()}
    assert froms == {50: 0, 100: 0, 200: 100, 300: 100}

    # The last checkpoint alone, trained from step 0 in another process: the same bits as
    # 0 → 100 → 300 in two jobs of another execute; the step-200 checkpoint (100 → 200) too.
    for step in (200, 300):
        got_a, _ = _params(a / "store", ids[step])
        got_b, man_b = _params(b / "store", ids[step])
        assert sorted(got_a) == sorted(got_b) and any(k.startswith("optimizer/") for k in got_a)
        for k in got_a:
            assert got_a[k].tobytes() == got_b[k].tobytes(), (step, k)
    assert man_b.metrics["trained_from_step"] == 200
    rows = json.loads(lh(a, "query", "--store", "store", "select step, trajectory_id, llc_mean from runs order by step",
                         "--format", "json").stdout)
    assert [r["step"] for r in rows] == [50, 100, 200, 300]
    assert {r["trajectory_id"] for r in rows} == {trajectory_id(expand(sweep_from_dict(
        sweep({"steps": [300], "until": 300}))).targets[0].spec)}
    # the gallery draws the trajectory: one plot, λ̂ against the step
    lh(a, "promote", "--store", "store", "--outdir", "gallery", "--plots", "trajectory,compare")
    (traj,) = {r["trajectory_id"] for r in rows}
    assert (a / "gallery" / "trajectories" / traj / "llc.png").stat().st_size > 10_000
    assert f"trajectories/{traj}/llc.png" in (a / "gallery" / "index.html").read_text()
    assert Store(a / "store").layout.target_dir(ids[300]).is_dir()
    assert target_id(expand(sweep_from_dict(sweep({"steps": [300], "until": 300}))).targets[0].spec) == ids[300]


def test_the_checkpoints_of_a_trajectory_share_one_compiled_sampler():
    from lambda_hat.science import sample_run
    from lambda_hat.science.trajectory import build_checkpoint

    ex = expand(sweep_from_dict(sweep({"steps": [0, 20, 40], "until": 40})))
    hits = []
    for t in ex.targets:
        run = next(r for r in ex.runs if r.target_id == t.target_id).spec
        result = sample_run(run, t.spec, build_checkpoint(t.spec))
        hits.append(result.metrics["compile_cache_hit"])
    # the first compiles (unless an earlier test in this process did); the others reuse its program
    assert hits[1:] == [True, True], hits


JOB = """
import json, sys
from lambda_hat.execute.apps import build_target_job
spec, store, logs, earlier = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3], json.loads(sys.argv[4])
print(json.dumps(build_target_job(spec, store, f"{logs}/t.log", f"{logs}/t.err", earlier=earlier)))
"""


def build_job(tmp_path, spec, store, earlier=(), wait=True, **env):
    """The build job in a process of its own: its CompletedProcess, or with wait=False its Popen."""
    import os
    import subprocess
    import sys

    logs = tmp_path / f"logs-{len(list(tmp_path.glob('logs-*')))}"
    logs.mkdir()
    (store / "targets").mkdir(parents=True, exist_ok=True)
    e = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    args = [sys.executable, "-c", JOB, json.dumps(spec.model_dump(mode="json")), str(store), str(logs),
            json.dumps(list(earlier))]
    if not wait:
        return subprocess.Popen(args, env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(args, env=e, capture_output=True, text=True, timeout=300)


def test_a_build_killed_mid_training_resumes_to_the_same_bits(tmp_path):
    ex = expand(sweep_from_dict(sweep({"steps": [100, 400], "until": 400})))
    (t100, t400) = ex.targets
    clean, killed = tmp_path / "clean", tmp_path / "killed"
    clean_job = build_job(tmp_path, t400.spec, clean, wait=False)  # 0 → 400 in one job, alongside the rest
    assert build_job(tmp_path, t100.spec, killed).returncode == 0
    # SIGKILLed after step 300 of 100 → 400: nothing of it stored; the next try resumes from step 100
    dead = build_job(tmp_path, t400.spec, killed, [t100.target_id], LH_CRASH_AT="train:step-300")
    assert dead.returncode == -9 and "training steps 100 to 400" in (tmp_path / "logs-2" / "t.log").read_text()
    assert WorkerStore(killed).complete("target", t400.target_id) is None
    assert build_job(tmp_path, t400.spec, killed, [t100.target_id]).returncode == 0
    _, err = clean_job.communicate(timeout=300)
    assert clean_job.returncode == 0, err[-3000:]
    got, manifest = _params(killed, t400.target_id)
    want, _ = _params(clean, t400.target_id)
    assert manifest.metrics["trained_from_step"] == 100
    assert sorted(got) == sorted(want)
    assert all(got[k].tobytes() == want[k].tobytes() for k in want), [k for k in want if got[k].tobytes() != want[k].tobytes()]


# ---------------------------------------------------------------- checkpoints trained elsewhere

LINEAR = '''
import numpy as np


def loss(params, batch):
    return (batch["x"] @ params["w"] + params["b"] - batch["y"]) ** 2


def make(seed):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(300, 2))
    y = x @ np.array([1.0, -1.0]) + 0.2 * rng.normal(size=300)
    return {"params": {"w": np.zeros(2), "b": np.zeros(())}, "loss": loss, "data": {"x": x, "y": y}}
'''


def _imported(tmp_path, name="proj"):
    d = tmp_path / name
    (d / "ckpts").mkdir(parents=True)
    (d / "linear_model.py").write_text(LINEAR)
    for step, scale in ((100, 0.5), (2000, 1.0)):  # as if saved during someone's training run
        np.savez(d / "ckpts" / f"step_{step:05d}.npz", w=scale * np.array([1.0, -1.0]), b=np.array(0.0))
    doc = {"store_root": "store", "targets": [{"model": {"kind": "python", "factory": "linear_model:make"},
                                               "checkpoints": {"from": "ckpts/step_*.npz"}}],
           "samplers": [{"name": "hmc", "chains": 2, "overrides": {"draws": 200, "warmup": 100}}]}
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
    return d


def _plan_ids(d) -> dict[int, str]:
    from lambda_hat.planner import load

    _, ex = load(d / "sweep.yaml")
    return {t.spec.step: t.target_id for t in ex.targets}


def test_imported_checkpoints_are_hashed_by_content(tmp_path):
    import shutil

    d = _imported(tmp_path)
    ids = _plan_ids(d)
    assert sorted(ids) == [100, 2000]
    moved = shutil.copytree(d, tmp_path / "elsewhere")
    assert _plan_ids(moved) == ids  # moved: the same targets
    np.savez(moved / "ckpts" / "step_02000.npz", w=np.array([1.0, -0.9]), b=np.array(0.0))
    edited = _plan_ids(moved)
    assert edited[100] == ids[100] and edited[2000] != ids[2000]
    # one trajectory, however its files' contents differ
    from lambda_hat.planner import load

    assert len({trajectory_id(t.spec) for t in load(moved / "sweep.yaml")[1].targets}) == 1


@pytest.mark.parametrize("write, problem", [
    (lambda d: np.savez(d / "ckpts" / "step_00300.npz", w=np.zeros(3), b=np.array(0.0)), "other shapes w"),
    (lambda d: np.savez(d / "ckpts" / "step_00300.npz", w=np.zeros(2)), "missing b"),
    (lambda d: np.savez(d / "ckpts" / "step_final.npz", w=np.zeros(2), b=np.array(0.0)), "no step number"),
    (lambda d: np.savez(d / "ckpts" / "step_2000.npz", w=np.zeros(2), b=np.array(0.0)), "are both step 2000"),
    (lambda d: [p.unlink() for p in (d / "ckpts").iterdir()], "matches no file"),
])
def test_bad_checkpoint_files_exit_2_naming_the_field(tmp_path, write, problem):
    d = _imported(tmp_path)
    write(d)
    proc = lh(d, "plan", "sweep.yaml", check=False)
    line = proc.stderr.strip()
    assert proc.returncode == 2 and "\n" not in line, proc.stderr
    assert "sweep.yaml: targets[0]: checkpoints.from:" in line and problem in line, line


def test_checkpoint_globs_never_loop_through_linked_directories(tmp_path):
    """`ck/**/step_*.npz` over a folder holding links to itself (`a -> .`, `b -> .`): the old
    glob followed them until the kernel's link limit (lh plan ran for minutes); `**` does not
    descend into links, and a file reached through several names counts once."""
    import yaml

    d = _imported(tmp_path)
    (d / "ckpts" / "a").symlink_to(".")
    (d / "ckpts" / "b").symlink_to(".")
    (d / "ckpts" / "later").mkdir()
    np.savez(d / "ckpts" / "later" / "step_03000.npz", w=np.array([1.0, -1.0]), b=np.array(0.0))
    doc = yaml.safe_load((d / "sweep.yaml").read_text())
    for pattern in ("ckpts/**/step_*.npz", "ckpts/*/step_*.npz", str(d / "ckpts" / "**" / "step_*.npz")):
        doc["targets"][0]["checkpoints"]["from"] = pattern
        (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
        # (`*` goes one level through a link, as a shell's glob: ckpts/a/step_00100.npz is step 100 once)
        assert sorted(_plan_ids(d)) == [100, 2000, 3000], pattern
    # as glob.glob: a trailing ** is every file below, hidden names only by a pattern that says so
    np.savez(d / "ckpts" / ".step_04000.npz", w=np.zeros(2), b=np.array(0.0))
    doc["targets"][0]["checkpoints"]["from"] = "ckpts/**"
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
    assert sorted(_plan_ids(d)) == [100, 2000, 3000]
    (d / "ckpts" / ".step_04000.npz").unlink()
    # a clash names the files as the pattern reaches them, not two bare file names
    np.savez(d / "ckpts" / "later" / "step_2000.npz", w=np.zeros(2), b=np.array(0.0))
    doc["targets"][0]["checkpoints"]["from"] = "ckpts/**/step_*.npz"
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
    proc = lh(d, "plan", "sweep.yaml", check=False, timeout=120)
    assert proc.returncode == 2 and "later/step_2000.npz" in proc.stderr and "ckpts/step_02000.npz" in proc.stderr, proc.stderr


def test_imported_checkpoints_run_at_their_files_params(tmp_path):
    d = _imported(tmp_path)
    proc = lh(d, "execute", "sweep.yaml")
    # the driver imported JAX to check the factory; Parsl's fork-then-exec must not warn of it
    assert "os.fork() was called" not in proc.stderr + proc.stdout
    ids = _plan_ids(d)
    got, manifest = _params(d / "store", ids[2000])
    assert got["params/w"].tobytes() == np.array([1.0, -1.0]).tobytes()
    assert manifest.metrics["train_steps"] == 0 and manifest.metrics["trajectory_id"].startswith("traj_")
    rows = json.loads(lh(d, "query", "--store", "store", "select step, llc_mean, target_w_star_status from runs "
                         "order by step", "--format", "json").stdout)
    assert [r["step"] for r in rows] == [100, 2000]
    assert all(r["llc_mean"] is not None for r in rows)


def test_checkpoints_count_towards_max_runs_before_anything_is_built():
    doc = sweep({"steps": [1]})
    doc["targets"][0]["grid"] = {"checkpoints": [{"steps": [1]}, {"linear": 40, "until": 400}]}
    with pytest.raises(SweepError, match="max_runs"):
        sweep_from_dict(doc, "s.yaml", max_runs=30)


def test_imported_checkpoints_are_not_chained_and_a_bad_file_is_one_line(tmp_path):
    from lambda_hat.planner import load

    d = _imported(tmp_path)
    assert all(t.earlier == () for t in load(d / "sweep.yaml")[1].targets)  # each file is read, none trained
    (d / "ckpts" / "step_04000.npz").write_bytes(b"PK\x03\x04 truncated")
    proc = lh(d, "plan", "sweep.yaml", check=False)
    assert proc.returncode == 2 and "\n" not in proc.stderr.strip() and "not a readable .npz file" in proc.stderr


def test_adamw_weight_decay_is_a_new_id_and_shrinks_the_weights():
    from lambda_hat.science.trajectory import build_checkpoint

    def spec(**training):
        t = {**TARGET, "training": {"learning_rate": 0.01, "optimizer": "adamw", **training}}
        return expand(sweep_from_dict({**sweep({"steps": [300], "until": 300}), "targets": [{**t, "checkpoints":
                                                                                           {"steps": [300]}}]})).targets[0]
    default, strong = spec(), spec(weight_decay=1.0)
    assert default.target_id != strong.target_id
    assert "weight_decay" not in json.dumps(hashed_spec(default.spec))  # unset: not hashed, old IDs kept
    norms = [sum(float(np.sum(v ** 2)) for v in build_checkpoint(t.spec).params.values()) for t in (default, strong)]
    assert norms[1] < 0.8 * norms[0], norms  # 300 steps of lr·wd = 0.01 decay shrink the weights
    with pytest.raises(SweepError, match=r"^s.yaml: targets\[0\]: training: .*weight_decay applies to optimizer adamw"):
        sweep_from_dict({**sweep({"steps": [1]}), "targets": [{**TARGET, "training": {"weight_decay": 0.1}}]}, "s.yaml")


def test_a_factorys_test_data_gives_each_checkpoint_a_test_loss(tmp_path):
    from lambda_hat.planner import load
    from lambda_hat.science import build_target
    from lambda_hat.science.trajectory import build_checkpoint

    d = _imported(tmp_path)
    plain = load(d / "sweep.yaml")[1].targets[0].spec
    code = LINEAR.replace('"data": {"x": x, "y": y}}', '"data": {"x": x[:200], "y": y[:200]}, '
                                                        '"test_data": {"x": x[200:], "y": 2 * y[200:]}}')
    (d / "linear_model.py").write_text(code)
    doc = yaml.safe_load((d / "sweep.yaml").read_text())
    doc["targets"][0]["checkpoints"] = {"steps": [0, 50], "until": 50}
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
    t0, t50 = (t.spec for t in load(d / "sweep.yaml")[1].targets)
    assert t0.model.data_digest != plain.model.data_digest  # the test data is part of what is hashed
    arrays = build_checkpoint(t50)
    m = arrays.metrics
    assert m["n_test"] == 100 and m["n_data"] == 200
    # the test targets are doubled: their loss is far above the training loss, never part of L_n
    assert m["test_loss"] > 2 * m["L0"] > 0
    doc["targets"][0].pop("checkpoints")
    (d / "sweep.yaml").write_text(yaml.safe_dump(doc))
    assert build_target(load(d / "sweep.yaml")[1].targets[0].spec).metrics["test_loss"] > 0


def test_the_trajectory_plot_keeps_near_points_on_scale_and_puts_far_ones_on_the_edge():
    # The grokking example's shape: λ̂ peaks at a checkpoint not yet at a minimum (129.5, above the
    # largest at a minimum, 101) and must be drawn where it is; a far-off one (−2000, as a DLN's
    # first steps give) sits on the edge, and the title counts it.
    from types import SimpleNamespace

    from lambda_hat.promote import trajectory_figure

    def point(step, llc, w_star):
        t = SimpleNamespace(id=f"tgt_{step}", spec={"step": step},
                            metrics={"w_star_status": w_star, "L0": 1.0 / step, "test_loss": 1.0})
        return {"sampler": "sgld", "llc_mean": llc, "llc_sem": 0.3, "status": "ok"}, t

    points = [point(10, -2000.0, "not_stationary"), point(300, 129.5, "not_stationary"),
              point(1000, 101.0, "ok"), point(7000, 28.0, "ok"), point(20000, 2.2, "ok")]
    fig = trajectory_figure("traj_x", points)
    lo, hi = fig.axes[0].get_ylim()
    assert lo < 2.2 and 129.5 < hi < 200 and lo > -200
    assert "1 λ̂ off the scale" in fig.axes[0].get_title()


def test_the_grokking_example_keeps_its_ids():
    # examples/byo/grokking.yaml, pinned when it was measured (docs/trajectories.md): its stored
    # checkpoints and runs must stay where a user's store has them.
    from lambda_hat.sweep import load_sweep

    p = expand(load_sweep(Path(__file__).resolve().parents[1] / "examples" / "byo" / "grokking.yaml"))
    assert [t.spec.step for t in p.targets] == [100, 300, 1000, 2000, 4000, 7000, 10000, 12000, 14000, 20000]
    assert [t.target_id for t in p.targets] == [
        "tgt_b35487b39c3e", "tgt_1032a64d0d93", "tgt_e961cbd6ec87", "tgt_5e01df66bba9", "tgt_52f69b23310e",
        "tgt_5627c24c89e9", "tgt_4572c11e6c30", "tgt_9ca48d0fb4f7", "tgt_df161d108278", "tgt_fd80ef7463f9"]
    assert [r.run_id for r in p.runs] == [
        "run_a2423ab3c3c3", "run_79a0d34393fc", "run_6e45b316045c", "run_4f1090867a8e", "run_3f189e1ff3f7",
        "run_d33371ebfc53", "run_5c10171e0213", "run_cc0960de04b0", "run_5b543069f716", "run_8eb71f108914"]
