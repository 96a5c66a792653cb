"""A live lease is never broken, and no wait on one is endless. Real lease files, real
processes (stopped with SIGSTOP, exited, zombies), mtimes set as a skewed clock would."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lambda_hat.errors import BadInput
from lambda_hat.store.claims import ClaimTimeout, Claims, Owner, process_start

HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lambda_hat.store.claims import Claims
    claims = Claims(Path(sys.argv[1]))
    assert claims.acquire(sys.argv[2]) is None
    print("held", flush=True)
    time.sleep(600)
""")


@pytest.fixture
def holder_process(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "run_aaaaaaaaaaaa"],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "held"
        yield proc
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()
        proc.wait(timeout=30)


def test_a_stopped_holder_on_this_host_keeps_its_lease(tmp_path, holder_process):
    """Driver A stopped (SIGSTOP) long past the heartbeat's ttl: its lease is not stale."""
    lease = tmp_path / "run_aaaaaaaaaaaa.lease"
    before = lease.read_text()
    os.kill(holder_process.pid, signal.SIGSTOP)
    old = time.time() - 3600  # as if it had been stopped for an hour
    os.utime(lease, (old, old))
    me = Claims(tmp_path, ttl_s=1.0)
    time.sleep(1.5)  # and past this claimant's ttl as it watches
    for _ in range(3):
        current = me.acquire("run_aaaaaaaaaaaa")
        assert current is not None and current.owner.pid == holder_process.pid
    assert lease.read_text() == before  # never broken, never replaced
    assert me.holder("run_aaaaaaaaaaaa").heartbeat_age_s > 3000


def test_a_recycled_pid_does_not_hold_a_lease(tmp_path):
    """A lease naming a live pid that started after it (the pid was reused) is stale."""
    me = os.getpid()
    impostor = Claims(tmp_path, Owner(socket.gethostname(), me, "gone", started=process_start(me) - 1))
    assert impostor.acquire("run_bbbbbbbbbbbb") is None
    claims = Claims(tmp_path)
    assert claims.holder("run_bbbbbbbbbbbb") is None
    assert claims.acquire("run_bbbbbbbbbbbb") is None  # taken over


def test_a_zombie_does_not_hold_a_lease(tmp_path):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path), "run_cccccccccccc"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":  # exited, not reaped
        assert time.monotonic() < deadline
        time.sleep(0.05)
    try:
        assert Claims(tmp_path).acquire("run_cccccccccccc") is None
    finally:
        proc.wait()


def _future_lease(tmp_path, artifact_id: str, ahead_s: float = 86400.0):
    """A lease of another host whose mtime its clock stamped `ahead_s` in the future."""
    other = Claims(tmp_path, Owner("otherhost", 4242, "remote", started=99))
    assert other.acquire(artifact_id) is None
    lease = tmp_path / f"{artifact_id}.lease"
    t = time.time() + ahead_s
    os.utime(lease, (t, t))
    return lease


def test_a_lease_stamped_in_the_future_is_not_held_forever(tmp_path):
    """Its heartbeat stopped (the mtime never moves): taken over once seen unchanged for the ttl."""
    _future_lease(tmp_path, "run_dddddddddddd")
    me = Claims(tmp_path, ttl_s=1.0)
    current = me.acquire("run_dddddddddddd")
    assert current is not None and current.heartbeat_age_s == 0.0 and current.ahead_s > 86000
    assert "in the future" in current.describe() and "-" not in f"{current.heartbeat_age_s:.0f}"
    t0 = time.monotonic()
    me.claim_within("run_dddddddddddd", bound_s=30.0, poll_s=0.1)
    assert time.monotonic() - t0 < 5.0 and "run_dddddddddddd" in me.held


def test_a_wait_on_a_live_skewed_holder_ends_naming_it(tmp_path):
    """A holder on another host keeps heartbeating a day ahead: never stolen, and the wait on it
    ends within its bound with a line saying who holds the work and since when."""
    lease = _future_lease(tmp_path, "run_eeeeeeeeeeee")
    stop = threading.Event()

    def heartbeat():  # the skewed host's heartbeat: a day ahead, moving on
        while not stop.wait(0.1):
            t = time.time() + 86400
            os.utime(lease, (t, t))

    beating = threading.Thread(target=heartbeat, daemon=True)
    beating.start()
    me = Claims(tmp_path, ttl_s=1.0)
    t0 = time.monotonic()
    try:
        with pytest.raises(ClaimTimeout) as caught:
            me.claim_within("run_eeeeeeeeeeee", bound_s=2.5, poll_s=0.1)
    finally:
        stop.set()
        beating.join()
    waited = time.monotonic() - t0
    assert 2.5 <= waited < 6.0
    message = str(caught.value)
    assert "otherhost pid 4242" in message and "claimed at 20" in message and "UTC" in message, message
    assert "in the future" in message and "run_eeeeeeeeeeee" in message
    assert "run_eeeeeeeeeeee" not in me.held and "remote" in lease.read_text()


def test_other_hosts_heartbeat_is_judged_by_the_store_clock(tmp_path):
    """A lease whose heartbeat stopped two ttls ago by the file system's clock is stale at once."""
    other = Claims(tmp_path, Owner("otherhost", 4242, "remote"))
    assert other.acquire("run_ffffffffffff") is None
    me = Claims(tmp_path, ttl_s=1.0)
    assert me.holder("run_ffffffffffff") is not None  # fresh
    assert abs(me.store_now() - time.time()) < 2.0
    old = me.store_now() - 2.5
    os.utime(tmp_path / "run_ffffffffffff.lease", (old, old))
    assert me.holder("run_ffffffffffff") is None and me.acquire("run_ffffffffffff") is None


