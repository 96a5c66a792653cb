"""Claims: which driver is working on which artifact, across processes and hosts.

A claim is a lease file `<store>/.claims/<id>.lease` holding its owner (host, pid, a
random token). It is created atomically with `link(2)` from a private temporary file,
which is atomic on NFS and Lustre where `flock` often is not. The owner refreshes the
lease's mtime (its heartbeat) every few seconds. A lease is stale when its heartbeat is
older than `ttl_s`, or when it belongs to a dead process on this host; a stale lease is
broken by renaming it away (only one breaker can win the rename), then claimed anew.
"""

from __future__ import annotations

import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

from lambda_hat.store.artifacts import pid_alive

HEARTBEAT_S = 5.0
# Generous against clock skew between hosts sharing the file system (mtimes are set by
# the file server's clock, staleness is judged by ours).
TTL_S = 120.0


@dataclass(frozen=True)
class Owner:
    host: str
    pid: int
    token: str

    @classmethod
    def this_process(cls) -> "Owner":
        return cls(socket.gethostname(), os.getpid(), uuid.uuid4().hex[:12])

    def describe(self) -> str:
        return f"{self.host} pid {self.pid}"


@dataclass(frozen=True)
class Holder:
    owner: Owner
    heartbeat_age_s: float


class Claims:
    def __init__(self, claims_dir: Path, owner: Owner | None = None, ttl_s: float = TTL_S):
        self.dir = claims_dir
        self.owner = owner or Owner.this_process()
        self.ttl_s = ttl_s
        self.held: set[str] = set()

    def _path(self, artifact_id: str) -> Path:
        return self.dir / f"{artifact_id}.lease"

    def holder(self, artifact_id: str) -> Holder | None:
        """The live holder of a claim, or None if it is free or stale."""
        path = self._path(artifact_id)
        try:
            st = path.stat()
            data = json.loads(path.read_text())
            owner = Owner(str(data["host"]), int(data["pid"]), str(data["token"]))
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError):
            # Unreadable lease: a writer died between create and write (cannot happen with
            # link(2)) or someone edited it. Judge it by its age alone.
            owner = Owner("?", -1, "?")
            st = path.stat() if path.exists() else None
            if st is None:
                return None
        age = time.time() - st.st_mtime
        if age > self.ttl_s:
            return None
        if owner.host == socket.gethostname() and owner.pid > 0 and not pid_alive(owner.pid):
            return None
        return Holder(owner, age)

    def acquire(self, artifact_id: str) -> Holder | None:
        """Claim `artifact_id`. Returns None when we hold it now, else its live holder."""
        if artifact_id in self.held:
            return None
        self.dir.mkdir(parents=True, exist_ok=True)
        path = self._path(artifact_id)
        for _ in range(5):
            tmp = self.dir / f".new-{artifact_id}-{self.owner.token}-{uuid.uuid4().hex[:6]}"
            tmp.write_text(json.dumps({"host": self.owner.host, "pid": self.owner.pid, "token": self.owner.token,
                                       "created": time.time()}))
            try:
                os.link(tmp, path)
                self.held.add(artifact_id)
                return None
            except FileExistsError:
                pass
            finally:
                tmp.unlink(missing_ok=True)
            current = self.holder(artifact_id)
            if current is not None:
                if current.owner.token == self.owner.token:
                    self.held.add(artifact_id)
                    return None
                return current
            self._break(path)
        current = self.holder(artifact_id)
        return current or Holder(Owner("?", -1, "?"), 0.0)

    def _break(self, path: Path) -> None:
        graveyard = self.dir / f".stale-{path.stem}-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(path, graveyard)
        except FileNotFoundError:
            return
        graveyard.unlink(missing_ok=True)

    def heartbeat(self) -> None:
        for artifact_id in list(self.held):
            try:
                os.utime(self._path(artifact_id))
            except FileNotFoundError:
                # Broken by someone who judged us dead (a long stall): we no longer hold it.
                self.held.discard(artifact_id)

    def release(self, artifact_id: str) -> None:
        if artifact_id not in self.held:
            return
        self.held.discard(artifact_id)
        path = self._path(artifact_id)
        try:
            if json.loads(path.read_text()).get("token") == self.owner.token:
                path.unlink(missing_ok=True)
        except (OSError, ValueError):
            pass

    def release_all(self) -> None:
        for artifact_id in list(self.held):
            self.release(artifact_id)
