"""Issue 28, what was left in words after the fourth adversarial pass: an artifact whose
arrays.zarr.zip is a directory was reported as "missing arrays.zarr.zip"; lh verify said "0 problems"
of a store whose .claims (or .work, .quarantine, .jax_cache) is a file, which lh execute refuses."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from test_fifth_pass import lh, store  # noqa: F401  (the fixture: a filled, reconciled store and s.yaml)


def test_an_arrays_zip_that_is_a_directory_is_named_as_such_not_missing(store):
    run = sorted((store / "runs").iterdir())[0]
    zip_path = run / "arrays.zarr.zip"
    zip_path.unlink()
    zip_path.mkdir()
    result = lh("verify", "--store", store)
    assert result.exit_code == 1
    assert "arrays.zarr.zip is not a regular file" in result.output and "missing arrays" not in result.output
    result = lh("show", run.name, "--store", store)
    assert result.exit_code != 0 and "Traceback" not in result.output
    assert "arrays.zarr.zip is not a regular file" in result.output, result.output
    shutil.rmtree(zip_path)
    result = lh("verify", "--store", store)
    assert "missing arrays.zarr.zip" in result.output


@pytest.mark.parametrize("name", [".claims", ".quarantine", ".work", ".jax_cache"])
@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_verify_names_a_non_directory_where_the_stores_own_directory_belongs(store, name, kind):
    """lh execute refuses such a store; lh verify said "0 problems" on it."""
    import os

    path = store / name
    if path.is_dir():
        shutil.rmtree(path)
    if kind == "file":
        path.write_text("x")
    else:
        os.mkfifo(path)
    result = lh("verify", "--store", store)
    assert result.exit_code == 1, result.output
    what = "a file" if kind == "file" else "a FIFO"
    assert f"{name}: {what} where the store's own directory belongs" in result.output, result.output


def test_a_lease_made_without_hard_links_never_reads_through_a_link(tmp_path, monkeypatch):
    """On a file system without hard links a lease is written by copy (claims.create_as): the
    copy's source, our new temporary file, is opened without following a link, so a link
    planted at its name cannot put another file's content into the lease. The lease itself is
    created and held as usual."""
    import errno
    import os

    from lambda_hat.store import claims as claims_mod

    def no_link(src, dst):
        raise OSError(errno.EPERM, "no hard links here")

    monkeypatch.setattr(claims_mod.os, "link", no_link)
    book = claims_mod.Claims(tmp_path / ".claims")
    assert book.acquire("run_0123456789ab") is None
    leases = list((tmp_path / ".claims").iterdir())  # the lease alone: no temporary file left
    assert len(leases) == 1 and json.loads(leases[0].read_text())["pid"] == os.getpid(), leases
    victim = tmp_path / "secret"
    victim.write_text("not a lease")
    planted = tmp_path / "planted"
    planted.symlink_to(victim)
    with pytest.raises(OSError):
        claims_mod.create_as(planted, tmp_path / "copy")
    assert not (tmp_path / "copy").exists()


def test_entries_that_name_one_run_are_one_job_and_one_row(tmp_path):
    """A sampler entry whose `restrict` selects every leaf is the plain entry's run (same ID):
    both were submitted, and sampled at once into one work directory, and counted twice."""
    sweep = tmp_path / "dup.yaml"
    sweep.write_text("""store_root: store
targets: [{model: small, data: small, teacher: _null, seed: 1, overrides: {training: {steps: 50}}}]
samplers:
  - {name: hmc, seed: 9, chains: 2, draws: 200}
  - {name: hmc, seed: 9, chains: 2, draws: 200, restrict: {include: ["*"]}}
  - {name: hmc, seed: 9, chains: 2, draws: 200, restrict: {include: ["W_*", "b_*"]}}
  - {name: hmc, seed: 9, chains: 2, draws: 200, restrict: {include: ["W_*"]}}
""")
    result = lh("plan", sweep, "--store", tmp_path / "store", "--json")
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs_to_sample"]
    assert len(runs) == len(set(runs)) == 2, runs  # all leaves (three ways) and W_* alone


def test_job_logs_are_never_written_into_a_store_at_a_logs_subfolder(tmp_path, store):
    """--logs L where L/run_sampler is a store: the job logs landed in that store's root."""
    logs = tmp_path / "L"
    logs.mkdir()
    shutil.copytree(store, logs / "run_sampler")
    result = lh("execute", tmp_path / "s.yaml", "--store", store, "--logs", logs)
    assert result.exit_code == 2, result.output
    assert f"--logs {logs}/run_sampler: inside the store {logs}/run_sampler" in " ".join(result.output.split())


