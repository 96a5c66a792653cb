"""Output paths a command names (-o, --results, --logs, --outdir, --promote-dir), checked
before any work: one home for the rule. A file is absent or regular (never a link, FIFO,
device or directory, which the atomic write would replace or write through); a directory is
absent or a directory; neither is inside the store, whose files only lh execute writes."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from lambda_hat.errors import BadInput
from lambda_hat.files import file_type, lstat_or_none
from lambda_hat.logs import FOLDERS
from lambda_hat.store import enclosing_store


def _check_outside_store(out: Path, store_root: Path, flag: str) -> None:
    """`out` (symbolic links in its parents resolved) is not under the store: a file there
    would be an unexpected file in an artifact (or a forged manifest), quarantined and
    collected by the next execute and gc."""
    try:
        resolved, root = out.resolve(), store_root.resolve()
    except (OSError, RuntimeError) as err:  # RuntimeError: a symlink loop (Python 3.11)
        raise BadInput(f"{flag} {out}: cannot be resolved ({err})") from None
    if resolved == root or resolved.is_relative_to(root):
        raise BadInput(f"{flag} {out}: inside the store {store_root}, which holds only what lh execute writes; "
                       "name a path outside it")
    other = enclosing_store(resolved)  # another store than the command's: the same rule holds there
    if other is not None:
        raise BadInput(f"{flag} {out}: inside the store {other}, which holds only what lh execute writes; "
                       "name a path outside it")


def _what(path: Path, st: os.stat_result) -> str:
    """What a path that is not a directory is, for a message (a link: what it points to)."""
    if stat.S_ISLNK(st.st_mode):
        if not path.exists():
            return "a symbolic link to nothing"
        return f"a symbolic link to {'a file' if path.is_file() else file_type(os.stat(path))}"
    return "a file" if stat.S_ISREG(st.st_mode) else file_type(st)


def _check_parents(out: Path, flag: str) -> None:
    for parent in out.parents:
        if parent.exists() and not parent.is_dir():
            raise BadInput(f"{flag} {out}: {parent} is a file, not a directory")
        if os.path.islink(parent) and not parent.exists():
            raise BadInput(f"{flag} {out}: {parent} is a symbolic link to nothing, not a directory")


def check_output_path(out: Path, store_root: Path, flag: str = "-o") -> None:
    """A file a command is about to write, checked before any work: absent or a regular file
    (a symbolic link, FIFO, device or directory is refused: the atomic write would replace it
    with a regular file, or write through it), in a directory, and outside the store."""
    st = lstat_or_none(out, flag)
    if st is not None and not stat.S_ISREG(st.st_mode):
        what = file_type(st)
        raise BadInput(f"{flag} {out}: is {what}; name a new or regular file" if what != "a directory"
                       else f"{flag} {out}: is a directory; name a file")
    _check_parents(out, flag)
    _check_outside_store(out, store_root, flag)


def check_output_dir(out: Path, store_root: Path, flag: str) -> None:
    """A directory a command writes into (--outdir, --logs), checked before any work: absent
    or a directory (a symbolic link to one is followed, as the user named it), and outside
    the store."""
    st = lstat_or_none(out, flag)
    if st is not None and not out.is_dir():
        raise BadInput(f"{flag} {out}: is {_what(out, st)}, not a directory")
    _check_parents(out, flag)
    _check_outside_store(out, store_root, flag)


RESULT_SUFFIXES = (".parquet", ".csv")


def check_not_input(out: Path, inputs: list[tuple[str, Path]], flag: str) -> None:
    """`out` is none of the files the command reads, given as (what it is, path): the sweep, a
    cluster profile, a Parsl configuration. Writing it would replace them."""
    for what, path in inputs:
        try:
            same = out.exists() and os.path.samefile(out, path)
        except OSError:
            same = False
        if same:
            raise BadInput(f"{flag} {out}: is {what}, which the command reads ({path}); name another file")


def check_logs_dir(logs: Path, store_root: Path) -> None:
    """--logs (lh execute's, and lh calibrate's pilots'): a directory outside any store whose
    job-log folders are real directories, none of them a store or holding the store to be."""
    for parent in [logs, *logs.parents]:
        if parent.exists() and not parent.is_dir():
            raise BadInput(f"--logs {logs}: {parent} is {_what(parent, os.lstat(parent))}, not a directory")
    check_output_dir(logs, store_root, "--logs")
    for sub in FOLDERS.values():  # the folders lh makes there: its own, never a link to elsewhere
        folder = logs / sub
        st = lstat_or_none(folder, "--logs")
        if st is not None and not stat.S_ISDIR(st.st_mode):
            raise BadInput(f"--logs {logs}: {folder} is {_what(folder, st)}, where lh keeps its job logs in a "
                           "directory of its own; move it away")
        if st is not None:  # a store there would get job logs among its artifacts
            _check_outside_store(folder, store_root, "--logs")
        try:  # a store to be made there, or below: its root would get the job logs
            inside = store_root.resolve().is_relative_to(folder.resolve())
        except (OSError, RuntimeError):
            inside = False
        if inside:
            raise BadInput(f"--store {store_root}: inside {folder}, where lh writes its job logs (--logs {logs}); "
                           "name another store or another --logs")


def check_execute_outputs(logs: Path, results: Path, store_root: Path, parsl_run_dir: Path | None = None,
                          inputs: list[tuple[str, Path]] | None = None) -> None:
    """`lh execute`'s --logs (a directory), --results (a .parquet or .csv file, not one of
    `inputs`) and Parsl's run directory (`parsl_runinfo` in the current directory), as above."""
    if parsl_run_dir is not None:
        try:
            resolved, root = parsl_run_dir.resolve(), store_root.resolve()
        except (OSError, RuntimeError) as err:
            raise BadInput(f"Parsl's run directory {parsl_run_dir}: cannot be resolved ({err})") from None
        if resolved == root:  # a store named like Parsl's run directory, here
            raise BadInput(f"Parsl writes its run directory {parsl_run_dir} in the current directory, and that is "
                           f"the store {store_root}; run lh execute from another directory")
        if resolved.is_relative_to(root):
            raise BadInput(f"the current directory is inside the store {store_root}, and Parsl writes its run "
                           f"directory {parsl_run_dir} here; run lh execute from outside the store")
        if os.path.islink(parsl_run_dir):  # lh names this folder, not the user: a link there is planted
            raise BadInput(f"Parsl's run directory {parsl_run_dir} is a symbolic link, where Parsl writes its logs "
                           "in a directory of its own; move it away")
        check_output_dir(parsl_run_dir, store_root, "Parsl's run directory")
    check_logs_dir(logs, store_root)
    if results.exists() and results.is_dir():
        raise BadInput(f"--results {results}: is a directory; name a .parquet or .csv file")
    if results.suffix.lower() not in RESULT_SUFFIXES:
        raise BadInput(f"--results {results}: unknown format {results.suffix or '(no extension)'!r}; use .parquet or .csv")
    check_output_path(results, store_root, "--results")
    check_not_input(results, inputs or [], "--results")
