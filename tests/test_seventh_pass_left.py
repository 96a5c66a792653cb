"""Issue 28, what the sixth adversarial pass left in words: `lh execute --promote --promote-dir .`
with a default store still to be made was refused only after the sweep ran (naming --outdir);
`lh status` counted a run whose manifest had been edited (it read the index, which still held
the row); `lh status --logs /dev/zero` was accepted. Each test fails on 67f8465."""

import json
import os

import pytest

from test_fifth_pass import lh, store  # noqa: F401  (the fixture: a filled, reconciled store and s.yaml)


def test_promote_dir_whose_runs_folder_would_be_the_new_default_store_is_refused_before_any_work(
        tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LH_STORE", raising=False)
    from test_store import SWEEP

    (tmp_path / "s.yaml").write_text(json.dumps(SWEEP))
    result = lh("execute", "s.yaml", "--promote", "--promote-dir", ".", "--logs", tmp_path / "logs")
    assert result.exit_code == 2, result.output
    assert "--promote-dir .: its runs/ folder would be the store runs" in result.stderr, result.stderr
    assert "--outdir" not in result.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "logs").exists()  # nothing ran


def test_promote_dir_holding_a_new_store_to_be_is_refused(tmp_path, monkeypatch):
    """--store gal/targets/s: a store that would sit inside the gallery's targets/ folder."""
    from test_store import SWEEP

    monkeypatch.chdir(tmp_path)
    (tmp_path / "s.yaml").write_text(json.dumps(SWEEP))
    result = lh("execute", "s.yaml", "--store", "gal/targets/s", "--promote", "--promote-dir", "gal",
                "--logs", tmp_path / "logs")
    assert result.exit_code == 2, result.output
    assert "--promote-dir gal: its targets/ folder would be the store gal/targets/s (or hold it)" in result.stderr
    assert not (tmp_path / "gal").exists()


def test_status_does_not_count_a_run_whose_manifest_was_edited(store):
    before = lh("status", "--store", store)
    assert before.exit_code == 0, before.output
    assert "runs     4 (" in before.output and "damaged" not in before.output
    run = sorted((store / "runs").iterdir())[1]
    manifest = run / "manifest.json"
    st = os.stat(manifest)
    text = manifest.read_text()
    i = text.index('"llc_mean": ') + len('"llc_mean": ')
    edited = text[:i] + ("3" if text[i] != "3" else "4") + text[i + 1:]  # one digit, same size
    manifest.write_text(edited)
    os.utime(manifest, ns=(st.st_atime_ns, st.st_mtime_ns))  # what bit rot keeps
    after = lh("status", "--store", store)
    assert after.exit_code == 0, after.output
    assert "runs     3 (" in after.output, after.output
    assert "damaged or incomplete, not counted: 1 run" in after.output, after.output


@pytest.mark.parametrize("kind,counted", [("target", "targets  1 ("), ("run", "runs     3 (")])
def test_status_does_not_count_an_artifact_whose_arrays_were_truncated(store, kind, counted):
    """Nor does it call it gone from the store (a ninth-pass find: it said both)."""
    artifact = sorted((store / f"{kind}s").iterdir())[0]
    with open(artifact / "arrays.zarr.zip", "r+b") as f:
        f.truncate(10)
    after = lh("status", "--store", store)
    assert after.exit_code == 0, after.output
    assert counted in after.output and f"not counted: 1 {kind}" in after.output, after.output
    assert "in the index but not in the store" not in after.output, after.output


def test_status_and_show_refuse_logs_that_are_no_directory(store, tmp_path):
    (tmp_path / "f").write_text("x")
    os.symlink(tmp_path / "nothing", tmp_path / "dangling")
    run = sorted((store / "runs").iterdir())[0].name
    for logs, what in (("/dev/zero", "a character device"), (tmp_path / "f", "a file"),
                       (tmp_path / "dangling", "a symbolic link to nothing")):
        for command in (["status"], ["show", run]):
            result = lh(*command, "--store", store, "--logs", logs)
            assert result.exit_code == 2, (command, logs, result.output)
            assert f"--logs {logs}: is {what}, not a directory" in result.stderr, result.stderr
    assert lh("status", "--store", store, "--logs", tmp_path / "absent").exit_code == 0


