"""Issue 28, what a fourth adversarial pass broke in lh verify, lh gc and the worker's use of
JAX's cache in the store: compile-lock markers followed through planted links (#6), links and
FIFOs in `.jax_cache` followed by JAX, unseen by verify and gc (#10), gc removing the finished
runs of a target being rebuilt (#11), verify passing a corrupt index (#14), concurrent gcs
each counting what another removed (#19), and "1 entries" (#20). Each test fails on f5d11c3.

One real store (one target, two SGLD runs) is made per module and copied per test. Blocking
opens in this process are guarded by SIGALRM; `lh execute` runs in a child process of its
own session, killed with everything it started if it hangs."""

import os
import shutil
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lhproc import env, lh as lh_proc, sgld_sweep
from typer.testing import CliRunner

from lambda_hat.cli import app
from test_third_pass import within

SWEEP = sgld_sweep([1, 2])


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "300"})


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    """A directory with s.yaml and its store, executed once: one target, two runs, JAX's cache
    and the compile locks filled."""
    cwd = tmp_path_factory.mktemp("built")
    (cwd / "s.yaml").write_text(SWEEP)
    lh_proc(cwd, "execute", "s.yaml")
    return cwd


@pytest.fixture
def work(built, tmp_path) -> Path:
    """A copy of the built directory (links copied as links), and an empty `outside/`."""
    cwd = tmp_path / "w"
    shutil.copytree(built, cwd, symlinks=True)
    (tmp_path / "outside").mkdir()
    return cwd


def ids(store: Path) -> tuple[str, list[str]]:
    (tid,) = sorted(os.listdir(store / "targets"))
    return tid, sorted(p for p in os.listdir(store / "runs") if p.startswith("run_"))


