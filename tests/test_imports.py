"""`lh --help`, `lh plan`, `lh query` and `lh status` never import JAX, Parsl or Zarr
(ARCHITECTURE.md invariant 7).

Each command runs in a fresh interpreter under `python -X importtime`, which lists every module
the process imported; the test reads that list, so a heavy import anywhere on the command's
path (the CLI module, the planner, the store, a helper they call) fails it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

HEAVY = ("jax", "jaxlib", "parsl", "zarr", "blackjax", "optax")

SWEEP = """\
targets:
  - {model: small, data: small, teacher: _null, grid: {seed: [1, 2]}}
samplers:
  - {name: sgld, seed: 3}
"""


def imported_modules(args: list[str], cwd: Path) -> tuple[set[str], subprocess.CompletedProcess]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lambda_hat.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    modules = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "imported package":  # the header line
                modules.add(name)
    return modules, proc


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in HEAVY)


@pytest.fixture
def sweep_file(tmp_path):
    p = tmp_path / "sweep.yaml"
    p.write_text(SWEEP)
    return p


@pytest.mark.parametrize("args", [
    ["--help"],
    ["plan", "sweep.yaml", "--store", "store"],
    ["plan", "sweep.yaml", "--store", "store", "--json"],
    ["query", "select 1 as one", "--store", "store"],
    ["status", "--store", "store"],
], ids=["help", "plan", "plan-json", "query", "status"])
def test_light_commands_import_no_jax_parsl_or_zarr(args, sweep_file, tmp_path):
    from lambda_hat.store.store import Store

    Store.open(tmp_path / "store", create=True).rebuild_index()  # `lh query` needs an index
    modules, proc = imported_modules(args, tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "lambda_hat" in modules and "typer" in modules  # the measurement saw the command's imports
    assert heavy_in(modules) == [], heavy_in(modules)[:10]


def test_the_check_sees_a_heavy_import(tmp_path):
    # The same measurement on a process that does import zarr must report it.
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", "import zarr"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=120)
    names = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "zarr" in heavy_in(names)
