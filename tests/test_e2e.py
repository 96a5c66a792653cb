"""End to end through the real CLI, real Parsl (HighThroughputExecutor, local), real JAX."""

import os
import signal
import subprocess
import sys
import time

import pytest
from lhproc import processes_left

TINY = """\
store_root: store
targets:
  - {model: small, data: small, seed: 7, overrides: {training: {steps: 300, learning_rate: 0.01}}}
samplers:
  - {name: sgld, seed: 1, chains: 2, overrides: {steps: 400, warmup: 100, eval_every: 10}}
  - {name: hmc, seed: 1, chains: 2, overrides: {draws: 50, warmup: 50, num_integration_steps: 5}}
"""

DIVERGES = """\
store_root: store
targets:
  - {model: small, data: small, seed: 7, overrides: {training: {optimizer: sgd, learning_rate: 1.0e+6, steps: 50}}}
samplers:
  - {name: hmc, seed: 1, chains: 2, overrides: {draws: 20, warmup: 10}}
"""


def lh(*args, cwd, timeout=600, check=True):
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("LH_STORE", None)
    proc = subprocess.run(
        [sys.executable, "-m", "lambda_hat.cli", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"lh {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


def test_execute_twice_then_query(tmp_path):
    (tmp_path / "tiny.yaml").write_text(TINY)
    first = lh("execute", "tiny.yaml", "--workers", "2", "--promote", cwd=tmp_path)
    out = first.stdout
    assert "=== Stage C: Promoting results ===" in out
    html = (tmp_path / "gallery" / "index.html").read_text()
    assert html.count("<img") >= 3  # each run's plots and the target's comparison
    assert "=== Stage A: Building Targets ===" in out and "=== Stage B: Running Samplers ===" in out
    assert "[3/3] completed" in out and "3 jobs completed, 0 failed" in out
    store = tmp_path / "store"
    assert len(list((store / "targets").glob("tgt_*/manifest.json"))) == 1
    assert len(list((store / "runs").glob("run_*/manifest.json"))) == 2
    logs = sorted(p.relative_to(tmp_path).as_posix() for p in (tmp_path / "logs").rglob("*.log"))
    assert len(logs) == 3 and logs[0].startswith("logs/build_target/tgt_")
    assert all(p.startswith("logs/run_sampler/tgt_") for p in logs[1:])

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "results" / "tiny.parquet").to_pylist()
    assert sorted(r["sampler"] for r in table) == ["hmc", "sgld"]
    for row in table:
        # A ~45-parameter network: the LLC is positive and at most d/2. Budgets this small leave
        # far fewer than 400 effective draws: the run is flagged 'unconverged', its numbers kept.
        assert row["status"] == "unconverged" and 0 < row["llc_mean"] <= row["n_params"] / 2 + 5, row

    # A clean exit does not wait for the worker pool to go; the reaper (its own session) sees it out.
    left = processes_left(tmp_path, within_s=15)
    assert not left, left

    runinfo_before = sorted(os.listdir(tmp_path / "parsl_runinfo"))
    second = lh("execute", "tiny.yaml", cwd=tmp_path)
    assert "nothing to do: 1 target and 2 runs already in the store" in second.stdout
    assert sorted(os.listdir(tmp_path / "parsl_runinfo")) == runinfo_before  # Parsl never started

    plan = lh("plan", "tiny.yaml", "--json", cwd=tmp_path).stdout
    assert '"targets_to_build": []' in plan and '"runs_to_sample": []' in plan

    q = lh("query", "select sampler, chains, draws from runs order by sampler", "--store", "store", "--format", "csv", cwd=tmp_path)
    assert q.stdout.splitlines() == ["sampler,chains,draws", "hmc,2,50", "sgld,2,30"]
    # Every target records how good a minimum its w* is, and says whether it passed.
    q = lh("query", "select w_star_status, grad_norm > 0 as g, hess_method, descent_gap >= 0 as d from targets",
           "--store", "store", "--format", "csv", cwd=tmp_path)
    header, row = q.stdout.splitlines()
    assert header == "w_star_status,g,hess_method,d"
    assert row.split(",")[0] in ("ok", "not_stationary", "not_minimum") and row.split(",")[1:] == ["true", "dense", "true"]

    # The index is a cache of the manifests: delete it, the next execute restores it.
    (store / "index.duckdb").unlink()
    lh("execute", "tiny.yaml", cwd=tmp_path)
    q = lh("query", "select count(*) as n from runs", "--store", "store", "--format", "csv", cwd=tmp_path)
    assert q.stdout.splitlines() == ["n", "2"]


def test_failed_build_fails_its_runs_and_exits_1(tmp_path):
    (tmp_path / "bad.yaml").write_text(DIVERGES)
    proc = lh("execute", "bad.yaml", "--workers", "1", cwd=tmp_path, check=False)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "2 failed" in proc.stdout and "its target failed to build" in proc.stdout
    err_logs = list((tmp_path / "logs" / "build_target").glob("*.err"))
    assert len(err_logs) == 1 and "training diverged" in err_logs[0].read_text()
    assert str(err_logs[0].relative_to(tmp_path)) in proc.stdout.replace("\n", "")
    assert not list((tmp_path / "store" / "targets").glob("tgt_*"))  # nothing half-written


@pytest.mark.slow
def test_ctrl_c_then_rerun_does_only_what_is_missing(tmp_path):
    sweep = TINY.replace("seed: 7,", "grid: {seed: [7, 8, 9]},")
    (tmp_path / "s.yaml").write_text(sweep)
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml", "--workers", "1"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
        # A background runner (CI, `cmd &`) may hand us SIGINT ignored; a terminal would not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    runs_dir = tmp_path / "store" / "runs"
    targets_dir = tmp_path / "store" / "targets"
    deadline = time.time() + 300
    # Interrupt once the first target is complete: with one worker, two builds and six
    # runs are still to come, so the interrupt lands mid-sweep (often mid-job).
    while time.time() < deadline and not list(targets_dir.glob("tgt_*/manifest.json")):
        time.sleep(0.1)
    assert list(targets_dir.glob("tgt_*/manifest.json")), "no target completed in time"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole foreground group
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0, out

    done_runs = {p.parent.name for p in runs_dir.glob("run_*/manifest.json")}
    # Every directory that looks like an artifact is complete; leftovers are only .tmp- siblings.
    for parent in (tmp_path / "store" / "targets", runs_dir):
        for d in parent.iterdir():
            assert d.name.startswith(".tmp-") or (d / "manifest.json").is_file(), d

    plan = lh("plan", "s.yaml", "--json", cwd=tmp_path).stdout
    import json

    p = json.loads(plan)
    assert set(p["runs_cached"]) == done_runs and len(p["runs_to_sample"]) == 6 - len(done_runs) > 0
    second = lh("execute", "s.yaml", "--workers", "2", cwd=tmp_path)
    from lambda_hat.text import plural

    # the counts as the driver words them ("1 target to build": a Ctrl-C between the builds leaves one)
    wanted = f"{plural(len(p['targets_to_build']), 'target')} to build, {plural(len(p['runs_to_sample']), 'run')} to sample"
    assert wanted in second.stdout, (wanted, second.stdout)
    assert len(list(runs_dir.glob("run_*/manifest.json"))) == 6
    assert not [d for d in runs_dir.iterdir() if d.name.startswith(".tmp-")]
