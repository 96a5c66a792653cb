"""Claims: which driver is working on which artifact, across processes and hosts.

A claim is a lease file `<store>/.claims/<id>.lease` holding its owner (host, pid, the pid's
start time, the boot ID and PID namespace the pid belongs to, a random token, when it was
taken). It is created atomically with `link(2)` from a private temporary file, which is
atomic on NFS and Lustre where `flock` often is not (on file systems without hard links, an
O_CREAT|O_EXCL create: `create_as`). The owner refreshes the lease's mtime (its heartbeat)
every few seconds. A stale lease is broken by renaming it away (only one breaker can win the
rename), then claimed anew. Staleness:

- in this pid space (same host name, boot ID and PID namespace: a container given its
  host's name, or a rebooted machine, is another), the holder's process decides alone: a
  lease whose pid is alive and started when the lease says (not a recycled pid) is live
  however long its heartbeat pauses (SIGSTOP, a suspended laptop, a swapping node); a dead
  or recycled pid's lease is stale;
- from anywhere else (and for leases from before boot ID and namespace were recorded), the
  heartbeat decides, judged by the store's own clock (the mtime of a file we touch in the
  store), never ours: a heartbeat older than `ttl_s` ($LH_CLAIM_TTL_S, default TTL_S) by
  that clock is stale, and so is one seen unchanged for `ttl_s` by this process (a lease
  stamped in the future by a skewed clock is therefore neither live forever nor broken
  early); one stamped more than MAX_AHEAD_S ahead of it is no clock's skew, and stale at once.

A lease whose fields are not what a driver writes (a pid no process can have, a time that is
no time, a host that is not a string) says nothing usable, as one that does not parse: it is
judged by its heartbeat alone.

A driver waits on another's claim for at most a bound (`overdue`), then tells the user who
holds the work (host, pid, since when).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import json
import os
import stat
import socket
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from lambda_hat.errors import BadInput
from lambda_hat.files import read_regular_text
from lambda_hat.store.artifacts import PID_MAX, pid_alive, pid_space

HEARTBEAT_S = 5.0
# A heartbeat this old (by the store's clock, or unchanged for this long as we watch it) is a
# driver on another host that stopped: its claim may be taken over.
TTL_S = 120.0
TTL_ENV = "LH_CLAIM_TTL_S"
# How long a driver waits on another's claim before it tells the user what holds the work.
WAIT_BOUND_S = 600.0
WAIT_BOUND_ENV = "LH_CLAIM_WAIT_S"
# A heartbeat stamped further than this ahead of the store's clock is no live host's: a day of
# skew is ridden out (test_leases), twice that is a clock set wrong or a planted stamp, and
# were it held, no process would ever see it stale (each sees it unchanged only from its start).
MAX_AHEAD_S = 2 * 86400.0
# The store's clock is read again after this many seconds (one create, stat and unlink).
CLOCK_REFRESH_S = 30.0
# What link(2) answers on file systems without hard links (SMB/CIFS, s3fs, gcsfuse).
NO_HARD_LINKS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})


def wait_bound_s() -> float:
    return float(os.environ.get(WAIT_BOUND_ENV, WAIT_BOUND_S))


def lease_ttl_s() -> float:
    """The lease length: $LH_CLAIM_TTL_S seconds, else TTL_S. BadInput unless it is a number of
    at least three heartbeats (a shorter lease breaks live claims whenever a heartbeat is late)."""
    raw = os.environ.get(TTL_ENV)
    if raw is None:
        return TTL_S
    try:
        ttl_s = float(raw)
    except ValueError:
        ttl_s = float("nan")
    if not 3 * HEARTBEAT_S <= ttl_s < float("inf"):
        raise BadInput(f"{TTL_ENV}={raw!r}: must be a number of seconds, at least {3 * HEARTBEAT_S:.0f} "
                       f"(three {HEARTBEAT_S:.0f}s heartbeats)")
    return ttl_s


MAX_LEASE_BYTES = 1 << 16  # a lease is a few hundred bytes of JSON


def _write_new(path: Path, data: bytes) -> None:
    """A new file of ours: created exclusively (nothing planted at its name is written through)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    except BaseException:  # a full disk: nothing half-written left behind (it is ours: we just made it)
        os.close(fd)
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise
    os.close(fd)


