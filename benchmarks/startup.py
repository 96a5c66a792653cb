"""Start-up paid once, and the overhead of many tiny runs (issue 13).

    uv run python benchmarks/startup.py                  # ~4 min on 2 cores
    uv run python benchmarks/startup.py --skip-overhead  # start-up only
    uv run python benchmarks/startup.py --configs after  # without the "before" settings
    uv run python benchmarks/startup.py --configs after --base ../wt-base  # an older commit beside this one

1. Start-up. A Lambda-Hat-style sweep, 2 `small` targets (seeds 1, 2) × {HMC, SGLD}, tiny runs
   (4 chains; HMC 200 draws after 100 warmup, SGLD 2,000 steps), run by `lh execute` on the local
   backend with 2 workers in a fresh directory and store:
     cold   the store's JAX compilation cache (<store>/.jax_cache) empty;
     warm   the cache kept from the cold run, everything else in the store removed.
   Each configuration of --configs runs cold then warm: "after" is this code's local Parsl
   configuration, "before" the same with the settings this benchmark's fix changed put back
   (`BEFORE`, passed as --parsl-config), so the two are measured side by side. `--base DIR` adds
   a configuration "base": the lambda_hat package of checkout DIR (a worktree of an older commit)
   run the same way, first, and its overhead rows too.

   Wall time is the `lh execute` process, launch to exit. Its stages come from what the driver
   writes next to Parsl's log (`driver.STAGES_FILE`, epoch seconds) and sum to the wall time:
     load, plan     Python start, CLI imports, load, reconcile, snapshot, plan
     claims, Parsl import   claims, the reaper, importing Parsl, its configuration
     Parsl start    `parsl.load` (interchange up)
     jobs           Parsl started → every job's result back (includes the pool's start, below)
     shutdown       Parsl cleanup
     after          index writes left over, results file, exit
   and the jobs' parts from their manifests (timings and metrics), seconds summed over jobs:
     pool up        Parsl started → the first job starts in a worker (block, manager, worker start)
     JAX import     importing JAX and the science code, paid by a worker's first job only
     build          target builds (training, w* checks; compiles included)
     read           a run reading and verifying its target
     compile        per sampler (lower + compile; from the persistent cache when warm)
     sample         the compiled calls
     write+return   artifact written, result back at the driver
     record         driver: reading each manifest back and writing the index
     in-job other   the rest of each job before its write: logs, specs, IDs, checks, metrics

2. Overhead. 200 tiny runs (the same 2 targets × {HMC, SGLD} × 50 seeds) with 2 workers, the
   compilation cache warm: wall time against the in-job compute summed over jobs, over the
   workers (W = 2): overhead = wall / (Σ compute / W) − 1, with compute = build + sample seconds
   (and, second figure, + compile seconds). Run twice: one job per run, and with `--batch-runs`
   (the 50 seeds of each target and sampler as one vmapped job, its programs compiled into the
   cache by an untimed first pass; a batch's compile and sample seconds are shared among its
   runs, so each run counts its share).

Prints the tables; writes benchmarks/results/startup.json. CPU (JAX_PLATFORMS=cpu).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKERS = 2
HMC = "{name: hmc, chains: 4, overrides: {draws: 200, warmup: 100}}"
SGLD = "{name: sgld, chains: 4, overrides: {steps: 2000, warmup: 200, eval_every: 10}}"

# The local Parsl settings before this benchmark's fix: Parsl's default strategy period (5 s),
# so the worker block (init_blocks) was started only at the strategy's first poll.
BEFORE = '''
from pathlib import Path
from lambda_hat.execute.parsl_config import local_config

config = local_config(Path("parsl_runinfo").resolve(), workers={workers})
config.strategy_period = 5
'''


def sweep_yaml(seeds: int | None = None) -> str:
    grid = f", grid: {{seed: {list(range(seeds))}}}" if seeds else ""
    hmc, sgld = (s[:-1] + grid + "}" for s in (HMC, SGLD))
    return ("store_root: runs\n"
            "targets:\n  - {model: small, data: small, grid: {seed: [1, 2]}}\n"
            f"samplers:\n  - {hmc}\n  - {sgld}\n")


CODE: dict[str, Path] = {}  # config name -> a lambda_hat checkout measured in place of this one (--base)


def child_env(config: str | None = None) -> dict:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "COLUMNS": "200"}
    if config in CODE:
        # `python -m lambda_hat.cli` and the Parsl workers (same environment) import that checkout's package
        env["PYTHONPATH"] = os.pathsep.join([str(CODE[config]), *filter(None, [env.get("PYTHONPATH")])])
    # Python as a user runs it: bytecode cached after the first import. With PYTHONDONTWRITEBYTECODE
    # (set on some build machines) every process, each Parsl worker included, compiles the source
    # of every module it imports, ~3 s of a worker's first job here.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def compile_bytecode() -> float:
    """Write the .pyc files a first `lh` run would (untimed); returns seconds."""
    import site
    import sysconfig

    t0 = time.perf_counter()
    paths = {sysconfig.get_paths()["purelib"], *site.getsitepackages(), str(REPO / "lambda_hat"),
             *(str(d / "lambda_hat") for d in CODE.values())}
    subprocess.run([sys.executable, "-m", "compileall", "-q", "-j", "0", *sorted(p for p in paths if Path(p).is_dir())],
                   env=child_env(), capture_output=True)
    return time.perf_counter() - t0


def lh_execute(cwd: Path, extra: list[str], config: str | None = None) -> tuple[float, float, str]:
    """(launch epoch, wall seconds, output) of one `lh execute sweep.yaml` in `cwd`."""
    env = child_env(config)
    argv = [sys.executable, "-m", "lambda_hat.cli", "execute", "sweep.yaml", "--workers", str(WORKERS), *extra]
    launch = time.time()
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    wall = time.time() - launch
    if proc.returncode != 0 or "0 failed" not in proc.stdout:
        raise SystemExit(f"lh execute failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return launch, wall, proc.stdout


def manifests(store: Path) -> list[dict]:
    return [json.loads(p.read_text()) for kind in ("targets", "runs") for p in sorted((store / kind).glob("*/manifest.json"))]


def breakdown(cwd: Path, launch: float, wall: float) -> dict:
    """The wall-clock stages and the jobs' parts of one execute (see the module doc)."""
    (stages_path,) = cwd.glob("parsl_runinfo/*/lh-stages.json")
    st = json.loads(stages_path.read_text())
    ms = manifests(cwd / "runs")
    targets = [m for m in ms if m["type"] == "target"]
    runs = [m for m in ms if m["type"] == "run"]
    first_jobs = [m["timings"] for m in ms if m["timings"].get("worker_job_index") == 0]
    done_at = st["job_done_at"]
    row = {
        "wall_s": wall,
        "stages": {
            "load, plan": st["run_start"] - launch,
            "claims, Parsl import": st["parsl_start_begin"] - st["run_start"],
            "Parsl start": st["parsl_started"] - st["parsl_start_begin"],
            "jobs": st["jobs_done"] - st["parsl_started"],
            "shutdown": st["parsl_stopped"] - st["jobs_done"],
            "after": launch + wall - st["parsl_stopped"],
        },
        "jobs": {
            "pool up": min(m["timings"]["job_started_at"] for m in ms) - st["parsl_started"],
            "JAX import": sum(t["import_sec"] for t in first_jobs),
            "build": sum(m["timings"]["build_sec"] for m in targets),
            "read": sum(m["timings"]["read_sec"] for m in runs),
            "compile": sum(m["metrics"]["compile_sec"] for m in runs),
            "sample": sum(m["metrics"]["sample_sec"] for m in runs),
            "write+return": sum(done_at[m["id"]] - m["timings"]["write_started_at"] for m in ms),
            "record": st.get("read_manifest_sec", 0.0) + st.get("record_sec", 0.0),
        },
        # job start → artifact write, less the parts above: logs, specs, IDs, checks, traces, metrics
        "in-job other": sum(m["timings"]["write_started_at"] - m["timings"]["job_started_at"] for m in ms)
        - sum(m["timings"]["import_sec"] for m in ms) - sum(m["timings"]["build_sec"] for m in targets)
        - sum(m["timings"]["read_sec"] + m["metrics"]["compile_sec"] + m["metrics"]["sample_sec"] for m in runs),
        "record_parts": {"read manifests": st.get("read_manifest_sec", 0.0), "index writes": st.get("record_sec", 0.0)},
        "workers_started": len(first_jobs),
        "compile_by_sampler": {},
        "jobs_count": len(ms),
    }
    for name in sorted({m["metrics"]["sampler"] for m in runs}):
        cs = [m["metrics"]["compile_sec"] for m in runs if m["metrics"]["sampler"] == name]
        row["compile_by_sampler"][name] = {"mean_s": statistics.mean(cs), "max_s": max(cs), "runs": len(cs),
                                           "in_process_hits": sum(m["metrics"]["compile_cache_hit"] for m in runs
                                                                  if m["metrics"]["sampler"] == name)}
    row["build_by_target"] = [m["timings"]["build_sec"] for m in targets]
    return row


