"""A driver's wait on another's claim is bounded: past LH_CLAIM_WAIT_S it says who holds the
work, leaves it to its holder, finishes everything else and exits 1. Real CLI, real Parsl, a
lease planted as a driver on another host with a clock a day ahead would leave it."""

import json
import os
import shutil
import subprocess
import sys
import time

import pytest

from lambda_hat.store.claims import Claims, Owner
from lhproc import env, lh

TWO_TARGETS = """store_root: store
targets:
  - {model: small, data: small, seed: 7, overrides: {training: {steps: 200, learning_rate: 0.01}}}
  - {model: small, data: small, seed: 8, overrides: {training: {steps: 200, learning_rate: 0.01}}}
samplers:
  - {name: sgld, chains: 2, grid: {seed: [1]}, overrides: {steps: 300, warmup: 100, eval_every: 10}}
"""


@pytest.mark.slow  # one `lh execute` (~20-30 s on 2 busy cores)
def test_a_wait_on_a_foreign_claim_ends_at_its_bound_naming_the_holder(tmp_path):
    (tmp_path / "s.yaml").write_text(TWO_TARGETS)
    plan = json.loads(lh(tmp_path, "plan", "s.yaml", "--json").stdout)
    held, free = plan["targets_to_build"]
    # Another host's driver holds one target, its heartbeat stamped a day ahead (clock skew).
    other = Claims(tmp_path / "store" / ".claims", Owner("otherhost", 4242, "remote", started=99))
    assert other.acquire(held) is None
    lease = tmp_path / "store" / ".claims" / f"{held}.lease"
    ahead = time.time() + 86400
    os.utime(lease, (ahead, ahead))
    before = lease.read_text()
    bound = 4
    proc = subprocess.Popen([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml", "--workers", "1"],
                            cwd=tmp_path, env=env(LH_CLAIM_WAIT_S=str(bound), PYTHONUNBUFFERED="1"),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []  # (seconds since start, line)
    t0 = time.monotonic()
    for line in proc.stdout:
        lines.append((time.monotonic() - t0, line))
    proc.wait(timeout=300)
    out = "".join(line for _, line in lines)

    def when(text: str) -> float:
        return next(t for t, line in lines if text in line)

    assert proc.returncode == 1, (proc.returncode, out)
    assert "Traceback" not in out
    assert f"1 job is in progress in another lh execute (otherhost pid 4242, claimed at 20" in out, out
    assert "stamped 86" in out and "s in the future (clock skew)): waiting for them, at most 4s" in out, out
    assert (f"not waited for: {held} is held by another lh execute (otherhost pid 4242, claimed at" in out
            and f"not waited for after {bound}s" in out), out
    assert "2 jobs not done" in out, out  # the held target and the run waiting on it
    # The wait ended at its bound (polled every 2 s, after Parsl has started), not when the work did.
    waited = when("not waited for") - when("waiting for them")
    assert bound <= waited < bound + 10, (waited, out)
    # Nothing else is lost: the free target and its run are done, the held lease is untouched.
    assert "2 jobs completed, 0 failed" in out, out
    assert (tmp_path / "store" / "targets" / free / "manifest.json").is_file()
    assert not (tmp_path / "store" / "targets" / held).exists()
    assert lease.read_text() == before
    again = json.loads(lh(tmp_path, "plan", "s.yaml", "--json").stdout)
    assert again["targets_to_build"] == [held] and len(again["runs_to_sample"]) == 1, again
    assert [c.name for c in (tmp_path / "store" / ".claims").iterdir() if c.suffix == ".lease"] == [lease.name]
    print(f"waited {waited:.1f}s with a {bound}s bound; the execute took {lines[-1][0]:.1f}s")


@pytest.mark.parametrize("bound", ["soon", "-5", "0", "nan"])
def test_a_bad_wait_bound_is_bad_input_before_anything_is_written(tmp_path, bound):
    (tmp_path / "s.yaml").write_text(TWO_TARGETS)
    proc = subprocess.run([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml"], cwd=tmp_path,
                          env=env(LH_CLAIM_WAIT_S=bound), capture_output=True, text=True, timeout=120)
    said = (proc.stdout + proc.stderr).strip()
    assert proc.returncode == 2 and said.count("\n") == 0, said
    assert f"LH_CLAIM_WAIT_S={bound!r}: must be a number of seconds above 0" in said, said
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


ONE_TARGET = TWO_TARGETS.replace("  - {model: small, data: small, seed: 8, overrides: {training: {steps: 200, learning_rate: 0.01}}}\n", "")
HOLD = ("import sys, time\n"
        "from pathlib import Path\n"
        "from lambda_hat.store.claims import Claims\n"
        "assert Claims(Path(sys.argv[1])).acquire(sys.argv[2]) is None\n"
        "print('held', flush=True)\n"
        "time.sleep(600)\n")


@pytest.mark.slow  # two `lh execute` of one small target and one run (~40 s on 2 busy cores)
def test_a_waiting_driver_sees_work_finished_under_a_live_holders_lease(tmp_path):
    """Second adversarial pass, D6: driver A stopped (SIGSTOP) while its worker finished the
    job; A never released its claim, and driver B waited on the live lease until its bound
    although the artifact was there. Here the holder is a live process on this host that keeps
    the claim, and the artifact appears in the store as its worker would write it (renamed in
    whole): B must take it as done there, sample the run waiting on it, and exit 0 well before
    its bound."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for d in ("a", "b"):
        (tmp_path / d / "s.yaml").write_text(ONE_TARGET)
    [target] = json.loads(lh(tmp_path / "b", "plan", "s.yaml", "--json").stdout)["targets_to_build"]
    lh(tmp_path / "a", "execute", "s.yaml", "--workers", "1")  # what the holder's worker makes
    claims_dir = tmp_path / "b" / "store" / ".claims"
    claims_dir.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(claims_dir), target], stdout=subprocess.PIPE,
                              text=True, env=env())
    try:
        assert holder.stdout.readline().strip() == "held"
        bound = 240
        proc = subprocess.Popen([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml", "--workers", "1"],
                                cwd=tmp_path / "b", env=env(LH_CLAIM_WAIT_S=str(bound), PYTHONUNBUFFERED="1"),
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        lines = []
        t0 = time.monotonic()
        for line in proc.stdout:
            lines.append(line)
            if "waiting for them" in line:
                staging = tmp_path / "staging"
                shutil.copytree(tmp_path / "a" / "store" / "targets" / target, staging)
                os.rename(staging, tmp_path / "b" / "store" / "targets" / target)
        proc.wait(timeout=300)
        took = time.monotonic() - t0
        out = "".join(lines)
        assert holder.poll() is None  # the holder lived, and kept its claim, throughout
        assert (claims_dir / f"{target}.lease").is_file()
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert proc.returncode == 0, out
    assert "Traceback" not in out and "not waited for" not in out, out
    assert took < bound / 2, (took, out)
    runs = list((tmp_path / "b" / "store" / "runs").glob("run_*/manifest.json"))
    assert len(runs) == 1, out
    again = json.loads(lh(tmp_path / "b", "plan", "s.yaml", "--json").stdout)
    assert again["targets_to_build"] == [] and again["runs_to_sample"] == [], again