def test_gc_removes_what_killed_writes_left_at_the_root_and_nothing_else_there(store):
    """A kill in the middle of an index-stats write or a store's write probe, and indexes moved
    aside as unreadable, left files at the store's root that no command ever removed. gc removes
    those of its names once older than the temporaries' grace; other files there stay."""
    old = os.stat(store).st_mtime - 2 * 3600
    ours = [".tmp-.index.stats-4242-0123abcd", ".tmp-index.duckdb-77-deadbeef",
            ".write-probe-node-1.example-99-0badf00d", "index.duckdb.corrupt-20261201T101010-4242"]
    young = "index.duckdb.corrupt-20261206T000000-1"
    theirs = [".tmp-notes.txt", "index.duckdb.corrupt-mine", "index.duckdb.corrupt-20261201T101010-1.bak"]
    for name in ours + theirs + [young]:
        (store / name).write_bytes(b"x")
        if name != young:
            os.utime(store / name, (old, old))
    (store / ".tmp-.index.stats-1-00000000.d").mkdir()  # a directory is nothing an atomic write leaves
    dry = lh("gc", "--store", store, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert all((store / name).exists() for name in ours)
    result = lh("gc", "--store", store)
    assert result.exit_code == 0, result.output
    assert not any(os.path.lexists(store / name) for name in ours), result.output
    assert all((store / name).exists() for name in theirs + [young, ".tmp-.index.stats-1-00000000.d"])
    assert f"removed {store / ours[3]} (an unreadable index moved aside, rebuilt since)" in result.output, result.output
    assert f"removed {store / ours[0]} (a temporary file of a killed write)" in result.output, result.output
    assert "removed 4 entries" in result.output, result.output


@pytest.mark.parametrize("args", [["promote", "--outdir", ""], ["promote", "--outdir="], ["export", "-o", ""],
                                  ["query", "select 1", "-o", ""], ["status", "--logs", ""],
                                  ["execute", "s.yaml", "--results", ""], ["execute", "s.yaml", "--logs="]])
def test_an_empty_path_is_refused_not_read_as_the_current_directory(store, tmp_path, monkeypatch, args):
    """`--outdir "$DIR"` with DIR unset: `lh promote` drew its gallery into the current directory."""
    monkeypatch.chdir(tmp_path)
    before = sorted(os.listdir(tmp_path))
    result = lh(*args, "--store", store)
    assert result.exit_code == 2, result.output
    flag = next(a for a in args if a.startswith("-")).rstrip("=")
    assert f"error: {flag}: an empty path (read as the current directory)" in result.stderr, result.stderr
    assert sorted(os.listdir(tmp_path)) == before


def test_a_store_copied_with_hard_links_has_an_index_lock_of_its_own(store, tmp_path):
    """`cp -al store copy`: the two stores shared `.index.lock`, so a writer of one (here, a
    lock held on the original's) kept the other's `lh index rebuild` waiting, then failing."""
    import fcntl
    import subprocess

    copy = tmp_path / "copy"
    subprocess.run(["cp", "-al", str(store), str(copy)], check=True)
    assert os.stat(store / ".index.lock").st_ino == os.stat(copy / ".index.lock").st_ino
    with open(store / ".index.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # the original's writer, mid-write
        result = lh("index", "rebuild", "--store", copy)
        assert result.exit_code == 0, result.output
        assert os.stat(copy / ".index.lock").st_ino != os.fstat(held.fileno()).st_ino
        busy = lh("index", "rebuild", "--store", store)  # the original's own lock still works
        assert busy.exit_code != 0 and "writing the index" in busy.output, busy.output
