"""A seventh adversarial pass on pids and leases: numbers out of any range crashed lh status,
gc, verify and execute with a traceback, and a lease stamped years ahead was held for ever.

- a temporary directory named with a pid of 2^31 or more (OverflowError in pid_alive) or a
  non-ASCII digit ('²': ValueError in parse_tmp_name); one named with pid 0 was "may be live"
  for ever (kill(0, 0) signals our own process group);
- a lease whose pid is 1e400 or 2^63 (OverflowError), whose "created" is 1e20 or NaN (describe
  raised while a driver waited on it), or whose fields are of the wrong type;
- another host's lease stamped ten years ahead of the store's clock: no gc ever removed it.

A temporary directory whose name does not parse is judged as such names always were (by its
age); a lease with a field out of range is judged as an unreadable lease always was (by its
heartbeat: held while fresh, removed by gc once stale). Real stores, real lease files."""

import json
import os
import socket

import pytest

from lambda_hat.store.artifacts import parse_tmp_name, pid_alive, pid_space, pid_space_tag
from lambda_hat.store.claims import ClaimTimeout, Claims, Holder, Owner
from test_fifth_pass import lh, store  # noqa: F401  (the fixture: a filled, reconciled store and s.yaml)

ID = "run_6166b094cbd6"
OLD = 1_000_000_000  # an mtime long past: a tree or heartbeat older than any grace or ttl
TEN_YEARS_S = 10 * 365 * 86400.0


def no_traceback(result) -> str:
    """The command's output, after checking it ended without an uncaught exception."""
    assert result.exception is None or isinstance(result.exception, SystemExit), (result.exception, result.output)
    assert "Traceback" not in result.output, result.output
    return result.output


# ------------------------------------------------------------------ pids in temporary names

BAD_PIDS = ["2147483648", "9223372036854775808", "99999999999999999999", "4194305", "0", "²", "٣", "12³"]


@pytest.mark.parametrize("pid", BAD_PIDS)
@pytest.mark.parametrize("tagged", [True, False])
def test_a_temporary_name_parses_only_with_an_ascii_pid_in_range(pid, tagged):
    tag = f"-{pid_space_tag()}" if tagged else ""
    host = socket.gethostname()
    assert parse_tmp_name(f".tmp-tgt_0123456789ab-{host}-{pid}{tag}-abcdef12") is None
    good = parse_tmp_name(f".tmp-tgt_0123456789ab-{host}-4194304{tag}-abcdef12")
    assert good is not None and good.pid == 4194304 and good.host == host


@pytest.mark.parametrize("pid", [0, -1, -2, 2**22 + 1, 2**31, 2**63, 2**64 + 5])
def test_pid_alive_is_false_for_what_is_no_pid_and_never_raises(pid):
    assert pid_alive(pid) is False


def test_pid_alive_still_sees_a_live_process():
    assert pid_alive(os.getpid()) and pid_alive(1)  # pid 1: alive (PermissionError or not)


@pytest.mark.parametrize("pid", ["2147483648", "9223372036854775808", "²", "0"])
def test_gc_verify_and_execute_judge_a_badly_numbered_temporary_directory_by_its_age(store, tmp_path, pid):
    """Not a pid: the name does not parse, and the directory is judged as any name that does
    not parse (a writer that may be live while young; removed by gc once past the grace)."""
    tmp = store / "targets" / f".tmp-tgt_0123456789ab-{socket.gethostname()}-{pid}-abcdef"
    tmp.mkdir()
    (tmp / "half-written").write_text("x")
    for command in (["gc", "--dry-run"], ["verify"]):
        out = no_traceback(lh(*command, "--store", store))
        assert f"{tmp.name} (temporary directory of a writer that may be live)" in out or \
            f"{tmp.name}: temporary directory of a writer that may be live" in out, out
    out = no_traceback(lh("execute", tmp_path / "s.yaml", "--store", store, "--logs", tmp_path / "logs",
                               "--results", tmp_path / "runs.parquet"))
    assert "nothing to do" in out, out
    for p in (tmp, tmp / "half-written"):
        os.utime(p, (OLD, OLD))
    assert f"would remove {tmp} (temporary directory of a dead writer)" in no_traceback(lh("gc", "--dry-run", "--store", store))
    assert tmp.is_dir()
    no_traceback(lh("gc", "--store", store))
    assert not tmp.exists()


