"""Write only regular files we create; delete only what we own (issue 28, items 1-3).

Every write and delete path of the CLI (query -o, export -o, execute --results / --logs,
promote --outdir, gc, verify, index rebuild) against symbolic links, FIFOs and devices, in a
sandbox under tmp_path: each must refuse (exit 2, one line naming the option) or remove the
link itself, and leave what lies outside the store exactly as it was, content and type. Meant
to run as root (as in CI and on clusters), where nothing but our own checks stands in the way.
"""

import os
import shutil
import stat
import subprocess
import sys
import time

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store import index
from lambda_hat.store.store import Store
from test_store import fill_store

SWEEP = "targets: [{model: small, data: small}]\nsamplers: [{name: hmc}]\n"


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "200"})


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "store"
    ex, _ = fill_store(root)
    Store(root).reconcile()
    return root, ex


@pytest.fixture
def outside(tmp_path):
    """A folder that is not ours: a file, a subfolder with a file."""
    d = tmp_path / "outside"
    (d / "sub").mkdir(parents=True)
    (d / "thesis.tex").write_text("\\chapter{Four years of work}\n")
    (d / "sub" / "notes.txt").write_text("keep me\n")
    return d


def state(*paths):
    """What a path is, without following it (type, link target, device, content of a regular
    file), and the same for everything under a real directory."""
    out = {}
    todo = list(paths)
    while todo:
        p = todo.pop()
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            out[str(p)] = None
            continue
        kind = stat.S_IFMT(st.st_mode)
        if stat.S_ISLNK(st.st_mode):
            out[str(p)] = (kind, os.readlink(p))
        elif stat.S_ISREG(st.st_mode):
            out[str(p)] = (kind, open(p, "rb").read())
        elif stat.S_ISDIR(st.st_mode):
            out[str(p)] = (kind, sorted(os.listdir(p)))
            todo += [os.path.join(p, n) for n in os.listdir(p)]
        else:
            out[str(p)] = (kind, st.st_rdev)
    return out


def plant(kind, path, outside):
    """Put a non-regular file at `path`: what a careless or hostile -o may name."""
    if kind == "symlink":
        path.symlink_to(outside / "thesis.tex")
    elif kind == "dangling symlink":
        path.symlink_to(outside / "not-yet.csv")
    elif kind == "symlink to /dev/null":
        path.symlink_to("/dev/null")
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "device":
        try:  # a character device of our own, like /dev/null (1, 3): as root we may make one
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except PermissionError:
            pytest.skip("cannot make a device node here")
    elif kind == "directory":
        path.mkdir()
    else:
        raise AssertionError(kind)


KINDS = ["symlink", "dangling symlink", "symlink to /dev/null", "fifo", "device", "directory"]


def one_error_line(result, *needles):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert len(lines) == 1 and all(n in lines[0] for n in needles), result.stderr


def dev_null():
    st = os.stat("/dev/null")
    return stat.S_ISCHR(st.st_mode), st.st_rdev


def file_output_commands(root, out):
    """Every command that writes one file, with the option that names it."""
    return {
        "query -o": (["query", "select 1 as one", "--store", root, "--format", "csv", "-o", out], "-o"),
        "export -o": (["export", "--store", root, "-o", out], "-o"),
        # --parsl-config names a missing file: were --results not refused first, the command
        # would stop there (and never run a job), with another message.
        "execute --results": (["execute", root.parent / "s.yaml", "--store", root, "--results", out,
                               "--parsl-config", root.parent / "missing.py"], "--results"),
    }


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("command", ["query -o", "export -o", "execute --results"])
def test_a_file_output_that_is_not_a_regular_file_is_refused_before_any_work(tmp_path, store, outside, kind, command):
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    out = tmp_path / "out.csv"
    plant(kind, out, outside)
    args, flag = file_output_commands(root, out)[command]
    before, null_before = state(out, outside, root), dev_null()
    result = lh(*args)
    one_error_line(result, flag, str(out))
    assert state(out, outside, root) == before  # the planted entry, what it points to, the store
    assert dev_null() == null_before == (True, os.makedev(1, 3))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


@pytest.mark.parametrize("command", ["query -o", "export -o", "execute --results"])
def test_a_regular_file_output_is_replaced_and_nothing_else(tmp_path, store, command):
    """The refusal is about what the path is, not that it exists: a regular file is rewritten."""
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    out = tmp_path / "out.csv"
    out.write_text("old results\n")
    args, _ = file_output_commands(root, out)[command]
    result = lh(*args)
    if command == "execute --results":  # checked, then stopped by the missing --parsl-config
        assert result.exit_code == 2 and "--parsl-config" in result.stderr, result.output
        assert out.read_text() == "old results\n"
    else:
        assert result.exit_code == 0, result.output
        assert out.read_text().startswith(("one\n", "run_id,"))
        assert stat.S_ISREG(os.lstat(out).st_mode)


