"""What the terminal shows: `lh --version`, every `--help` at 80 columns, the prefix-ID hint
of `lh query`. Each runs the real CLI in a child process, as a user would."""

import re
import subprocess
import sys
from importlib.metadata import version

import pytest
from rich.cells import cell_len

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


def _commands():
    """Every command path of `lh`, from the CLI itself (a command added later is covered)."""
    import typer.main

    from lambda_hat.cli import app

    def walk(cmd, path):
        yield path, cmd
        for name, sub in sorted(getattr(cmd, "commands", {}).items()):
            yield from walk(sub, [*path, name])

    return list(walk(typer.main.get_command(app), []))


COMMANDS = [path for path, _ in _commands()]


def test_every_command_is_covered():
    assert ["execute"] in COMMANDS and ["index", "rebuild"] in COMMANDS and [] in COMMANDS


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "lh")
def test_help_reads_at_80_columns(tmp_path, path):
    cmd = dict((tuple(p), c) for p, c in _commands())[tuple(path)]
    proc = lh_at(tmp_path, *path, "--help")
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    lines = text.splitlines()
    assert max(map(cell_len, lines)) <= 80, "\n".join(l for l in lines if cell_len(l) > 80)
    assert "…" not in text, text  # rich's mark of a cell cut short
    # Every option's names in full, each with the metavar the user types (or none: a flag).
    for param in cmd.params:
        for opt in [*param.opts, *param.secondary_opts]:
            if opt.startswith("-"):
                assert re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text), (opt, text)
    # Metavars as a user writes them: no Typer type names (<bool>, <str>, <list[str]>, <int range>)
    # and no {sweep}.
    typer_type = r"<(bool|str|int|float|path|file|dir|uuid|datetime|list\[[^>]*\]|\w+ range|[a-z]+(\|[a-z]+)+)>"
    assert not re.search(typer_type, text), re.findall(typer_type, text)
    assert not re.search(r"\{[a-z_]+\}", text), text
    usage = next(l for l in lines if "Usage:" in l)
    assert re.fullmatch(r" *Usage: lh( [a-z]+)* \[OPTIONS\]( (COMMAND \[ARGS\]\.\.\.|[A-Z]+|\[[A-Z]+\](\.\.\.)?))? *",
                        usage), usage


def test_execute_help_keeps_literal_brackets_and_the_slurm_panel(tmp_path):
    text = lh_at(tmp_path, "execute", "--help").stdout
    assert "TOML with a [slurm] table" in re.sub(r"[│\s]+", " ", text), text
    assert "\\[" not in text
    assert "--scheduler-options  " in text and "--walltime" in text and "HH:MM:SS" in text
    assert re.search(r"--workers +N ", text) and re.search(r"--exclusive +--no-exclusive +Whole nodes", text)