def create_as(src: Path, dst: Path) -> None:
    """Create `dst` holding what `src` holds, or FileExistsError if it exists: with link(2),
    atomic on NFS and Lustre; where the file system has no hard links, with an
    O_CREAT|O_EXCL create and a write (the create is as exclusive; a reader in between sees
    an empty lease, which it judges by its fresh heartbeat: held)."""
    try:
        os.link(src, dst)
        return
    except OSError as err:
        if err.errno not in NO_HARD_LINKS:
            raise
    fd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)  # our own new file: never read through a link
    try:
        data = os.read(fd, MAX_LEASE_BYTES)
    finally:
        os.close(fd)
    fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        while data:
            data = data[os.write(fd, data):]
    finally:
        os.close(fd)


def process_state(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process on this host, from
    /proc/<pid>/stat (fields 3 and 22); None where there is no such process or no /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
        # The command name (field 2) is in parentheses and may hold spaces and ')'.
        fields = text[text.rindex(")") + 2:].split()
        return fields[0], int(fields[19])
    except (OSError, ValueError, IndexError):
        return None


def process_start(pid: int) -> int | None:
    state = process_state(pid)
    return None if state is None else state[1]


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str
    started: int | None = None  # the pid's start time (/proc/<pid>/stat field 22): tells a recycled pid
    since: float | None = None  # when the claim was taken (epoch seconds, the holder's clock)
    # Where `pid` is a pid (artifacts.pid_space): this process's unless given; None in a lease
    # from before they were recorded, or where they could not be read.
    boot_id: str | None = field(default_factory=lambda: pid_space()[0])
    pid_ns: str | None = field(default_factory=lambda: pid_space()[1])

    def in_this_pid_space(self) -> bool:
        """Whether `pid` is a pid as this process sees them, so that /proc may judge it."""
        return self.pid > 0 and (self.host, self.boot_id, self.pid_ns) == (socket.gethostname(), *pid_space())

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12], process_start(os.getpid()))

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


