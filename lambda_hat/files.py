"""Files lambda-hat writes outside the store, and how it names what it finds: one home for
the atomic write (a new file, created exclusively and never through a link, renamed over a
regular file or nothing) and for words on file kinds. Standard library only."""

from __future__ import annotations

import os
import stat
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


def write_atomic(out: Path, data: bytes) -> None:
    with atomic_file(out) as f:
        f.write(data)
