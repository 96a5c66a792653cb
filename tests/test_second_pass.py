"""What a second adversarial pass (issue 28) still broke, each a test that failed before its fix:
links planted as the store's own directories (execute wrote runs, leases, quarantined entries
there: outside the store), a link planted as a run's work directory (the sampling job wrote its
checkpoint through it), a huge `--limit` (traceback), a `--limit 0` table holding every row in
memory past the memory limit, a tiny γ whose start scale 1/√γ no halving could bring back, and
two sweeps with one file stem replacing each other's results without a word."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lhproc import env, lh as lh_proc, sgld_sweep
from test_store import fill_store

SWEEP = sgld_sweep([1])


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.mark.parametrize("name", ["runs", "targets", ".work", ".claims", ".quarantine", ".jax_cache"])
def test_execute_refuses_a_store_whose_own_directory_is_a_link(tmp_path, name):
    root, outside = tmp_path / "store", tmp_path / "outside"
    fill_store(root)
    outside.mkdir()
    moved = root / name
    if moved.exists():
        moved.rename(outside / "was")
    moved.symlink_to(outside)
    (tmp_path / "s.yaml").write_text(SWEEP)
    before = sorted(p.name for p in outside.rglob("*"))
    result = lh("execute", tmp_path / "s.yaml", "--store", root, "--logs", tmp_path / "logs",
                "--results", tmp_path / "r.parquet")
    assert result.exit_code == 2 and f"{moved}: a symbolic link in the store" in result.stderr, result.output
    assert sorted(p.name for p in outside.rglob("*")) == before
    if name in (".work", ".claims", ".quarantine"):  # lh gc removes these links, as links
        assert lh("gc", "--store", root).exit_code == 0 and not os.path.lexists(moved)


@pytest.mark.parametrize("name", [".work", ".claims", ".quarantine", ".jax_cache"])
@pytest.mark.parametrize("kind", ["file", "fifo"])
def test_execute_refuses_a_store_whose_own_directory_is_not_one(tmp_path, name, kind):
    """Fourth adversarial pass: a file as .claims or .quarantine ended in a traceback, a FIFO as
    .work failed every run on every execute. Now one line, exit 2, before any work."""
    root = tmp_path / "store"
    fill_store(root)
    moved = root / name
    if moved.exists():
        shutil.rmtree(moved)
    if kind == "file":
        moved.write_text("x")
    else:
        os.mkfifo(moved)
    (tmp_path / "s.yaml").write_text(SWEEP)
    result = lh("execute", tmp_path / "s.yaml", "--store", root, "--logs", tmp_path / "logs",
                "--results", tmp_path / "r.parquet")
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert f"{moved}: {'a file' if kind == 'file' else 'a FIFO'} where the store's own directory belongs" in lines[0]


def test_a_linked_work_directory_is_removed_never_written_through(tmp_path):
    from lambda_hat.science.pipeline import Checkpoint
    from lambda_hat.store.worker import SegmentStore

    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "checkpoint.npz").write_text("precious")
    work = tmp_path / ".work" / "run_0123456789ab"
    work.parent.mkdir()
    work.symlink_to(outside)
    seg = SegmentStore(work, interval_s=0.0, run_id=work.name)
    assert seg.load() is None
    seg.on_segment(Checkpoint(10, [np.zeros((2, 3))], 0.1, 1.0, 0.1), {"llc": np.ones((2, 10))})
    assert sorted(p.name for p in outside.iterdir()) == ["checkpoint.npz"]
    assert (outside / "checkpoint.npz").read_text() == "precious"
    assert work.is_dir() and not work.is_symlink() and (work / "checkpoint.npz").is_file()


def test_query_limits_past_int64_and_a_limit_0_table_stay_bounded(tmp_path):
    from lambda_hat.store import Store

    root = tmp_path / "store"
    fill_store(root)
    Store(root).reconcile()  # the index
    big = lh("query", "select 1 as x", "--store", root, "--limit", str(2**64))
    assert big.exit_code == 0 and big.stdout.splitlines()[2].strip() == "1", big.output
    # 20M rows as a table: fetched only up to the table's most, so memory stays far below what
    # holding every row takes (~6 GB for 200M rows before).
    # Peak RSS as VmHWM of the child's own address space: ru_maxrss is carried across fork and
    # exec, so it would report the test runner's own peak (2.7 GB in a full suite run).
    code = ("import re, sys; from lambda_hat.cli import app; sys.argv = ['lh', 'query', "
            f"'select * from range(20000000)', '--store', {str(root)!r}, '--limit', '0'];\n"
            "try:\n    app()\nexcept SystemExit:\n    pass\n"
            "hwm = re.search(r'VmHWM:\\s+(\\d+) kB', open('/proc/self/status').read()).group(1)\n"
            "print('maxrss_kb', hwm, file=sys.stderr)")
    proc = subprocess.run([sys.executable, "-c", code], env=env(COLUMNS="80"), capture_output=True, text=True,
                          timeout=300)
    assert "first 100000 rows shown, more not fetched" in proc.stdout, proc.stdout[-500:] + proc.stderr[-2000:]
    rss_kb = int(proc.stderr.split("maxrss_kb")[1].split()[0])
    assert rss_kb < 800_000, rss_kb  # 20M Python tuples alone would be ~1.5 GB


def test_a_tiny_gamma_starts_finite(jax64):
    """γ = 1e-12 at a flat w* (polynomial w^64: κ = 0) started at scale 1/√γ = 1e6; 12 halvings
    left 244, and every draw was non-finite. Capped, the start is finite and near w*."""
    jnp = jax64.numpy
    from lambda_hat.science.posterior import MAX_START_SCALE, dispersed_start, init_scale

    w_star = jnp.zeros(1)

    def loss(w):
        return jnp.sum(w**64)

    key = jax64.random.PRNGKey(0)
    assert float(init_scale(key, loss, w_star, 1000.0 / np.log(1000.0), 1e-12)) == MAX_START_SCALE
    w0 = dispersed_start(key, loss, w_star, 1000.0 / np.log(1000.0), 1e-12)
    assert np.isfinite(np.asarray(w0)).all() and float(jnp.abs(w0).max()) < 2.0
    # Starts with any width below the cap are untouched: γ = 1 gives exactly 1/√γ = 1.
    assert float(init_scale(key, loss, w_star, 100.0, 1.0)) == 1.0


def test_two_sweeps_with_one_stem_say_so_when_one_replaces_the_others_results(tmp_path):
    (tmp_path / "other").mkdir()
    (tmp_path / "a.yaml").write_text(SWEEP)
    (tmp_path / "other" / "a.yaml").write_text(SWEEP)  # the same runs, in the same store (quick)
    first = lh_proc(tmp_path, "execute", "a.yaml", "--workers", "1").stdout
    assert "note:" not in first
    assert "nothing to do" in lh_proc(tmp_path, "execute", "a.yaml").stdout  # its own file: no note
    second = lh_proc(tmp_path, "execute", "other/a.yaml").stdout
    assert f"note: results/a.parquet held the runs of {tmp_path / 'a.yaml'};" in second, second
