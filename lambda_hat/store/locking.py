"""An exclusive `flock` taken within a deadline, shared by the index's writers and the
workers' compile locks (which differ only in what a timeout means to them)."""

from __future__ import annotations

import fcntl
import time


def flock_within(f, timeout_s: float) -> bool:
    """Take an exclusive flock on `f` (a file object or descriptor), polling every 50 ms: True
    once held, False if another holder kept it past `timeout_s`. OSError where the file system
    has no flock (some NFS mounts): the caller decides."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return True
        except BlockingIOError:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