def test_overdue_is_silent_within_the_bound_and_for_free_claims(tmp_path, holder_process):
    me = Claims(tmp_path)
    assert me.overdue("run_aaaaaaaaaaaa", time.monotonic(), bound_s=60.0) is None
    late = me.overdue("run_aaaaaaaaaaaa", time.monotonic() - 61.0, bound_s=60.0)
    assert late is not None and f"pid {holder_process.pid}" in late and socket.gethostname() in late
    assert me.overdue("run_nothingheld", time.monotonic() - 61.0, bound_s=60.0) is None


def test_a_lease_that_does_not_say_its_pid_space_is_judged_by_its_heartbeat(tmp_path):
    """A lease from before boot ID and PID namespace were recorded, naming this host and a pid
    dead here: its pid may be another namespace's, so it holds until its heartbeat stops."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    lease = tmp_path / "run_gggggggggggg.lease"
    lease.write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "token": "old",
                                 "started": 1, "created": time.time()}))
    me = Claims(tmp_path, ttl_s=1.0)
    current = me.acquire("run_gggggggggggg")
    assert current is not None and current.owner.pid == dead.pid and current.owner.boot_id is None
    old = me.store_now() - 2.5
    os.utime(lease, (old, old))
    assert me.acquire("run_gggggggggggg") is None  # its heartbeat stopped: taken over


def test_a_lease_records_where_its_pid_is_a_pid(tmp_path):
    """Boot ID and PID namespace as /proc says; another boot's lease on this host, pid alive
    here, is judged by its heartbeat, not by our /proc."""
    me = Claims(tmp_path, ttl_s=1.0)
    assert me.acquire("run_hhhhhhhhhhhh") is None
    data = json.loads((tmp_path / "run_hhhhhhhhhhhh.lease").read_text())
    assert data["boot_id"] == Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    assert data["pid_ns"] == os.readlink("/proc/self/ns/pid") and data["pid_ns"].startswith("pid:[")
    # The same host and a live pid (ours), but written before a reboot: not ours to judge.
    data.update(token="lastboot", boot_id="00000000-0000-0000-0000-000000000000", pid=os.getpid(),
                started=process_start(os.getpid()))
    (tmp_path / "run_iiiiiiiiiiii.lease").write_text(json.dumps(data))
    old = me.store_now() - 2.5
    os.utime(tmp_path / "run_iiiiiiiiiiii.lease", (old, old))
    assert me.holder("run_iiiiiiiiiiii") is None


def test_the_lease_length_is_a_setting(tmp_path, monkeypatch):
    monkeypatch.delenv("LH_CLAIM_TTL_S", raising=False)
    assert Claims(tmp_path).ttl_s == 120.0
    monkeypatch.setenv("LH_CLAIM_TTL_S", "20")
    assert Claims(tmp_path).ttl_s == 20.0 and Claims(tmp_path, ttl_s=1.0).ttl_s == 1.0
    for bad in ("14", "0", "-30", "nan", "inf", "twenty", ""):
        monkeypatch.setenv("LH_CLAIM_TTL_S", bad)
        with pytest.raises(BadInput) as caught:
            Claims(tmp_path)
        assert str(caught.value).startswith(f"LH_CLAIM_TTL_S={bad!r}:") and "\n" not in str(caught.value)


def test_claims_work_where_the_file_system_has_no_hard_links(tmp_path, monkeypatch):
    """SMB/CIFS and s3fs refuse link(2) (EPERM): claims are created with O_CREAT|O_EXCL instead,
    as exclusive: racing claimants each win different claims, none twice, and a stale lease
    is still taken over."""
    def refused(src, dst, **kw):
        raise OSError(errno.EPERM, "Operation not permitted", str(src))

    monkeypatch.setattr(os, "link", refused)
    ids = [f"run_{i:012x}" for i in range(40)]
    rivals = [Claims(tmp_path, Owner("otherhost", 4242 + i, f"rival{i}")) for i in range(4)]
    start = threading.Barrier(len(rivals))
    won: dict[int, list[str]] = {}

    def claim_all(i: int) -> None:
        start.wait()
        won[i] = [a for a in ids if rivals[i].acquire(a) is None]

    threads = [threading.Thread(target=claim_all, args=(i,)) for i in range(len(rivals))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    flat = sorted(a for w in won.values() for a in w)
    assert flat == ids, [len(w) for w in won.values()]
    for i, w in won.items():  # each lease says who won it
        assert all(json.loads((tmp_path / f"{a}.lease").read_text())["token"] == f"rival{i}" for a in w)
    me = Claims(tmp_path, ttl_s=1.0)
    assert me.acquire(ids[0]) is not None  # held, heartbeat fresh
    old = me.store_now() - 2.5
    os.utime(tmp_path / f"{ids[0]}.lease", (old, old))
    assert me.acquire(ids[0]) is None and json.loads((tmp_path / f"{ids[0]}.lease").read_text())["token"] == me.owner.token
    assert not [p.name for p in tmp_path.iterdir() if not p.name.endswith(".lease")]  # no .new- or .stale- left
