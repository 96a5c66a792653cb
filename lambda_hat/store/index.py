"""The DuckDB index: a queryable copy of the manifests, written only by the driver.

The filesystem is the truth. The index can always be rebuilt from the manifests
(`lh index rebuild`); the driver opens it briefly per batch of records, under a file
lock, so `lh query` can read between writes and two drivers never collide.
"""

from __future__ import annotations

import fcntl
import json
import math
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from lambda_hat.store.layout import MANIFEST, StoreLayout


def _num(x: Any) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None  # NaN/inf -> NULL; `status` says why


def _get(d: dict, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


Column = tuple[str, str, Callable[[dict], Any]]

TARGET_COLUMNS: list[Column] = [
    ("target_id", "VARCHAR PRIMARY KEY", lambda m: m["id"]),
    ("status", "VARCHAR", lambda m: m.get("status")),
    ("model", "VARCHAR", lambda m: _get(m, "spec.model.kind")),
    ("in_dim", "INTEGER", lambda m: _get(m, "spec.model.in_dim", (_get(m, "spec.model.widths") or [None])[0])),
    ("out_dim", "INTEGER", lambda m: _get(m, "spec.model.out_dim", (_get(m, "spec.model.widths") or [None])[-1])),
    ("widths", "INTEGER[]", lambda m: _get(m, "spec.model.widths")),
    ("teacher_rank", "INTEGER", lambda m: _get(m, "spec.teacher.rank")),
    ("w_star", "VARCHAR", lambda m: _get(m, "spec.w_star")),
    ("activation", "VARCHAR", lambda m: _get(m, "spec.model.activation")),
    ("n_params", "INTEGER", lambda m: _get(m, "metrics.n_params")),
    ("n_data", "INTEGER", lambda m: _get(m, "spec.data.n_data")),
    ("x_dist", "VARCHAR", lambda m: _get(m, "spec.data.x_dist")),
    ("noise_model", "VARCHAR", lambda m: _get(m, "spec.data.noise_model")),
    ("noise_scale", "DOUBLE", lambda m: _num(_get(m, "spec.data.noise_scale"))),
    ("seed", "BIGINT", lambda m: _get(m, "spec.seed")),
    ("dtype", "VARCHAR", lambda m: _get(m, "spec.dtype")),
    ("L0", "DOUBLE", lambda m: _num(_get(m, "metrics.L0"))),
    ("llc_true", "DOUBLE", lambda m: _num(_get(m, "metrics.llc_true"))),
    ("final_train_loss", "DOUBLE", lambda m: _num(_get(m, "metrics.final_train_loss"))),
    ("test_loss", "DOUBLE", lambda m: _num(_get(m, "metrics.test_loss"))),
    ("train_steps", "INTEGER", lambda m: _get(m, "metrics.train_steps")),
    ("build_sec", "DOUBLE", lambda m: _num(_get(m, "timings.build_sec"))),
    ("code_sha", "VARCHAR", lambda m: _get(m, "code.sha")),
    ("host", "VARCHAR", lambda m: m.get("host")),
    ("created_at", "TIMESTAMPTZ", lambda m: m.get("created_at")),
    ("spec", "JSON", lambda m: json.dumps(m.get("spec"))),
]

RUN_COLUMNS: list[Column] = [
    ("run_id", "VARCHAR PRIMARY KEY", lambda m: m["id"]),
    ("target_id", "VARCHAR", lambda m: _get(m, "spec.target_id")),
    ("status", "VARCHAR", lambda m: m.get("status")),
    ("sampler", "VARCHAR", lambda m: _get(m, "spec.sampler.name")),
    ("seed", "BIGINT", lambda m: _get(m, "spec.seed")),
    ("chains", "INTEGER", lambda m: _get(m, "spec.sampler.chains")),
    ("draws", "INTEGER", lambda m: _get(m, "metrics.draws")),
    ("dtype", "VARCHAR", lambda m: _get(m, "spec.sampler.dtype")),
    ("gamma", "DOUBLE", lambda m: _num(_get(m, "spec.posterior.gamma"))),
    ("beta_mode", "VARCHAR", lambda m: _get(m, "spec.posterior.beta_mode")),
    ("beta0", "DOUBLE", lambda m: _num(_get(m, "spec.posterior.beta0"))),
    ("beta", "DOUBLE", lambda m: _num(_get(m, "metrics.beta"))),
    ("n_data", "INTEGER", lambda m: _get(m, "metrics.n_data")),
    ("n_params", "INTEGER", lambda m: _get(m, "metrics.n_params")),
    ("L0", "DOUBLE", lambda m: _num(_get(m, "metrics.L0"))),
    ("llc_mean", "DOUBLE", lambda m: _num(_get(m, "metrics.llc_mean"))),
    ("llc_std", "DOUBLE", lambda m: _num(_get(m, "metrics.llc_std"))),
    ("llc_sem", "DOUBLE", lambda m: _num(_get(m, "metrics.llc_sem"))),
    ("llc_true", "DOUBLE", lambda m: _num(_get(m, "metrics.llc_true"))),
    ("rel_error", "DOUBLE", lambda m: _num(_get(m, "metrics.rel_error"))),
    # "ess" was the name before ess_bulk; manifests written then still index
    ("ess_bulk", "DOUBLE", lambda m: _num(_get(m, "metrics.ess_bulk", _get(m, "metrics.ess")))),
    ("ess_tail", "DOUBLE", lambda m: _num(_get(m, "metrics.ess_tail"))),
    ("r_hat", "DOUBLE", lambda m: _num(_get(m, "metrics.r_hat"))),
    ("step_size", "DOUBLE", lambda m: _num(_get(m, "metrics.step_size"))),
    ("accept_rate_mean", "DOUBLE", lambda m: _num(_get(m, "metrics.accept_rate_mean"))),
    ("divergences", "INTEGER", lambda m: _get(m, "metrics.divergences")),
    ("divergence_rate", "DOUBLE", lambda m: _num(_get(m, "metrics.divergence_rate"))),
    ("nonfinite_draws", "INTEGER", lambda m: _get(m, "metrics.nonfinite_draws")),
    ("total_fge", "DOUBLE", lambda m: _num(_get(m, "metrics.total_fge"))),
    ("walltime_sec", "DOUBLE", lambda m: _num(_get(m, "metrics.walltime_sec"))),
    ("compile_sec", "DOUBLE", lambda m: _num(_get(m, "metrics.compile_sec"))),
    ("sample_sec", "DOUBLE", lambda m: _num(_get(m, "metrics.sample_sec"))),
    ("code_sha", "VARCHAR", lambda m: _get(m, "code.sha")),
    ("host", "VARCHAR", lambda m: m.get("host")),
    ("created_at", "TIMESTAMPTZ", lambda m: m.get("created_at")),
    ("spec", "JSON", lambda m: json.dumps(m.get("spec"))),
]

TABLES = {"targets": TARGET_COLUMNS, "runs": RUN_COLUMNS}


def _ddl(table: str, columns: list[Column]) -> str:
    return f"CREATE TABLE IF NOT EXISTS {table} (" + ", ".join(f'"{n}" {t}' for n, t, _ in columns) + ")"


@contextmanager
def _writer(layout: StoreLayout, timeout_s: float = 60.0) -> Iterator[Any]:
    """A read-write connection held under an exclusive file lock, closed on exit."""
    import duckdb

    layout.root.mkdir(parents=True, exist_ok=True)
    with open(layout.index_lock_path, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                con = duckdb.connect(str(layout.index_path))
                break
            except duckdb.IOException:
                # A reader (`lh query`) may hold the file for a moment.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        try:
            _ensure_schema(con, layout)
            yield con
        finally:
            con.close()


def _ensure_schema(con: Any, layout: StoreLayout) -> None:
    """Create the tables; if an older lambda-hat made them with other columns, remake them
    from the manifests (the index is a cache of the filesystem, so this loses nothing)."""
    existing = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM information_schema.columns ORDER BY table_name, ordinal_position"
    ).fetchall():
        existing.setdefault(table, []).append(column)
    stale = any(t in existing and existing[t] != [n for n, _, _ in cols] for t, cols in TABLES.items())
    if stale:
        for table in TABLES:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    for table, cols in TABLES.items():
        con.execute(_ddl(table, cols))
    if stale:
        _insert(con, "targets", _scan_manifests(layout.targets_dir))
        _insert(con, "runs", _scan_manifests(layout.runs_dir))


def _insert(con: Any, table: str, manifests: list[dict]) -> None:
    if not manifests:
        return
    cols = TABLES[table]
    names = ", ".join(f'"{n}"' for n, _, _ in cols)
    marks = ", ".join("?" for _ in cols)
    rows = [[get(m) for _, _, get in cols] for m in manifests]
    con.executemany(f"INSERT OR REPLACE INTO {table} ({names}) VALUES ({marks})", rows)


def record(layout: StoreLayout, manifests: list[dict]) -> None:
    """Upsert manifests (targets and runs, by their `type`) into the index."""
    if not manifests:
        return
    with _writer(layout) as con:
        con.execute("BEGIN")
        _insert(con, "targets", [m for m in manifests if m.get("type") == "target"])
        _insert(con, "runs", [m for m in manifests if m.get("type") == "run"])
        con.execute("COMMIT")


def _scan_manifests(parent: Path) -> list[dict]:
    out = []
    if parent.is_dir():
        for d in sorted(parent.iterdir()):
            path = d / MANIFEST
            if d.name.startswith(".") or not path.is_file():
                continue
            with open(path) as f:
                out.append(json.load(f))
    return out


def rebuild(layout: StoreLayout) -> tuple[int, int]:
    """Recreate the index from the manifests on disk. Returns (targets, runs) counted."""
    targets = _scan_manifests(layout.targets_dir)
    runs = _scan_manifests(layout.runs_dir)
    with _writer(layout) as con:
        con.execute("BEGIN")
        for table in TABLES:
            con.execute(f"DELETE FROM {table}")
        _insert(con, "targets", targets)
        _insert(con, "runs", runs)
        con.execute("COMMIT")
    return len(targets), len(runs)


def indexed_ids(layout: StoreLayout) -> tuple[set[str], set[str]]:
    """IDs the index knows, read-only. Empty when there is no index yet."""
    if not layout.index_path.exists():
        return set(), set()
    with connect_readonly(layout) as con:
        tables = {r[0] for r in con.execute("SELECT table_name FROM information_schema.tables").fetchall()}
        t = {r[0] for r in con.execute("SELECT target_id FROM targets").fetchall()} if "targets" in tables else set()
        r = {r[0] for r in con.execute("SELECT run_id FROM runs").fetchall()} if "runs" in tables else set()
    return t, r


@contextmanager
def connect_readonly(layout: StoreLayout, timeout_s: float = 30.0) -> Iterator[Any]:
    import duckdb

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con = duckdb.connect(str(layout.index_path), read_only=True)
            break
        except duckdb.IOException:
            # The driver holds the write lock for milliseconds at a time.
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    try:
        yield con
    finally:
        con.close()


def export_runs_parquet(layout: StoreLayout, run_ids: list[str], out_path: Path) -> int:
    """Write the sweep's runs (joined with their targets' columns) to Parquet, atomically."""
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_path.with_name(f".tmp-{out_path.name}")
    target_cols = ", ".join(
        f't."{n}" AS "target_{n}"' for n, _, _ in TARGET_COLUMNS if n not in ("target_id", "spec", "status", "created_at", "code_sha", "host", "n_data", "n_params", "L0", "llc_true")
    )
    with _writer(layout) as con:
        con.execute("CREATE TEMP TABLE wanted (pos INTEGER, run_id VARCHAR)")
        con.executemany("INSERT INTO wanted VALUES (?, ?)", list(enumerate(run_ids)))
        sql = (
            f"SELECT r.*, {target_cols} FROM wanted w JOIN runs r USING (run_id) "
            f"LEFT JOIN targets t ON t.target_id = r.target_id ORDER BY w.pos"
        )
        n = con.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0]
        quoted = str(tmp).replace("'", "''")
        con.execute(f"COPY ({sql}) TO '{quoted}' (FORMAT parquet)")
    tmp.replace(out_path)
    return n
