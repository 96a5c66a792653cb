"""Issue 28, what a fourth adversarial pass broke around the index and the quarantine: the
`.quarantine-reason` written through a link planted inside the artifact, the stats sidecar's
temporary file written through a link, a FIFO at the index's WAL hanging every command, and a
hard-linked copy of the store (`cp -al`) sharing one index file, so that one store's writes
showed in the other. Each test fails on f5d11c3.

Blocking opens are guarded: the old code blocked for ever on a FIFO. By SIGALRM where Python
opens it; by a child process's timeout where DuckDB does (in a thread no signal reaches)."""

import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
import yaml
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.planner import expand
from lambda_hat.store.store import Store
from lambda_hat.sweep import sweep_from_dict
import lhproc
from test_store import fill_store
from test_third_pass import within

# One target and one run of test_store.SWEEP: a no-op `lh execute` over a store filled with it.
ONE_RUN = {"targets": [{"model": "small", "data": "small", "grid": {"seed": [1]}}], "samplers": [{"name": "hmc"}]}


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "outside" / "thesis.tex"
    v.parent.mkdir()
    v.write_text("four years of work\n")
    return v


@pytest.fixture
def store(tmp_path):
    """A store of test_store.SWEEP (fake artifacts, indexed) and a sweep file of one of its runs."""
    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()
    sweep = tmp_path / "one.yaml"
    sweep.write_text(yaml.safe_dump(ONE_RUN))
    return root, sweep


def noop_execute(root, sweep, tmp_path):
    return lh("execute", sweep, "--store", root, "--logs", tmp_path / "logs", "--results", tmp_path / "r.parquet")


def test_the_quarantine_reason_is_never_written_through_a_link_inside_the_artifact(tmp_path, store, victim):
    """A damaged run carrying a link named `.quarantine-reason`: the reason was written through it."""
    root, sweep = store
    mine = {r.run_id for r in expand(sweep_from_dict(ONE_RUN)).runs}
    run = next(p for p in sorted((root / "runs").iterdir()) if p.name not in mine)
    (run / ".quarantine-reason").symlink_to(victim)
    with open(run / "manifest.json", "a") as f:
        f.write("{}\n")
    result = noop_execute(root, sweep, tmp_path)
    assert result.exit_code == 0, result.output
    assert victim.read_text() == "four years of work\n"
    [moved] = [p for p in (root / ".quarantine").iterdir() if p.name.startswith(run.name)]
    reason = moved / ".quarantine-reason"
    assert stat.S_ISREG(os.lstat(reason).st_mode) and "JSON" in reason.read_text(), reason.read_text()


@pytest.mark.parametrize("kind", ["hard link", "fifo"])
def test_the_quarantine_reason_is_never_written_into_a_hard_link_or_a_fifo(tmp_path, store, victim, kind):
    """A hard link there had the victim overwritten too; a FIFO hung the reconcile."""
    root, _ = store
    run = sorted((root / "runs").iterdir())[0]
    if kind == "hard link":
        os.link(victim, run / ".quarantine-reason")
    else:
        os.mkfifo(run / ".quarantine-reason")
    (run / "manifest.json").unlink()
    with within(20):
        Store(root).reconcile()
    assert victim.read_text() == "four years of work\n"
    [moved] = [p for p in (root / ".quarantine").iterdir() if p.name.startswith(run.name)]
    assert stat.S_ISREG(os.lstat(moved / ".quarantine-reason").st_mode)


def test_the_stats_sidecar_is_never_written_through_a_link_at_its_temporary_name(tmp_path, store, victim):
    """A no-op execute wrote `.index.stats.<pid>.tmp` by name: a link planted there had the victim
    overwritten and left `.index.stats` a link to it."""
    root, sweep = store
    (root / ".index.stats").unlink(missing_ok=True)
    old = time.time() - 60  # an index old enough for the sidecar to be written
    os.utime(root / "index.duckdb", (old, old))
    (root / f".index.stats.{os.getpid()}.tmp").symlink_to(victim)
    result = noop_execute(root, sweep, tmp_path)
    assert result.exit_code == 0 and "nothing to do" in result.stdout, result.output
    assert victim.read_text() == "four years of work\n"
    assert stat.S_ISREG(os.lstat(root / ".index.stats").st_mode)
    assert not [p for p in root.iterdir() if p.name.startswith((".tmp-", ".index.stats.")) and not p.is_symlink()]