@pytest.mark.parametrize("command", ["execute", "export", "query"])
def test_an_output_that_is_the_sweep_read_is_refused(tmp_path, store, command):
    """lh execute s.csv --results s.csv (and export / query -o) replaced the sweep it read."""
    sweep = tmp_path / "s.csv"  # a sweep is YAML whatever its name; JSON is YAML
    sweep.write_text((tmp_path / "s.yaml").read_text())
    before = sweep.read_text()
    args = {"execute": ["execute", sweep, "--store", store, "--results", sweep],
            "export": ["export", sweep, "--store", store, "-o", sweep],
            "query": ["query", "select 1", "--sweep", sweep, "--store", store, "-o", sweep]}[command]
    result = lh(*args)
    assert result.exit_code == 2, result.output
    assert "is the sweep, which the command reads" in result.output
    assert sweep.read_text() == before


@pytest.mark.parametrize("env,args,says", [
    ({}, ["--workers", "99999"], "--workers 99999: at most"),
    ({"LH_CHECKPOINT_SEC": "abc"}, [], "LH_CHECKPOINT_SEC='abc': must be a number of seconds, 0 or more"),
    ({"LH_CHECKPOINT_SEC": "nan"}, [], "LH_CHECKPOINT_SEC='nan'"),
    ({"LH_CHECKPOINT_SEC": "-1"}, [], "LH_CHECKPOINT_SEC='-1'"),
])
def test_execute_settings_that_cannot_work_are_refused_before_any_work(tmp_path, store, env, args, says):
    """--workers 400 on 2 cores ran a load of 87 and finished nothing; a bad LH_CHECKPOINT_SEC
    failed every sampling job with a traceback, after the targets were built."""
    result = CliRunner().invoke(app, ["execute", str(tmp_path / "s.yaml"), "--store", str(store), *args],
                                env={"COLUMNS": "200", **env})
    assert result.exit_code == 2, result.output
    assert says in result.output


def test_query_timeout_past_what_a_timer_can_wait_is_refused(store):
    result = lh("query", "select 1", "--store", store, "--timeout", "1e10")
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--timeout 1e10: at most 604,800 seconds" in result.output


@pytest.mark.parametrize("top", ["1e-320", "1e-9", "0.0009"])
def test_calibrate_refuses_a_top_step_whose_pilots_could_never_run(tmp_path, top):
    (tmp_path / "c.yaml").write_text("store_root: store\ntargets:\n  - {model: small, data: small, teacher: _null}\n"
                                     "samplers:\n  - {name: sgld, overrides: {step_size_nbeta: auto}}\n")
    result = lh("calibrate", tmp_path / "c.yaml", "--top", top)
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    assert "the ladder's largest ε·nβ must be at least 0.001" in result.output
    assert not (tmp_path / "c.pilots.yaml").exists()


def test_calibrate_never_writes_its_page_through_a_link_at_its_name(tmp_path):
    (tmp_path / "c.yaml").write_text("store_root: store\ntargets:\n  - {model: small, data: small, teacher: _null}\n"
                                     "samplers:\n  - {name: sgld, overrides: {step_size_nbeta: auto}}\n")
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("a user's page")
    (tmp_path / "calibration").mkdir()
    (tmp_path / "calibration" / "c").symlink_to(elsewhere)
    result = lh("calibrate", tmp_path / "c.yaml", "--report-dir", tmp_path / "calibration")
    assert result.exit_code == 2, result.output
    assert "is a symbolic link, where lh calibrate writes the report's page" in " ".join(result.output.split())
    assert (elsewhere / "index.html").read_text() == "a user's page"


def test_status_neither_counts_nor_flags_a_run_whose_directory_is_gone(tmp_path, store):
    """A run directory removed by hand: its index row was still counted and flagged."""
    before = lh("status", "--store", store, "--logs", tmp_path / "logs")
    flagged = [line.split()[0] for line in before.stdout.split("flagged runs:")[1].splitlines()[1:]
               if line.startswith("  ") and not line.startswith("  …")]
    runs = sorted(p.name for p in (store / "runs").iterdir())
    victim = next((r for r in runs if any(r.startswith(f) for f in flagged)), runs[0])
    shutil.rmtree(store / "runs" / victim)
    after = lh("status", "--store", store, "--logs", tmp_path / "logs")
    assert after.exit_code == 0, after.output
    assert victim[:8] not in after.stdout.split("flagged runs:")[1], after.stdout
    assert f"  runs     {len(runs) - 1} " in after.stdout or f"  runs     {len(runs) - 1}\n" in after.stdout, after.stdout
    assert "in the index but not in the store: 1 run" in after.stdout


