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
    assert f"--results {given}: is {what} the command reads" in result.stderr, result.stderr
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
