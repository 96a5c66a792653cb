"""Start-up is paid once: a worker's compiles land in the store's persistent compilation cache and
a fresh process reuses them (compiles nothing new), a worker process keeps JAX and its compiled
programs across jobs, and the driver records when each stage ended (issue 13)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lambda_hat.ids import run_id, target_id
from lambda_hat.specs import HMCSpec, RunSpec, TargetSpec

MODEL = {"in_dim": 3, "depth": 1, "widths": [4]}
DATA = {"n_data": 200, "n_test": 50}
TRAINING = {"steps": 300, "learning_rate": 0.01}
HMC = HMCSpec(chains=2, draws=40, warmup=20, num_integration_steps=4)

JOBS = """
import json, sys
from lambda_hat.execute.apps import build_target_job, run_sampler_job
store, logs, jobs = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
out = []
for i, (kind, spec) in enumerate(jobs):
    job = build_target_job if kind == "target" else run_sampler_job
    out.append(job(spec, store, f"{logs}/{i}.log", f"{logs}/{i}.err"))
print(json.dumps(out))
"""


def target(seed: int) -> TargetSpec:
    return TargetSpec.model_validate({"model": MODEL, "data": DATA, "training": TRAINING, "seed": seed})


def jobs_in_one_process(tmp: Path, store: Path, jobs: list) -> list[dict]:
    """Run worker jobs, in order, in one fresh Python process (as a Parsl worker would)."""
    logs = tmp / f"logs-{len(list(tmp.glob('logs-*')))}"
    logs.mkdir()
    payload = json.dumps([(kind, spec.model_dump(mode="json")) for kind, spec in jobs])
    proc = subprocess.run([sys.executable, "-c", JOBS, str(store), str(logs), payload],
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cache_entries(store: Path) -> set[str]:
    # JAX keeps one `<name>-<key>-cache` file per compiled program
    return {p.name for p in (store / ".jax_cache").iterdir() if p.name.endswith("-cache")}


def test_second_process_compiles_nothing_new_and_a_worker_keeps_its_programs(tmp_path):
    """A target build and a run in one process fill <store>/.jax_cache; a fresh process building
    another target of the same shapes and sampling it, in a copy of the store at another path,
    reads every program from that cache, and
    its next run of the same sampler and shapes reuses the programs it holds (no compile at all)."""
    store = tmp_path / "store"
    (store / "targets").mkdir(parents=True)
    t1, t2 = target(1), target(2)
    r1 = RunSpec(target_id=target_id(t1), sampler=HMC, seed=1)
    r2 = RunSpec(target_id=target_id(t2), sampler=HMC, seed=2)
    r3 = RunSpec(target_id=target_id(t1), sampler=HMC, seed=3)
    first = jobs_in_one_process(tmp_path, store, [("target", t1), ("run", r1)])
    after_first = cache_entries(store)
    assert after_first, "the worker wrote nothing to the store's compilation cache"
    # The second process works on a copy of the store at another path (a store moved or mounted
    # elsewhere): the cache's keys must not depend on where it lives.
    moved = tmp_path / "elsewhere" / "store"
    shutil.copytree(store, moved)
    second = jobs_in_one_process(tmp_path, moved, [("target", t2), ("run", r2), ("run", r3)])
    assert cache_entries(moved) == after_first, "the second process compiled programs the first had cached"
    assert [m["id"] for m in first + second] == [target_id(t1), run_id(r1), target_id(t2), run_id(r2), run_id(r3)]
    # r2 ran in a fresh process, so its programs came from the disk cache, not from memory
    assert second[1]["metrics"]["compile_cache_hit"] == 0
    # r3: same process, same sampler and shapes: the compiled programs were kept
    assert second[2]["metrics"]["compile_cache_hit"] == 1
    assert second[2]["metrics"]["compile_sec"] < second[1]["metrics"]["compile_sec"]
    timings = [m["timings"] for m in second]
    assert [t["worker_job_index"] for t in timings] == [0, 1, 2]
    assert len({t["worker_pid"] for t in timings}) == 1
    assert timings[0]["import_sec"] > 0 and timings[1]["import_sec"] < timings[0]["import_sec"]
    for earlier, later in zip(timings, timings[1:]):
        assert earlier["job_started_at"] <= earlier["write_started_at"] <= later["job_started_at"]


@pytest.mark.slow
def test_execute_records_its_stages(tmp_path):
    """`lh execute` on the local backend writes the end of each stage next to Parsl's log, in
    order, with every job's completion between the workers' start and the end of the jobs."""
    (tmp_path / "s.yaml").write_text(
        "store_root: store\n"
        f"targets: [{{model: {json.dumps(MODEL)}, data: {json.dumps(DATA)}, training: {json.dumps(TRAINING)}}}]\n"
        "samplers: [{name: hmc, chains: 2, overrides: {draws: 40, warmup: 20, num_integration_steps: 4}}]\n")
    proc = subprocess.run([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml", "--workers", "1"], cwd=tmp_path,
                          env={**os.environ, "JAX_PLATFORMS": "cpu"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    (path,) = tmp_path.glob("parsl_runinfo/*/lh-stages.json")
    st = json.loads(path.read_text())
    order = ["run_start", "parsl_start_begin", "parsl_started", "submitted", "jobs_done", "parsl_stopped", "recorded"]
    assert [st[k] for k in order] == sorted(st[k] for k in order)
    assert len(st["job_done_at"]) == 2
    manifests = [json.loads(p.read_text()) for p in tmp_path.glob("store/*/*/manifest.json")]
    assert len(manifests) == 2
    for m in manifests:
        assert st["parsl_started"] <= m["timings"]["job_started_at"] <= st["job_done_at"][m["id"]] <= st["jobs_done"]
    assert st["record_sec"] >= 0 and st["read_manifest_sec"] > 0


@pytest.mark.parametrize("user_env, expected", [
    ({}, {"XLA_PYTHON_CLIENT_PREALLOCATE": "false"}),  # workers share a GPU: allocate as they go
    ({"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}, {"XLA_PYTHON_CLIENT_MEM_FRACTION": "0.9"}),  # the user's choice stands
    ({"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}, {"XLA_PYTHON_CLIENT_PREALLOCATE": "true"}),
])
def test_workers_do_not_preallocate_the_gpu_unless_told(user_env, expected):
    """JAX lets each process take 75 % of a GPU at first use, so a node's other workers run short;
    a worker's job (here in a fresh process, before any JAX import) turns that off unless the
    user set one of JAX's GPU memory variables."""
    from lambda_hat.execute.apps import GPU_MEMORY_ENV

    code = ("import json, os; from lambda_hat.execute import apps; apps._import_science(); "
            "print(json.dumps({k: os.environ.get(k) for k in apps.GPU_MEMORY_ENV}))")
    env = {k: v for k, v in os.environ.items() if k not in GPU_MEMORY_ENV}
    proc = subprocess.run([sys.executable, "-c", code], env={**env, **user_env, "JAX_PLATFORMS": "cpu"},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = {k: v for k, v in json.loads(proc.stdout.strip().splitlines()[-1]).items() if v is not None}
    assert got == expected
