"""Issue 28, what a seventh adversarial pass broke outside the store's own folders (those:
tests/test_eighth_pass_store.py): `--results` replacing the cluster profile or Parsl
configuration it was given; LH_HEARTBEAT_* values that crash (`²`), hang (10^20 s) or lose every
worker (threshold below the period); a progress file holding Infinity crashing the driver;
`lh promote` drawing a target whose arrays fail their checksums without a word; control
characters of a sweep's file name reaching the terminal and the results file's name; a SLURM
walltime of 99:99:99 or zero accepted. Each test fails on the code before its fix."""

import os
import shutil

import pytest

from test_fifth_pass import lh, store  # noqa: F401  (the fixture: a filled, reconciled store and s.yaml)


@pytest.mark.parametrize("flag", ["--profile", "--parsl-config"])
def test_results_is_never_the_profile_or_parsl_configuration_read(store, tmp_path, flag):
    given = tmp_path / "given.csv"
    text = ('[slurm]\npartition = "x"\n' if flag == "--profile"
            else "from parsl.config import Config\nconfig = Config()\n")
    given.write_text(text)
    backend = ["--backend", "slurm"] if flag == "--profile" else []
    result = lh("execute", tmp_path / "s.yaml", "--store", store, *backend, flag, given, "--results", given,
                "--logs", tmp_path / "logs")
    assert result.exit_code == 2, result.output
    what = "the cluster profile" if flag == "--profile" else "the Parsl configuration"
    assert f"--results {given}: is {what}, which the command reads" in result.stderr, result.stderr
    assert given.read_text() == text