@pytest.mark.parametrize("where", ["store root", "runs/", "through a symlinked parent"])
@pytest.mark.parametrize("command", ["query -o", "export -o", "execute --results", "execute --logs", "promote --outdir"])
def test_outputs_inside_the_store_are_refused_naming_the_option(tmp_path, store, where, command):
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    if where == "through a symlinked parent":
        (tmp_path / "alias").symlink_to(root)
        base = tmp_path / "alias"
    else:
        base = root if where == "store root" else root / "runs"
    out = base / "x.csv"
    args, flag = {**file_output_commands(root, out),
                  "execute --logs": (["execute", tmp_path / "s.yaml", "--store", root, "--logs", base / "logs",
                                      "--results", tmp_path / "r.csv", "--parsl-config", tmp_path / "missing.py"],
                                     "--logs"),
                  "promote --outdir": (["promote", "--store", root, "--outdir", base / "gal"], "--outdir")}[command]
    before = state(root)
    result = lh(*args)
    one_error_line(result, flag, "inside the store")
    assert " -o " not in result.stderr or flag == "-o"
    assert state(root) == before


def test_execute_from_inside_the_store_refuses_before_parsl_writes_its_run_directory_there(tmp_path, store,
                                                                                           monkeypatch):
    """Parsl writes `parsl_runinfo/` in the current directory: run from inside the store, that was
    a directory in the store that neither verify nor gc named. Refused before any work (exit 2)."""
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    for cwd in (root, root / "runs"):
        monkeypatch.chdir(cwd)
        before = state(root)
        result = lh("execute", tmp_path / "s.yaml", "--store", root, "--logs", tmp_path / "logs",
                    "--results", tmp_path / "r.csv", "--parsl-config", tmp_path / "missing.py")
        one_error_line(result, "current directory is inside the store", "run lh execute from outside the store")
        assert state(root) == before and not (cwd / "parsl_runinfo").exists()


def test_promote_dir_without_promote_is_refused_not_ignored(tmp_path, store):
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    result = lh("execute", tmp_path / "s.yaml", "--store", root, "--promote-dir", tmp_path / "gal",
                "--parsl-config", tmp_path / "missing.py")
    one_error_line(result, "--promote-dir", "only with --promote")
    assert not (tmp_path / "gal").exists()


GALLERY_CASES = [(kind, entry) for entry in ("index.html", ".promote.json", "runs", "targets/tgt_0123456789ab")
                 for kind in ("symlink", "fifo", "device", "symlink to /dev/null")
                 # the old code blocked reading a FIFO .promote.json: index.html shows the FIFO case
                 if (kind, entry) != ("fifo", ".promote.json")]


@pytest.mark.parametrize("kind, entry", GALLERY_CASES)
def test_promote_refuses_a_gallery_holding_what_it_did_not_write(tmp_path, store, outside, kind, entry):
    root, _ = store
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    (gallery / entry).parent.mkdir(parents=True, exist_ok=True)
    if kind == "symlink" and entry in ("runs", "targets/tgt_0123456789ab"):
        (gallery / entry).symlink_to(outside / "sub")  # promote would write its plots in there
    else:
        plant(kind, gallery / entry, outside)
    before, null_before = state(gallery, outside, root), dev_null()
    result = lh("promote", "--store", root, "--outdir", gallery)
    one_error_line(result, "--outdir", entry.split("/")[0])
    assert state(gallery, outside, root) == before
    assert dev_null() == null_before


@pytest.mark.parametrize("kind", ["dangling symlink", "fifo", "device"])
def test_execute_refuses_logs_and_promote_dir_that_are_not_directories(tmp_path, store, outside, kind):
    root, _ = store
    (tmp_path / "s.yaml").write_text(SWEEP)
    for flag in ("--logs", "--promote-dir"):
        path = tmp_path / f"p{flag}"
        plant(kind, path, outside)
        before = state(path, outside, root)
        extra = ["--promote"] if flag == "--promote-dir" else []
        result = lh("execute", tmp_path / "s.yaml", "--store", root, flag, path, *extra,
                    "--parsl-config", tmp_path / "missing.py")
        one_error_line(result, flag, "not a directory")
        assert state(path, outside, root) == before


# --------------------------------------------------------------------------- gc, verify, reconcile


