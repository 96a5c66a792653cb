"""Crash points for the crash-safety tests: `LH_CRASH_AT=<point>` makes the process that
reaches `<point>` kill itself with SIGKILL there, as a power cut or the OOM killer would.
Unset (always, outside tests), `crash_point` is one dictionary lookup."""

from __future__ import annotations

import os
import signal

ENV = "LH_CRASH_AT"


def crash_point(point: str) -> None:
    if os.environ.get(ENV) == point:
        os.kill(os.getpid(), signal.SIGKILL)
