"""What the terminal shows: `lh --version`, every `--help` at 80 columns, the prefix-ID hint
of `lh query`. Each runs the real CLI in a child process, as a user would."""

import re
import subprocess
import sys
from importlib.metadata import version

from lhproc import env


def lh_at(cwd, *args, columns=80):
    """`lh *args` as a user at a terminal `columns` wide would run it."""
    return subprocess.run([sys.executable, "-m", "lambda_hat.cli", *args], cwd=cwd,
                          env=env(COLUMNS=str(columns), NO_COLOR="1"),
                          capture_output=True, text=True, timeout=300)


def test_version(tmp_path):
    proc = lh_at(tmp_path, "--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"lh {version('lambda-hat')}\n"
    assert re.fullmatch(r"lh \d+\.\d+\S*\n", proc.stdout)