@dataclass(frozen=True)
class Holder:
    owner: Owner
    heartbeat_age_s: float  # by the store's clock, never negative (see ahead_s)
    ahead_s: float = 0.0  # how far the heartbeat is stamped ahead of the store's clock (skew)

    def describe(self) -> str:
        """'host pid N, claimed at <UTC time>, last heartbeat Ns ago' (or how far ahead it is stamped)."""
        parts = [self.owner.describe()]
        if self.owner.since is not None:
            try:
                since = dt.datetime.fromtimestamp(self.owner.since, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
                parts.append(f"claimed at {since}")
            except (OverflowError, ValueError, OSError):
                pass  # no time a calendar shows (NaN, past year 9999): said nothing of, never raised
        if self.ahead_s > 1.0:
            parts.append(f"heartbeat stamped {self.ahead_s:.0f}s in the future (clock skew)")
        else:
            parts.append(f"last heartbeat {self.heartbeat_age_s:.0f}s ago")
        return ", ".join(parts)


class Claims:
    def __init__(self, claims_dir: Path, owner: Owner | None = None, ttl_s: float | None = None):
        self.dir = claims_dir
        self.owner = owner or Owner.this_process()
        self.ttl_s = lease_ttl_s() if ttl_s is None else ttl_s
        self.held: set[str] = set()
        # Other hosts' leases as this process last saw them: {id: (stat key, monotonic time first seen)}
        self._seen: dict[str, tuple[tuple, float]] = {}
        self._clock: tuple[float, float] | None = None  # (store clock − time.time(), monotonic time measured)

    def _path(self, artifact_id: str) -> Path:
        return self.dir / f"{artifact_id}.lease"

    def store_now(self) -> float:
        """Now by the store's file-system clock: the mtime of a file created in the claims
        directory (on NFS the server stamps it), as an offset to ours re-measured every
        CLOCK_REFRESH_S. Our own clock where the directory is not writable (`lh status` on a
        read-only store)."""
        if self._clock is None or time.monotonic() - self._clock[1] > CLOCK_REFRESH_S:
            probe = self.dir / f".clock-{self.owner.token}-{uuid.uuid4().hex[:6]}"
            offset = 0.0
            try:
                before = time.time()
                os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
                try:
                    offset = os.stat(probe).st_mtime - (before + time.time()) / 2
                finally:
                    probe.unlink(missing_ok=True)
            except OSError:
                pass
            self._clock = (offset, time.monotonic())
        return time.time() + self._clock[0]

    def _read(self, path: Path) -> tuple[Owner, os.stat_result] | None:
        try:
            st = path.lstat()
        except FileNotFoundError:
            return None
        try:
            if not stat.S_ISREG(st.st_mode):
                # A link, FIFO or device planted as a lease: never opened (a FIFO would block).
                raise ValueError("not a regular file")
            # Read as a regular file only: it may have been swapped since the lstat.
            owner = _owner_of(json.loads(_read_lease_text(path)))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            # Unreadable lease: a writer died between create and write (cannot happen with
            # link(2)), or someone edited it (a field out of range too). Judged by its heartbeat alone.
            owner = Owner("?", -1, "?", boot_id=None, pid_ns=None)
        return owner, st

    def holder(self, artifact_id: str) -> Holder | None:
        """The live holder of a claim, or None if it is free or stale."""
        return self._judge(artifact_id)[0]

    def _judge(self, artifact_id: str) -> tuple[Holder | None, int | None]:
        """(the live holder or None, the inode of the lease judged; None when there is none)."""
        read = self._read(self._path(artifact_id))
        if read is None:
            self._seen.pop(artifact_id, None)
            return None, None
        owner, st = read
        return self._live(artifact_id, owner, st), st.st_ino

    def _live(self, artifact_id: str, owner: Owner, st: os.stat_result) -> Holder | None:
        age = self.store_now() - st.st_mtime
        holder = Holder(owner, max(age, 0.0), max(-age, 0.0))
        if owner.in_this_pid_space():
            # Our pid space: the process alone decides, however old its heartbeat.
            if not pid_alive(owner.pid):
                return None
            state = process_state(owner.pid)
            if state is not None and (state[0] in "ZX" or (owner.started is not None and state[1] != owner.started)):
                return None  # a zombie, or the pid now names another process
            return holder
        # Another host, boot or PID namespace (or a lease that does not say): its heartbeat, by the store's clock and by how long we have seen it unchanged.
        if -age > MAX_AHEAD_S:
            return None  # stamped years ahead: no skew, and seen unchanged only from our first look, held for ever
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        seen = self._seen.get(artifact_id)
        if seen is None or seen[0] != key:
            self._seen[artifact_id] = seen = (key, time.monotonic())
        if age > self.ttl_s or time.monotonic() - seen[1] > self.ttl_s:
            return None
        return holder

    def acquire(self, artifact_id: str) -> Holder | None:
        """Claim `artifact_id`. Returns None when we hold it now, else its live holder."""
        if artifact_id in self.held:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(artifact_id)
        for _ in range(5):
            tmp = self.dir / f".new-{artifact_id}-{self.owner.token}-{uuid.uuid4().hex[:6]}"
            _write_new(tmp, json.dumps({"host": self.owner.host, "pid": self.owner.pid, "token": self.owner.token,
                                        "started": self.owner.started, "created": time.time(),
                                        "boot_id": self.owner.boot_id, "pid_ns": self.owner.pid_ns}).encode())
            try:
                create_as(tmp, path)
                self.held.add(artifact_id)
                return None
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            current, inode = self._judge(artifact_id)
            if current is not None:
                if current.owner.token == self.owner.token:
                    self.held.add(artifact_id)
                    return None
                return current
            if inode is not None:
                self._break(path, inode)
        current = self.holder(artifact_id)
        return current or Holder(Owner("?", -1, "?"), 0.0)

    def overdue(self, artifact_id: str, waiting_since: float, bound_s: float | None = None) -> str | None:
        """For a driver waiting on another's claim since `waiting_since` (time.monotonic()):
        None while the wait is within its bound (`wait_bound_s()`) or the claim is no longer
        held; past it, one line saying what holds the work."""
        bound_s = wait_bound_s() if bound_s is None else bound_s
        if time.monotonic() - waiting_since < bound_s:
            return None
        current = self.holder(artifact_id)
        if current is None:
            return None
        return (f"{artifact_id} is held by another lh execute ({current.describe()}); "
                f"not waited for after {bound_s:.0f}s: run lh execute again once it is done")

    def claim_within(self, artifact_id: str, bound_s: float | None = None, poll_s: float = 1.0) -> None:
        """Claim `artifact_id`, waiting for its holder to finish or go stale for at most
        `bound_s`; ClaimTimeout (saying who holds it) after that."""
        start = time.monotonic()
        while self.acquire(artifact_id) is not None:
            message = self.overdue(artifact_id, start, bound_s)
            if message is not None:
                raise ClaimTimeout(message)
            time.sleep(poll_s)

    def _break(self, path: Path, judged_inode: int) -> None:
        graveyard = self.dir / f".stale-{path.stem}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, graveyard)
        except FileNotFoundError:
            return
        try:
            if graveyard.lstat().st_ino != judged_inode:  # lstat: a link planted as a lease is judged, and broken, as itself
                # A new claim replaced the stale lease between our look and the rename: put it back.
                try:
                    create_as(graveyard, path)
                except FileExistsError:
                    pass
        finally:
            try:
                graveyard.unlink(missing_ok=True)
            except OSError:  # a directory where a lease belongs (EISDIR, EPERM on macOS): removed if empty, else
                # left aside under its .stale- name, someone's tree: lh gc keeps it and says so (store._claims_ours)
                try:
                    graveyard.rmdir()
                except OSError:
                    pass

    def heartbeat(self) -> None:
        """Refresh the mtime of each lease we hold. Only a regular file is touched, never
        through a symbolic link and never opening a FIFO or device: a lease that is no longer
        a regular file (or is gone) is not ours any more, and is dropped from `held`."""
        for artifact_id in list(self.held):
            if not _touch_regular(self._path(artifact_id)):
                # Broken by someone who judged us dead (a long stall), or replaced by something
                # that is not a lease: we no longer hold it.
                self.held.discard(artifact_id)

    def release(self, artifact_id: str) -> None:
        """Remove our lease on `artifact_id`. Only a regular file holding our token is ours:
        a lease that is gone, unreadable, not a JSON object, another's, or not a regular file
        (a link, FIFO or device put in its place: never followed nor opened) is left as it is."""
        if artifact_id not in self.held:
            return
        self.held.discard(artifact_id)
        path = self._path(artifact_id)
        try:
            before = path.lstat()
            if not stat.S_ISREG(before.st_mode) or _lease_token(path) != self.owner.token:
                return
            after = path.lstat()
            if (after.st_dev, after.st_ino) == (before.st_dev, before.st_ino):  # the very file read
                path.unlink(missing_ok=True)
        except OSError:
            pass

    def release_all(self) -> None:
        for artifact_id in list(self.held):
            self.release(artifact_id)


# The latest time a calendar shows (datetime's year 9999): a lease's "created" past it is no time.
MAX_EPOCH_S = 253402300800.0


def _owner_of(data: object) -> Owner:
    """The Owner a lease's JSON names, or ValueError for a field that is not what a driver
    writes: a pid no process can have (bool, float, 0, past PID_MAX: os.kill and /proc refuse
    it), a start time or claim time that is not a finite number in range, a host or token that
    is not a printable string (it is shown in one-line messages)."""
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    host, pid, token = data["host"], data["pid"], data["token"]
    started, created = data.get("started"), data.get("created")
    boot_id, pid_ns = data.get("boot_id"), data.get("pid_ns")
    if not (isinstance(host, str) and host.isprintable() and isinstance(token, str) and token.isprintable()):
        raise ValueError("host or token is not a printable string")
    if not (_is_int(pid) and 0 < pid <= PID_MAX):
        raise ValueError(f"pid out of range (1 to {PID_MAX})")
    if started is not None and not (_is_int(started) and 0 <= started < 1 << 63):
        raise ValueError("started is not a process start time")
    if created is not None and not (isinstance(created, (int, float)) and not isinstance(created, bool)
                                    and 0 <= created < MAX_EPOCH_S):  # NaN fails the comparison too
        raise ValueError("created is not a time")
    if not all(v is None or isinstance(v, str) for v in (boot_id, pid_ns)):
        raise ValueError("boot_id or pid_ns is not a string")
    return Owner(host, pid, token, started, None if created is None else float(created), boot_id, pid_ns)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)  # JSON's true is no number