def test_gc_that_cannot_remove_what_it_should_says_so_and_fails(store, tmp_path):
    """A quarantined entry gc cannot delete (immutable here; a read-only store alike): it was
    listed as kept and gc exited 0; now exit 1 with one line naming it."""
    root, _ = store
    entry = root / ".quarantine" / "run_0123456789ab.damaged"
    entry.mkdir(parents=True)
    (entry / "manifest.json").write_text("{}")
    if subprocess.run(["chattr", "+i", str(entry)], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available on this file system")
    try:
        result = lh("gc", "--store", root)
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.exit_code == 1 and len(lines) == 1, (result.exit_code, result.output)
        assert "1 entry could not be removed" in lines[0] and entry.name in lines[0], lines
        assert (entry / "manifest.json").exists()
    finally:
        subprocess.run(["chattr", "-i", str(entry)], check=False)


def test_gc_never_follows_a_symlinked_store_directory(store, outside):
    """`ln -s /some/dir STORE/.quarantine; lh gc` deleted /some/dir's contents. Each of the
    store's own directories is planted as a link to a folder whose entries gc would otherwise
    remove (a finished run's name under .work, a stale lease under .claims)."""
    root, ex = store
    finished = ex.runs[1].run_id
    (outside / finished).mkdir()
    (outside / finished / "checkpoint.npz").write_bytes(b"not ours")
    (outside / "run_0123456789ab.lease").write_text("{}")
    for name in (".quarantine", ".work", ".claims"):
        st = Store(root)
        (root / name).symlink_to(outside)
        before = state(outside)
        verified = lh("verify", "--store", root)
        assert verified.exit_code == 1 and "symbolic link" in verified.stdout, verified.output
        assert state(outside) == before
        result = lh("gc", "--store", root)
        assert result.exit_code == 0, result.output
        assert state(outside) == before, name
        assert not os.path.lexists(root / name), result.stdout
        assert f"removed {root / name} (a symbolic link" in result.stdout
        assert st.read_manifest("run", finished).id == finished  # the store itself is intact


def test_gc_keeps_a_linked_targets_folder_and_deletes_no_run_because_of_it(store, tmp_path):
    """targets/ moved elsewhere and linked back: gc neither follows nor removes the link, and
    the runs do not become orphans (removing the link would have made gc delete every run)."""
    root, ex = store
    moved = tmp_path / "targets-elsewhere"
    shutil.move(root / "targets", moved)
    (root / "targets").symlink_to(moved)
    before = state(moved, root / "runs")
    result = lh("gc", "--store", root)
    assert result.exit_code == 0 and f"kept {root / 'targets'} (a symbolic link" in result.stdout, result.output
    assert state(moved, root / "runs") == before and os.path.islink(root / "targets")
    verified = lh("verify", "--store", root)
    assert verified.exit_code == 1 and "do not look through it" in verified.stdout


def test_gc_removes_links_inside_the_store_as_links(store, outside):
    root, ex = store
    st = Store(root)
    lay = st.layout
    finished = ex.runs[1].run_id
    lay.quarantine_dir.mkdir()
    (lay.quarantine_dir / "run_aaaaaaaaaaaa-20240101T000000-abcdef").symlink_to(outside)
    (lay.quarantine_dir / "file-link").symlink_to(outside / "thesis.tex")
    lay.work_root.mkdir()
    (lay.work_root / finished).symlink_to(outside)  # "work dir of a finished run"
    lay.claims_dir.mkdir()
    (lay.claims_dir / "run_0123456789ab.lease").symlink_to(outside / "thesis.tex")
    (lay.runs_dir / "run_bbbbbbbbbbbb").symlink_to(outside)
    tmp = lay.runs_dir / ".tmp-run_cccccccccccc-otherhost-123-abcd1234"
    tmp.symlink_to(outside)
    links = [lay.quarantine_dir / "run_aaaaaaaaaaaa-20240101T000000-abcdef", lay.quarantine_dir / "file-link",
             lay.work_root / finished, lay.claims_dir / "run_0123456789ab.lease", lay.runs_dir / "run_bbbbbbbbbbbb", tmp]
    old = time.time() - 7200
    for link in links:  # old enough for --older-than, by the link's own time (what it points to is fresh)
        os.utime(link, (old, old), follow_symlinks=False)
    before = state(outside)
    verified = lh("verify", "--store", root)
    assert verified.exit_code == 1, verified.output
    for link in (lay.runs_dir / "run_bbbbbbbbbbbb", tmp):
        assert f"{link}: a symbolic link" in verified.stdout
    result = lh("gc", "--store", root, "--older-than", "1m")
    assert result.exit_code == 0, result.output
    assert state(outside) == before
    assert [p for p in links if os.path.lexists(p)] == [], result.stdout
    again = lh("gc", "--store", root)  # a link that stayed was reported "removed" on every gc
    assert again.exit_code == 0 and "removed 0 entries" in again.stdout, again.stdout
    assert lh("verify", "--store", root).exit_code == 0
    assert sorted(p.name for p in lay.runs_dir.iterdir()) == sorted(r.run_id for r in ex.runs)


def test_reconcile_and_rebuild_never_read_an_artifact_through_a_link(store, tmp_path):
    """A run directory replaced by a link to a copy elsewhere is not the store's: it is moved
    aside as a link (nothing written where it points) and not indexed."""
    root, ex = store
    st = Store(root)
    rid = ex.runs[2].run_id
    copy = tmp_path / "elsewhere" / rid
    shutil.move(st.layout.run_dir(rid), copy)
    st.layout.run_dir(rid).symlink_to(copy)
    before = state(copy.parent)
    result = lh("index", "rebuild", "--store", root)
    assert result.exit_code == 0 and "3 runs" in result.stdout, result.output
    assert rid not in index.indexed_stats(st.layout)["run"]
    rep = st.reconcile()
    assert [(w.name.split("-")[0], why) for w, why in rep.quarantined] == [(rid, "a symbolic link (never followed)")]
    assert os.path.islink(rep.quarantined[0][0]) and not os.path.lexists(st.layout.run_dir(rid))
    assert state(copy.parent) == before
    assert lh("gc", "--store", root).exit_code == 0
    assert state(copy.parent) == before and not any(st.layout.quarantine_dir.iterdir())


def test_index_rebuild_replaces_a_linked_index_and_lock_never_writes_through_them(store, tmp_path, outside):
    root, _ = store
    lay = Store(root).layout
    other = tmp_path / "other"
    fill_store(other)
    Store(other).reconcile()
    theirs = other / "index.duckdb"
    lay.index_path.unlink()
    lay.index_path.symlink_to(theirs)  # another store's index: a rebuild must not rewrite it
    lay.index_lock_path.unlink()
    lay.index_lock_path.symlink_to(outside / "created-by-lock.txt")
    (root / "index.duckdb.wal").symlink_to(outside / "created-by-wal.txt")
    before = state(outside, other)
    result = lh("index", "rebuild", "--store", root)
    assert result.exit_code == 0 and "2 targets, 4 runs" in result.stdout, result.output
    assert state(outside, other) == before
    assert stat.S_ISREG(os.lstat(lay.index_path).st_mode)


def test_fifos_planted_in_the_store_and_logs_are_reported_never_read(tmp_path, store):
    """A FIFO blocks whoever opens it to read: a manifest, an arrays file, a lease, the index's
    stats sidecar or a job's log planted as one hung verify, show, gc, status, export, promote
    and index rebuild for ever. In a process of its own, so the old code fails by its timeout."""
    root, ex = store
    lay = Store(root).layout
    a, b = ex.runs[1].run_id, ex.runs[2].run_id
    for path in (lay.run_dir(a) / "manifest.json", lay.run_dir(b) / "arrays.zarr.zip"):
        path.unlink()
        os.mkfifo(path)
    lay.claims_dir.mkdir()
    os.mkfifo(lay.claims_dir / "run_0123456789ab.lease")
    os.mkfifo(root / ".index.stats")
    logs = tmp_path / "logs" / "run_sampler"
    logs.mkdir(parents=True)
    os.mkfifo(logs / f"{ex.targets[0].target_id}_hmc_run_0123456789ab.err")
    commands = [
        (["verify"], 1), (["show", a], 1), (["show", b], 1), (["status", "--logs", tmp_path / "logs"], 0),
        (["export", "-o", tmp_path / "e.csv"], 1), (["promote", "--outdir", tmp_path / "gallery"], 1),
        (["gc", "--dry-run"], 0), (["index", "rebuild"], 1), (["gc"], 0),
    ]
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from lambda_hat.cli import app\n"
        f"for args, want in {[([str(x) for x in args], want) for args, want in commands]!r}:\n"
        f"    r = CliRunner().invoke(app, args + ['--store', {str(root)!r}])\n"
        "    print(args[0], r.exit_code, want, type(r.exception).__name__, (r.stderr or r.stdout).strip().splitlines()[-1:])\n"
    )
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail("a command blocked reading a FIFO in the store")
    lines = proc.stdout.splitlines()
    assert len(lines) == len(commands), proc.stdout + proc.stderr[-3000:]
    for line in lines:
        name, got, want, exc = line.split()[:4]
        assert got == want and exc == "SystemExit" or (want == "0" and exc == "NoneType"), line
    assert "manifest.json is a FIFO" in proc.stdout and "arrays.zarr.zip is a FIFO" in proc.stdout
    assert not os.path.lexists(lay.claims_dir / "run_0123456789ab.lease")  # gc removed it, as it is
