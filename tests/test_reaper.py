"""The reaper ends what a killed driver started, including a process started in the instant
before the driver could name it: every process the driver starts after `mark_descendants`
carries its token, and the reaper ends those too (Linux, through /proc)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="finds the token through /proc")

DRIVER = """
import subprocess, sys, time
from lambda_hat.execute.reaper import Reaper
reaper = Reaper()
reaper.mark_descendants()
unnamed = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
if sys.argv[1] == "close-first":
    reaper.close(wait_s=10)  # a clean end: the token leaves this environment
    later = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
    print(unnamed.pid, later.pid, flush=True)
else:
    print(unnamed.pid, flush=True)
time.sleep(120)
"""


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper counts as gone
        return f.read().rsplit(")", 1)[1].split()[0] != "Z"


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.1)
    return not alive(pid)


def test_a_process_the_driver_never_named_ends_with_it():
    """The child runs in its own session (as Parsl's local blocks do): no process group or PID
    was sent to the reaper, only the token it inherited."""
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "kill"], stdout=subprocess.PIPE, text=True)
    child = int(driver.stdout.readline())
    try:
        assert alive(child)
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=10)
        assert gone_within(child, 10), "a process started by the killed driver outlived it"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)


def test_processes_started_after_a_clean_close_are_not_ended():
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, "close-first"], stdout=subprocess.PIPE, text=True)
    unnamed, later = map(int, driver.stdout.readline().split())
    try:
        assert gone_within(unnamed, 10)  # the close ended what was marked
        time.sleep(1.0)
        assert alive(later)  # started once the token was gone from the driver's environment
    finally:
        driver.kill()
        driver.wait(timeout=10)
        for pid in (unnamed, later):
            if alive(pid):
                os.kill(pid, signal.SIGKILL)