def execute(cwd: Path, timeout_s: float = 240) -> subprocess.CompletedProcess:
    """`lh execute s.yaml` in its own session; on a hang, the whole session is killed and the
    test fails (a worker blocked on a FIFO would otherwise outlive the test)."""
    proc = subprocess.Popen([sys.executable, "-m", "lambda_hat.cli", "execute", "s.yaml"], cwd=cwd, env=env(),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"lh execute hung for {timeout_s} s:\n{out[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, "")


def resample_one_run(cwd: Path) -> str:
    """Remove one finished run, so that the next execute samples (and compiles) again."""
    _, runs = ids(cwd / "store")
    shutil.rmtree(cwd / "store" / "runs" / runs[0])
    return runs[0]


# ------------------------------------------------------------------ #6 compile-lock markers


def test_compile_lock_markers_planted_as_links_are_never_followed(work, tmp_path):
    """Every `<key>.done` and `<key>.lock` (the keys are deterministic) replaced by a link to a
    path outside the store: execute created and touched those paths. Now the links are
    removed as links and the markers made anew; nothing outside appears."""
    outside = tmp_path / "outside"
    locks = work / "store" / ".jax_cache" / "lh-compile-locks"
    markers = sorted(locks.iterdir())
    assert any(p.suffix == ".done" for p in markers) and any(p.suffix == ".lock" for p in markers)
    for p in markers:
        p.unlink()
        p.symlink_to(outside / p.name)
    run = resample_one_run(work)
    result = execute(work)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (work / "store" / "runs" / run / "manifest.json").is_file()
    assert sorted(os.listdir(outside)) == []
    for p in locks.iterdir():  # the markers are regular files of the store's own again
        assert stat.S_ISREG(os.lstat(p).st_mode), p


@pytest.mark.parametrize("planted", ["symlink", "fifo", "directory link"])
def test_compile_once_never_opens_through_what_stands_at_a_markers_name(tmp_path, planted):
    """The guard itself, in this process: a link, FIFO or link to a directory at a marker's
    name is replaced, never followed, never blocked on; the program is compiled either way."""
    from lambda_hat.store.worker import CompileOnce

    outside, locks = tmp_path / "outside", tmp_path / "cache" / "lh-compile-locks"
    outside.mkdir()
    locks.mkdir(parents=True)
    for name in ("k.lock", "k.done"):
        if planted == "symlink":
            (locks / name).symlink_to(outside / name)
        elif planted == "fifo":
            os.mkfifo(locks / name)
        else:
            (locks / name).symlink_to(outside)
    compiled = []
    with within(10):
        with CompileOnce(locks, wait_s=5)("k"):
            compiled.append(True)
    assert compiled == [True] and os.listdir(outside) == []
    assert stat.S_ISREG(os.lstat(locks / "k.done").st_mode)


# ------------------------------------------------------------------ #10 JAX's cache


def test_links_and_fifos_among_jaxs_cache_files_are_removed_before_a_worker_compiles(work, tmp_path):
    """JAX's cache files replaced by FIFOs (a worker reading one hung for ever) and by links to
    paths outside the store (JAX wrote compiled programs there). The worker removes them before
    it points JAX at the cache: the run is sampled, nothing outside appears."""
    outside = tmp_path / "outside"
    cache = work / "store" / ".jax_cache"
    entries = sorted(p for p in cache.iterdir() if p.is_file())
    assert len(entries) >= 2
    for i, p in enumerate(entries):
        p.unlink()
        if i % 2:
            p.symlink_to(outside / p.name)
        else:
            os.mkfifo(p)
    run = resample_one_run(work)
    result = execute(work, timeout_s=180)
    assert result.returncode == 0, result.stdout[-3000:]
    assert (work / "store" / "runs" / run / "manifest.json").is_file()
    assert sorted(os.listdir(outside)) == []
    odd = [p for p in cache.rglob("*") if not (stat.S_ISREG(os.lstat(p).st_mode) or stat.S_ISDIR(os.lstat(p).st_mode))]
    assert odd == []


def test_verify_reports_and_gc_removes_what_is_not_a_file_in_jaxs_cache(work, tmp_path):
    """A FIFO, a link to a file outside and a link to a directory outside, in the cache and
    among the compile locks: verify said 0 problems and gc removed nothing. Now verify reports
    each and exits 1; gc removes each as it is (the files outside stay), and nothing else."""
    outside = tmp_path / "outside"
    (outside / "precious").write_text("keep me\n")
    store = work / "store"
    cache, locks = store / ".jax_cache", store / ".jax_cache" / "lh-compile-locks"
    regular = sorted(str(p) for p in cache.rglob("*") if p.is_file())
    planted = [cache / "jit_f-0123456789abcdef-cache", cache / "link-cache", locks / "k.lock", locks / "dir.done"]
    os.mkfifo(planted[0])
    planted[1].symlink_to(outside / "precious")
    os.mkfifo(planted[2])
    planted[3].symlink_to(outside)
    with within(30):
        v = lh("verify", "--store", store)
    assert v.exit_code == 1, v.output
    for p in planted:
        assert f"{p}: " in v.output, v.output
    assert "4 problems" in v.output
    with within(30):
        g = lh("gc", "--store", store)
    assert g.exit_code == 0, g.output
    assert not any(os.path.lexists(p) for p in planted)
    assert "removed 4 entries" in g.output, g.output
    assert (outside / "precious").read_text() == "keep me\n"
    assert sorted(str(p) for p in cache.rglob("*") if p.is_file()) == regular
    assert lh("verify", "--store", store).exit_code == 0


# ------------------------------------------------------------------ #11 runs of a target coming back


def _claimed(store: Path, tid: str):
    from lambda_hat.store.store import Store

    claims = Store(store).claims()
    assert claims.acquire(tid) is None  # None: taken by this (live) process
    return claims


def _being_built(store: Path, tid: str):
    from lambda_hat.store.artifacts import tmp_name

    tmp = store / "targets" / tmp_name(tid)  # this process's: a live writer
    tmp.mkdir()
    return tmp


@pytest.mark.parametrize("state", ["quarantined", "claimed", "being built"])
def test_gc_keeps_the_runs_of_a_target_that_is_coming_back(work, state):
    """A damaged target quarantined (by a sampling job, or an execute stopped right after),
    then rebuilt under a driver's claim, in a temporary directory: gc removed its finished runs
    as orphans at each of these moments, though the rebuild reproduces the target they were
    sampled on. Now they are kept, by every gc while that lasts (a quarantined target stays while
    runs wait for it), and verify calls none of them an orphan."""
    from lambda_hat.store.artifacts import quarantine

    store = work / "store"
    tid, runs = ids(store)
    if state == "quarantined":
        assert quarantine(store / "targets" / tid, store / ".quarantine", "damaged (test)") is not None
    else:
        shutil.rmtree(store / "targets" / tid)
        hold = _claimed(store, tid) if state == "claimed" else _being_built(store, tid)
    for _ in range(2):
        g = lh("gc", "--store", store)
        assert g.exit_code == 0, g.output
        assert "orphan" not in g.output, g.output
        assert sorted(p for p in os.listdir(store / "runs") if p.startswith("run_")) == runs
    v = lh("verify", "--store", store)
    assert "orphan" not in v.output, v.output
    if state == "quarantined":
        assert len(os.listdir(store / ".quarantine")) == 1, g.output
        assert v.exit_code == 0, v.output
    elif state == "claimed":
        hold.release(tid)
    # Gone for good (nothing claims, builds or quarantined it): orphans, and gc removes them.
    shutil.rmtree(store / ".quarantine", ignore_errors=True)
    if state == "being built":
        shutil.rmtree(hold)
    v = lh("verify", "--store", store)
    assert v.exit_code == 1 and v.output.count("orphan: its target") == 2, v.output
    g = lh("gc", "--store", store)
    assert g.exit_code == 0 and g.output.count("orphan: its target") == 2, g.output
    assert [p for p in os.listdir(store / "runs") if p.startswith("run_")] == []


def test_gc_removes_a_quarantined_target_once_it_is_rebuilt(work):
    """The quarantined copy is kept only while its runs wait: once the target is back in
    targets/, gc removes it."""
    store = work / "store"
    tid, _ = ids(store)
    shutil.copytree(store / "targets" / tid, store / ".quarantine" / f"{tid}-20260101T000000-abcdef")
    g = lh("gc", "--store", store)
    assert g.exit_code == 0 and "removed 1 entry," in g.output, g.output
    assert os.listdir(store / ".quarantine") == []


# ------------------------------------------------------------------ #14 corrupt index


def test_verify_counts_an_unusable_index_as_a_problem(work):
    store = work / "store"
    (store / "index.duckdb").write_bytes(os.urandom(5000))
    v = lh("verify", "--store", store)
    assert "not a usable DuckDB index" in v.output, v.output
    assert v.exit_code == 1 and "1 problem\n" in v.output, v.output


# ------------------------------------------------------------------ #19 concurrent gcs


def test_concurrent_gcs_count_only_what_each_removed(work):
    """Three gcs at once on 30 quarantined entries: each said "removed 30 entries". Now the
    counts add up to 30, and none fails on an entry another removed first."""
    from lambda_hat.store.store import Store

    q = work / "store" / ".quarantine"
    q.mkdir(exist_ok=True)
    for i in range(30):
        d = q / f"run_{i:012x}-20260101T000000-abcdef"
        d.mkdir()
        for j in range(20):
            (d / f"f{j}").write_bytes(b"x" * 100)
    barrier = threading.Barrier(3)
    reports, errors = [], []

    def one_gc():
        try:
            barrier.wait()
            reports.append(Store(work / "store").gc())
        except BaseException as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=one_gc) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(reports) == 3
    assert os.listdir(q) == []
    removed = [p for r in reports for p, _ in r.removed]
    assert sorted(removed) == sorted(set(removed)) and len(removed) == 30, [len(r.removed) for r in reports]
    assert [r.failed for r in reports] == [[], [], []]


# ------------------------------------------------------------------ #20 wording


def test_counts_of_one_are_worded_in_the_singular(work):
    store = work / "store"
    (store / ".quarantine").mkdir(exist_ok=True)
    (store / ".quarantine" / "run_000000000001-20260101T000000-abcdef").mkdir()
    g = lh("gc", "--store", store, "--dry-run")
    assert "would remove 1 entry," in g.output, g.output
    g = lh("gc", "--store", store)
    assert "removed 1 entry," in g.output, g.output
    tid, runs = ids(store)
    v = lh("verify", "--store", store, runs[0])
    assert v.exit_code == 0 and "1 artifact checked" in v.output and "0 problems" in v.output, v.output
    (store / "runs" / runs[0] / "manifest.json").write_text("{}")
    v = lh("verify", "--store", store, runs[0])
    assert v.exit_code == 1 and "1 artifact checked" in v.output and ", 1 problem\n" in v.output, v.output