def _read_lease_text(path: Path) -> str:
    """The text of a lease that is a regular file (never read through a link, never waiting on
    a FIFO), else ValueError (FileNotFoundError where nothing is there)."""
    text = read_regular_text(path)
    if text is None:
        if not os.path.lexists(path):
            raise FileNotFoundError(errno.ENOENT, "no lease", str(path))
        raise ValueError("not a regular file of text")
    return text


def _lease_token(path: Path) -> str | None:
    """The token in the lease at `path`, or None where it is not a regular file holding a JSON
    object with a string token (whatever its content: never an exception but OSError)."""
    try:
        data = json.loads(_read_lease_text(path))
    except ValueError:  # json.JSONDecodeError is one
        return None
    token = data.get("token") if isinstance(data, dict) else None
    return token if isinstance(token, str) else None


def _touch_regular(path: Path) -> bool:
    """Set the mtime of `path` to now if it is a regular file, never through a symbolic link
    and never opening it (a FIFO would block); False (nothing touched) where it is anything
    else or gone."""
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        if os.utime in os.supports_follow_symlinks:
            # Swapped since the lstat, this sets the link's or FIFO's own time, nothing beyond.
            os.utime(path, follow_symlinks=False)
            return True
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        return False
    except OSError as err:
        if err.errno == errno.ELOOP:  # swapped for a link since the lstat
            return False
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return False
        os.utime(fd)
        return True
    finally:
        os.close(fd)


class ClaimTimeout(RuntimeError):
    """Another driver held a claim past the wait's bound."""
