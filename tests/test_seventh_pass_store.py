"""What a seventh adversarial pass broke in lh gc and lh verify: runs deleted as orphans of a
target linked from another disk, a store copied into `.quarantine/` or `.claims/` of a folder
deleted whole, files deleted across a mount point, an unfinished run's checkpoint deleted
beside a damaged copy of a manifest, unknown IDs and prefixes counted as a problem, a foreign
DuckDB index passing verify, and links in `.work/` and `.claims/` unreported."""

import json
import os
import shutil
import socket

import pytest
from typer.testing import CliRunner

from lambda_hat.cli import app
from lambda_hat.store.store import Store
from test_output_safety import store  # noqa: F401  (the fixture: a filled store, its expanded sweep)


def lh(*args):
    return CliRunner().invoke(app, [str(a) for a in args], env={"COLUMNS": "400"})


def tree(path):
    """Every path under `path` (not following links), with a regular file's bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            out[os.path.relpath(p, path)] = open(p, "rb").read() if os.path.isfile(p) and not os.path.islink(p) else None
    return out


def test_runs_on_a_target_linked_from_another_disk_are_no_orphans(store, tmp_path):
    root, ex = store
    tid = ex.targets[0].target_id
    on_it = [r.name for r in (root / "runs").iterdir()
             if json.loads((r / "manifest.json").read_text())["spec"]["target_id"] == tid]
    assert on_it
    elsewhere = tmp_path / "other-disk" / tid
    elsewhere.parent.mkdir()
    shutil.move(root / "targets" / tid, elsewhere)
    (root / "targets" / tid).symlink_to(elsewhere)
    before = tree(elsewhere)
    for _ in range(2):  # the link kept: a second gc does not take the runs for orphans either
        result = lh("gc", "--store", root)
        assert result.exit_code == 0 and "orphan:" not in result.stdout, result.stdout
        assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(r.run_id for r in ex.runs)
        assert os.path.islink(root / "targets" / tid)
    assert tree(elsewhere) == before
    verified = lh("verify", "--store", root)  # says why the runs stand, as gc judged them
    assert verified.exit_code == 1 and "orphan:" not in verified.stdout, verified.stdout
    assert f"{root / 'targets' / tid}: a symbolic link in the store; runs were sampled on this target" in verified.stdout


def test_a_target_link_no_run_needs_is_removed_as_a_link(store, tmp_path):
    root, ex = store
    tid = ex.targets[0].target_id
    for run in (root / "runs").iterdir():  # its runs gone: the link stands for nothing
        if json.loads((run / "manifest.json").read_text())["spec"]["target_id"] == tid:
            shutil.rmtree(run)
    elsewhere = tmp_path / "other-disk" / tid
    elsewhere.parent.mkdir()
    shutil.move(root / "targets" / tid, elsewhere)
    (root / "targets" / tid).symlink_to(elsewhere)
    result = lh("gc", "--store", root)
    assert result.exit_code == 0 and not os.path.lexists(root / "targets" / tid), result.stdout
    assert (elsewhere / "manifest.json").is_file()


@pytest.mark.parametrize("hidden", [".quarantine", ".claims"])
def test_gc_never_deletes_a_store_copied_into_a_hidden_directory(store, tmp_path, hidden):
    root, _ = store
    outer = tmp_path / "outer"
    outer.mkdir()
    shutil.copytree(root, outer / hidden, symlinks=True)
    (outer / hidden / ".work").mkdir()
    (outer / hidden / ".work" / "precious").write_text("x")
    before = tree(outer)
    result = lh("gc", "--store", outer)
    assert result.exit_code == 0, result.output
    assert tree(outer) == before, result.stdout
    assert "not lambda-hat's" in result.stdout
    verified = lh("verify", "--store", outer)
    assert f"{outer / hidden / 'index.duckdb'}: not lambda-hat's" in verified.stdout, verified.stdout


def test_gc_still_removes_what_is_ours_in_quarantine_and_claims(store):
    root, ex = store
    lay = Store(root).layout
    lay.quarantine_dir.mkdir()
    ours = [lay.quarantine_dir / "run_aaaaaaaaaaaa-20240101T000000-abcdef", lay.quarantine_dir / "tgt_x-gc-999999999"]
    for p in ours:
        p.mkdir()
        (p / "manifest.json").write_text("{}")
    lay.claims_dir.mkdir()
    stale = [lay.claims_dir / "run_0123456789ab.lease", lay.claims_dir / ".stale-run_0123456789ab-abcdef01"]
    for p in stale:
        p.write_text("{}")
        os.utime(p, (1_000_000_000, 1_000_000_000))  # no heartbeat for years
    result = lh("gc", "--store", root)
    assert result.exit_code == 0, result.output
    assert [p for p in ours + stale if os.path.lexists(p)] == [], result.stdout


def _on_another_device(monkeypatch, inside):
    """os.lstat reports `inside` on another device, as a mount point there would be."""
    real = os.lstat

    def lstat(path, *args, **kwargs):
        st = real(path, *args, **kwargs)
        if os.fspath(path) == os.fspath(inside):
            fields = list(st[:10])
            fields[2] = st.st_dev + 1
            return os.stat_result(fields, {"st_mtime": st.st_mtime})
        return st

    monkeypatch.setattr(os, "lstat", lstat)


@pytest.mark.parametrize("where", ["quarantined", "dead writer's tmp"])
def test_gc_removes_nothing_of_a_tree_that_holds_a_mount_point(store, monkeypatch, where):
    root, _ = store
    lay = Store(root).layout
    if where == "quarantined":
        lay.quarantine_dir.mkdir()
        entry = lay.quarantine_dir / "run_aaaaaaaaaaaa-20240101T000000-abcdef"
    else:
        entry = lay.runs_dir / ".tmp-run_aaaaaaaaaaaa-otherhost-123-abcd1234"
    (entry / "mnt").mkdir(parents=True)
    (entry / "mnt" / "data").write_text("someone's")
    (entry / "ours").write_text("x")
    old = 1_000_000_000
    for p in (entry / "mnt" / "data", entry / "mnt", entry / "ours", entry):
        os.utime(p, (old, old))
    _on_another_device(monkeypatch, entry / "mnt")
    report = Store(root).gc()
    assert (entry / "mnt" / "data").read_text() == "someone's" and (entry / "ours").is_file()
    assert [p for p, _ in report.removed] == [] and report.failed == []
    assert any(p == entry and "another file system" in why for p, why in report.kept), report.kept


def test_a_checkpoint_is_kept_beside_a_damaged_run_that_only_has_a_manifest(store):
    root, ex = store
    lay = Store(root).layout
    unfinished = "run_0123456789ab"
    lay.run_dir(unfinished).mkdir()
    shutil.copy(lay.run_dir(ex.runs[1].run_id) / "manifest.json", lay.run_dir(unfinished) / "manifest.json")
    (lay.work_root / unfinished).mkdir(parents=True)
    (lay.work_root / unfinished / "checkpoint").write_text("resume from here")
    finished = lay.work_root / ex.runs[1].run_id
    finished.mkdir()
    result = lh("gc", "--store", root)
    assert result.exit_code == 0, result.output
    assert (lay.work_root / unfinished / "checkpoint").read_text() == "resume from here", result.stdout
    assert not finished.exists()  # a finished run's work dir still goes


def test_verify_takes_a_unique_prefix_and_refuses_an_unknown_id(store):
    root, ex = store
    run_id = ex.runs[1].run_id
    result = lh("verify", run_id[:9], "--store", root)
    assert result.exit_code == 0 and "1 artifact checked" in result.stdout, result.output
    for bad in ("run_zzzzzzzz", "run_"):  # none, and several, start with it
        result = lh("verify", bad, "--store", root)
        assert result.exit_code == 2 and bad in result.stderr and len(result.stderr.splitlines()) == 1, result.output
        assert "Traceback" not in result.output


def test_verify_refuses_a_duckdb_file_made_by_something_else(store):
    import duckdb

    root, _ = store
    index = root / "index.duckdb"
    for p in root.glob("index.duckdb*"):
        p.unlink()
    con = duckdb.connect(str(index))
    con.execute("CREATE TABLE inventory (item VARCHAR, count INTEGER)")
    con.close()
    status = lh("status", "--store", root)
    assert status.exit_code != 0 and "made by another lambda-hat version" in status.output, status.output
    result = lh("verify", "--store", root)
    assert result.exit_code == 1 and f"{index}: made by another lambda-hat version" in result.stdout, result.output


def test_verify_reports_links_in_the_work_and_claims_directories(store, tmp_path):
    root, ex = store
    lay = Store(root).layout
    outside = tmp_path / "outside"
    outside.mkdir()
    lay.work_root.mkdir()
    lay.claims_dir.mkdir()
    links = [lay.work_root / ex.runs[1].run_id, lay.claims_dir / "run_0123456789ab.lease"]
    for link in links:
        link.symlink_to(outside)
    result = lh("verify", "--store", root)
    assert result.exit_code == 1, result.output
    for link in links:
        assert f"{link}: a symbolic link in the store" in result.stdout, result.stdout
    assert lh("gc", "--store", root).exit_code == 0
    assert lh("verify", "--store", root).exit_code == 0


def test_gc_leaves_an_entry_that_is_itself_a_mount_point(store, monkeypatch):
    root, _ = store
    lay = Store(root).layout
    entry = lay.quarantine_dir / "run_aaaaaaaaaaaa-20240101T000000-abcdef"
    entry.mkdir(parents=True)
    (entry / "data").write_text("someone's")
    _on_another_device(monkeypatch, entry)
    report = Store(root).gc()
    assert (entry / "data").read_text() == "someone's"
    assert [p for p, _ in report.removed] == [] and report.failed == []
    assert any(p == entry and "is a mount point" in why for p, why in report.kept), report.kept


def test_gc_leaves_a_tree_with_a_real_bind_mount_inside(store, tmp_path):
    """A bind mount of the same file system keeps st_dev: only the mount table shows it."""
    import subprocess

    root, _ = store
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("someone's")
    entry = root / "runs" / ".tmp-run_aaaaaaaaaaaa-otherhost-123-abcd1234"
    (entry / "mnt").mkdir(parents=True)
    old = 1_000_000_000
    for p in (outside / "precious", outside, entry / "mnt", entry):  # a dead writer's by age, mount included
        os.utime(p, (old, old))
    if subprocess.run(["mount", "--bind", str(outside), str(entry / "mnt")], capture_output=True).returncode != 0:
        pytest.skip("mount --bind is not permitted here")
    try:
        result = lh("gc", "--store", root)
        assert (outside / "precious").read_text() == "someone's", result.stdout
        assert result.exit_code == 0 and "is a mount point inside it" in result.stdout, result.output
    finally:
        subprocess.run(["umount", str(entry / "mnt")], capture_output=True)


def test_runs_stand_once_execute_moved_the_target_link_aside(store, tmp_path):
    """Reconcile (lh execute) moves a linked target into .quarantine/ as the link: the runs on
    it still wait for its rebuild there, as for a quarantined directory."""
    root, ex = store
    tid = ex.targets[0].target_id
    elsewhere = tmp_path / "other-disk" / tid
    elsewhere.parent.mkdir()
    shutil.move(root / "targets" / tid, elsewhere)
    (root / "targets" / tid).symlink_to(elsewhere)
    Store(root).reconcile()
    aside = [p for p in (root / ".quarantine").iterdir() if p.name.startswith(tid)]
    assert len(aside) == 1 and aside[0].is_symlink()
    result = lh("gc", "--store", root)
    assert result.exit_code == 0 and "orphan:" not in result.stdout, result.stdout
    assert sorted(p.name for p in (root / "runs").iterdir()) == sorted(r.run_id for r in ex.runs)
    assert aside[0].is_symlink() and (elsewhere / "manifest.json").is_file()


def _bind(src, dst):
    import subprocess

    if subprocess.run(["mount", "--bind", str(src), str(dst)], capture_output=True).returncode != 0:
        pytest.skip("mount --bind is not permitted here")


def _unbind(dst):
    import subprocess

    subprocess.run(["umount", str(dst)], capture_output=True)


def test_reconcile_never_removes_a_dead_writers_tree_with_a_mount_inside(store, tmp_path):
    """lh execute's reconcile removed this host's dead writers' temporary directories with
    rmtree, through a bind mount inside one (the sixth pass): gc kept such a tree, execute
    deleted the mounted files."""
    root, _ = store
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("someone's")
    entry = root / "targets" / f".tmp-tgt_0123456789ab-{socket.gethostname()}-4000000-abcd1234"
    (entry / "mnt").mkdir(parents=True)
    _bind(outside, entry / "mnt")
    try:
        report = Store(root).reconcile()
        assert (outside / "precious").read_text() == "someone's"
        assert entry not in report.removed_tmp
    finally:
        _unbind(entry / "mnt")


def test_a_finished_runs_work_dir_with_a_mount_inside_is_kept(tmp_path):
    """The sampling worker removes .work/<run> once the run is written (SegmentStore.remove):
    it deleted the files of a bind mount inside it."""
    from lambda_hat.store.worker import SegmentStore

    work = tmp_path / ".work" / "run_0123456789ab"
    (work / "mnt").mkdir(parents=True)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("someone's")
    _bind(outside, work / "mnt")
    try:
        SegmentStore(work, 3600, draws=10).remove()
        assert (outside / "precious").read_text() == "someone's"
    finally:
        _unbind(work / "mnt")
    SegmentStore(work, 3600, draws=10).remove()  # unmounted: removed as before
    assert not work.exists()


def test_a_folder_with_only_hidden_entries_not_ours_is_no_store(tmp_path):
    """A project's folder with .git, and .quarantine/.jax_cache of its own: taken for a store
    (hidden names were skipped), and gc deleted inside it."""
    proj = tmp_path / "proj"
    (proj / ".git").mkdir(parents=True)
    (proj / ".git" / "HEAD").write_text("g")
    (proj / ".quarantine" / "run_mine").mkdir(parents=True)
    (proj / ".quarantine" / "run_mine" / "notes").write_text("mine")
    result = lh("gc", "--store", proj)
    assert result.exit_code == 2, result.output
    assert "not a lambda-hat store (.git is not lambda-hat's" in result.output
    assert (proj / ".quarantine" / "run_mine" / "notes").read_text() == "mine"
