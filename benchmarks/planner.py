"""Planner scale and instant no-ops (issue 13).

    uv run python benchmarks/planner.py                       # 1k..1M runs, ~5 min on 2 cores
    uv run python benchmarks/planner.py --sizes 1000 100000 --repeat 1

Times, each as a fresh `lh` process (what a user waits for) with its peak RSS:

* plan, empty store     `lh plan SWEEP` for 1k, 10k, 100k and 1M runs (10, 100, 1,000 and 1,000
                        targets × 100, 100, 100 and 1,000 SGLD seeds via `grid:`), no store yet
* plan, full store      the same against a store holding every target and run of the sweep. The
                        store is faked, not sampled: a directory per artifact with a (hard-linked)
                        manifest and arrays file, and index rows carrying their files' stamp, so the
                        snapshot takes the index's word for each (two stats per ID), as it does for
                        real artifacts whose files have not changed since they were indexed
* in-process phases     load (YAML → Sweep), expand (IDs), snapshot, plan, for the same sweeps
* no-op execute         `lh execute` of a completed 1,000-run store (real artifacts, built as
                        benchmarks/store.py builds them): later calls, with the index's stats
                        sidecar (`.index.stats`, written by the first in-step execute once the
                        index file is 2 s old) and without it (read from DuckDB)
* start-up              `lh --help`, `lh plan` (a 2-run sweep), `lh query`, `lh status`: wall time,
                        and whether the process imported jax, parsl or zarr (`-X importtime`)

Python's bytecode cache: each `lh` process runs with one (PYTHONPYCACHEPREFIX in a temporary
directory, filled by a first call), as an installed tool runs from its second call on. Where
the environment sets PYTHONDONTWRITEBYTECODE (the sandboxes this was written in do), every process
would otherwise compile each module from source again (~0.5 s more per `lh` process); the
"no .pyc" column measures the command that way too.

--code DIR measures the `lambda_hat` package in DIR (e.g. a worktree of an older commit) in
place of this checkout's, so that before and after run side by side on one machine.

Each figure is the median of --repeat runs. Prints a table; writes benchmarks/results/planner.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SHAPES = {1_000: (10, 100), 10_000: (100, 100), 100_000: (1_000, 100), 1_000_000: (1_000, 1_000)}
HEAVY = ("jax", "jaxlib", "parsl", "zarr")
ENV: dict[str, str] = {}  # set in main(): bytecode cache, --code


def lh_env(pyc: bool = True) -> dict[str, str]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "160", **ENV}
    if not pyc:  # a prefix that stays empty: every module compiled from source, every time
        env["PYTHONPYCACHEPREFIX"], env["PYTHONDONTWRITEBYTECODE"] = ENV["LH_BENCH_NO_PYC"], "1"
    return env


def sweep_yaml(n_targets: int, n_seeds: int) -> str:
    return (f"targets:\n  - {{model: small, data: small, teacher: _null, grid: {{seed: {list(range(n_targets))}}}}}\n"
            f"samplers:\n  - {{name: sgld, grid: {{seed: {list(range(n_seeds))}}}}}\n")


def lh_imports(args: list[str], cwd: Path) -> str:
    """The `-X importtime` report (stderr) of one `lh` process."""
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "lambda_hat.cli", *args], cwd=cwd, env=lh_env(),
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"lh {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    return proc.stderr


# Runs `lh` and reports the process's peak resident memory (VmHWM: this process image's own high
# water mark; ru_maxrss would include the benchmark's memory, inherited at fork, before exec).
_LAUNCH = """
import atexit, runpy, sys
def _peak():
    with open("/proc/self/status") as f:
        kib = next(line.split()[1] for line in f if line.startswith("VmHWM:"))
    sys.stderr.write(f"\\nlh-peak-kib {kib}\\n")
atexit.register(_peak)
sys.argv = ["lh", *sys.argv[1:]]
runpy.run_module("lambda_hat.cli", run_name="__main__")
"""


CPU_S: list[float] = []  # CPU seconds (user + sys) of each `lh` process, in order: less moved by other load than wall


def lh_rss(args: list[str], cwd: Path, pyc: bool = True) -> tuple[float, int, str]:
    """(wall seconds, peak RSS bytes, stdout) of one `lh` process; its CPU seconds go to CPU_S."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", _LAUNCH, *args], cwd=cwd, env=lh_env(pyc), capture_output=True,
                          text=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    CPU_S.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"lh {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    peak = [line for line in proc.stderr.splitlines() if line.startswith("lh-peak-kib ")]
    return wall, int(peak[-1].split()[1]) * 1024 if peak else 0, proc.stdout