def reset_store(cwd: Path, keep_cache: bool) -> None:
    """Remove the store (but its compilation cache when `keep_cache`), logs, results, Parsl dirs."""
    store = cwd / "runs"
    if store.is_dir():
        for p in store.iterdir():
            if keep_cache and p.name == ".jax_cache":
                continue
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    for name in ("logs", "results", "parsl_runinfo"):
        shutil.rmtree(cwd / name, ignore_errors=True)


def startup(tmp: Path, config: str) -> dict:
    cwd = tmp / f"startup-{config}"
    cwd.mkdir()
    (cwd / "sweep.yaml").write_text(sweep_yaml())
    extra = []
    if config == "before":
        (cwd / "before.py").write_text(BEFORE.format(workers=WORKERS))
        extra = ["--parsl-config", "before.py"]
    out = {}
    for cache in ("cold", "warm"):
        reset_store(cwd, keep_cache=cache == "warm")
        launch, wall, _ = lh_execute(cwd, extra, config)
        out[cache] = breakdown(cwd, launch, wall)
        print(f"  {config:<6} {cache}: {wall:.1f} s  stages "
              + json.dumps({k: round(v, 2) for k, v in out[cache]["stages"].items()})
              + "  jobs " + json.dumps({k: round(v, 2) for k, v in out[cache]["jobs"].items()}), flush=True)
    return out