@pytest.mark.parametrize("env,message", [
    ({"LH_HEARTBEAT_PERIOD_S": "²"}, "LH_HEARTBEAT_PERIOD_S='²': must be a whole number of seconds from 1 to 86400"),
    ({"LH_HEARTBEAT_PERIOD_S": "99999999999999999999"}, "must be a whole number of seconds from 1 to 86400"),
    ({"LH_HEARTBEAT_THRESHOLD_S": "99999999999999999999"}, "must be a whole number of seconds from 1 to 86400"),
    ({"LH_HEARTBEAT_PERIOD_S": "60", "LH_HEARTBEAT_THRESHOLD_S": "1"},
     "LH_HEARTBEAT_THRESHOLD_S=1: must be above LH_HEARTBEAT_PERIOD_S (60 s)"),
])
def test_heartbeat_settings_that_crash_hang_or_lose_every_worker_are_bad_input(monkeypatch, env, message):
    from lambda_hat.errors import BadInput
    from lambda_hat.execute.parsl_config import heartbeat

    for name in ("LH_HEARTBEAT_PERIOD_S", "LH_HEARTBEAT_THRESHOLD_S"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(BadInput) as err:
        heartbeat()
    assert message in str(err.value)
    monkeypatch.setenv("LH_HEARTBEAT_PERIOD_S", "2")
    monkeypatch.setenv("LH_HEARTBEAT_THRESHOLD_S", "10")
    assert heartbeat() == (2, 10)


@pytest.mark.parametrize("body", ['{"draws_done": Infinity, "draws": 100}', '{"draws_done": 1e400, "draws": 100}',
                                  '{"draws_done": -3, "draws": 100}', '{"draws_done": 7, "draws": 5}',
                                  '{"draws_done": true, "draws": 5}', '{"draws_done": 2.5, "draws": 5}'])
def test_a_progress_file_no_worker_wrote_is_ignored(tmp_path, body):
    from lambda_hat.store.worker import read_progress

    (tmp_path / "progress.json").write_text(body)
    assert read_progress(tmp_path) is None
    (tmp_path / "progress.json").write_text('{"draws_done": 3, "draws": 5}')
    assert read_progress(tmp_path) == (3, 5)


def test_promote_names_a_target_whose_arrays_fail_their_checksum(store, tmp_path):
    target = sorted((store / "targets").iterdir())[0]
    zip_path = target / "arrays.zarr.zip"
    st = os.stat(zip_path)
    data = bytearray(zip_path.read_bytes())
    i = data.index(b"X")  # a byte inside the archive (a member's name): the file's checksum changes
    data[i] ^= 0x20
    zip_path.write_bytes(bytes(data))
    os.utime(zip_path, ns=(st.st_atime_ns, st.st_mtime_ns))
    result = lh("promote", tmp_path / "s.yaml", "--store", store, "--outdir", tmp_path / "gal")
    assert result.exit_code == 1, result.output
    assert target.name in result.output and "damaged" in result.output, result.output


def test_control_characters_of_a_sweep_file_name_never_reach_the_terminal_or_a_file_name(store, tmp_path,
                                                                                          monkeypatch):
    monkeypatch.chdir(tmp_path)
    weird = tmp_path / "we\x1b[2Jird\n.yaml"
    shutil.copy(tmp_path / "s.yaml", weird)
    plan = lh("plan", weird, "--store", store)
    assert plan.exit_code == 0, plan.output
    assert "\x1b" not in plan.output and "we\\x1b[2Jird\\n.yaml" in plan.output
    export = lh("export", weird, "--store", store)
    assert export.exit_code == 2, export.output
    assert "\x1b" not in export.stderr and "give the sweep a name:" in export.stderr, export.stderr
    assert not (tmp_path / "results").exists()
    show = lh("show", "run_\x1b[31m", "--store", store)
    assert show.exit_code == 2 and "\x1b" not in show.stderr and "run_\\x1b[31m" in show.stderr, show.stderr


@pytest.mark.parametrize("walltime,ok", [("99:99:99", False), ("01:60:00", False), ("0:00:00", False),
                                         ("00:00", False), ("0-00:00:00", False), ("01:00:00", True),
                                         ("30:00", True), ("1-00:30:00", True)])
def test_a_walltime_sbatch_would_refuse_is_bad_input_before_any_work(tmp_path, walltime, ok):
    from lambda_hat.errors import BadInput
    from lambda_hat.execute.parsl_config import resolve_slurm_settings

    if ok:
        assert resolve_slurm_settings(None, {"walltime": walltime}, cwd=tmp_path).walltime == walltime
    else:
        with pytest.raises(BadInput, match="--walltime: walltime: must"):
            resolve_slurm_settings(None, {"walltime": walltime}, cwd=tmp_path)


# --- what the eighth pass broke, beside the fixes above -----------------------------------------

USER_SWEEP = """
name: cal
targets:
  - model: {kind: python, factory: "logistic:make", kwargs: {n: 50}}
    training: {steps: 50}
samplers:
  - {name: hmc, chains: 2, overrides: {draws: 20, warmup: 20, num_integration_steps: 3, target_acceptance: auto}}
"""


@pytest.fixture
def user_model(tmp_path, monkeypatch):
    """A sweep of a python model beside its module, in the current directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(os.path.join(os.path.dirname(__file__), "..", "examples", "user_model", "logistic.py"), tmp_path)
    (tmp_path / "cal.yaml").write_text(USER_SWEEP)
    (tmp_path / "plain.yaml").write_text(USER_SWEEP.replace("target_acceptance: auto", "target_acceptance: 0.9"))
    return tmp_path


@pytest.mark.parametrize("command", [
    ["calibrate", "cal.yaml", "-o", "logistic.py", "--workers", "1", "--logs", "logs"],
    ["query", "select 1", "--sweep", "plain.yaml", "--format", "csv", "-o", "logistic.py"],
])
def test_an_output_is_never_the_models_code_the_sweep_reads(user_model, command):
    module = (user_model / "logistic.py").read_bytes()
    result = lh(*command, "--store", user_model / "st")
    assert result.exit_code == 2, result.output
    assert "which is the code of logistic:make" in result.stderr or "is the code of logistic:make" in result.stderr, \
        result.stderr
    assert (user_model / "logistic.py").read_bytes() == module
    assert not (user_model / "logs").exists()


def test_calibrate_refuses_a_report_page_whose_runs_folder_would_be_the_store_before_any_pilot(user_model):
    result = lh("calibrate", "cal.yaml", "--store", "rep/cal/runs", "--report-dir", "rep", "--workers", "1",
                "--logs", "logs")
    assert result.exit_code == 2, result.output
    assert "--report-dir rep/cal: its runs/ folder would be the store rep/cal/runs" in result.stderr, result.stderr
    assert not (user_model / "logs").exists() and not (user_model / "rep").exists()


def test_a_trajectory_with_two_checkpoints_of_one_step_is_drawn_not_a_traceback():
    from lambda_hat.promote import trajectory_figure
    from lambda_hat.store.manifest import Manifest

    points = []
    for i in range(2):  # the same step from two folders of checkpoints trained elsewhere
        t = Manifest(id=f"tgt_00000000000{i}", type="target", spec={"step": 1}, status="ok",
                     metrics={"final_train_loss": 0.1})
        points.append(({"run_id": f"run_00000000000{i}", "sampler": "hmc", "llc_mean": 1.0 + i, "llc_sem": 0.1,
                        "status": "ok"}, t))
    assert trajectory_figure("traj_000000000000", points) is not None


def test_query_writes_uuid_and_interval_values_in_every_format(store):
    for fmt in ("json", "csv", "table"):
        result = lh("query", "select uuid() u, [uuid()] l, {'a': uuid()} s, interval 3 day i", "--store", store,
                    "--format", fmt)
        assert result.exit_code == 0, (fmt, result.output)
        assert "Traceback" not in result.output


def _query_process(store, out=None):
    import subprocess
    import sys

    args = [sys.executable, "-c", "from lambda_hat.cli import main; main()", "query", "--store", str(store)]
    if out is None:
        args += ["select count(*) from range(10000000000000)"]
    else:
        args += ["select * from range(100000000000)", "--format", "csv", "-o", str(out)]
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT,
                                                                           __import__("signal").SIG_DFL))


@pytest.mark.parametrize("sig,code,said", [("SIGINT", 130, "query interrupted (Ctrl-C)"), ("SIGTERM", 143, "")])
def test_a_query_stopped_while_it_writes_its_file_says_so_and_leaves_no_temporary(store, tmp_path, sig, code, said):
    """Ctrl-C was reported as "query stopped after 120 s" (exit 2); SIGTERM left a `.tmp-` file
    of hundreds of MB beside the user's."""
    import signal
    import time

    out_dir = tmp_path / "out"
    out_dir.mkdir()
    p = _query_process(store, out_dir / "big.csv")
    deadline = time.monotonic() + 60
    while not any(n.startswith(".tmp-") for n in os.listdir(out_dir)) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(0.5)  # rows are streaming into it
    p.send_signal(getattr(signal, sig))
    err = p.communicate(timeout=60)[1]
    assert p.returncode == code, err
    assert said in err and "stopped after" not in err and "Traceback" not in err, err
    assert os.listdir(out_dir) == []


def test_a_runs_folder_linked_to_elsewhere_is_not_counted_by_plan_or_status(store, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store / "runs", elsewhere)
    os.symlink(elsewhere, store / "runs")
    plan = lh("plan", tmp_path / "s.yaml", "--store", store, "--json")
    assert plan.exit_code == 0, plan.output
    import json

    assert json.loads(plan.stdout)["runs_cached"] == []
    status = lh("status", "--store", store)
    assert status.exit_code == 0 and "runs     0" in status.output, status.output


# --- what the ninth pass broke ----------------------------------------------------------------------

@pytest.mark.parametrize("command", ["export", "promote"])
def test_export_and_promote_never_read_runs_through_a_linked_runs_folder(store, tmp_path, command):
    """plan, status, verify and gc never looked through it; export and promote of a sweep did,
    writing another folder's runs as this store's."""
    elsewhere = tmp_path / "elsewhere"
    shutil.move(store / "runs", elsewhere)
    os.symlink(elsewhere, store / "runs")
    out = ["-o", tmp_path / "z.csv"] if command == "export" else ["--outdir", tmp_path / "gal"]
    result = lh(command, tmp_path / "s.yaml", "--store", store, *out)
    assert result.exit_code == 1, result.output
    assert "runs/ is a symbolic link (not looked through" in result.output, result.output
    if command == "export":
        rows = (tmp_path / "z.csv").read_text().splitlines() if (tmp_path / "z.csv").exists() else []
        assert len(rows) <= 1, rows  # the header at most: no run read through the link


def test_a_planted_link_at_parsls_run_directory_is_refused(store, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    os.symlink(foreign, tmp_path / "parsl_runinfo")
    # a sweep with one more run than the store holds: something to submit
    import json

    sweep = json.loads((tmp_path / "s.yaml").read_text())
    sweep["samplers"].append({"name": "nuts"})
    (tmp_path / "more.yaml").write_text(json.dumps(sweep))
    result = lh("execute", "more.yaml", "--store", store, "--logs", tmp_path / "logs", "--results", tmp_path / "r.csv")
    assert result.exit_code == 2, result.output
    assert "Parsl's run directory parsl_runinfo is a symbolic link" in result.stderr, result.stderr
    assert os.listdir(foreign) == []