def median_of(repeat: int, fn):
    """(median wall, max peak RSS, last stdout); the median CPU seconds are in LAST_CPU[0]."""
    walls, rsss, cpus, out = [], [], [], ""
    for _ in range(repeat):
        wall, rss, out = fn()
        walls.append(wall)
        rsss.append(rss)
        cpus.append(CPU_S[-1])
    LAST_CPU[:] = [statistics.median(cpus)]
    return statistics.median(walls), max(rsss), out


LAST_CPU: list[float] = [0.0]


def fake_full_store(root: Path, sweep_path: Path) -> tuple[int, int]:
    """A store holding every artifact of the sweep, without sampling (see the module docstring)."""
    import pyarrow as pa

    from lambda_hat.planner import expand
    from lambda_hat.store import index
    from lambda_hat.store.layout import ARRAYS_ZIP, MANIFEST
    from lambda_hat.store.store import Store, files_stamp
    from lambda_hat.sweep import load_sweep

    ex = expand(load_sweep(sweep_path))
    st = Store.open(root, create=True)
    protos: list[tuple[str, str]] = []

    def protos_for(i: int) -> tuple[str, str]:
        # ext4 allows 65,000 links to a file: one prototype (manifest, arrays) per 50,000 artifacts.
        while len(protos) <= i // 50_000:
            manifest, arrays = root / f"manifest.proto{len(protos)}", root / f"arrays.proto{len(protos)}"
            manifest.write_text('{"placeholder": "benchmarks/planner.py: indexed, never read"}\n')
            arrays.write_bytes(b"arrays: indexed, never read\n")
            protos.append((str(manifest), str(arrays)))
        return protos[i // 50_000]

    count = 0
    for kind, ids, parent in (("target", [t.target_id for t in ex.targets], st.layout.targets_dir),
                              ("run", [r.run_id for r in ex.runs], st.layout.runs_dir)):
        for artifact_id in ids:
            manifest, arrays = protos_for(count)
            count += 1
            d = f"{parent}/{artifact_id}"
            os.mkdir(d)
            os.link(manifest, f"{d}/{MANIFEST}")
            os.link(arrays, f"{d}/{ARRAYS_ZIP}")
    for kind, ids, parent in (("target", [t.target_id for t in ex.targets], st.layout.targets_dir),
                              ("run", [r.run_id for r in ex.runs], st.layout.runs_dir)):
        # Stamped once every link is made: a new link to a file changes its ctime.
        sizes, stamps = zip(*(files_stamp(parent, artifact_id) for artifact_id in ids)) if ids else ((), ())
        key = "target_id" if kind == "target" else "run_id"
        batch = pa.table({key: ids, "status": ["ok"] * len(ids), "manifest_size": list(sizes), "files_stamp": list(stamps)})
        with index.writer(st.layout) as (con, _):
            con.register("lh_fake", batch)
            con.execute(f"INSERT INTO {index.TABLE_OF[kind]} ({key}, status, manifest_size, files_stamp) "
                        f"SELECT {key}, status, manifest_size, files_stamp FROM lh_fake")
            con.unregister("lh_fake")
    return len(ex.targets), len(ex.runs)


def phases(sweep_path: Path, store_root: Path) -> dict[str, float]:
    """In-process seconds of each step of `lh plan` (imports excluded)."""
    code = f"""
import json, time
t0 = time.perf_counter()
from lambda_hat.planner import expand, plan
from lambda_hat.store.store import Store
from lambda_hat.sweep import load_sweep
t1 = time.perf_counter(); sw = load_sweep({str(sweep_path)!r})
t2 = time.perf_counter(); ex = expand(sw)
t3 = time.perf_counter(); snap = Store({str(store_root)!r}).snapshot([t.target_id for t in ex.targets], [r.run_id for r in ex.runs])
t4 = time.perf_counter(); p = plan(ex, snap)
t5 = time.perf_counter()
print(json.dumps({{"import": t1 - t0, "load": t2 - t1, "expand": t3 - t2, "snapshot": t4 - t3, "plan": t5 - t4,
                  "cached": len(p.runs_cached)}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=lh_env())
    return json.loads(out.stdout.strip().splitlines()[-1])


def imported_names(stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in stderr.splitlines() if line.startswith("import time:")}


def imported(stderr: str) -> list[str]:
    return sorted(n for n in imported_names(stderr) if n.split(".")[0] in HEAVY)


def commit_of(code: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    return out.stdout.strip() or None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(SHAPES), choices=sorted(SHAPES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-full", action="store_true", help="skip the full-store plans (their stores take a while to fake)")
    ap.add_argument("--code", type=Path, help="measure the lambda_hat package in this directory (e.g. an older commit's worktree)")
    args = ap.parse_args()
    code = (args.code or REPO).resolve()
    report: dict = {"plan": [], "noop_execute": {}, "startup": {}, "code": str(code), "commit": commit_of(code),
                    "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                "platform": platform.platform(), "load_average_at_start": os.getloadavg()}}
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        ENV.update(PYTHONPYCACHEPREFIX=str(tmp / "pyc"), LH_BENCH_NO_PYC=str(tmp / "no-pyc"))
        os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
        if args.code is not None:
            ENV["PYTHONPATH"] = os.pathsep.join([str(code), *filter(None, [os.environ.get("PYTHONPATH")])])
        small = tmp / "small.yaml"
        small.write_text(sweep_yaml(2, 1))
        lh_rss(["plan", str(small), "--store", str(tmp / "warm")], tmp)  # fills the bytecode cache (lh execute's
        # modules with the first execute below, lh query's and lh status's with a call before they are timed)
        for n in args.sizes:
            n_t, n_s = SHAPES[n]
            sweep = tmp / f"sweep_{n}.yaml"
            sweep.write_text(sweep_yaml(n_t, n_s))
            row = {"runs": n, "targets": n_t}
            empty = tmp / f"empty_{n}"
            wall, rss, out = median_of(args.repeat, lambda: lh_rss(["plan", str(sweep), "--store", str(empty)], tmp))
            assert f"{n} runs to sample" in out.replace(",", ""), out[-500:]
            row.update(empty_s=wall, empty_cpu_s=LAST_CPU[0], empty_rss_mib=rss / 2**20, empty_phases=phases(sweep, empty))
            if not args.no_full:
                full = tmp / f"full_{n}"
                t0 = time.perf_counter()
                fake_full_store(full, sweep)
                row["full_store_build_s"] = time.perf_counter() - t0
                wall, rss, out = median_of(args.repeat, lambda: lh_rss(["plan", str(sweep), "--store", str(full)], tmp))
                assert "0 runs to sample" in out, out[-500:]
                row.update(full_s=wall, full_cpu_s=LAST_CPU[0], full_rss_mib=rss / 2**20, full_phases=phases(sweep, full))
                assert row["full_phases"]["cached"] == n
                import shutil

                shutil.rmtree(full)
            report["plan"].append(row)
            print(f"plan {n:>9,} runs: empty {row['empty_s']:.2f}s {row['empty_rss_mib']:.0f} MiB"
                  + (f", full {row['full_s']:.2f}s {row['full_rss_mib']:.0f} MiB" if "full_s" in row else ""), flush=True)

        # No-op execute of a completed 1,000-run store (real artifacts).
        import store as store_bench

        root = tmp / "done"
        t0 = time.perf_counter()
        store_bench.build(root, 1000)
        build_s = time.perf_counter() - t0
        sweep = tmp / "done.yaml"
        sweep.write_text(sweep_yaml(10, 100).replace("teacher: _null, ", ""))
        argv = ["execute", str(sweep), "--store", str(root), "--results", str(tmp / "r.parquet"), "--logs", str(tmp / "logs")]
        first, _, out = lh_rss(argv, tmp)  # indexes the store, writes the results
        assert "nothing to do" in out and "1000 runs" in out, out[-800:]
        # A user's next execute comes more than 2 s later: the index file is then old enough for
        # the in-step execute to leave its stats in `.index.stats` (see store/index.py).
        time.sleep(2.5)
        lh_rss(argv, tmp)
        sidecar = root / ".index.stats"

        def without_sidecar():
            sidecar.unlink(missing_ok=True)
            return lh_rss(argv, tmp)

        wall, rss, out = median_of(args.repeat, lambda: lh_rss(argv, tmp))
        cpu = LAST_CPU[0]
        duck_wall, duck_rss, _ = median_of(args.repeat, without_sidecar)
        duck_cpu = LAST_CPU[0]
        lh_rss(argv, tmp)  # puts the sidecar back
        err = lh_imports(argv, tmp)
        no_pyc, _, _ = median_of(args.repeat, lambda: lh_rss(argv, tmp, pyc=False))
        report["noop_execute"] = {"runs": 1000, "store_build_s": build_s, "first_s": first, "seconds": wall,
                                  "rss_mib": rss / 2**20, "heavy_imports": imported(err), "duckdb_imported": "duckdb" in
                                  {n.split(".")[0] for n in imported_names(err)}, "seconds_without_sidecar": duck_wall,
                                  "rss_mib_without_sidecar": duck_rss / 2**20, "seconds_no_pyc": no_pyc,
                                  "cpu_s": cpu, "cpu_s_without_sidecar": duck_cpu}
        print(f"no-op execute (1,000 runs): {wall:.2f}s, {duck_wall:.2f}s without the sidecar, {no_pyc:.2f}s without .pyc "
              f"(first, which indexes and writes results: {first:.2f}s)", flush=True)

        # Start-up of the light commands.
        commands = {"lh --help": ["--help"], "lh plan (2 runs)": ["plan", str(small), "--store", str(root)],
                    "lh query": ["query", "select count(*) from runs", "--store", str(root)],
                    "lh status": ["status", "--store", str(root)]}
        for name, argv in commands.items():
            lh_rss(argv, tmp)
            wall, rss, _ = median_of(args.repeat, lambda: lh_rss(argv, tmp))
            cpu = LAST_CPU[0]
            no_pyc, _, _ = median_of(args.repeat, lambda: lh_rss(argv, tmp, pyc=False))
            err = lh_imports(argv, tmp)
            report["startup"][name] = {"seconds": wall, "rss_mib": rss / 2**20, "heavy_imports": imported(err),
                                       "seconds_no_pyc": no_pyc, "cpu_s": cpu}

    print()
    print(f"{'plan':<12}{'runs':>11}{'seconds':>10}{'peak MiB':>10}{'load':>8}{'expand':>8}{'snapshot':>10}{'plan':>7}")
    for row in report["plan"]:
        for kind in ("empty", "full"):
            if f"{kind}_s" not in row:
                continue
            ph = row[f"{kind}_phases"]
            print(f"{kind + ' store':<12}{row['runs']:>11,}{row[f'{kind}_s']:>10.2f}{row[f'{kind}_rss_mib']:>10.0f}"
                  f"{ph['load']:>8.2f}{ph['expand']:>8.2f}{ph['snapshot']:>10.2f}{ph['plan']:>7.2f}")
    print()
    print(f"{'command':<38}{'seconds':>9}{'CPU s':>7}{'no .pyc':>9}{'peak MiB':>10}  jax/parsl/zarr imported")
    ne = report["noop_execute"]
    print(f"{'lh execute, no-op (1,000 runs)':<38}{ne['seconds']:>9.2f}{ne['cpu_s']:>7.2f}{ne['seconds_no_pyc']:>9.2f}"
          f"{ne['rss_mib']:>10.0f}  {', '.join(ne['heavy_imports']) or 'none'}{'' if ne['duckdb_imported'] else ' (nor duckdb)'}")
    print(f"{'  the same, without .index.stats':<38}{ne['seconds_without_sidecar']:>9.2f}{ne['cpu_s_without_sidecar']:>7.2f}"
          f"{'':>9}{ne['rss_mib_without_sidecar']:>10.0f}")
    for name, r in report["startup"].items():
        print(f"{name:<38}{r['seconds']:>9.2f}{r['cpu_s']:>7.2f}{r['seconds_no_pyc']:>9.2f}{r['rss_mib']:>10.0f}"
              f"  {', '.join(r['heavy_imports']) or 'none'}")
    out_path = Path(__file__).parent / "results" / (f"planner-{report['commit'] or args.code.name}.json" if args.code else "planner.json")
    out_path.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {out_path}")


if __name__ == "__main__":
    main()
