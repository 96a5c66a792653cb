"""What the seventh adversarial pass broke in the store's collection: lh gc deleting trees in
`.claims/` and files in `.work/` it never made (a folder at a lease's name, broken aside by a
driver, then deleted whole), a quarantine entry named `-gc-²` crashing gc, `--store` given as a
link to a project folder (or /proc/self) taken for a store, and notes or a TensorBoard folder in
runs/ or targets/ quarantined by reconcile and then deleted by gc. Each test fails before the fix."""

import json
import os
import sys
import time
from pathlib import Path

import pytest

from lambda_hat.store.claims import Claims, Owner
from lambda_hat.store.store import NOT_OURS, Store
from test_fifth_pass import lh, store  # noqa: F401  (the fixture: a filled, reconciled store at tmp_path/"store")
from test_store import SWEEP


def tree(path):
    """Every path under `path` (not following links), with a regular file's bytes."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            regular = os.path.isfile(p) and not os.path.islink(p)
            out[os.path.relpath(p, path)] = open(p, "rb").read() if regular else None
    return out


def _old(path):
    os.utime(path, (1_000_000_000, 1_000_000_000))  # untouched for years


def test_gc_never_deletes_a_tree_in_the_claims_directory(store):
    claims = Store(store).layout.claims_dir
    trees = [claims / "run_bbbbbbbbbbbb.lease", claims / ".stale-run_aaaaaaaaaaaa-1234abcd" / "sub"]
    for d in trees:
        d.mkdir(parents=True)
        (d / "f").write_text("precious")
        _old(d)
    empty = claims / ".stale-run_cccccccccccc-1234abcd"
    empty.mkdir()
    before = {d: tree(d) for d in trees}
    result = lh("gc", "--store", store)
    assert result.exit_code == 0, result.output
    for d in trees:
        assert tree(d) == before[d] and (d / "f").read_text() == "precious", result.stdout
    assert f"kept {claims / 'run_bbbbbbbbbbbb.lease'} ({NOT_OURS})" in result.stdout, result.stdout
    assert not os.path.lexists(empty), result.stdout  # an empty one holds nothing of anyone's
    verified = lh("verify", "--store", store)
    assert f"{claims / '.stale-run_aaaaaaaaaaaa-1234abcd'}: {NOT_OURS}" in verified.stdout, verified.stdout


def test_a_folder_a_driver_broke_aside_from_a_lease_name_survives_gc(store):
    """claims.py renames a stale lease away, to `.stale-<id>-…`; a folder at that name goes too
    (the run still completes), and gc must not take it for a lease of ours."""
    claims_dir = Store(store).layout.claims_dir
    lease = claims_dir / "run_bbbbbbbbbbbb.lease"
    lease.mkdir(parents=True)
    (lease / "f").write_text("precious")
    _old(lease)
    claims = Claims(claims_dir, Owner.this_process(), ttl_s=1.0)
    assert claims.acquire("run_bbbbbbbbbbbb") is None  # the folder judged stale and broken aside
    claims.release("run_bbbbbbbbbbbb")
    aside = [p for p in claims_dir.iterdir() if p.name.startswith(".stale-run_bbbbbbbbbbbb-")]
    assert len(aside) == 1 and (aside[0] / "f").read_text() == "precious"
    result = lh("gc", "--store", store)
    assert result.exit_code == 0 and f"kept {aside[0]} ({NOT_OURS})" in result.stdout, result.stdout
    assert (aside[0] / "f").read_text() == "precious"


def test_gc_keeps_what_in_the_work_directory_is_not_named_by_a_run(store):
    work = Store(store).layout.work_root
    (work / "myproject").mkdir(parents=True)
    (work / "notes.txt").write_text("p")
    result = lh("gc", "--store", store)
    assert result.exit_code == 0, result.output
    assert (work / "notes.txt").read_text() == "p" and (work / "myproject").is_dir()
    for name in ("myproject", "notes.txt"):
        assert f"kept {work / name} ({NOT_OURS})" in result.stdout, result.stdout
    assert "checkpoint of an unfinished run" not in result.stdout
    verified = lh("verify", "--store", store)
    assert verified.exit_code == 0, verified.output  # not damage: reported, not serious
    for name in ("myproject", "notes.txt"):
        assert f"{work / name}: {NOT_OURS}" in verified.stdout, verified.stdout


def test_a_quarantine_entry_with_a_pid_that_is_no_ascii_number_does_not_crash_gc(store):
    q = Store(store).layout.quarantine_dir
    q.mkdir()
    for name in ("x-gc-²", "run_aaaaaaaaaaaa-gc-²", "run_aaaaaaaaaaaa-gc-" + "9" * 200):
        (q / name).mkdir()
    result = lh("gc", "--store", store)
    assert result.exit_code == 0 and result.exception is None, result.output
    assert f"kept {q / 'x-gc-²'} ({NOT_OURS})" in result.stdout, result.stdout  # not a name gc gives
    assert sorted(p.name for p in q.iterdir()) == ["x-gc-²"]  # named by an ID: quarantined, collected


def test_a_store_named_through_a_link_to_a_folder_that_is_no_store_is_refused(tmp_path):
    (tmp_path / "proj2" / "src").mkdir(parents=True)
    (tmp_path / "proj2" / "README").write_text("keep")
    (tmp_path / "p2link").symlink_to(tmp_path / "proj2")
    (tmp_path / "s.yaml").write_text(json.dumps(SWEEP))
    for root in (tmp_path / "proj2", tmp_path / "p2link"):
        result = lh("plan", tmp_path / "s.yaml", "--store", root)
        assert result.exit_code == 2, result.output
        assert f"{root}: not a lambda-hat store (README is not lambda-hat's" in result.output, result.output
    assert sorted(os.listdir(tmp_path / "proj2")) == ["README", "src"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc/self is Linux's")
@pytest.mark.parametrize("command", [["status"], ["verify"], ["gc", "--dry-run"], ["export", "-o", "OUT"]])
def test_proc_self_is_no_store(tmp_path, command):
    args = [tmp_path / "out.csv" if a == "OUT" else a for a in command]
    result = lh(*args, "--store", "/proc/self")
    assert result.exit_code == 2, result.output
    assert "/proc/self: not a lambda-hat store" in result.output and len(result.output.strip().splitlines()) == 1


def test_names_not_lambda_hats_in_runs_and_targets_stay_where_they_are(store):
    st = Store(store)
    lay = st.layout
    artifacts = len(st.ids("target")) + len(st.ids("run"))
    theirs = [lay.runs_dir / "notes.txt", lay.runs_dir / "myexp", lay.targets_dir / "README",
              lay.runs_dir / "Dec05_10-00-00_host"]  # TensorBoard's name for a run
    theirs[0].write_text("n")
    theirs[1].mkdir()
    (theirs[1] / "events").write_text("d")
    theirs[2].write_text("x")
    theirs[3].mkdir()
    damaged = lay.runs_dir / "run_aaaaaaaaaaaa"  # named by an ID: damage, quarantined as before
    damaged.mkdir()
    before = {p: tree(p) if p.is_dir() else p.read_text() for p in theirs}
    rep = Store(store).reconcile()  # lh execute's reconcile
    assert [p for p in theirs if not os.path.lexists(p)] == [], rep.quarantined
    assert sorted(rep.foreign) == sorted(theirs)
    assert [where.name.startswith("run_aaaaaaaaaaaa-") for where, _ in rep.quarantined] == [True]
    verified = lh("verify", "--store", store)
    assert verified.exit_code == 0, verified.output
    for p in theirs:
        assert f"{p}: {NOT_OURS}" in verified.stdout, verified.stdout
    assert f"{artifacts} artifacts checked" in verified.stdout, verified.stdout
    result = lh("gc", "--store", store)
    assert result.exit_code == 0, result.output
    for p in theirs:
        assert f"kept {p} ({NOT_OURS})" in result.stdout, result.stdout
    assert {p: tree(p) if p.is_dir() else p.read_text() for p in theirs} == before
    assert not any(p.name.startswith(("notes", "myexp", "README", "Dec05")) for p in lay.quarantine_dir.iterdir())


def test_a_hidden_tmp_name_lambda_hat_never_gives_is_kept_by_gc(store):
    lay = Store(store).layout
    backup = lay.targets_dir / ".tmp-backup"
    backup.mkdir()
    (backup / "f").write_text("precious")
    _old(backup / "f")
    _old(backup)
    assert time.time() - backup.stat().st_mtime > 3600
    verified = lh("verify", "--store", store)
    assert f"{backup}: {NOT_OURS}" in verified.stdout, verified.stdout
    result = lh("gc", "--store", store)
    assert result.exit_code == 0 and f"kept {backup} ({NOT_OURS})" in result.stdout, result.stdout
    assert (backup / "f").read_text() == "precious"
    assert Path(backup).is_dir()
