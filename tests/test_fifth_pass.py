"""Issue 28, what a fourth adversarial pass (on d64a6a5) still broke, besides the leases
(tests/test_fifth_pass_leases.py) and lh calibrate's outputs (tests/test_calibrate_cli.py): a
gallery state file of the wrong shape crashing promote, a 2 GB manifest read whole (4-6 GB of
memory), a target replaced by a link to a copy elsewhere counted as done by plan, lh's own
moved-aside index making its store "not a lambda-hat store", and `--outdir .` beside the default
store named as a file problem. Each test fails on d64a6a5."""

import json
import os
import shutil

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store.artifacts import MAX_MANIFEST_BYTES
from lambda_hat.store.store import Store
from test_store import SWEEP, fill_store


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()
    (tmp_path / "s.yaml").write_text(json.dumps(SWEEP))
    return root


@pytest.mark.parametrize("state", ["[]", "null", '"s"', '{"index.html": "x"}', "{"])
def test_a_gallery_state_file_of_another_shape_is_forgotten_not_a_traceback(tmp_path, store, state):
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / ".promote.json").write_text(state)
    result = lh("promote", "--store", store, "--outdir", gallery)
    assert result.exit_code == 0, (result.output, result.exception)
    assert (gallery / "index.html").is_file()
    assert isinstance(json.loads((gallery / ".promote.json").read_text()), dict)


def test_a_manifest_far_larger_than_any_is_damage_and_never_read_whole(tmp_path, store):
    """A sparse 2 GB manifest.json took 4-6 GB of memory in plan, show, export and verify. Here
    a sparse file of 64 GB (no disk used): read whole it would exhaust the machine; it must be
    reported from its size alone."""
    run = sorted((store / "runs").iterdir())[1]
    manifest = run / "manifest.json"
    with open(manifest, "r+b") as f:
        f.truncate(64 * 2**30)
    assert manifest.stat().st_size > MAX_MANIFEST_BYTES
    result = lh("verify", "--store", store)
    assert result.exit_code == 1 and f"manifest.json is {64 * 2**30:,} bytes, more than a manifest can be" in result.output
    result = lh("show", run.name, "--store", store)
    assert result.exit_code != 0 and "Traceback" not in result.output and len(result.stderr.splitlines()) == 1
    plan = json.loads(lh("plan", store.parent / "s.yaml", "--store", store, "--json").stdout)
    assert run.name in plan["runs_to_sample"]


@pytest.mark.parametrize("kind", ["targets", "runs"])
def test_an_artifact_that_is_a_link_to_a_copy_elsewhere_is_not_done(tmp_path, store, kind):
    """plan said "cached" (the index's stamp matched through the link) while execute then
    quarantined the link and redid it, and verify called it a problem."""
    entry = sorted((store / kind).iterdir())[-1]
    elsewhere = tmp_path / "elsewhere" / entry.name
    elsewhere.parent.mkdir()
    shutil.move(entry, elsewhere)
    entry.symlink_to(elsewhere)
    plan = json.loads(lh("plan", store.parent / "s.yaml", "--store", store, "--json").stdout)
    not_done = plan["targets_to_build"] if kind == "targets" else plan["runs_to_sample"]
    assert entry.name in not_done, plan
    assert (elsewhere / "manifest.json").is_file()  # nothing removed through the link


def test_a_store_with_its_index_moved_aside_is_still_a_store(tmp_path, store):
    """`lh index rebuild` moves an unreadable index to index.duckdb.corrupt-…; with the index
    then gone (deleted, or a rebuild stopped after the move) and no .claims (a plain `cp -r`),
    every command refused the store, the suggested `lh index rebuild` included."""
    (store / "index.duckdb").write_text("garbage")
    assert lh("index", "rebuild", "--store", store).exit_code == 0
    assert [p.name for p in store.iterdir() if p.name.startswith("index.duckdb.corrupt-")]
    (store / "index.duckdb").unlink()
    shutil.rmtree(store / ".claims", ignore_errors=True)
    for args in (["index", "rebuild"], ["status"], ["verify"]):
        result = lh(*args, "--store", store)
        assert "not a lambda-hat store" not in result.output, (args, result.output)
        assert result.exit_code in (0, 1), (args, result.output)


def test_outdir_beside_the_default_store_names_the_store(tmp_path, store, monkeypatch):
    """`lh promote --outdir .` in a directory whose `runs/` is the store: refused, but as "a
    regular file … is not a regular file, not a directory", never naming the store."""
    monkeypatch.chdir(tmp_path)
    os.rename(store, tmp_path / "runs")
    result = lh("promote", "--outdir", ".")
    assert result.exit_code == 2
    assert f"--outdir .: its runs/ folder is in the store {tmp_path / 'runs'}" in result.stderr, result.stderr
