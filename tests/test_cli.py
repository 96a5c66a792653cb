"""CLI: error paths (exit 2, one line, nothing written), plan output, lazy imports."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app

GOOD = "targets: [{model: small, data: small, grid: {seed: [1, 2]}}]\nsamplers: [{name: sgld}, {name: hmc}]\n"


@pytest.fixture
def runner():
    return CliRunner()


@pytest.mark.parametrize(
    "text,field",
    [
        ("targets: [{model: small\n", "malformed YAML"),
        ("targets: [{model: small}]\nsamplers: [{name: sgld, stepsize: 1e-5}]\n", "stepsize"),
        ("targets: [{model: small}]\nsamplers: [{name: nutz}]\n", "unknown sampler 'nutz'"),
        ("targets: [{model: small, overrides: {data: {n_data: -5}}}]\nsamplers: [{name: hmc}]\n", "data.n_data"),
        ("targets: [{model: small}]\nsamplers: [{name: sgld, step_size: .nan}]\n", "step_size"),
    ],
)
@pytest.mark.parametrize("command", ["plan", "execute"])
def test_bad_sweep_exits_2_with_one_line_and_writes_nothing(runner, tmp_path, monkeypatch, text, field, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.yaml").write_text(text)
    result = runner.invoke(app, [command, "bad.yaml", "--store", "store"])
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "bad.yaml" in lines[0] and field in lines[0], result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]  # no store, logs or results


def test_missing_sweep_file_exits_2(runner, tmp_path):
    result = runner.invoke(app, ["plan", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2 and "nope.yaml" in result.stderr


def test_plan_json_lists_ids(runner, tmp_path):
    (tmp_path / "s.yaml").write_text(GOOD)
    result = runner.invoke(app, ["plan", str(tmp_path / "s.yaml"), "--store", str(tmp_path / "store"), "--json"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert list(plan) == ["targets_to_build", "targets_cached", "runs_to_sample", "runs_cached", "same_computations"]
    assert plan["same_computations"] == []
    assert len(plan["targets_to_build"]) == 2 and len(plan["runs_to_sample"]) == 4
    assert all(t.startswith("tgt_") and len(t) == 16 for t in plan["targets_to_build"])
    assert plan["targets_cached"] == plan["runs_cached"] == []


def test_plan_table_summary(runner, tmp_path):
    (tmp_path / "s.yaml").write_text(GOOD)
    result = runner.invoke(app, ["plan", str(tmp_path / "s.yaml"), "--store", str(tmp_path / "store")])
    assert result.exit_code == 0
    assert "2 targets to build, 4 runs to sample, 0 cached" in result.stdout
    assert not (tmp_path / "store").exists()  # planning writes nothing


def test_store_resolution_order(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text("store_root: from_sweep\n" + GOOD)
    monkeypatch.setenv("LH_STORE", "from_env")
    out = runner.invoke(app, ["plan", "s.yaml"]).stdout
    assert "store from_env" in out
    out = runner.invoke(app, ["plan", "s.yaml", "--store", "from_flag"]).stdout
    assert "store from_flag" in out
    monkeypatch.delenv("LH_STORE")
    assert "store from_sweep" in runner.invoke(app, ["plan", "s.yaml"]).stdout


def test_query_without_index_and_bad_sql(runner, tmp_path):
    result = runner.invoke(app, ["query", "select 1", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "no index" in result.stderr
    from lambda_hat.store import index
    from lambda_hat.store.layout import StoreLayout
    from lambda_hat.store.manifest import Manifest

    index.write(StoreLayout(tmp_path), [index.Record(Manifest(id="tgt_x", type="target", spec={}))])
    result = runner.invoke(app, ["query", "selec nonsense", "--store", str(tmp_path)])
    assert result.exit_code == 2 and "query failed" in result.stderr
    result = runner.invoke(app, ["query", "select target_id from targets", "--store", str(tmp_path), "--format", "json"])
    # a row whose artifact is not in the store is not shown, and the note says so
    assert json.loads(result.stdout) == [] and "1 target of the index is not shown" in result.stderr
    result = runner.invoke(app, ["query", "delete from targets", "--store", str(tmp_path)])
    assert result.exit_code == 2  # the index is opened read-only


def test_help_plan_and_query_do_not_import_jax_or_parsl(tmp_path):
    from lambda_hat.store.store import Store
    from tests.test_store import fill_store

    (tmp_path / "s.yaml").write_text(GOOD)
    store = tmp_path / "filled"
    fill_store(store)
    Store(store).reconcile()
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lambda_hat.cli import app\n"
        "r = CliRunner()\n"
        "assert r.invoke(app, ['--help']).exit_code == 0\n"
        f"assert r.invoke(app, ['plan', {str(tmp_path / 's.yaml')!r}, '--store', {str(tmp_path / 'st')!r}]).exit_code == 0\n"
        f"q = r.invoke(app, ['query', 'select count(*) from traces', '--store', {str(store)!r}, '--format', 'csv'])\n"
        "assert q.exit_code == 0 and q.stdout == 'count_star()\\n16\\n', q.output\n"
        f"assert r.invoke(app, ['query', 'select * from runs', '--store', {str(store)!r}]).exit_code == 0\n"
        "heavy = [m for m in ('jax', 'parsl', 'blackjax', 'zarr') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
