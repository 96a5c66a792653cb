"""A fifth adversarial pass on the claims' leases: a lease swapped, while its driver runs,
for a FIFO (release blocked for ever), for `[]` (release crashed: 'list' object has no
attribute 'get'), or for a symbolic link (the heartbeat set the mtime of the file it points
to; a dangling link could not be broken as stale). Real lease files, a real `Claims`.

A lease that is not a regular file holding our token is not ours: release leaves it as it
is, and the heartbeat neither touches it nor keeps counting it held. Blocking opens are
guarded by SIGALRM (a non-OSError exception) so that a hang fails instead of hanging."""

import json
import os

import pytest

from lambda_hat.store.claims import Claims, Owner
from test_third_pass import within

ID = "run_aaaaaaaaaaaa"
OLD = 1_000_000_000  # an mtime long past, to tell whether anything touched the victim


@pytest.fixture
def held(tmp_path):
    """(claims holding ID, its lease path, the lease's content)."""
    claims = Claims(tmp_path / ".claims", ttl_s=15.0)
    assert claims.acquire(ID) is None and ID in claims.held
    lease = claims.dir / f"{ID}.lease"
    return claims, lease, lease.read_text()


@pytest.fixture
def victim(tmp_path):
    """A file outside the claims that a link at the lease points to: holding our own lease's
    content, so that a release reading through the link would take it for our lease."""
    path = tmp_path / "victim.txt"
    path.write_text("precious")
    os.utime(path, (OLD, OLD))
    return path


def untouched(victim, content="precious") -> bool:
    return victim.read_text() == content and victim.stat().st_mtime == OLD


def plant_link(lease, victim, content):
    victim.write_text(content)
    os.utime(victim, (OLD, OLD))
    lease.unlink()
    lease.symlink_to(victim)


def test_release_does_not_block_on_a_fifo_at_our_lease(held):
    claims, lease, _ = held
    lease.unlink()
    os.mkfifo(lease)
    with within(5):
        claims.release(ID)
        claims.release_all()
    assert ID not in claims.held
    assert lease.is_fifo()  # not a lease of ours: left as it is


@pytest.mark.parametrize("content", ["[]", "null", '"token"', "42"])
def test_release_of_a_lease_rewritten_as_something_not_a_lease(held, content):
    claims, lease, _ = held
    lease.write_text(content)
    claims.release(ID)  # no AttributeError / TypeError
    assert ID not in claims.held
    assert lease.exists()  # not ours: left for the staleness rules to judge


def test_release_still_removes_our_own_lease(held):
    claims, lease, _ = held
    claims.release(ID)
    assert not lease.exists() and ID not in claims.held


def test_release_leaves_a_link_at_our_lease_and_what_it_points_to(held, victim):
    claims, lease, content = held
    plant_link(lease, victim, content)  # the link's target holds our very token
    claims.release(ID)
    assert lease.is_symlink()  # not a regular file of ours: not removed
    assert untouched(victim, content)


def test_heartbeat_does_not_touch_through_a_link(held, victim):
    claims, lease, content = held
    plant_link(lease, victim, content)
    claims.heartbeat()
    assert untouched(victim, content)
    assert ID not in claims.held  # a lease that is a link is not ours
    claims.release(ID)
    assert lease.is_symlink() and untouched(victim, content)


def test_heartbeat_does_not_block_on_a_fifo_and_lets_it_go(held):
    claims, lease, _ = held
    lease.unlink()
    os.mkfifo(lease)
    with within(5):
        claims.heartbeat()
        claims.release(ID)
    assert ID not in claims.held and lease.is_fifo()


def test_heartbeat_still_refreshes_our_own_lease(held):
    claims, lease, _ = held
    os.utime(lease, (OLD, OLD))
    claims.heartbeat()
    assert lease.stat().st_mtime > OLD and ID in claims.held


@pytest.mark.parametrize("dangling", [True, False])
def test_a_stale_link_planted_as_a_lease_is_broken_as_itself(tmp_path, victim, dangling):
    """A link at a lease, its own mtime old: stale by its heartbeat, broken (the link, not
    what it points to) and claimed anew, instead of an uncaught FileNotFoundError (dangling)
    or a lease never breakable (a link to a file)."""
    claims = Claims(tmp_path / ".claims", owner=Owner("otherhost", 1, "tok"), ttl_s=15.0)
    claims.dir.mkdir()
    lease = claims.dir / f"{ID}.lease"
    lease.symlink_to(tmp_path / "nothing" if dangling else victim)
    os.utime(lease, (OLD, OLD), follow_symlinks=False)
    assert claims.acquire(ID) is None
    assert not lease.is_symlink() and json.loads(lease.read_text())["token"] == "tok"
    assert untouched(victim)
