"""Tenth pass, python models: checkpoint files reached by two names, checkpoint members too big to
read, a factory's prints and exits, and a factory that is not deterministic."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from test_fifth_pass import lh

from lambda_hat import user_models

LOGISTIC = os.path.join(os.path.dirname(__file__), "..", "examples", "user_model", "logistic.py")

SWEEP = """store_root: store
targets:
  - model: {kind: python, factory: "logistic:make", kwargs: {n: 50}}
    seed: 0
%s
samplers: [{name: hmc, seed: 1, chains: 1, overrides: {draws: 20, warmup: 10}}]
"""
CHECKPOINTS = "    checkpoints: {from: \"ck/step_*.npz\"}"


@pytest.fixture
def here(tmp_path, monkeypatch):
    """logistic.py beside u.yaml (its checkpoints, ck/step_*.npz) in the current directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(LOGISTIC, tmp_path)
    (tmp_path / "ck").mkdir()
    (tmp_path / "u.yaml").write_text(SWEEP % CHECKPOINTS)
    for step in (10, 20):
        np.savez(tmp_path / "ck" / f"step_{step}.npz", W=np.full((2, 2), step / 100), b=np.zeros(2))
    return tmp_path


def test_a_link_giving_one_checkpoint_two_steps_is_refused_naming_both(here):
    """`step_2.npz -> step_20.npz`: the step is read from the name, so the file was measured as
    step 2 (listed first) and step 20 vanished from the plan; refuse rather than guess. A link
    whose name has the file's own step still counts once."""
    from lambda_hat.planner import load

    (here / "ck" / "again").mkdir()
    (here / "ck" / "again" / "step_20.npz").symlink_to(here / "ck" / "step_20.npz")
    (here / "u.yaml").write_text(SWEEP % CHECKPOINTS.replace("ck/step_*.npz", "ck/**/step_*.npz"))
    assert sorted(t.spec.step for t in load(here / "u.yaml")[1].targets) == [10, 20]
    (here / "ck" / "step_2.npz").symlink_to("step_20.npz")
    result = lh("plan", "u.yaml", "--limit", "0")
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert "\n" not in line and "u.yaml: targets[0]: checkpoints.from:" in line, line
    assert "ck/step_2.npz" in line and "ck/step_20.npz" in line, line


def _with_member(path, name, nbytes):
    """An .npz of W and b, plus `name`: `nbytes` of zeros as a float64 .npy, written compressed
    in pieces (a few MB on disk; never held in memory here)."""
    np.savez(path, W=np.zeros((2, 2)), b=np.zeros(2))
    with zipfile.ZipFile(path, "a", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        with z.open(f"{name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False,
                                                     "shape": (nbytes // 8,)})
            chunk = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                f.write(chunk)


# Run by a small python in between: a child's peak RSS starts at its parent's at exec (Linux
# keeps the old memory's high-water mark), and this test process may be large by now.
PEAK_OF_PLAN = """
import os, subprocess, sys
with open("out.txt", "w") as out, open("err.txt", "w") as err:
    proc = subprocess.Popen([sys.executable, "-m", "lambda_hat.cli", "plan", "u.yaml", "--limit", "0"],
                            stdout=out, stderr=err)
    _, status, usage = os.wait4(proc.pid, 0)
print(os.waitstatus_to_exitcode(status), usage.ru_maxrss)
"""


def _plan_rss(cwd):
    """(exit code, stderr, peak RSS in KiB) of `lh plan u.yaml` in a child process."""
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("LH_STORE", None)
    done = subprocess.run([sys.executable, "-c", PEAK_OF_PLAN], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True)
    code, rss = map(int, done.stdout.split())
    return code, (cwd / "err.txt").read_text(), rss


def test_a_checkpoints_extra_member_is_refused_before_it_is_decompressed(here):
    """A checkpoint holding, beside W and b, 512 MB of optimizer state: decompressed in full
    before its name was checked (the tester's 2 GiB took 2.3 GB and 11 s). `lh plan` itself
    peaks near 200 MB."""
    _with_member(here / "ck" / "step_30.npz", "opt_state", 512 << 20)
    assert (here / "ck" / "step_30.npz").stat().st_size < 8 << 20
    code, err, rss_kib = _plan_rss(here)
    assert code == 2 and "step_30.npz: its arrays are not the factory's params (not params opt_state)" in err, err
    assert rss_kib < 450 << 10, rss_kib


def test_a_params_member_with_more_bytes_than_its_header_says_is_refused(here):
    """W's header says (2, 2) float64, its zip entry holds 8 MB more: numpy read the 32 bytes
    and took the file; what the header does not account for is never read."""
    with zipfile.ZipFile(here / "ck" / "step_30.npz", "w") as z:
        z.writestr("b.npy", _npy(np.zeros(2)))
        z.writestr("W.npy", _npy(np.zeros((2, 2)))[:-32] + bytes(32 + (8 << 20)))  # trailing bytes
    result = lh("plan", "u.yaml", "--limit", "0")
    assert result.exit_code == 2 and "step_30.npz" in result.stderr and "W holds more bytes" in result.stderr, \
        result.output


def _npy(a) -> bytes:
    import io

    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


NOISY = '''
import sys
from logistic import make as _make, predict

print("loading the noisy model")


def make(seed, n=50):
    print("making the data")
    return _make(seed, n=n)
'''

EXITS = '''
import sys
from logistic import predict


def make(seed, n=50):
    sys.exit(0)
'''

ARGPARSE = '''
import argparse
from logistic import make, predict

parser = argparse.ArgumentParser()
parser.add_argument("--lr", type=float, default=0.1)
args = parser.parse_args()
'''


def test_a_factorys_prints_go_to_stderr_not_into_json(here):
    (here / "noisy.py").write_text(NOISY)
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "noisy:make"))
    result = lh("plan", "u.yaml", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["targets_to_build"], result.stdout
    assert "loading the noisy model" in result.stderr and "making the data" in result.stderr, result.stderr


@pytest.mark.parametrize("module, when", [(EXITS, "called"), (ARGPARSE, "imported")], ids=["sys.exit", "argparse"])
@pytest.mark.parametrize("command", [["plan", "u.yaml"], ["execute", "u.yaml", "--workers", "1"]],
                         ids=["plan", "execute"])
def test_a_factory_that_exits_is_a_bad_factory_not_lhs_exit(here, module, when, command, monkeypatch):
    monkeypatch.setattr("sys.argv", ["lh", *command])  # what the module's argparse reads, as under `lh`
    (here / "script.py").write_text(module)
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "script:make"))
    result = lh(*command)
    assert result.exit_code == 2, result.output
    line = result.stderr.strip().splitlines()[-1]
    assert "u.yaml: targets[0]: model.factory:" in line and "script:make: exited (SystemExit" in line, line
    assert f"while being {when}" in line, line
    assert not (here / "store").exists() or not any((here / "store").rglob("*.npz"))


