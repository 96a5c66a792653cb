"""Issue 28, what was left in words after the fourth adversarial pass: an artifact whose
arrays.zarr.zip is a directory was reported as "missing arrays.zarr.zip"; lh verify said "0 problems"
of a store whose .claims (or .work, .quarantine, .jax_cache) is a file, which lh execute refuses."""

import json
import shutil

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
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
