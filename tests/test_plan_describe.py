"""What `lh plan`'s table says about a target: its shape as the user wrote it."""

from __future__ import annotations

import yaml
from typer.testing import CliRunner

from lambda_hat.cli import app


def test_plan_names_a_polynomials_powers(tmp_path):
    sweep = tmp_path / "s.yaml"
    sweep.write_text(yaml.safe_dump({
        "targets": [{"model": {"kind": "polynomial", "powers": [1, 3]}, "data": {"n_data": 50}},
                    {"model": {"kind": "dln", "widths": [4, 2, 4]}, "teacher": {"rank": 1}}],
        "samplers": [{"name": "sgld"}],
    }))
    res = CliRunner().invoke(app, ["plan", str(sweep), "--store", str(tmp_path / "store")], env={"COLUMNS": "300"})
    assert res.exit_code == 0, res.output
    assert "model=polynomial powers=[1, 3]" in res.output
    assert "model=dln[4, 2, 4]" in res.output  # other models keep their layer dims
    assert "[1, 1]" not in res.output