RANDOM = '''
import numpy as np
from logistic import predict


def make(seed, n=50):
    rng = np.random.default_rng()  # unseeded: other data on every call
    x = rng.normal(size=(n, 2))
    return {"params": {"W": np.zeros((2, 2)), "b": np.zeros(2)}, "predict": predict, "loss": "cross_entropy",
            "data": {"x": x, "y": (x[:, 0] > 0).astype(np.int32)}}
'''


def test_a_random_factory_is_called_not_deterministic_not_told_to_plan_again(here):
    from lambda_hat.planner import load

    (here / "rand.py").write_text(RANDOM)
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "rand:make"))
    first, second = (load(here / "u.yaml")[1].targets[0].spec for _ in range(2))
    # what `lh plan` says of a target that is new each time (explain_new)
    assert user_models.differences(second, first) == ["data (same code, kwargs and seed: is the factory "
                                                      "deterministic?)"]
    with pytest.raises(RuntimeError, match="not deterministic") as err:
        user_models.build(first)
    assert "seed every random draw" in str(err.value)


# --- what the eleventh pass broke ---------------------------------------------------------------

RUDE = '''
import os
from logistic import make as _make, predict


def make(seed, n=50, how="chdir"):
    if how == "chdir":  # lh's relative store, results and logs moved with it
        os.makedirs("elsewhere", exist_ok=True)
        os.chdir("elsewhere")
        return _make(seed=seed, n=n)
    if how == "os_exit":
        os._exit(0)
    raise GeneratorExit()
'''


@pytest.mark.parametrize("how,said", [("chdir", None), ("os_exit", "exited (os._exit 0) while being called"),
                                      ("gen", "raised GeneratorExit while being called")])
def test_a_factory_that_moves_the_working_directory_or_ends_the_process_is_its_own_error(here, how, said):
    (here / "rude.py").write_text(RUDE)
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "rude:make").replace("{n: 50}", f"{{how: {how}}}"))
    result = lh("plan", "u.yaml", "--json")
    assert os.getcwd() == str(here)  # changed back: the store, results and logs stay where they were named
    if said is None:
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["targets_to_build"]
    else:
        assert result.exit_code == 2, result.output
        assert f"model.factory: rude:make: {said}" in result.stderr, result.stderr
    assert os._exit.__module__ in ("os", "posix", "nt")  # the real one is back


def test_a_folder_named_tilde_given_as_dot_slash_tilde_is_that_folder(here):
    (here / "~").mkdir()
    result = lh("status", "--store", "./~")
    assert result.exit_code == 0, result.output  # an empty folder: an empty store, not a refusal
    assert result.output.startswith("store ~: 0 B"), result.output


