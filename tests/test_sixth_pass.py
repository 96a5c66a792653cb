"""Issue 28, what was left in words after the fourth adversarial pass: an artifact whose
arrays.zarr.zip is a directory was reported as "missing arrays.zarr.zip"."""

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
