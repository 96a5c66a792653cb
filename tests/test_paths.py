"""Every path a command writes is checked before anything runs: exit 2, one line, nothing written."""

import os

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app

GOOD = "targets: [{model: small, data: small}]\nsamplers: [{name: hmc}]\n"


def run(tmp_path, monkeypatch, *args):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LH_STORE", raising=False)
    (tmp_path / "s.yaml").write_text(GOOD)
    return CliRunner().invoke(app, list(args))


def one_line(result, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output)
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr


@pytest.mark.parametrize(
    "setup,args,needles",
    [
        (lambda d: (d / "afile").write_text("x"), ["--store", "afile"], ["afile", "is a file"]),
        (lambda d: (d / "afile").write_text("x"), ["--store", "afile/below"], ["is a file"]),
        (lambda d: ((d / "mine").mkdir(), (d / "mine" / "runs").write_text("notes")), ["--store", "mine"], ["not a lambda-hat store"]),
        (lambda d: None, ["--store", ""], ["empty path"]),
        (lambda d: (d / "resdir.parquet").mkdir(), ["--results", "resdir.parquet"], ["--results", "is a directory"]),
        (lambda d: None, ["--results", "out.xlsx"], ["--results", "use .parquet or .csv"]),
        (lambda d: (d / "logfile").write_text("x"), ["--logs", "logfile"], ["--logs", "is a file"]),
        (lambda d: None, ["--max-runs", "0"], ["--max-runs"]),
    ],
)
def test_bad_output_paths_are_refused_before_work(tmp_path, monkeypatch, setup, args, needles):
    setup(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run(tmp_path, monkeypatch, "execute", "s.yaml", *args)
    assert result.exit_code == 2, result.output
    if "--max-runs" not in args:
        one_line(result, *needles)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "s.yaml") == [b for b in before if b != "s.yaml"]


def test_max_runs_refuses_a_large_sweep(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("targets: [{model: small, grid: {seed: [1, 2, 3]}}]\nsamplers: [{name: hmc}]\n")
    result = CliRunner().invoke(app, ["plan", "s.yaml", "--max-runs", "2"])
    one_line(result, "s.yaml", "3 runs")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes through permissions")
def test_read_only_store_is_refused(tmp_path, monkeypatch):
    store = tmp_path / "ro"
    (store / "targets").mkdir(parents=True)
    store.chmod(0o500)
    try:
        result = run(tmp_path, monkeypatch, "execute", "s.yaml", "--store", "ro")
        one_line(result, "not writable")
    finally:
        store.chmod(0o700)


def test_maintenance_commands_refuse_what_is_not_a_store(tmp_path, monkeypatch):
    for cmd in (["verify"], ["index", "verify"], ["index", "rebuild"], ["gc"]):
        result = run(tmp_path, monkeypatch, *cmd, "--store", str(tmp_path / "nonexistent"))
        one_line(result, "no such store")
    (tmp_path / "plain").mkdir()
    result = run(tmp_path, monkeypatch, "index", "rebuild", "--store", "plain")
    one_line(result, "not a lambda-hat store")
    assert not (tmp_path / "plain" / "index.duckdb").exists()