def test_status_shows_an_error_line_without_its_control_characters(tmp_path, store):
    err = tmp_path / "logs" / "build_target" / "tgt_0123456789ab.err"
    err.parent.mkdir(parents=True)
    err.write_text("boom \x1b]0;owned\x07 \x1b[2J\x00 end\n")
    result = lh("status", "--store", store, "--logs", tmp_path / "logs")
    assert result.exit_code == 0, result.output
    assert "tgt_0123456789ab" in result.stdout
    assert "\x1b" not in result.stdout and "\x00" not in result.stdout and "\x07" not in result.stdout
    assert "boom" in result.stdout and "end" in result.stdout


def test_query_on_an_empty_directory_does_not_send_the_user_to_index_rebuild(tmp_path):
    """It said "run lh execute first, or lh index rebuild", and the rebuild then said "not a
    lambda-hat store"."""
    (tmp_path / "e").mkdir()
    result = lh("query", "select 1", "--store", tmp_path / "e")
    assert result.exit_code == 2
    assert "no index and nothing in it (run `lh execute` on a sweep first)" in result.output
    assert "index rebuild" not in result.output


def test_show_says_a_runs_target_is_gone_and_a_targets_damaged_runs_are_not_shown(store):
    """lh show RUN gave no hint that its target was gone; lh show TARGET left a damaged run out
    without a word."""
    runs = sorted((store / "runs").iterdir())
    target_of = {r.name: json.loads((r / "manifest.json").read_text())["spec"]["target_id"] for r in runs}
    run = runs[0].name
    tid = target_of[run]
    other = next(r for r in runs if target_of[r.name] == tid and r.name != run)
    (other / "manifest.json").write_text("{ damaged")
    result = lh("show", tid, "--store", store)
    assert result.exit_code == 0, result.output
    assert "(and 1 damaged run in the store, whose target cannot be read: lh verify)" in " ".join(result.stdout.split())
    shutil.rmtree(store / "targets" / tid)
    result = lh("show", run, "--store", store)
    assert result.exit_code == 0, result.output
    assert f"{tid} (not in the store: lh plan rebuilds it" in " ".join(result.stdout.split())


def test_a_new_store_inside_a_job_log_folder_is_refused_before_any_work(tmp_path):
    """--store logs/run_sampler with the default --logs logs: the job logs went into the new
    store's root (the check covered only a store that already existed)."""
    import os

    (tmp_path / "t.yaml").write_text("targets:\n  - {model: small, data: small, teacher: _null}\n"
                                     "samplers:\n  - {name: hmc}\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        result = lh("execute", "t.yaml", "--store", "logs/run_sampler")
    finally:
        os.chdir(cwd)
    assert result.exit_code == 2, result.output
    assert "--store logs/run_sampler: inside logs/run_sampler, where lh writes its job logs" in " ".join(result.output.split())
    assert not (tmp_path / "logs" / "run_sampler" / "index.duckdb").exists()


def test_calibrate_checks_its_logs_folders_before_it_writes_anything(tmp_path):
    """lh calibrate --logs L with L/build_target a link wrote the pilots file and made the store,
    then was refused by lh execute's check."""
    (tmp_path / "c.yaml").write_text("store_root: store\ntargets:\n  - {model: small, data: small, teacher: _null}\n"
                                     "samplers:\n  - {name: sgld, overrides: {step_size_nbeta: auto}}\n")
    (tmp_path / "L").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "L" / "build_target").symlink_to(tmp_path / "elsewhere")
    result = lh("calibrate", tmp_path / "c.yaml", "--logs", tmp_path / "L")
    assert result.exit_code == 2, result.output
    assert "build_target is a symbolic link" in " ".join(result.output.split())
    assert not (tmp_path / "c.pilots.yaml").exists() and not (tmp_path / "store").exists()


def test_status_lists_no_log_whose_name_is_not_a_job_log_of_ours(tmp_path, store):
    """A log file named with an escape sequence was listed as a failed job, its name printed raw."""
    folder = tmp_path / "logs" / "build_target"
    folder.mkdir(parents=True)
    bad = folder / "tgt_\x1b]0;X\x07"
    bad.with_suffix(".log").write_text(f"store {store.resolve()}\n")
    (folder / "tgt_\x1b]0;X\x07.err").write_text("e\n")
    result = lh("status", "--store", store, "--logs", tmp_path / "logs")
    assert result.exit_code == 0, result.output
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "failed jobs: 0" in result.stdout


def test_index_rebuild_names_the_damaged_artifacts_it_leaves_out(store):
    """It said "rebuilt …: 1 target, 1 run" and exit 0 over a run whose zip had a flipped byte."""
    run = sorted((store / "runs").iterdir())[0]
    data = bytearray((run / "arrays.zarr.zip").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (run / "arrays.zarr.zip").write_bytes(bytes(data))
    result = lh("index", "rebuild", "--store", store)
    assert result.exit_code == 1, result.output
    assert "rebuilt" in result.stdout and f"1 damaged artifact left out" in result.output and run.name in result.output
