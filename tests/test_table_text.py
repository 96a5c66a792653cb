"""`lh query`'s table in a terminal: wide characters, newlines and control characters in
values and column names keep every line within the terminal's width and on one line."""

import pytest
from rich.cells import cell_len
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store.store import Store
from tests.test_store import fill_store


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()
    return root


@pytest.mark.parametrize("sql", [
    "select repeat('日本語', 20) as wide, 'a' || chr(10) || 'b' as two_lines, 1 as n",
    "select 'x' as \"col" + "\n" + "umn\", repeat('界', 50) as w from range(3)",
    "select chr(27) || '[31mred' as escape, repeat('界', 30) || chr(10) || 'tail' as mix",
    "select run_id, repeat('語', 40) as wide from runs",  # several rows and columns, one too wide
])
def test_table_lines_fit_80_terminal_columns(store, sql):
    result = CliRunner().invoke(app, ["query", sql, "--store", str(store)], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert all(cell_len(line) <= 80 for line in lines), [cell_len(x) for x in lines]
    assert "\x1b" not in result.stdout  # an escape in a value is shown, never sent to the terminal
    assert not any(line.startswith(("b", "umn", "tail")) for line in lines)  # no value broke a line
