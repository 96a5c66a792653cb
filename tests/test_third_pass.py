"""Issue 28, what a second adversarial pass (on 1db889d) still broke: variants of the issue's
classes. Job logs written through a link (or a FIFO hanging execute), a FIFO beside the
results file hanging a no-op execute, outputs accepted inside *another* store, a directory
where a lease belongs crashing execute, `lh status` giving one store another's interrupted
jobs, gc calling a stray file in `.work/` a checkpoint, `--older-than ''` accepted, and a
link to a file called "a symbolic link to nothing". Each test fails on 1db889d.

Blocking opens are guarded by SIGALRM: the old code blocked for ever on a FIFO."""

import os
import signal
import stat
from contextlib import contextmanager

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.errors import BadInput
from lambda_hat.store.store import Store
from test_store import fill_store


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


class Blocked(BaseException):
    """Not an OSError (as TimeoutError is): the code under test must not swallow it."""


@contextmanager
def within(seconds: int):
    """Fail instead of hanging: the code under test must not block (on a FIFO)."""
    def alarm(*_):
        raise Blocked(f"blocked for {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.fixture
def victim(tmp_path):
    v = tmp_path / "outside" / "thesis.tex"
    v.parent.mkdir()
    v.write_text("four years of work\n")
    return v


@pytest.mark.parametrize("kind", ["symlink", "hard link", "fifo"])
def test_a_jobs_log_is_never_written_through_what_stands_at_its_name(tmp_path, victim, kind):
    """The worker's job logs (and the driver's note on a failed job): a symbolic link or a hard
    link planted at a log's name would have had the victim overwritten, a FIFO would have hung
    the job. A link or FIFO is refused as it is (BadInput naming the file); a hard link's name
    becomes a log of its own (a `cp -al` backup of the logs must not fail every job). The
    victim is untouched either way."""
    from lambda_hat.execute.apps import job_logs
    from lambda_hat.execute.schedule import _note_failure

    logs = tmp_path / "logs" / "build_target"
    logs.mkdir(parents=True)
    log, err = logs / "tgt_0123456789ab.log", logs / "tgt_0123456789ab.err"
    if kind == "symlink":
        log.symlink_to(victim)
        err.symlink_to(victim)
    elif kind == "hard link":
        os.link(victim, log)
        os.link(victim, err)
    else:
        os.mkfifo(log)
        os.mkfifo(err)
    with within(10):
        if kind == "hard link":
            with job_logs(log, err, tmp_path / "store"):
                print("a log of its own")
        else:
            with pytest.raises(BadInput, match="tgt_0123456789ab.log: is "):
                with job_logs(log, err, tmp_path / "store"):
                    print("never written")
        _note_failure(err, "its worker was lost", tmp_path / "store")  # swallowed where refused: the driver's summary still says it
    assert victim.read_text() == "four years of work\n"
    assert kind != "hard link" or (os.lstat(log).st_nlink == os.lstat(victim).st_nlink == 1)  # names of their own
    assert stat.S_IFMT(os.lstat(log).st_mode) == {"symlink": stat.S_IFLNK, "hard link": stat.S_IFREG,
                                                  "fifo": stat.S_IFIFO}[kind]


def test_a_jobs_log_starts_with_its_store_and_an_old_one_is_replaced(tmp_path, capsys):
    from lambda_hat.execute.apps import job_logs

    log, err = tmp_path / "a.log", tmp_path / "a.err"
    log.write_text("an older job's long log\n" * 100)
    with capsys.disabled():  # the worker's own stdout, as in a job: file descriptor 1
        with job_logs(log, err, tmp_path / "store"):
            print("working", flush=True)
    assert log.read_text() == f"store {(tmp_path / 'store').resolve()}\nworking\n"
    assert err.read_text() == ""


@pytest.mark.parametrize("sidecar", [".r.parquet.lh-source", ".r.parquet.lh-sweep"])
def test_a_fifo_beside_the_results_file_is_not_read(tmp_path, sidecar):
    """`lh execute` reads two small files it wrote beside the results file; a FIFO planted as
    either hung an execute that had nothing to do."""
    from lambda_hat.execute.driver import _results_owner_note, _results_rows_in_step

    out = tmp_path / "r.parquet"
    out.write_bytes(b"not parquet")
    os.mkfifo(tmp_path / sidecar)
    with within(10):
        assert _results_rows_in_step(out, "source") is None
        _results_owner_note(out, tmp_path / "s.yaml")


@pytest.fixture
def two_stores(tmp_path):
    mine, theirs = tmp_path / "mine", tmp_path / "theirs"
    for root in (mine, theirs):
        fill_store(root)
        Store(root).reconcile()
    return mine, theirs


@pytest.mark.parametrize("command", ["query -o", "export -o", "promote --outdir", "execute --results"])
def test_an_output_inside_another_store_is_refused(tmp_path, two_stores, command):
    """The outside-the-store rule held only for the command's own store: another store's
    next execute quarantined the file and its gc deleted it."""
    mine, theirs = two_stores
    (tmp_path / "s.yaml").write_text("targets: [{model: small, data: small}]\nsamplers: [{name: hmc}]\n")
    out = theirs / "runs" / "x.csv"
    args, flag = {
        "query -o": (["query", "select 1 as one", "--store", mine, "-o", out], "-o"),
        "export -o": (["export", "--store", mine, "-o", out], "-o"),
        "promote --outdir": (["promote", "--store", mine, "--outdir", theirs / "targets" / "gal"], "--outdir"),
        "execute --results": (["execute", tmp_path / "s.yaml", "--store", mine, "--results", out,
                               "--parsl-config", tmp_path / "missing.py"], "--results"),
    }[command]
    before = sorted(p.name for p in (theirs / "runs").iterdir()), sorted(p.name for p in (theirs / "targets").iterdir())
    result = lh(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert flag in lines[0] and f"inside the store {theirs}" in lines[0], lines
    assert (sorted(p.name for p in (theirs / "runs").iterdir()), sorted(p.name for p in (theirs / "targets").iterdir())) == before


def test_a_directory_where_a_lease_belongs_is_taken_over_without_a_traceback(tmp_path):
    from lambda_hat.store.claims import Claims

    claims = tmp_path / ".claims"
    (claims / "run_0123456789ab.lease").mkdir(parents=True)
    os.utime(claims / "run_0123456789ab.lease", (1, 1))
    me = Claims(claims, ttl_s=1.0)
    me.claim_within("run_0123456789ab", bound_s=30.0, poll_s=0.1)
    assert "run_0123456789ab" in me.held
    assert (claims / "run_0123456789ab.lease").is_file()
    assert not [p for p in claims.iterdir() if p.name.startswith(".stale-")]


def test_status_gives_an_interrupted_job_to_the_store_its_log_names(tmp_path, two_stores):
    """A job interrupted mid-build, in a logs folder two stores share: its .log names the store
    it wrote for (first line), and only that store lists it as failed."""
    mine, theirs = two_stores
    logs = tmp_path / "logs" / "build_target"
    logs.mkdir(parents=True)
    for root, tid in ((theirs, "tgt_aaaaaaaaaaaa"), (mine, "tgt_bbbbbbbbbbbb")):
        (logs / f"{tid}.log").write_text(f"store {root.resolve()}\nbuilding {tid} on h (pid 1)\n")
        (logs / f"{tid}.err").write_text("")
    for root, listed, other in ((mine, "tgt_bbbbbbbbbbbb", "tgt_aaaaaaaaaaaa"), (theirs, "tgt_aaaaaaaaaaaa", "tgt_bbbbbbbbbbbb")):
        result = lh("status", "--store", root, "--logs", tmp_path / "logs")
        assert result.exit_code == 0, result.output
        failed = result.stdout.split("failed jobs: ")[1]
        assert failed.startswith("1 ") and listed in failed and other not in failed, result.stdout


def test_gc_keeps_a_stray_file_in_the_work_directory_says_so_and_refuses_an_empty_age(tmp_path):
    """It was called a checkpoint; then (until the seventh adversarial pass) deleted: a file
    that no run's ID names is someone's, kept and reported."""
    root = tmp_path / "store"
    fill_store(root)
    work = Store(root).layout.work_root
    work.mkdir(exist_ok=True)
    (work / "cal.md").write_text("not a checkpoint\n")
    result = lh("gc", "--store", root)
    assert result.exit_code == 0, result.output
    flat = " ".join(result.stdout.split())
    assert "cal.md" in flat and "not lambda-hat's" in flat and "checkpoint" not in flat, result.stdout
    assert (work / "cal.md").read_text() == "not a checkpoint\n"
    result = lh("gc", "--store", root, "--older-than", "")
    assert result.exit_code == 2 and "--older-than ''" in result.stderr, result.output


def test_a_link_to_a_file_is_not_called_a_link_to_nothing(tmp_path):
    root = tmp_path / "store"
    fill_store(root)
    (tmp_path / "file.csv").write_text("x\n")
    (tmp_path / "link.csv").symlink_to(tmp_path / "file.csv")
    result = lh("promote", "--store", root, "--outdir", tmp_path / "link.csv")
    assert result.exit_code == 2 and "is a symbolic link to a file, not a directory" in result.stderr, result.output
    assert (tmp_path / "file.csv").read_text() == "x\n"
