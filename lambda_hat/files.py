"""Files lambda-hat writes outside the store, and how it names what it finds: one home for
the atomic write (a new file, created exclusively and never through a link, renamed over a
regular file or nothing) and for words on file kinds. Standard library only."""

from __future__ import annotations

import os
import signal
import stat
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from lambda_hat.errors import BadInput


def file_type(st: os.stat_result) -> str:
    """What a path is, from its lstat, for a message: `a FIFO`, `a symbolic link`, ..."""
    for test, what in ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(st.st_mode):
            return what
    return "not a regular file"


def lstat_or_none(path: Path, flag: str) -> os.stat_result | None:
    """`os.lstat(path)`, None if nothing is there; another failure is BadInput naming `flag`."""
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as err:
        raise BadInput(f"{flag} {path}: {err.strerror}") from None


@contextmanager
def atomic_file(out: Path) -> Iterator[Any]:
    """A new binary file that becomes `out` when the block ends without an error (and
    nothing otherwise). The temporary file is created exclusively and never through a
    symbolic link; `out` is checked again just before the rename, so what is replaced is
    always a regular file (or nothing). A file system's refusal (permissions, a full disk) is
    one line, BadInput: nothing was written."""
    tmp = out.with_name(f".tmp-{out.name}-{os.getpid()}-{os.urandom(4).hex()}")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o666)
    except OSError as err:
        raise BadInput(f"{out}: cannot be written ({err.strerror or err})") from None
    # SIGTERM (a scheduler, `kill`) would end the process without the cleanup below, leaving the
    # temporary file beside the user's: while it is written, SIGTERM exits through it (143).
    previous = None
    if threading.current_thread() is threading.main_thread() and signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        try:
            with os.fdopen(fd, "wb") as f:
                yield f
            st = lstat_or_none(out, "output")
            if st is not None and not stat.S_ISREG(st.st_mode):
                raise BadInput(f"{out}: became {file_type(st)} while it was written; left as it is")
            os.replace(tmp, out)
        except OSError as err:
            raise BadInput(f"{out}: cannot be written ({err.strerror or err}); nothing written") from None
    finally:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame) -> None:
    raise SystemExit(128 + signum)


def write_atomic(out: Path, data: bytes) -> None:
    with atomic_file(out) as f:
        f.write(data)


def _open_regular(path: Path, flags: int) -> int:
    """A descriptor on `path` if it is a regular file with one name (or, with O_CREAT, nothing
    yet): never through a symbolic link (O_NOFOLLOW), never blocking on a FIFO (O_NONBLOCK),
    never writing into a file that another name also holds (a hard link). Else BadInput."""
    try:
        fd = os.open(path, flags | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0), 0o666)
    except OSError as err:
        st = lstat_or_none(path, str(path))
        if st is not None and not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{path}: is {file_type(st)}, not a regular file; left as it is") from None
        raise BadInput(f"{path}: cannot be opened ({err.strerror or err})") from None
    st = os.fstat(fd)
    writing = flags & (os.O_WRONLY | os.O_RDWR)
    if not stat.S_ISREG(st.st_mode) or (writing and st.st_nlink > 1):
        os.close(fd)
        what = file_type(st) if not stat.S_ISREG(st.st_mode) else "a file with another name (a hard link)"
        raise BadInput(f"{path}: is {what}, not a regular file of its own; left as it is")
    return fd


def open_log(path: Path, append: bool = False):
    """A log file of ours opened for writing (truncated unless `append`), created if absent:
    only a regular file with one name is written. A symbolic link, FIFO or device in its
    place is BadInput and left as it is; a hard link (a backup made with `cp -al`) keeps its
    content under its other names, and this name becomes a new file of its own."""
    if not append:
        st = lstat_or_none(path, str(path))
        if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    fd = _open_regular(path, os.O_WRONLY | os.O_CREAT | (os.O_APPEND if append else 0))
    os.set_blocking(fd, True)  # O_NONBLOCK served the check; the log is stdout/stderr from here
    if not append:
        os.ftruncate(fd, 0)
    return os.fdopen(fd, "a" if append else "w")


def read_input_text(path: Path, what: str, max_bytes: int = 2**20) -> str:
    """The UTF-8 text of a small file the user names (a profile, a config): a regular file
    (a link to one is followed, as it was named) of at most `max_bytes`, read without waiting
    on a FIFO or reading a device without end. Else BadInput naming the file."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise BadInput(f"{path}: cannot read {what} ({err.strerror or err})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise BadInput(f"{path}: is {file_type(st)}, not a {what} file")
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as err:
        raise BadInput(f"{path}: cannot read {what} ({err.strerror or err})") from None
    finally:
        os.close(fd)
    if len(raw) > max_bytes:
        raise BadInput(f"{path}: more than {max_bytes:,} bytes, too large for a {what} file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise BadInput(f"{path}: not UTF-8 text; a {what} file is text") from None


def read_regular_text(path: Path) -> str | None:
    """The text of `path` if it is a regular file (never read through a link, never waiting on
    a FIFO), else None: what lambda-hat reads back of its own small files outside the store."""
    try:
        fd = _open_regular(path, os.O_RDONLY)
    except BadInput:
        return None
    with os.fdopen(fd, "rb") as f:
        try:
            return f.read().decode()
        except UnicodeDecodeError:
            return None