def overhead(tmp: Path, cache_from: Path | None, seeds: int, batch: bool = False, config: str | None = None) -> dict:
    cwd = tmp / ("overhead-batch" if batch else "overhead") / (config or "this")
    cwd.parent.mkdir(exist_ok=True)
    cwd.mkdir()
    (cwd / "sweep.yaml").write_text(sweep_yaml(seeds))
    if cache_from is not None and cache_from.is_dir():
        shutil.copytree(cache_from, cwd / "runs" / ".jax_cache")
    if batch:
        # The cache holds the one-run programs; the batched ones (a new shape) are compiled once
        # first, so that both rows run with every program in the cache.
        lh_execute(cwd, ["--batch-runs"], config)
        reset_store(cwd, keep_cache=True)
    launch, wall, _ = lh_execute(cwd, ["--batch-runs"] if batch else [], config)
    row = breakdown(cwd, launch, wall)
    ms = manifests(cwd / "runs")

    def share(m):  # a batched run's compile and sample seconds are its batch's, shared by its runs
        return 1 / m["timings"].get("batch_runs", 1)

    build = sum(m["timings"]["build_sec"] for m in ms if m["type"] == "target")
    sample = sum(m["metrics"]["sample_sec"] * share(m) for m in ms if m["type"] == "run")
    compile_ = sum(m["metrics"]["compile_sec"] * share(m) for m in ms if m["type"] == "run")
    row.update(runs=sum(m["type"] == "run" for m in ms), workers=WORKERS, build_s=build, sample_s=sample,
               batch_runs=batch,
               compile_s=compile_,
               overhead_pct=100 * (wall / ((build + sample) / WORKERS) - 1),
               overhead_with_compile_pct=100 * (wall / ((build + sample + compile_) / WORKERS) - 1))
    print(f"  {config or 'this'} overhead{' (--batch-runs)' if batch else ''}: {row['runs']} runs in {wall:.1f} s; build {build:.1f} s + sample {sample:.1f} s "
          f"(+ compile {compile_:.1f} s) over {WORKERS} workers: {row['overhead_pct']:.0f} % "
          f"({row['overhead_with_compile_pct']:.0f} % counting compiles)", flush=True)
    return row


