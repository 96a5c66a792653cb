"""Two hosts on one store, simulated with Linux namespaces (slow).

Each "host" is an `lh execute` in its own UTS and PID namespace (`unshare --uts --pid --fork
--mount-proc`): its own host name, its own PIDs (its driver is PID 1 there, meaningless to the
other), its own /proc; the store is shared as a cluster's file system would be. Host A claims
the sweep and starts it; host B starts on the same sweep and waits on A's claims; then A is
killed as a machine dies (SIGKILL to its namespace's init kills every process in it: driver,
interchange, workers, reaper). B must take over A's abandoned claims once their lease expires
(not before), and every job must end done exactly once. A quick check: two hosts that share a
host name (containers with the host's name, nodes named alike) must not take each other's live
claims. And the reaper, which reads /proc, must work in a host's own PID namespace.

The hosts run with a short lease (LH_CLAIM_TTL_S=LEASE_TTL_S; 120 s by default)."""

import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from lhproc import env, lh, processes_left

LH = [sys.executable, "-m", "lambda_hat.cli"]
LEASE_TTL_S = 20.0  # > the 5 s heartbeat with room for a busy machine; takeover waits ~this long
HEARTBEAT_S = 5.0
SWEEP = (
    "targets:\n"
    "  - {model: small, data: small, seed: 7, overrides: {training: {steps: 200, learning_rate: 0.01}}}\n"
    "samplers:\n"
    "  - {name: sgld, chains: 2, grid: {seed: [1, 2]}, overrides: {steps: 2000, warmup: 100, eval_every: 10}}\n"
)
UNSHARE = ["unshare", "--uts", "--pid", "--fork", "--mount-proc"]


def require_namespaces() -> None:
    """Skip only where the kernel refuses the namespaces (no root, a container without
    CAP_SYS_ADMIN, user namespaces off); a missing `unshare` or any other failure fails."""
    proc = subprocess.run([*UNSHARE, "true"], capture_output=True, text=True, timeout=30)
    if proc.returncode != 0:
        if "Operation not permitted" in proc.stderr or "Invalid argument" in proc.stderr:
            pytest.skip(f"the kernel refuses new UTS/PID namespaces here: {proc.stderr.strip()}")
        raise AssertionError(f"unshare failed: {proc.returncode} {proc.stderr}")