def test_two_checkpoint_files_of_the_same_params_are_named_one_computation(here):
    import shutil as sh

    sh.copy(here / "ck" / "step_10.npz", here / "ck" / "step_30.npz")
    result = lh("plan", "u.yaml", "--json")
    assert result.exit_code == 0, result.output
    pairs = json.loads(result.stdout)["same_computations"]
    assert len(pairs) == 1 and pairs[0]["why"].startswith("step 10 and 30: checkpoint files of the same params"), pairs


@pytest.mark.parametrize("kind", ["fifo", "dangling"])
def test_a_checkpoint_glob_matching_a_fifo_or_a_dangling_link_is_refused(here, kind):
    target = here / "ck" / "step_40.npz"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        os.symlink(here / "ck" / "gone.npz", target)
    result = lh("plan", "u.yaml")
    assert result.exit_code == 2, result.output
    assert "step_40.npz: is a" in result.stderr and "not a checkpoint file" in result.stderr, result.stderr


def test_a_factory_setting_lh_store_at_import_does_not_move_lh_to_another_store(here, monkeypatch):
    monkeypatch.delenv("LH_STORE", raising=False)
    (here / "sets.py").write_text("import os\nos.environ['LH_STORE'] = 'elsewhere'\nfrom logistic import make, predict\n")
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "sets:make"))
    result = lh("plan", "u.yaml")
    assert result.exit_code == 0, result.output
    assert "(store store)" in result.output and "elsewhere" not in result.output, result.output
    assert "LH_STORE" not in os.environ


def test_what_a_factory_prints_at_exit_is_not_on_stdout(here):
    (here / "late.py").write_text("import atexit\natexit.register(print, 'bye from the module')\n"
                                  "from logistic import make, predict\n")
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "late:make"))
    out = subprocess.run([sys.executable, "-c", "from lambda_hat.cli import main; main()", "plan", "u.yaml", "--json"],
                         capture_output=True, text=True, cwd=here, env={**os.environ, "JAX_PLATFORMS": "cpu"})
    assert out.returncode == 0, out.stderr
    json.loads(out.stdout)  # nothing after the JSON
    assert "bye from the module" in out.stderr


@pytest.mark.parametrize("backend", ["local", "slurm"])
def test_execute_refuses_a_run_directory_whose_path_a_shell_would_split_or_run(tmp_path, monkeypatch, backend):
    """Parsl passes the run directory unquoted to a shell (the local block script, sbatch): a space
    lost every job (local: a wait without end), `a b$(touch PWNED)` ran on this host."""
    from test_store import SWEEP as STORE_SWEEP

    odd = tmp_path / "a b$(touch PWNED)"
    odd.mkdir()
    monkeypatch.chdir(odd)
    (odd / "s.yaml").write_text(json.dumps(STORE_SWEEP))
    result = lh("execute", "s.yaml", "--backend", backend, "--store", tmp_path / "st")
    assert result.exit_code == 2, result.output
    assert "has a space or a shell character" in result.stderr, result.stderr
    assert not (odd / "PWNED").exists() and not (tmp_path / "st").exists()


def test_a_factory_that_changes_jax_configuration_is_refused_and_undone(here):
    """A worker builds several targets in one process: a module's jax.config.update at import
    carried into the next target's build, which stored other numbers under the same ID."""
    import jax

    before = jax.config.jax_threefry_partitionable
    (here / "jx.py").write_text(f"import jax\njax.config.update('jax_threefry_partitionable', {not before})\n"
                                "from logistic import make, predict\n")
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "jx:make"))
    result = lh("plan", "u.yaml")
    assert result.exit_code == 2, result.output
    assert "changed JAX's global configuration while being imported (jax_threefry_partitionable)" in result.stderr
    assert jax.config.jax_threefry_partitionable == before


def test_a_factory_setting_home_at_import_does_not_move_a_tilde_store(here, monkeypatch):
    monkeypatch.setenv("HOME", str(here / "home"))
    (here / "hm.py").write_text("import os\nos.environ['HOME'] = '/elsewhere'\nfrom logistic import make, predict\n")
    (here / "u.yaml").write_text((SWEEP % "").replace("logistic:make", "hm:make").replace("store_root: store",
                                                                                           "store_root: ~/st"))
    result = lh("plan", "u.yaml")
    assert result.exit_code == 0, result.output
    assert "/elsewhere" not in result.output and os.environ["HOME"] == str(here / "home")


def test_a_hard_link_giving_one_checkpoint_two_steps_is_refused_as_a_symbolic_one(here):
    os.link(here / "ck" / "step_10.npz", here / "ck" / "step_70.npz")
    result = lh("plan", "u.yaml")
    assert result.exit_code == 2, result.output
    assert "are one file (a link) with two step numbers" in result.stderr, result.stderr
