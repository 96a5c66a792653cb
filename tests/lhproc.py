"""Running the real `lh` CLI in child processes, as a user would, for end-to-end tests."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

TARGET = "  - {model: small, data: small, seed: 7, overrides: {training: {steps: 200, learning_rate: 0.01}}}\n"


def sgld_sweep(seeds, steps=300) -> str:
    """One tiny `small` target × SGLD runs (2 chains) with these seeds."""
    every = max(10, steps // 1000)
    return (
        "store_root: store\ntargets:\n" + TARGET + "samplers:\n"
        f"  - {{name: sgld, chains: 2, grid: {{seed: {list(seeds)}}}, "
        f"overrides: {{steps: {steps}, warmup: 100, eval_every: {every}}}}}\n"
    )


def env(**extra) -> dict:
    e = {**os.environ, "JAX_PLATFORMS": "cpu", **extra}
    e.pop("LH_STORE", None)
    return e


def lh(cwd, *args, check=True, timeout=600):
    proc = subprocess.run([sys.executable, "-m", "lambda_hat.cli", *args], cwd=cwd, env=env(),
                          capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"lh {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
    return proc


# A terminal's foreground command gets Ctrl-C. A test runner started in the background by a
# non-interactive shell (a CI script's `cmd &`) has SIGINT ignored, which its children inherit
# and Python then honours (no KeyboardInterrupt): restore the default, as a terminal would.
AS_FOREGROUND = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                 "runpy.run_module('lambda_hat.cli', run_name='__main__', alter_sys=True)")


def start(cwd, *args, **extra_env) -> subprocess.Popen:
    """`lh *args` in the background, in its own session (signals reach only it), with SIGINT
    delivered as in a terminal whatever this process inherited."""
    return subprocess.Popen([sys.executable, "-c", AS_FOREGROUND, *args], cwd=cwd, env=env(**extra_env),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)


def processes_in(cwd) -> list[str]:
    """Processes other than this one whose working directory is `cwd`, as "pid: cmdline": an
    `lh execute` started there, its interchange, worker pools and reaper all inherit it."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        if int(pid) == os.getpid():
            continue
        try:
            if os.readlink(f"/proc/{pid}/cwd") == str(cwd):
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode(errors="replace")
                found.append(f"{pid}: {cmdline}")
        except OSError:
            pass
    return found


def processes_left(cwd, within_s: float) -> list[str]:
    """`processes_in(cwd)` once none is left, or after `within_s`."""
    deadline = time.monotonic() + within_s
    while (left := processes_in(cwd)) and time.monotonic() < deadline:
        time.sleep(0.2)
    return left


def assert_store_exact(cwd: Path, sweeps: list[str]) -> None:
    """Every run of these sweeps present exactly once and complete; nothing else."""
    from lambda_hat.planner import expand
    from lambda_hat.sweep import load_sweep

    expected = set()
    for s in sweeps:
        expected |= {r.run_id for r in expand(load_sweep(cwd / s)).runs}
    plan = json.loads(lh(cwd, "plan", sweeps[-1], "--json").stdout)
    assert plan["runs_to_sample"] == [] and plan["targets_to_build"] == [], plan
    store = cwd / "store"
    runs = sorted(os.listdir(store / "runs"))
    assert set(runs) == expected and len(runs) == len(expected), runs
    for parent in (store / "targets", store / "runs"):
        assert not [p for p in os.listdir(parent) if p.startswith(".tmp-")], os.listdir(parent)
    v = lh(cwd, "verify", "--store", "store", check=False)
    assert v.returncode == 0, v.stdout
    q = lh(cwd, "query", "select count(*) as n from runs", "--store", "store", "--format", "csv")
    assert q.stdout.splitlines()[1] == str(len(expected))