def print_tables(report: dict) -> None:
    st = report["startup"]
    cols = [(c, cache) for c in st for cache in ("cold", "warm")]
    head = "| seconds | " + " | ".join(f"{c} {cache}" for c, cache in cols) + " |"
    print("\n" + head + "\n|---|" + "--:|" * len(cols))
    print("| **wall** | " + " | ".join(f"**{st[c][k]['wall_s']:.1f}**" for c, k in cols) + " |")
    for part in ("stages", "jobs"):
        for name in st[cols[0][0]]["cold"][part]:
            label = name if part == "stages" else f"jobs: {name}"
            print(f"| {label} | " + " | ".join(f"{st[c][k][part][name]:.2f}" for c, k in cols) + " |")
    print("| jobs: in-job other | " + " | ".join(f"{st[c][k]['in-job other']:.2f}" for c, k in cols) + " |")
    for name in st[cols[0][0]]["cold"]["compile_by_sampler"]:
        print(f"| compile per {name} run (mean) | "
              + " | ".join(f"{st[c][k]['compile_by_sampler'][name]['mean_s']:.2f}" for c, k in cols) + " |")
    print("| build per target (mean) | "
          + " | ".join(f"{statistics.mean(st[c][k]['build_by_target']):.2f}" for c, k in cols) + " |")
    if "overhead" in report:
        print("\n| overhead run | runs | workers | wall s | Σ build s | Σ sample s | Σ compile s | overhead | with compile |"
              "\n|---|--:|--:|--:|--:|--:|--:|--:|--:|")
        rows = [("warm cache", "overhead"), ("warm cache, --batch-runs", "overhead_batch")]
        rows += [(f"{label} ({name} code)", f"{key}_{name}") for name in CODE for label, key in rows]
        for label, key in rows:
            o = report.get(key)
            if o:
                print(f"| {label} | {o['runs']} | {o['workers']} | {o['wall_s']:.1f} | {o['build_s']:.1f} "
                      f"| {o['sample_s']:.1f} | {o['compile_s']:.1f} | {o['overhead_pct']:.0f} % "
                      f"| {o['overhead_with_compile_pct']:.0f} % |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--configs", default="before,after", help="comma-separated: before, after")
    ap.add_argument("--skip-overhead", action="store_true")
    ap.add_argument("--base", type=Path, metavar="DIR",
                    help="also measure the lambda_hat package of checkout DIR (e.g. a worktree of an older commit), "
                         "as config 'base' (this code's Parsl settings), side by side in this run")
    ap.add_argument("--seeds", type=int, default=50, help="overhead sweep: runs = 2 targets × 2 samplers × seeds")
    ap.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "startup.json")
    ap.add_argument("--no-bytecode", action="store_true",
                    help="leave PYTHONDONTWRITEBYTECODE as it is and compile no bytecode first")
    args = ap.parse_args()
    report: dict = {"sweep": sweep_yaml(), "workers": WORKERS, "startup": {},
                    "machine": {"python": platform.python_version(), "cpu_count": os.cpu_count(),
                                "platform": platform.platform(), "load_average_at_start": os.getloadavg()}}
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout
        report["commit"] = sha.strip()
    except OSError:
        pass
    configs = args.configs.split(",")
    if args.base is not None:
        CODE["base"] = args.base.resolve()
        report["base_code"] = {"dir": str(CODE["base"]), "commit": subprocess.run(
            ["git", "-C", str(CODE["base"]), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()}
        configs = ["base", *configs]
    if args.no_bytecode:
        global child_env
        plain = dict(os.environ, JAX_PLATFORMS="cpu", COLUMNS="200")
        with_code = child_env
        child_env = lambda config=None: {**plain, **{k: v for k, v in with_code(config).items() if k == "PYTHONPATH"}}  # noqa: E731
        report["bytecode"] = "as the environment says (PYTHONDONTWRITEBYTECODE=%s)" % os.environ.get("PYTHONDONTWRITEBYTECODE")
    else:
        report["bytecode"] = f"compiled first ({compile_bytecode():.0f} s), then written as Python does by default"
    print(f"bytecode: {report['bytecode']}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        for config in configs:
            report["startup"][config] = startup(tmp, config)
        if not args.skip_overhead:
            last = args.configs.split(",")[-1]
            cache = tmp / f"startup-{last}" / "runs" / ".jax_cache"
            for name in [*CODE, None]:
                suffix = f"_{name}" if name else ""
                code_cache = tmp / f"startup-{name}" / "runs" / ".jax_cache" if name else cache
                report["overhead" + suffix] = overhead(tmp, code_cache, args.seeds, config=name)
                report["overhead_batch" + suffix] = overhead(tmp, code_cache, args.seeds, batch=True, config=name)
    report["machine"]["load_average_at_end"] = os.getloadavg()
    print_tables(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