# ------------------------------------------------------------------ numbers in leases

def here(**fields) -> dict:
    """A lease of this very pid space (its pid judged by /proc) with `fields` changed."""
    boot_id, pid_ns = pid_space()
    return {"host": socket.gethostname(), "pid": os.getpid(), "token": "x", "created": 1.7e9,
            "boot_id": boot_id, "pid_ns": pid_ns, **fields}


def there(**fields) -> dict:
    """A lease of another host (judged by its heartbeat) with `fields` changed."""
    return {"host": "otherhost", "pid": 5, "token": "x", "created": 1.7e9, **fields}


BAD_LEASES = {
    "pid 1e400": '{"host":"otherhost","pid":1e400,"token":"x"}',
    "pid 2^63 here": json.dumps(here(pid=2**63)),
    "pid 2^31 here": json.dumps(here(pid=2**31)),
    "pid 0 here": json.dumps(here(pid=0)),
    "pid -1 here": json.dumps(here(pid=-1)),
    "pid true": json.dumps(there(pid=True)),
    "pid a string": json.dumps(there(pid="5")),
    "pid 5.5": json.dumps(there(pid=5.5)),
    "created 1e20": json.dumps(there(created=1e20)),
    "created 1e400": '{"host":"otherhost","pid":5,"token":"x","created":1e400}',
    "created NaN": '{"host":"otherhost","pid":5,"token":"x","created":NaN}',
    "created -Infinity": '{"host":"otherhost","pid":5,"token":"x","created":-Infinity}',
    "created a string": json.dumps(there(created="yesterday")),
    "created true": json.dumps(there(created=True)),
    "started 1e400": '{"host":"otherhost","pid":5,"token":"x","started":1e400}',
    "started NaN": '{"host":"otherhost","pid":5,"token":"x","started":NaN}',
    "started 2.5": json.dumps(there(started=2.5)),
    "host a number": json.dumps(there(host=7)),
    "host with a newline": json.dumps(there(host="other\nhost")),
    "token null": json.dumps(there(token=None)),
    "boot_id a list": json.dumps(there(boot_id=[1])),
}


def plant(claims_dir, text: str, mtime: float | None = None):
    claims_dir.mkdir(parents=True, exist_ok=True)
    lease = claims_dir / f"{ID}.lease"
    lease.write_text(text)
    if mtime is not None:
        os.utime(lease, (mtime, mtime))
    return lease


@pytest.mark.parametrize("text", BAD_LEASES.values(), ids=BAD_LEASES.keys())
def test_a_lease_with_a_field_out_of_range_is_judged_as_an_unreadable_one(tmp_path, text):
    """Held while its heartbeat is fresh (as any lease that says nothing usable), described in
    one line, never an exception; stale, and taken over, once its heartbeat stops."""
    me = Claims(tmp_path / ".claims", ttl_s=15.0)
    lease = plant(me.dir, text)
    holder = me.holder(ID)
    assert holder is not None and (holder.owner.host, holder.owner.pid) == ("?", -1)
    line = holder.describe()
    assert line.startswith("? pid -1, last heartbeat") and "\n" not in line, line
    with pytest.raises(ClaimTimeout) as caught:  # what a driver that waits on it says at its bound
        me.claim_within(ID, bound_s=0.2, poll_s=0.05)
    assert "\n" not in str(caught.value) and ID in str(caught.value)
    os.utime(lease, (OLD, OLD))
    assert me.holder(ID) is None
    assert me.acquire(ID) is None and json.loads(lease.read_text())["token"] == me.owner.token