READERS = {"query": ["query", "select count(*) from runs"], "status": ["status"]}
OTHERS = {"index rebuild": ["index", "rebuild"], "execute": ["execute", "SWEEP", "--logs", "LOGS"], "plan": ["plan", "SWEEP"]}


def lh_within(tmp_path, args, seconds=30):
    """`lh` in a process of its own, killed after `seconds`: DuckDB opens the WAL in a thread of
    its own, where no SIGALRM reaches it, so only a timeout from outside turns a hang into a failure."""
    try:
        return lhproc.lh(tmp_path, *map(str, args), check=False, timeout=seconds)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"lh {' '.join(map(str, args))} blocked for {seconds} s") from None


# A link at the WAL for writers: tests/test_output_safety.py.
@pytest.mark.parametrize("what, command", [("fifo", c) for c in [*READERS, *OTHERS]] + [("link", c) for c in READERS])
def test_a_wal_that_is_not_a_file_is_named_or_moved_aside_never_opened(tmp_path, store, victim, command, what):
    """A FIFO at `index.duckdb.wal` hung every command (DuckDB opened it); a link there was read
    by readers. Readers say so in one line; writers move the index aside and rebuild it."""
    root, sweep = store
    wal = root / "index.duckdb.wal"
    if what == "fifo":
        os.mkfifo(wal)
    else:
        wal.symlink_to(victim)
    places = {"SWEEP": sweep, "LOGS": tmp_path / "logs"}
    proc = lh_within(tmp_path, [places.get(a, a) for a in {**READERS, **OTHERS}[command]] + ["--store", root])
    if command in READERS:
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1, proc.stdout + proc.stderr
        assert f"{wal}: is a {'FIFO' if what == 'fifo' else 'symbolic link'}" in lines[0], lines
        assert "lh index rebuild" in lines[0], lines
    else:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    if command in ("index rebuild", "execute"):
        assert not os.path.lexists(wal) or stat.S_ISREG(os.lstat(wal).st_mode)
        proc = lh_within(tmp_path, ["query", "select count(*) as n from runs", "--store", root, "--format", "csv"])
        assert proc.returncode == 0 and proc.stdout.split()[-1] == "4", proc.stdout + proc.stderr
    assert victim.read_text() == "four years of work\n"


PENDING = ("import duckdb, os, sys; con = duckdb.connect(sys.argv[1]); con.execute('PRAGMA disable_checkpoint_on_shutdown'); "
           "con.execute(\"SET checkpoint_threshold = '1TB'\"); con.execute('CREATE TABLE pending (x INTEGER)'); os._exit(0)")


@pytest.mark.parametrize("wal", [False, True])
def test_a_hard_linked_copy_of_the_store_gets_an_index_of_its_own_on_its_first_write(tmp_path, store, wal):
    """`cp -al store copy` shares index.duckdb (and a WAL, if there was one): DuckDB wrote the
    copy's changes in place, so the original store listed the copy's runs."""
    root, _ = store
    copy = tmp_path / "copy"
    index_path = root / "index.duckdb"
    if wal:  # a transaction left in the WAL by a writer that died before its checkpoint
        subprocess.run([sys.executable, "-c", PENDING, str(index_path)], check=True)
        assert index_path.with_name("index.duckdb.wal").is_file()
    subprocess.run(["cp", "-al", str(root), str(copy)], check=True)
    assert os.stat(copy / "index.duckdb").st_ino == os.stat(index_path).st_ino
    gone = sorted((copy / "runs").iterdir())[0]
    shutil.rmtree(gone)
    result = lh("index", "rebuild", "--store", copy)
    assert result.exit_code == 0 and "3 runs" in result.stdout, result.output
    assert os.stat(copy / "index.duckdb").st_ino != os.stat(index_path).st_ino
    counts = {}
    for where in (root, copy):
        result = lh("query", f"select count(*) as n, count(*) filter (where run_id = '{gone.name}') as gone from runs",
                    "--store", where, "--format", "csv")
        assert result.exit_code == 0, result.output
        counts[where.name] = result.stdout.split()[-1]
    assert counts == {"store": "4,1", "copy": "3,0"}, counts
    if wal:  # the original store's WAL is its own still: its transaction is there
        import duckdb

        with duckdb.connect(str(index_path), read_only=True) as con:
            assert con.execute("select count(*) from pending").fetchone() == (0,)
    result = lh("status", "--store", root)
    assert result.exit_code == 0 and "runs 4 (4 ok)" in " ".join(result.stdout.split()), result.stdout
