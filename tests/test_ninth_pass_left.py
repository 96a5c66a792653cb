"""The ninth adversarial pass's leftovers: what `lh query` shows of a damaged store, and the
minor ones (a store's shape, foreign entries execute leaves alone, a FIFO config, an empty
LH_STORE)."""

import json
import os

import pytest

from test_fifth_pass import lh, store  # noqa: F401


def _rows(result):
    return json.loads(result.stdout)


def test_query_shows_only_what_checks_out_and_says_what_it_left_out(tmp_path, store):
    runs = sorted(p for p in (store / "runs").iterdir() if p.name.startswith("run_"))
    before = lh("query", "--store", store, "select run_id from runs", "--format", "json")
    assert before.exit_code == 0, before.output
    assert len(_rows(before)) == len(runs) and "not shown" not in before.stderr
    # one run's metrics edited in its manifest (a value, not the layout), one zip truncated
    manifest = runs[0] / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["metrics"]["llc_mean"] = 7.0
    manifest.write_text(json.dumps(doc))
    with open(runs[1] / "arrays.zarr.zip", "r+b") as f:
        f.truncate(10)
    after = lh("query", "--store", store, "select run_id from runs", "--format", "json")
    assert after.exit_code == 0, after.output
    shown = {r["run_id"] for r in _rows(after)}
    assert shown == {p.name for p in runs[2:]}
    assert "2 runs of the index are not shown" in after.stderr
    # traces of a damaged run are left out as well; targets are untouched
    traces = lh("query", "--store", store, f"select count(*) as n from traces where run_id = '{runs[1].name}'",
                "--format", "json")
    assert _rows(traces) == [{"n": 0}]
    targets = lh("query", "--store", store, "select count(*) as n from targets", "--format", "json")
    assert _rows(targets) == [{"n": 2}]


def test_query_leaves_out_a_run_removed_by_hand_and_a_damaged_target(tmp_path, store):
    import shutil

    run = sorted(p for p in (store / "runs").iterdir() if p.name.startswith("run_"))[0]
    shutil.rmtree(run)
    target = sorted(p for p in (store / "targets").iterdir() if p.name.startswith("tgt_"))[0]
    (target / "manifest.json").write_text("{")
    result = lh("query", "--store", store, "select target_id from targets")
    assert result.exit_code == 0, result.output
    assert target.name[:8] not in result.stdout
    assert "1 run and 1 target of the index are not shown" in result.stderr
    scoped = lh("query", "--store", store, "--sweep", tmp_path / "s.yaml", "select run_id from runs", "--format", "json")
    assert scoped.exit_code == 0, scoped.output
    assert run.name not in {r["run_id"] for r in _rows(scoped)} and "not shown" in scoped.stderr


def test_an_empty_claims_folder_does_not_make_a_project_a_store(tmp_path):
    project = tmp_path / "project"
    for sub in (".claims", "targets", "runs"):
        (project / sub).mkdir(parents=True)
    (project / "thesis.tex").write_text("\\begin{document}")
    result = lh("index", "rebuild", "--store", project)
    assert result.exit_code != 0 and "not a lambda-hat store" in result.output, result.output
    assert sorted(os.listdir(project)) == [".claims", "runs", "targets", "thesis.tex"]


def test_a_store_whose_index_is_lost_is_still_a_store_with_a_note_in_runs(store):
    (store / ".claims").mkdir(exist_ok=True)  # as lh execute leaves it
    (store / "index.duckdb").unlink()
    (store / "runs" / "README").write_text("notes")
    result = lh("index", "rebuild", "--store", store)
    assert result.exit_code == 0, result.output
    assert (store / "runs" / "README").read_text() == "notes"


def test_reconcile_names_what_is_not_ours_in_the_work_and_claims_folders(store):
    from lambda_hat.store import Store

    (store / ".work").mkdir(exist_ok=True)
    (store / ".work" / "notes.md").write_text("mine")
    (store / ".claims").mkdir(exist_ok=True)
    (store / ".claims" / "backup").mkdir()
    (store / ".claims" / "backup" / "x").write_text("mine")
    rep = Store(store).reconcile()
    assert {(p.parent.name, p.name) for p in rep.foreign} >= {(".work", "notes.md"), (".claims", "backup")}
    assert (store / ".work" / "notes.md").read_text() == "mine"


def test_a_fifo_parsl_config_is_named_for_what_it_is(tmp_path):
    fifo = tmp_path / "config.py"
    os.mkfifo(fifo)
    (tmp_path / "s.yaml").write_text(json.dumps({"targets": [{"model": "small", "data": "small"}],
                                                 "samplers": [{"name": "sgld"}]}))
    result = lh("execute", tmp_path / "s.yaml", "--store", tmp_path / "st", "--parsl-config", fifo)
    assert result.exit_code == 2, result.output
    assert "a FIFO, not a Python file" in result.output and "no such file" not in result.output


@pytest.mark.parametrize("value", ["", "  "])
def test_an_empty_lh_store_is_refused_not_read_as_the_default(tmp_path, monkeypatch, value):
    from typer.testing import CliRunner

    from lambda_hat.cli import app

    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["status"], env={"LH_STORE": value, "COLUMNS": "200"})
    assert result.exit_code == 2, result.output
    assert "LH_STORE is set but empty" in result.output
    assert not (tmp_path / "runs").exists()