@pytest.mark.parametrize("text", BAD_LEASES.values(), ids=BAD_LEASES.keys())
def test_status_and_gc_report_a_lease_with_a_field_out_of_range(store, tmp_path, text):
    lease = plant(store / ".claims", text)
    out = no_traceback(lh("status", "--store", store, "--logs", tmp_path / "nologs"))
    assert ID in out and "? pid -1" in out, out
    out = no_traceback(lh("gc", "--dry-run", "--store", store))
    assert str(lease) not in out  # its heartbeat is fresh: held
    os.utime(lease, (OLD, OLD))
    assert f"would remove {lease} (stale claim)" in no_traceback(lh("gc", "--dry-run", "--store", store))
    no_traceback(lh("gc", "--store", store))
    assert not lease.exists()


def test_a_lease_in_range_is_still_read_as_it_says(tmp_path):
    me = Claims(tmp_path / ".claims", ttl_s=15.0)
    plant(me.dir, json.dumps(there(pid=2**22, started=123, created=1.7e9, boot_id="b", pid_ns="n")))
    owner = me.holder(ID).owner
    assert owner == Owner("otherhost", 2**22, "x", 123, 1.7e9, "b", "n")
    assert "otherhost pid 4194304, claimed at 2023-11-14 22:13:20 UTC" in me.holder(ID).describe()


def test_describe_never_raises_whatever_the_owner_holds():
    for since in (1e20, float("nan"), float("inf"), -1e20):
        line = Holder(Owner("otherhost", 5, "x", since=since), 3.0).describe()
        assert line == "otherhost pid 5, last heartbeat 3s ago", line


# ------------------------------------------------------------------ leases years ahead

def foreign_lease(claims_dir, ahead_s: float, created_ahead: bool = False):
    other = Claims(claims_dir, Owner("otherhost", 4242, "remote", started=99, boot_id="b", pid_ns="n"))
    assert other.acquire(ID) is None
    lease = claims_dir / f"{ID}.lease"
    if created_ahead:
        data = json.loads(lease.read_text())
        data["created"] += ahead_s
        lease.write_text(json.dumps(data))
    t = other.store_now() + ahead_s
    os.utime(lease, (t, t))
    return lease


@pytest.mark.parametrize("created_ahead", [False, True])
def test_a_foreign_lease_stamped_years_ahead_is_stale_at_once(tmp_path, created_ahead):
    """Beyond any clock skew the store rides out (a day): no heartbeat, but a bogus stamp.
    A fresh process (each lh gc is one) takes it over at once instead of holding it for ever."""
    lease = foreign_lease(tmp_path / ".claims", TEN_YEARS_S, created_ahead)
    me = Claims(tmp_path / ".claims", ttl_s=15.0)
    assert me.holder(ID) is None
    assert me.acquire(ID) is None and json.loads(lease.read_text())["token"] == me.owner.token


def test_a_foreign_lease_a_day_ahead_is_still_held(tmp_path):
    """A day of skew is a live holder's clock, as before (test_leases, test_driver_waits)."""
    foreign_lease(tmp_path / ".claims", 86400.0)
    me = Claims(tmp_path / ".claims", ttl_s=15.0)
    current = me.acquire(ID)
    assert current is not None and current.owner.token == "remote" and current.ahead_s > 86000


def test_our_own_live_process_holds_its_lease_however_it_is_stamped(tmp_path):
    """In our pid space the process alone decides, as before: a live holder keeps its lease."""
    mine = Claims(tmp_path / ".claims")
    assert mine.acquire(ID) is None
    lease = tmp_path / ".claims" / f"{ID}.lease"
    t = mine.store_now() + TEN_YEARS_S
    os.utime(lease, (t, t))
    current = Claims(tmp_path / ".claims", ttl_s=15.0).acquire(ID)
    assert current is not None and current.owner.token == mine.owner.token


def test_gc_removes_a_foreign_lease_stamped_years_ahead(store, tmp_path):
    lease = foreign_lease(store / ".claims", TEN_YEARS_S)
    out = no_traceback(lh("status", "--store", store, "--logs", tmp_path / "nologs"))
    assert ID not in out, out  # not a live claim
    assert f"would remove {lease} (stale claim)" in no_traceback(lh("gc", "--dry-run", "--store", store))
    no_traceback(lh("gc", "--store", store))
    assert not lease.exists()
