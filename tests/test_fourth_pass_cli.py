"""Issue 28, what a third adversarial pass (on 30c9241) still broke, on the CLI's side: a store
root inside another store, or a folder that only looks like one (TensorBoard's `runs/`), taken
as a store and its contents quarantined, then deleted by gc; the write probe truncating a file
through a planted link; a link or file among `--logs`' own folders sending job logs into the
store (or crashing execute); a FIFO or device as `--profile` hanging execute or filling memory;
a profile silently ignored without `--backend slurm`; YAML 1.1 reading `seed: 010` as 8; the
results file's note printed when nothing was written; negative `--limit`s; a quarantined folder
named by a piece of its name and promised to be redone. Each test fails on 30c9241."""

import os
import socket
import sys
from pathlib import Path

import pytest
import yaml
from rich.console import Console
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store.store import Store
from test_store import fill_store
from test_third_pass import within

SWEEP = """store_root: store
targets:
  - {model: small, data: small, seed: 7, overrides: {training: {steps: 50, learning_rate: 0.01}}}
samplers:
  - {name: sgld, chains: 1, grid: {seed: [1]}, overrides: {steps: 200, warmup: 50, eval_every: 10}}
"""


def lh(*args, env=None):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200", **(env or {})})


def one_line_exit_2(result, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, (result.exit_code, result.output, result.exception)
    assert all(n in lines[0] for n in needles), lines[0]


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()
    (tmp_path / "s.yaml").write_text(SWEEP)
    return root


def tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("inner", [".quarantine/nested", "runs/nested", "targets/x", ".work/x"])
@pytest.mark.parametrize("command", ["plan", "execute"])
def test_a_store_inside_another_store_is_refused(tmp_path, store, inner, command):
    """The outer store's execute quarantined the inner one as junk, and its gc deleted it."""
    before = tree(store)
    result = lh(command, tmp_path / "s.yaml", "--store", store / inner,
                *(["--logs", tmp_path / "logs", "--results", tmp_path / "r.parquet"] if command == "execute" else []))
    one_line_exit_2(result, f"{store / inner}: inside the store {store.resolve()}")
    assert tree(store) == before


@pytest.mark.parametrize("layout", ["tensorboard", "project", "gallery"])
def test_a_folder_that_is_not_a_store_is_not_taken_for_one(tmp_path, layout):
    """`runs/` is TensorBoard's and PyTorch's log folder: its runs were quarantined as damaged
    artifacts and removed by the next gc. A folder with things of its own and no index is not
    a store; nothing in it is touched."""
    root = tmp_path / "proj"
    if layout == "tensorboard":
        (root / "runs" / "Dec05_10-00-00_host").mkdir(parents=True)
        (root / "runs" / "Dec05_10-00-00_host" / "events.out.tfevents.1").write_text("tb")
        named = "runs/Dec05_10-00-00_host"
    elif layout == "project":
        (root / "targets").mkdir(parents=True)
        (root / "train.py").write_text("print()")
        named = "train.py"
    else:
        (root / "plots").mkdir(parents=True)
        (root / "index.html").write_text("<html>")
        named = "index.html"
    (tmp_path / "s.yaml").write_text(SWEEP)
    before = tree(root)
    for args in (["execute", tmp_path / "s.yaml", "--results", tmp_path / "r.parquet"], ["gc"]):
        result = lh(*args, "--store", root, "--logs", tmp_path / "logs") if args[0] == "execute" else lh(*args, "--store", root)
        one_line_exit_2(result, f"{root}: not a lambda-hat store ({named} is not lambda-hat's")
    assert tree(root) == before


def test_a_store_a_first_execute_left_without_an_index_still_opens(tmp_path):
    """Only lambda-hat's names: a store whose first execute stopped before its index."""
    root = tmp_path / "store"
    fill_store(root)
    assert not (root / "index.duckdb").exists() and not (root / ".claims").exists()
    Store.open(root, create=True)
    assert lh("status", "--store", root).exit_code == 0


def test_the_write_probe_never_writes_through_a_planted_link(tmp_path, store):
    """The probe had a name anyone could predict (host and pid) and was written with
    write_text: a link planted there had its target truncated."""
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    planted = store / f".write-probe-{socket.gethostname()}-{os.getpid()}"
    planted.symlink_to(victim)
    Store.open(store, create=True)
    assert victim.read_text() == "precious\n"
    assert [p.name for p in store.iterdir() if p.name.startswith(".write-probe")] == [planted.name]


@pytest.mark.parametrize("planted", ["link into the store", "file", "fifo"])
def test_what_stands_where_logs_keep_their_folders_is_refused_before_any_work(tmp_path, store, planted):
    """A link at `--logs`/run_sampler into a target had job logs written into the artifact
    (found damaged, quarantined, lost); a file there crashed execute after Parsl had started."""
    logs = tmp_path / "logs"
    logs.mkdir()
    target = next((store / "targets").iterdir())
    where = logs / ("run_sampler" if planted != "fifo" else "build_target")
    if planted == "link into the store":
        where.symlink_to(target)
    elif planted == "file":
        where.write_text("")
    else:
        os.mkfifo(where)
    before = tree(store)
    with within(60):
        result = lh("execute", tmp_path / "s.yaml", "--store", store, "--logs", logs, "--results", tmp_path / "r.parquet")
    one_line_exit_2(result, f"--logs {logs}: {where} is ", "move it away")
    assert tree(store) == before and not (tmp_path / "r.parquet").exists()


@pytest.mark.parametrize("kind", ["fifo", "device"])
@pytest.mark.parametrize("flag", ["--profile", "--slurm-config"])
def test_a_profile_that_is_not_a_regular_file_is_refused_at_once(tmp_path, store, kind, flag):
    """`--profile FIFO` hung execute; `--slurm-config` on a zero device read 24 GB in 30 s."""
    path = tmp_path / f"profile.{'toml' if flag == '--profile' else 'yaml'}"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        if os.geteuid() != 0:
            pytest.skip("making a device node needs root (CI runs as root)")
        os.mknod(path, 0o600 | __import__("stat").S_IFCHR, os.makedev(1, 5))  # what /dev/zero is
    with within(30):
        result = lh("execute", tmp_path / "s.yaml", "--store", store, "--backend", "slurm", flag, path,
                    "--logs", tmp_path / "logs", "--results", tmp_path / "r.parquet")
    one_line_exit_2(result, f"{path}: is a ", "not a profile file")


def test_a_profile_without_the_slurm_backend_is_refused(tmp_path, store):
    """It was silently ignored, while --partition in the same place is refused."""
    (tmp_path / "lh.toml").write_text("[slurm]\npartition = 'gpu'\n")
    for flag in ("--profile", "--slurm-config"):
        result = lh("execute", tmp_path / "s.yaml", "--store", store, flag, tmp_path / "lh.toml")
        one_line_exit_2(result, f"{flag} {tmp_path / 'lh.toml'}: SLURM settings need --backend slurm")


@pytest.mark.parametrize("written, read_as", [("010", 8), ("-07", -7), ("1:30", 90), ("00", 0), ("1:30.5", 90.5)])
def test_numbers_yaml_1_1_reads_otherwise_than_they_look_are_refused(tmp_path, written, read_as):
    """`seed: 010` was seed 8, silently (the same run ID as `seed: 8`)."""
    (tmp_path / "s.yaml").write_text(SWEEP.replace("seed: 7", f"seed: {written}"))
    assert yaml.safe_load(f"v: {written}")["v"] == read_as  # what PyYAML makes of it
    result = lh("plan", tmp_path / "s.yaml", "--store", tmp_path / "store")
    one_line_exit_2(result, "targets[0]: seed:", f"{written} is read as {read_as!r} by YAML 1.1", f"write {read_as!r}")


@pytest.mark.parametrize("written", ["0x10", "10", "0", "'010'", "1_000"])
def test_numbers_that_read_as_they_look_still_pass(tmp_path, written):
    (tmp_path / "s.yaml").write_text(SWEEP.replace("seed: 7", f"seed: {written}"))
    assert lh("plan", tmp_path / "s.yaml", "--store", tmp_path / "store").exit_code == 0


def test_the_results_files_note_is_said_only_once_the_file_is_written(tmp_path, store):
    """An execute that stopped at bad input printed "it now holds this sweep's" about a file it
    never wrote."""
    results = tmp_path / "r.parquet"
    results.write_bytes(b"the other sweep's rows")
    (tmp_path / ".r.parquet.lh-sweep").write_text(str(tmp_path / "other.yaml"))
    result = lh("execute", tmp_path / "s.yaml", "--store", store, "--logs", tmp_path / "logs", "--results", results,
                env={"LH_CLAIM_WAIT_S": "soon"})
    one_line_exit_2(result, "LH_CLAIM_WAIT_S='soon'")
    assert "now holds" not in result.output and results.read_bytes() == b"the other sweep's rows"


@pytest.mark.parametrize("command", [["plan", "SWEEP"], ["status"], ["query", "select 1"]])
def test_a_negative_limit_is_refused(tmp_path, store, command):
    args = [tmp_path / "s.yaml" if a == "SWEEP" else a for a in command]
    one_line_exit_2(lh(*args, "--store", store, "--limit", "-5"), "--limit -5: must be 0 (every row) or more")


def test_a_folder_not_lambda_hats_is_named_whole_left_alone_and_not_promised_again(tmp_path, store):
    """`Dec05_10-00-00_host` was named `Dec05_10`, with Python's "[Errno 2] …manifest.json" as
    the reason and "it will be redone" about a folder that is no artifact. (Since the seventh
    adversarial pass it is not quarantined either: a name that is no ID is someone else's.)"""
    from lambda_hat.execute.driver import _open_store

    (store / "runs" / "Dec05_10-00-00_host").mkdir()
    said = tmp_path / "said.txt"
    with open(said, "w") as f:
        _open_store(store, Console(file=f, width=200, color_system=None))
    text = said.read_text()
    assert "left alone, not lambda-hat's: runs/Dec05_10-00-00_host (lh verify lists them" in text, text
    assert "redone" not in text and "Errno" not in text and "quarantined" not in text
    assert (store / "runs" / "Dec05_10-00-00_host").is_dir()


def test_widths_without_depth_name_what_to_add(tmp_path):
    (tmp_path / "s.yaml").write_text(SWEEP.replace("model: small", "model: {kind: mlp, widths: [4]}"))
    result = lh("plan", tmp_path / "s.yaml", "--store", tmp_path / "store")
    one_line_exit_2(result, "widths has 1 entry, and depth (not given) is 2: add depth: 1")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