class Host:
    """`lh execute` on a simulated host: its own namespaces, working directory and logs; its
    stdout read line by line with the monotonic time each line arrived."""

    def __init__(self, root: Path, name: str, store: Path):
        self.name, self.cwd = name, root / name
        self.cwd.mkdir()
        shutil.copy(root / "sweep.yaml", self.cwd / "sweep.yaml")
        cmd = " ".join([*LH, "execute", "sweep.yaml", "--store", str(store), "--workers", "1"])
        self.proc = subprocess.Popen([*UNSHARE, "sh", "-c", f"hostname {name} && exec {cmd}"], cwd=self.cwd,
                                     env=env(LH_CLAIM_TTL_S=str(LEASE_TTL_S)), stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append((time.monotonic(), line.rstrip("\n")))

    def output(self) -> str:
        return "\n".join(line for _, line in self.lines)

    def first(self, text: str) -> float | None:
        return next((t for t, line in self.lines if text in line), None)

    def init_pid(self) -> int:
        """The host PID of the namespace's PID 1 (unshare's only child: our driver)."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
            if children:
                return int(children[0])
            time.sleep(0.05)
        raise AssertionError(f"{self.name}: unshare started no process")

    def finish(self, timeout: float) -> int:
        rc = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=10)
        return rc


def wait_for(what, within_s: float, why: str, hosts=()):
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        value = what()
        if value:
            return value
        for h in hosts:
            assert h.proc.poll() is None, f"{h.name} exited {h.proc.returncode} while waiting for {why}\n{h.output()}"
        time.sleep(0.1)
    raise AssertionError(f"not within {within_s}s: {why}\n" + "\n".join(h.output() for h in hosts))


def results_in(logs: Path) -> dict[str, int]:
    """{run ID: how many times a sampling job finished it} from one host's per-job logs."""
    counts: dict[str, int] = {}
    for log in logs.glob("run_sampler/*.log"):
        for line in log.read_text().splitlines():
            if ": llc_mean=" in line:
                rid = line.split(":")[0]
                counts[rid] = counts.get(rid, 0) + 1
    return counts


@pytest.mark.slow
def test_host_killed_mid_sweep_is_taken_over_after_its_lease_expires(tmp_path):
    require_namespaces()
    from lambda_hat.planner import expand
    from lambda_hat.sweep import load_sweep

    (tmp_path / "sweep.yaml").write_text(SWEEP)
    plan = expand(load_sweep(tmp_path / "sweep.yaml"))
    runs = {r.run_id for r in plan.runs}
    store = tmp_path / "store"
    claims_dir = store / ".claims"
    leases = lambda: sorted(p.name for p in claims_dir.glob("*.lease")) if claims_dir.is_dir() else []  # noqa: E731
    run_logs = lambda h: list((h.cwd / "logs" / "run_sampler").glob("*.log"))  # noqa: E731

    a = Host(tmp_path, "hostA", store)
    hosts = [a]
    b = None
    try:
        # A claims every job (1 target + 2 runs) before it starts Parsl.
        wait_for(lambda: len(leases()) == 1 + len(runs), 120, "host A's claims", hosts)
        assert all(json.loads((claims_dir / n).read_text())["host"] == "hostA" for n in leases())
        b = Host(tmp_path, "hostB", store)
        hosts.append(b)
        wait_for(lambda: b.first("in progress in another lh execute"), 120, "host B waiting on A's claims", hosts)
        assert "hostA pid 1" in b.output(), b.output()  # A's driver is PID 1 in its own namespace
        # Kill A as a machine dies, once its target is built and a sampling job has started.
        wait_for(lambda: any("sampling " in p.read_text() for p in run_logs(a)), 180, "host A sampling", hosts)
        a_init = a.init_pid()
        done_before = set(os.listdir(store / "runs")) if (store / "runs").is_dir() else set()
        abandoned = runs - done_before
        killed_at, killed_wall = time.monotonic(), time.time()
        os.kill(a_init, signal.SIGKILL)
        assert a.finish(timeout=30) != 0
        assert abandoned, f"host A finished every run before the kill ({done_before}): nothing to take over"
        assert not processes_left(a.cwd, within_s=10)  # no worker of the dead host lives on
        held_by_a = {n.removesuffix(".lease") for n in leases()
                     if json.loads((claims_dir / n).read_text())["host"] == "hostA"}
        assert abandoned <= held_by_a, (abandoned, held_by_a)  # the dead host's claims stay until they expire

        # B's first sampling job starts when its log appears.
        b_started = wait_for(lambda: run_logs(b) and time.monotonic(), LEASE_TTL_S + 120, "host B sampling", [b])
        assert b.finish(timeout=240) == 0, b.output()
    finally:
        for h in hosts:
            if h.proc.poll() is None:
                os.killpg(h.proc.pid, signal.SIGKILL)

    out_b = b.output()
    took_over = b.first("did not finish it; running it here")
    assert took_over is not None, out_b
    takeover_s = took_over - killed_at
    print(f"\ntakeover: {takeover_s:.1f}s from the kill to host B claiming ({LEASE_TTL_S:.0f}s lease); "
          f"B's first job started {b_started - killed_at:.1f}s after the kill; abandoned {len(abandoned)} of {len(runs)} runs")
    # Not before the lease expired (A's last heartbeat was about HEARTBEAT_S at most before the
    # kill, its recorder's tick on a busy machine aside; B polls every 2 s), and not long after.
    assert LEASE_TTL_S - HEARTBEAT_S - 3 <= takeover_s <= LEASE_TTL_S + 30, takeover_s
    taken = {line.split(":")[0].split()[-1] for _, line in b.lines if "running it here" in line}
    assert taken == abandoned, (taken, abandoned, out_b)

    # Each run finished by exactly one sampling job, on the host that held its claim then.
    fin_a, fin_b = results_in(a.cwd / "logs"), results_in(b.cwd / "logs")
    assert set(fin_a) == done_before and set(fin_b) == abandoned, (fin_a, fin_b)
    assert all(n == 1 for n in [*fin_a.values(), *fin_b.values()]), (fin_a, fin_b)
    for log in run_logs(b):  # B sampled only what it took over, once each
        text = log.read_text()
        assert text.count("sampling ") == 1 and " on hostB" in text, (log, text)
    # The manifests say the same: who wrote each artifact, and when.
    for rid in runs:
        m = json.loads((store / "runs" / rid / "manifest.json").read_text())
        created = dt.datetime.fromisoformat(m["created_at"]).timestamp()
        if rid in abandoned:
            assert m["host"] == "hostB" and created > killed_wall, (rid, m["host"], m["created_at"])
        else:
            assert m["host"] == "hostA" and created < killed_wall, (rid, m["host"], m["created_at"])
    (tid,) = os.listdir(store / "targets")
    assert json.loads((store / "targets" / tid / "manifest.json").read_text())["host"] == "hostA"
    assert sorted(os.listdir(store / "runs")) == sorted(runs)
    for parent in (store / "targets", store / "runs"):
        assert not [p for p in os.listdir(parent) if p.startswith(".tmp-")], os.listdir(parent)
    assert not leases(), leases()  # B released what it took over

    v = lh(tmp_path, "verify", "--store", str(store), check=False)
    assert v.returncode == 0, v.stdout
    q = lh(tmp_path, "query", "select run_id, llc_mean from runs order by run_id", "--store", str(store),
           "--format", "json")
    rows = json.loads(q.stdout)
    assert [r["run_id"] for r in rows] == sorted(runs), rows
    for r in rows:
        m = json.loads((store / "runs" / r["run_id"] / "manifest.json").read_text())
        assert r["llc_mean"] == m["metrics"]["llc_mean"], (r, m["metrics"]["llc_mean"])
    assert not processes_left(b.cwd, within_s=15)


HOLD = """
import sys, time
from pathlib import Path
from lambda_hat.store.claims import Claims
claims = Claims(Path(sys.argv[1]))
assert claims.acquire("run_held") is None
print("held", flush=True)
while not Path(sys.argv[2]).exists():
    claims.heartbeat()
    time.sleep(0.5)
"""
PROBE = """
import sys
from pathlib import Path
from lambda_hat.store.claims import Claims
claims = Claims(Path(sys.argv[1]))
holder = claims.acquire("run_held")
print("taken" if holder is None else "held by " + holder.owner.describe(), flush=True)
"""


def test_same_host_name_other_pids_does_not_take_a_live_claim(tmp_path):
    """Two hosts named alike (containers given the host's name, nodes of two clusters called
    alike): A holds a claim and heartbeats; B, in other PID namespace under the same name,
    must see it held, not stale. (Before leases recorded the boot ID and PID namespace, B
    judged A's pid by its own /proc, found it dead, and took the claim at once.)"""
    require_namespaces()
    claims_dir = tmp_path / ".claims"
    claims_dir.mkdir()
    stop = tmp_path / "stop"

    def on_node1(script: str, **kw) -> subprocess.Popen:
        return subprocess.Popen([*UNSHARE, "sh", "-c", 'hostname node1 && exec "$0" -c "$1" "$2" "$3"',
                                 sys.executable, script, str(claims_dir), str(stop)],
                                env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kw)

    a = on_node1(HOLD)
    try:
        assert a.stdout.readline().strip() == "held"
        b = on_node1(PROBE)
        out = b.communicate(timeout=60)[0]
        assert a.poll() is None  # A is alive and heartbeating
        assert out.strip() == "held by node1 pid 1", out
    finally:
        stop.touch()
        a.communicate(timeout=30)


@pytest.mark.slow
def test_reaper_ends_the_workers_of_a_killed_driver_inside_a_pid_namespace(tmp_path):
    """The reaper reads /proc; in a host's own PID namespace (its own /proc) it must still end
    the interchange and workers of a driver killed with SIGKILL while the host lives on."""
    require_namespaces()
    (tmp_path / "sweep.yaml").write_text(SWEEP)
    cmd = " ".join([sys.executable, "-m", "lambda_hat.cli", "execute", "sweep.yaml", "--store", "store",
                    "--workers", "1"])
    # sh is the namespace's init and outlives the driver (`sleep`), so the namespace stays up.
    proc = subprocess.Popen([*UNSHARE, "sh", "-c", f"hostname hostR; {cmd} >out.txt 2>&1; sleep 120"],
                            cwd=tmp_path, env=env(), start_new_session=True)
    try:
        wait_for(lambda: any("sampling " in p.read_text() for p in tmp_path.glob("logs/run_sampler/*.log")), 180,
                 "sampling to start")
        init = int(Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()[0])
        ns = os.readlink(f"/proc/{init}/ns/pid")

        def in_namespace() -> dict[int, bytes]:
            found = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                    if os.readlink(f"/proc/{pid}/ns/pid") == ns and stat[stat.rindex(")") + 2] != "Z":
                        found[int(pid)] = Path(f"/proc/{pid}/cmdline").read_bytes()[:100]
                except OSError:
                    pass
            return found

        (driver,) = [pid for pid, cmdline in in_namespace().items() if b"lambda_hat.cli\0execute" in cmdline]
        assert len(in_namespace()) > 3  # sh, the driver, the reaper, the interchange, the pool, its workers
        os.kill(driver, signal.SIGKILL)
        # What may stay: the namespace's init (sh) and its `sleep`; zombies are dead already.
        rest = lambda: {p: c for p, c in in_namespace().items() if p != init and not c.startswith(b"sleep")}  # noqa: E731
        deadline = time.monotonic() + 15
        while rest() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not rest(), rest()
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        if proc.poll() is None and 'init' in locals():
            os.kill(init, signal.SIGKILL)
        proc.wait(timeout=30)


WRITER = """
import sys
from pathlib import Path
from lambda_hat.store.artifacts import tmp_name
tmp = Path(sys.argv[1]) / tmp_name("run_aaaaaaaaaaaa")
tmp.mkdir()
print(tmp.name, flush=True)
sys.stdin.read()  # a writer at work until told to stop
"""


def test_a_writer_in_another_pid_namespace_under_this_host_name_keeps_its_temporary_directory(tmp_path):
    """A writer in a container sharing this host's name (other PIDs) names its temporary
    directory with a pid that is dead here: reconcile must not take it for a dead writer's.
    (Before the name recorded the boot and PID namespace, it was removed at once.)"""
    require_namespaces()
    from lambda_hat.store.store import Store

    st = Store.open(tmp_path / "store", create=True)
    st.layout.runs_dir.mkdir(parents=True, exist_ok=True)
    dead = subprocess.Popen(["true"])
    dead.wait()
    # The writer gets the number of a pid dead here: the namespace's next pid is set just below it.
    script = (f'echo {dead.pid - 1} > /proc/sys/kernel/ns_last_pid && "$0" -c "$1" "$2"; true')
    writer = subprocess.Popen(["unshare", "--pid", "--fork", "--mount-proc", "sh", "-c", script, sys.executable,
                               WRITER, str(st.layout.runs_dir)], env=env(), stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        name = writer.stdout.readline().strip()
        assert f"-{socket.gethostname()}-{dead.pid}-" in name, name  # this host's name, a pid dead here
        report = st.reconcile()
        assert (st.layout.runs_dir / name).is_dir() and report.foreign_tmp == [st.layout.runs_dir / name]
        assert writer.poll() is None
    finally:
        writer.communicate("", timeout=30)
    # Our own dead writer's directory, named as ours are, is still removed at once.
    mine = st.layout.runs_dir / tmp_name_of(dead.pid)
    mine.mkdir()
    assert st.reconcile().removed_tmp == [mine] and not mine.exists()


def tmp_name_of(pid: int) -> str:
    """The temporary directory name a writer with `pid` in this process's pid space would use."""
    from lambda_hat.store.artifacts import tmp_name

    return tmp_name("run_bbbbbbbbbbbb").replace(f"-{os.getpid()}-", f"-{pid}-", 1)
