"""The reaper: a tiny process that outlives the driver to end what the driver started.

The driver starts it with a pipe on stdin and tells it, line by line, what to end if the
driver dies: `pgid N` (a local worker pool's process group), `pid N` (Parsl's
interchange), `slurm JOBID` (a block on the cluster), `token T` (the value of
`TOKEN_ENV` that the driver puts in its environment before Parsl starts anything, so that
every process it starts on this machine inherits it). When the pipe closes (the driver
exited, was killed with SIGKILL, or crashed) the reaper sends SIGTERM to all of them (on
Linux also to every process whose environment carries the token: a process started in the
instant before the driver could name it is ended too), `scancel`s the SLURM jobs, and
SIGKILLs whatever is still alive a few seconds later. It runs in its own session, so a
terminal's Ctrl-C and a `kill` of the driver's process group do not reach it. Imports
nothing but the standard library (it must start fast).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

GRACE_S = 3.0
TOKEN_ENV = "LH_DRIVER_TOKEN"


# Not `store.artifacts.pid_alive` ("does this process exist?", where PermissionError means it
# does): the reaper asks "can I still signal it?", and a process it may not signal is nothing it
# can end or should wait for. (It also imports only the standard library, to start fast.)
def _signalable_pgid(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _signalable_pid(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def carrying(token: str) -> set[int]:
    """PIDs of this user's processes whose environment holds TOKEN_ENV=token (Linux /proc;
    empty elsewhere)."""
    needle = f"{TOKEN_ENV}={token}".encode()
    found = set()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return found
    for entry in entries:
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle in f.read().split(b"\0"):
                    found.add(int(entry))
        except OSError:  # gone, or another user's
            continue
    return found


def reap(pgids: set[int], pids: set[int], slurm_jobs: set[str], tokens: set[str] = frozenset()) -> None:
    own = os.getpgrp()
    pgids = {g for g in pgids if g > 1 and g != own}
    for token in tokens:
        pids = pids | carrying(token)
    for g in pgids:
        try:
            os.killpg(g, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    for p in pids:
        try:
            os.kill(p, signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
    if slurm_jobs and shutil.which("scancel"):
        subprocess.run(["scancel", *sorted(slurm_jobs)], capture_output=True, timeout=60)
    deadline = time.monotonic() + GRACE_S
    while time.monotonic() < deadline and (any(map(_signalable_pgid, pgids)) or any(map(_signalable_pid, pids))):
        time.sleep(0.1)
    for g in pgids:
        if _signalable_pgid(g):
            try:
                os.killpg(g, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
    for p in pids:
        if _signalable_pid(p):
            try:
                os.kill(p, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    pgids: set[int] = set()
    pids: set[int] = set()
    slurm_jobs: set[str] = set()
    tokens: set[str] = set()
    for line in sys.stdin:
        kind, _, value = line.strip().partition(" ")
        if kind == "pgid" and value.isdigit():
            pgids.add(int(value))
        elif kind == "pid" and value.isdigit():
            pids.add(int(value))
        elif kind == "slurm" and value:
            slurm_jobs.add(value)
        elif kind == "token" and value:
            tokens.add(value)
    reap(pgids, pids, slurm_jobs, tokens)


class Reaper:
    """The driver's handle on its reaper."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "lambda_hat.execute.reaper"],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, text=True,
        )
        self.sent: set[str] = set()
        self.stopping = None

    def watch(self, kind: str, value: int | str) -> None:
        line = f"{kind} {value}"
        if line in self.sent or self.proc.stdin is None:
            return
        try:
            self.proc.stdin.write(line + "\n")
            self.proc.stdin.flush()
            self.sent.add(line)
        except (BrokenPipeError, ValueError):
            pass

    def mark_descendants(self) -> None:
        """Put a token in this process's environment and tell the reaper: everything started
        from here on (Parsl's interchange, local worker pools and their workers) inherits it,
        so a kill in the instant between a start and `watch_executors` still ends it."""
        import uuid

        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        self.token_before = os.environ.get(TOKEN_ENV)
        os.environ[TOKEN_ENV] = token
        self.watch("token", token)

    def watch_executors(self, executors) -> None:
        """Tell the reaper about every block and interchange these executors have started."""
        for ex in executors:
            proc = getattr(ex, "interchange_proc", None)
            if proc is not None and getattr(proc, "pid", None):
                self.watch("pid", proc.pid)
            provider = getattr(ex, "provider", None)
            resources = dict(getattr(provider, "resources", {}) or {})
            job_ids = set(resources) | set(getattr(ex, "blocks_to_job_id", {}).values())
            for job_id in job_ids:
                remote = (resources.get(job_id) or {}).get("remote_pid")
                if remote is not None:  # a local block: its process group
                    try:
                        self.watch("pgid", os.getpgid(int(remote)))
                    except (ProcessLookupError, ValueError):
                        pass
                elif job_id is not None and type(provider).__name__ == "SlurmProvider":
                    self.watch("slurm", job_id)

    def follow(self, executors, period_s: float = 0.1) -> None:
        """Keep telling the reaper, from a thread, from before Parsl starts anything (the
        executors are ours before `parsl.load`) until `close`: a kill at any moment leaves
        at most `period_s` of blocks it has not heard of."""
        import threading

        def loop() -> None:
            while not self.stopping.wait(period_s):
                try:
                    self.watch_executors(executors)
                except Exception:  # dictionaries changing under us: next round
                    pass

        self.stopping = threading.Event()
        threading.Thread(target=loop, name="lh-reaper-feed", daemon=True).start()

    def close(self, wait_s: float = 10.0) -> None:
        """Close the pipe: the reaper ends whatever is left, then exits."""
        if getattr(self, "stopping", None) is not None:
            self.stopping.set()
        if hasattr(self, "token_before"):  # what this process starts from now on is not ours to end
            if self.token_before is None:
                os.environ.pop(TOKEN_ENV, None)
            else:
                os.environ[TOKEN_ENV] = self.token_before
        try:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
        except OSError:
            pass
        if wait_s <= 0:
            return
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            pass


if __name__ == "__main__":
    main()
