"""The DuckDB index: a queryable copy of the manifests, written only through `write` (under
the index lock), which only `Store` calls: the driver, `lh index rebuild` and `lh gc`.

The filesystem is the truth; the index can always be rebuilt from the manifests. Its
columns derive from `store.manifest`: a few spec fields, every declared metric and timing,
provenance, and the artifact's file stamp when it was recorded: its manifest's size and a digest
of the manifest's and arrays' stats (`store.files_stamp`), so that the store can tell, with two
stats, whether anything in an artifact changed since it was indexed.

The `traces` table holds every run's per-draw traces in long format (one row per run,
chain and draw), read from the run's Zarr group when the run is recorded, so that a query
for one run's traces reads that run's rows and no other file (see docs/query.md). The
`examples` and `influence` tables hold, likewise, what runs that recorded per-example losses
derived from them (one row per recorded example; one per example and query example).

A writer that finds the file held by a reader (`lh query`, a notebook) gets `IndexBusy`
after a bounded wait, never a crash: the driver keeps the records and retries. A file that
is not a DuckDB database is `IndexCorrupt`: the store moves it aside and rebuilds.

`.index.stats` beside the index is a copy of its (ID, manifest size, files stamp) rows for small
stores, so that a no-op `lh execute` or `lh plan` need not load DuckDB (~0.1 s). It names the
index file's identity (size, mtime, inode, ctime) it was read from, and counts only while the
index file still has exactly that identity and no WAL: any write to the index changes it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import stat
import time
import typing
from array import array
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from typing import Any, Callable, Iterator

from lambda_hat.errors import BadInput, IndexBusy, IndexCorrupt, IndexUnavailable, LhError, QueryFailed, first_sentence
from lambda_hat.faults import crash_point
from lambda_hat.files import atomic_file, file_type, read_regular_text, write_atomic
from lambda_hat.store.layout import StoreLayout
from lambda_hat.store.locking import flock_within
from lambda_hat.store.manifest import METRICS, TIMINGS, Manifest


def _num(x: Any) -> float | None:
    if x is None or isinstance(x, bool):
        return None
    try:
        x = float(x)
    except (TypeError, ValueError):
        return None
    return x if math.isfinite(x) else None  # NaN/inf -> NULL; `status` says why


def _int(x: Any) -> int | None:
    f = _num(x)
    return None if f is None else int(f)


def _get(d: Any, path: str, default: Any = None) -> Any:
    for part in path.split("."):
        if not isinstance(d, dict) or part not in d:
            return default
        d = d[part]
    return d


@dataclass(frozen=True)
class Column:
    name: str
    sql_type: str
    get: Callable[[Manifest], Any]


_SQL = {int: ("BIGINT", _int), float: ("DOUBLE", _num), str: ("VARCHAR", lambda v: None if v is None else str(v)),
        bool: ("BOOLEAN", lambda v: None if v is None else bool(v))}


def _scalar_type(annotation: Any) -> type:
    args = [a for a in typing.get_args(annotation) if a is not type(None)] or [annotation]
    return args[0]


def _derived(section: str, model: type) -> list[Column]:
    """One column per declared field of a metrics/timings model, typed from its annotation."""
    cols = []
    for name, info in model.model_fields.items():
        sql_type, conv = _SQL[_scalar_type(info.annotation)]
        cols.append(Column(name, sql_type, lambda m, n=name, c=conv: c(getattr(m, section).get(n))))
    return cols


def _spec(path: str, conv: Callable = lambda v: v) -> Callable[[Manifest], Any]:
    return lambda m: conv(_get(m.spec, path))


_TARGET_SPEC = [
    Column("model", "VARCHAR", _spec("model.kind")),
    Column("in_dim", "INTEGER", lambda m: _get(m.spec, "model.in_dim", (_get(m.spec, "model.widths") or [None])[0])),
    Column("out_dim", "INTEGER", lambda m: _get(m.spec, "model.out_dim", (_get(m.spec, "model.widths") or [None])[-1])),
    Column("widths", "INTEGER[]", _spec("model.widths")),
    Column("teacher_rank", "INTEGER", _spec("teacher.rank")),
    Column("w_star", "VARCHAR", _spec("w_star")),
    Column("activation", "VARCHAR", _spec("model.activation")),
    Column("n_data", "BIGINT", _spec("data.n_data")),
    Column("x_dist", "VARCHAR", _spec("data.x_dist")),
    Column("noise_model", "VARCHAR", _spec("data.noise_model")),
    Column("noise_scale", "DOUBLE", _spec("data.noise_scale", _num)),
    Column("seed", "BIGINT", _spec("seed")),
    Column("dtype", "VARCHAR", _spec("dtype")),
    Column("step", "BIGINT", _spec("step")),  # a checkpoint's training step (NULL: not a checkpoint)
]
_RUN_SPEC = [
    Column("target_id", "VARCHAR", _spec("target_id")),
    Column("sampler", "VARCHAR", _spec("sampler.name")),
    Column("seed", "BIGINT", _spec("seed")),
    Column("chains", "INTEGER", _spec("sampler.chains")),
    Column("dtype", "VARCHAR", _spec("sampler.dtype")),
    Column("gamma", "DOUBLE", _spec("posterior.gamma", _num)),
    Column("beta_mode", "VARCHAR", _spec("posterior.beta_mode")),
    Column("beta0", "DOUBLE", _spec("posterior.beta0", _num)),
]
_TAIL = [
    Column("code_sha", "VARCHAR", lambda m: m.code.sha),
    Column("host", "VARCHAR", lambda m: m.host),
    Column("created_at", "TIMESTAMPTZ", lambda m: m.created_at),
    Column("manifest_version", "INTEGER", lambda m: m.manifest_version),
    Column("spec", "JSON", lambda m: json.dumps(m.spec)),
    Column("metrics", "JSON", lambda m: json.dumps({k: _json_safe(v) for k, v in m.metrics.items()})),
]


def _json_safe(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _columns(kind: str, key: str, spec_cols: list[Column]) -> list[Column]:
    head = [Column(key, "VARCHAR PRIMARY KEY", lambda m: m.id), Column("status", "VARCHAR", lambda m: m.status)]
    cols, seen = [], set()
    # The artifact's file stamp comes from the writer of the row (see `_row`), not the manifest.
    stamp = [Column("manifest_size", "BIGINT", lambda m: None), Column("files_stamp", "BIGINT", lambda m: None)]
    for c in head + spec_cols + _derived("metrics", METRICS[kind]) + _derived("timings", TIMINGS[kind]) + _TAIL + stamp:
        if c.name not in seen:  # a spec column wins over a metric of the same name
            seen.add(c.name)
            cols.append(c)
    return cols


TABLES: dict[str, list[Column]] = {
    "targets": _columns("target", "target_id", _TARGET_SPEC),
    "runs": _columns("run", "run_id", _RUN_SPEC),
}
TABLE_OF = {"target": "targets", "run": "runs"}

# The `traces` table: fixed columns, so one query spans runs of every sampler (a sampler
# without a trace has NULL there). A trace array not named here stays in the run's Zarr
# group only; add it here to query it (the next execute rebuilds the index).
TRACE_COLUMNS: dict[str, str] = {
    "loss": "DOUBLE",  # L_n(w) at the draw
    "llc": "DOUBLE",  # λ̂ of the draw: nβ (L_n(w) - L0)
    "cumulative_fge": "DOUBLE",  # full-gradient evaluations so far, warmup included
    "walltime": "DOUBLE",  # seconds of sampling so far
    "step_size": "DOUBLE",
    "accept_rate": "DOUBLE",  # HMC, NUTS
    "energy": "DOUBLE",  # HMC, NUTS
    "diverging": "BOOLEAN",  # HMC, NUTS
    "num_grad_evals": "BIGINT",  # HMC, NUTS: gradient evaluations of the draw
    "energy_change": "DOUBLE",  # MCLMC
    "L": "DOUBLE",  # MCLMC's momentum decoherence length
}
TRACES_TABLE = "traces"
TRACES_SCHEMA = [("run_id", "VARCHAR"), ("chain", "INTEGER"), ("draw", "INTEGER"), *TRACE_COLUMNS.items()]
# Recorded per-example quantities (`record.per_example`; science/per_example.py), one row per
# run and recorded example (`example` is its row in the target's data), and the Bayesian
# influence function, one row per run, recorded example and query example (`heldout`: the query
# is a held-out example, `query_example` its row in the target's held-out set).
EXAMPLES_TABLE = "examples"
EXAMPLES_SCHEMA = [("run_id", "VARCHAR"), ("example", "BIGINT"), ("loss_at_wstar", "DOUBLE"),
                   ("llc_contribution", "DOUBLE")]
INFLUENCE_TABLE = "influence"
INFLUENCE_SCHEMA = [("run_id", "VARCHAR"), ("example", "BIGINT"), ("query_example", "BIGINT"), ("heldout", "BOOLEAN"),
                    ("bif", "DOUBLE")]
# The tables of rows per run, read from its arrays (not its manifest).
RUN_TABLES: dict[str, list[tuple[str, str]]] = {TRACES_TABLE: TRACES_SCHEMA, EXAMPLES_TABLE: EXAMPLES_SCHEMA,
                                                INFLUENCE_TABLE: INFLUENCE_SCHEMA}


@dataclass(frozen=True)
class Record:
    """A manifest to index, with its artifact's file stamp (`store.files_stamp`: the manifest's
    size and a digest of its files' stats; None: not known)."""

    manifest: Manifest
    size: int | None = None
    stamp: int | None = None


def _row(table: str, rec: Record) -> list[Any]:
    values = [c.get(rec.manifest) for c in TABLES[table]]
    values[-2:] = [rec.size, rec.stamp]
    return values


_LOCK_HOLDER = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def _disk_full(err: Exception, path: Path) -> LhError | None:
    """A DuckDB error that says the disk (or the user's quota) is full, as one line; else None.
    Never taken for a corrupt index (that would move a sound one aside)."""
    low = " ".join(str(err).split()).lower()
    if "no space left on device" in low or "disk quota exceeded" in low:
        why = "no space left on device" if "no space" in low else "disk quota exceeded"
        return IndexUnavailable(f"{path}: cannot be written ({why}); free space and run the command again",
                                exit_code=1)
    return None


def _classify(err: Exception, path: Path) -> LhError:
    text = " ".join(str(err).split())
    low = text.lower()
    full = _disk_full(err, path)
    if full is not None:
        return full
    if "permission denied" in low or "read-only file system" in low or "out of memory" in low:
        return IndexUnavailable(f"{path}: cannot be opened ({first_sentence(text)})")
    if re.search(r"\block\b", low):  # DuckDB's "Could not set lock on file" (not "failed to pin block")
        holder = _LOCK_HOLDER.search(text)
        who = f"PID {holder.group(2)}, {holder.group(1)}" if holder else first_sentence(text)
        return IndexBusy(f"{path}: held by another process ({who}); try again when it is done "
                         "(an lh query ends within its --timeout)")
    return IndexCorrupt(f"{path}: not a usable DuckDB index ({first_sentence(text)}); `lh index rebuild` recreates it")


def _for_duckdb(path: Path) -> str:
    """`path` as DuckDB must be given it: absolute, since DuckDB reads a leading `~` as the
    home directory (a store at `./~/x` had its index written into `$HOME/x`)."""
    return os.path.abspath(path)


def _connect(path: Path, read_only: bool, timeout_s: float) -> Any:
    import duckdb

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con = duckdb.connect(_for_duckdb(path), read_only=read_only)
            # No progress bar: DuckDB would draw one on the terminal during a long insert.
            con.execute("SET enable_progress_bar = false")
            return con
        except duckdb.Error as err:
            classified = _classify(err, path)
            if type(classified) is IndexBusy and time.monotonic() < deadline:  # not IndexUnavailable: no wait helps
                time.sleep(0.05)
                continue
            raise classified from None


@contextmanager
def _flock(path: Path, timeout_s: float) -> Iterator[None]:
    """Serialize this host's writers without busy-waiting on DuckDB's own lock. Where the
    file system has no flock (some NFS mounts), DuckDB's lock alone guards the file.

    The lock is the file `path` names, with no other name: a store copied with `cp -al`
    shares the inode with its original, and their writers would wait on each other. Such a
    file is replaced by one of its own; a writer that locked a file then replaced (or that
    another writer replaced meanwhile) lets it go and locks the new one."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            st = None
        if st is not None and (not stat.S_ISREG(st.st_mode) or st.st_nlink > 1):
            try:  # never one a link points to, nor one another store shares
                os.unlink(path)
            except FileNotFoundError:
                pass
        fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "a+") as f:
            try:
                held = flock_within(f, max(0.0, deadline - time.monotonic()))
            except OSError:
                held = True  # no flock here
            if not held:
                raise IndexBusy(f"{path}: another lh process on this host is writing the index")
            mine, now = os.fstat(fd), None
            try:
                now = os.lstat(path)
            except FileNotFoundError:
                pass
            if now is not None and (now.st_ino, now.st_dev) == (mine.st_ino, mine.st_dev) and now.st_nlink == 1:
                yield
                return
        if time.monotonic() > deadline:
            raise IndexBusy(f"{path}: another lh process on this host is writing the index")


def _wal_path(index_path: Path) -> Path:
    return index_path.with_name(index_path.name + ".wal")


def _refuse_what_is_not_a_file(index_path: Path) -> None:
    """IndexCorrupt if the index file or its WAL is there as something else than a regular
    file: DuckDB would follow a link (read or write another store's index, or any file) and
    block for ever opening a FIFO. Judged by lstat, never opened. The store moves both aside."""
    for path in (index_path, _wal_path(index_path)):
        try:
            st = os.lstat(path)
        except OSError:
            continue  # absent, or not ours to judge: DuckDB says why
        if not stat.S_ISREG(st.st_mode):
            raise IndexCorrupt(f"{path}: is {file_type(st)}, not a file of the store's index; "
                               "`lh index rebuild` recreates the index")


def _own_inode(path: Path) -> None:
    """Make `path`, a regular file, a file of its own when another name shares it (a store
    copied with `cp -al`): DuckDB writes in place, so without this one store's writes would
    show in the other. Copied to a temporary sibling that is renamed over the name: the other
    names keep the old file. Raises IndexUnavailable when the copy cannot be made."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISREG(st.st_mode) or st.st_nlink <= 1:
        return
    try:
        src = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise IndexUnavailable(f"{path}: cannot be read to make it a file of its own ({err.strerror or err})") from None
    try:
        if not stat.S_ISREG(os.fstat(src).st_mode):
            raise IndexCorrupt(f"{path}: became {file_type(os.fstat(src))} while it was checked; "
                               "`lh index rebuild` recreates the index")
        with open(src, "rb", closefd=False) as old, atomic_file(path) as new:
            shutil.copyfileobj(old, new, 1 << 20)
            os.fchmod(new.fileno(), stat.S_IMODE(st.st_mode))
    except (BadInput, OSError) as err:
        raise IndexUnavailable(f"{path}: shared with another name (a hard link), and no copy of its own "
                               f"could be made ({err})") from None
    finally:
        os.close(src)


@contextmanager
def writer(layout: StoreLayout, timeout_s: float = 10.0) -> Iterator[Any]:
    """(read-write connection, whether the tables were just (re)made). Raises IndexBusy /
    IndexCorrupt."""
    layout.root.mkdir(parents=True, exist_ok=True)
    with _flock(layout.index_lock_path, timeout_s):
        forget_stats(layout)  # it would not count after this write anyway (identity changes); keep no stale file
        _refuse_what_is_not_a_file(layout.index_path)  # never written through, never opened: moved aside
        for path in (layout.index_path, _wal_path(layout.index_path)):
            _own_inode(path)
        con = _connect(layout.index_path, read_only=False, timeout_s=timeout_s)
        try:
            try:
                stale = _ensure_schema(con)
            except Exception as err:
                import duckdb

                if isinstance(err, duckdb.Error):
                    raise _classify(err, layout.index_path) from None
                raise
            yield con, stale
        finally:
            con.close()


# `duckdb_columns()` of this database's main schema: ~1 ms, where `information_schema.columns`
# takes ~30 ms on a fresh connection (paid on every index write and read).
_COLUMNS_SQL = ("SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = current_database() "
                "AND schema_name = 'main' ORDER BY table_name, column_index")


def _table_columns(con: Any) -> dict[str, list[str]]:
    """{table: its column names in order} of the index's tables."""
    existing: dict[str, list[str]] = {}
    for table, column in con.execute(_COLUMNS_SQL).fetchall():
        existing.setdefault(table, []).append(column)
    return existing


def _ensure_schema(con: Any) -> bool:
    """Create the tables; if another lambda-hat version made them with other columns, drop
    them (the caller refills them from the manifests). Returns whether they were remade."""
    existing = _table_columns(con)
    wanted = {t: [c.name for c in cols] for t, cols in TABLES.items()}
    wanted.update({table: [name for name, _ in schema] for table, schema in RUN_TABLES.items()})
    if existing == wanted:
        return False  # every write but a store's first: one catalog query, no DDL
    # A table missing from an index that has others (one made before `traces` or `influence`
    # existed) makes it stale too: its rows must be refilled from the manifests.
    stale = bool(existing) and any(existing.get(t) != cols for t, cols in wanted.items())
    if stale:
        for table in wanted:
            con.execute(f"DROP TABLE IF EXISTS {table}")
    for table, cols in TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (" + ", ".join(f'"{c.name}" {c.sql_type}' for c in cols) + ")")
    for table, schema in RUN_TABLES.items():
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (" + ", ".join(f'"{n}" {t}' for n, t in schema) + ")")
    return stale or not existing


def insert(con: Any, records: list[Record]) -> dict[str, list[str]]:
    """Upsert records: the rows of IDs already there are deleted, then one columnar INSERT per
    table (DuckDB's executemany goes row by row, 15 ms a row at this width; an INSERT OR REPLACE
    costs ~25 ms a statement, a plain INSERT a few). Returns the IDs that were there, by kind
    (a replaced run's trace rows are the caller's to replace)."""
    import pyarrow as pa

    replaced: dict[str, list[str]] = {}
    latest = {(r.manifest.type, r.manifest.id): r for r in records}  # an ID twice in a batch: the last one counts
    for kind, table in TABLE_OF.items():
        rows = [_row(table, r) for (k, _), r in latest.items() if k == kind]
        if not rows:
            continue
        cols = TABLES[table]
        replaced[kind] = present = _present(con, table, [row[0] for row in rows])
        if present:
            _delete_rows(con, table, present)
        # Every value goes in as text and DuckDB casts it to the column's type (floats as their
        # shortest round-trip repr, so exactly): `pa.array` on Python values would import pandas.
        batch = pa.table({f"c{i}": _text_array([row[i] for row in rows]) for i in range(len(cols))})
        names = ", ".join(f'"{c.name}"' for c in cols)
        casts = ", ".join(f"CAST(c{i} AS {c.sql_type.removesuffix(' PRIMARY KEY')})" for i, c in enumerate(cols))
        with _arrow_view(con, "lh_batch", batch):
            con.execute(f"INSERT INTO {table} ({names}) SELECT {casts} FROM lh_batch")
    return replaced


def _present(con: Any, table: str, ids: list[str]) -> list[str]:
    """Those of `ids` that have a row in `table`."""
    import pyarrow as pa

    key = TABLES[table][0].name
    with _arrow_view(con, "lh_maybe", pa.table({"id": _string_array(ids)})):
        return [r[0] for r in con.execute(
            f"SELECT {key} FROM {table} WHERE {key} IN (SELECT CAST(id AS VARCHAR) FROM lh_maybe)").fetchall()]


def _delete_rows(con: Any, table: str, ids: list[str]) -> None:
    import pyarrow as pa

    key = TABLES[table][0].name
    with _arrow_view(con, "lh_gone", pa.table({"id": _string_array(ids)})):
        con.execute(f"DELETE FROM {table} WHERE {key} IN (SELECT CAST(id AS VARCHAR) FROM lh_gone)")


@contextmanager
def _arrow_view(con: Any, name: str, table: Any) -> Iterator[None]:
    """An Arrow table visible to `con` as `name` for the statements inside the block."""
    con.register(name, table)
    try:
        yield
    finally:
        con.unregister(name)


def read_traces(layout: StoreLayout, records: list[Record]) -> Any:
    """The runs' declared traces as one Arrow table in `traces` layout (None if there are
    none). Reads each run's Zarr arrays; a run whose arrays cannot be read gets no rows
    (its checksums are `lh verify`'s business, and its metrics are still indexed)."""
    import numpy as np
    import pyarrow as pa

    from lambda_hat.store.artifacts import read_arrays

    parts = []
    for rec in records:
        m = rec.manifest
        if m.type != "run":
            continue
        shapes = {k.removeprefix("traces/"): v for k, v in m.arrays.items() if k.startswith("traces/")}
        names = [n for n in TRACE_COLUMNS if len(shapes.get(n, ())) == 2]
        if not names:
            continue
        chains, draws = shapes[names[0]]
        names = [n for n in names if list(shapes[n]) == [chains, draws]]
        try:
            arrays = read_arrays(layout.run_dir(m.id), [f"traces/{n}" for n in names])
        except Exception:  # damaged or vanished (gc) run directory: no trace rows for it
            continue
        n_rows = chains * draws
        cols: dict[str, Any] = {
            "run_id": _string_array([m.id] * n_rows).cast(pa.string()),
            "chain": _numeric_array(np.repeat(np.arange(chains, dtype=np.int32), draws)),
            "draw": _numeric_array(np.tile(np.arange(draws, dtype=np.int32), chains)),
        }
        for name, sql_type in TRACE_COLUMNS.items():
            kind, np_dtype = {"DOUBLE": (pa.float64(), np.float64), "BOOLEAN": (pa.bool_(), np.bool_),
                              "BIGINT": (pa.int64(), np.int64)}[sql_type]
            if name in names:
                values = np.asarray(arrays[f"traces/{name}"]).reshape(n_rows)
                # NaN/inf draws become NULL, as in `runs`: the run's `status` says why.
                mask = ~np.isfinite(values) if values.dtype.kind == "f" else None
                cols[name] = _numeric_array(values.astype(np_dtype), mask)
            else:
                cols[name] = pa.nulls(n_rows, kind)
        parts.append(pa.table(cols))
    return pa.concat_tables(parts) if parts else None


# The arrays of a run's `examples/` group that the `examples` and `influence` tables are made of.
EXAMPLE_ARRAYS = ("index", "loss_at_wstar", "llc_contribution", "influence", "query", "heldout_index",
                  "heldout_influence")


def read_examples(layout: StoreLayout, records: list[Record]) -> tuple[Any, Any]:
    """The runs' recorded per-example rows as Arrow tables in `examples` and `influence` layout
    (each None if there are none). A run whose arrays cannot be read gets no rows, as in
    `read_traces`."""
    from lambda_hat.store.artifacts import read_arrays

    runs = []
    for rec in records:
        m = rec.manifest
        if m.type != "run" or "examples/index" not in m.arrays:
            continue
        names = [f"examples/{k}" for k in EXAMPLE_ARRAYS if f"examples/{k}" in m.arrays]
        try:
            arrays = read_arrays(layout.run_dir(m.id), names)
        except Exception:  # damaged or vanished (gc) run directory: no rows for it
            continue
        runs.append((m.id, {k.removeprefix("examples/"): v for k, v in arrays.items()}))
    return example_tables(runs)


def example_problem(arrays: dict) -> str | None:
    """What makes a run's `examples/` arrays inconsistent with one another (lengths, the query
    positions, the influence matrix's shape), or None. Their checksums can hold while they
    disagree (an old layout, a writer's bug, a hand edit): a reader then refuses them."""
    import numpy as np

    if "index" not in arrays:
        return None
    m = np.shape(arrays["index"])
    if len(m) != 1:
        return f"examples/index has shape {m}, not (examples,)"
    for name in ("loss_at_wstar", "llc_contribution"):
        if name in arrays and np.shape(arrays[name]) != m:
            return f"examples/{name} has shape {np.shape(arrays[name])}, examples/index {m}"
    if "loss" in arrays and (np.ndim(arrays["loss"]) != 3 or np.shape(arrays["loss"])[2] != m[0]):
        return f"examples/loss has shape {np.shape(arrays['loss'])}, not (chains, draws, {m[0]})"
    if ("query" in arrays) != ("influence" in arrays):
        return "examples/query and examples/influence come together"
    if "query" in arrays:
        q = np.asarray(arrays["query"])
        if q.ndim != 1 or (q.size and (q.min() < 0 or q.max() >= m[0])):
            return f"examples/query holds positions outside the {m[0]} recorded examples"
        if np.shape(arrays["influence"]) != (m[0], q.size):
            return f"examples/influence has shape {np.shape(arrays['influence'])}, not ({m[0]}, {q.size})"
    if ("heldout_index" in arrays) != ("heldout_influence" in arrays):
        return "examples/heldout_index and examples/heldout_influence come together"
    if "heldout_index" in arrays:
        h = np.shape(arrays["heldout_index"])
        if len(h) != 1 or np.shape(arrays["heldout_influence"]) != (m[0], h[0]):
            return (f"examples/heldout_influence has shape {np.shape(arrays['heldout_influence'])}, not "
                    f"({m[0]}, {h[0] if h else '?'})")
        if "heldout_loss_at_wstar" in arrays and np.shape(arrays["heldout_loss_at_wstar"]) != h:
            return f"examples/heldout_loss_at_wstar has shape {np.shape(arrays['heldout_loss_at_wstar'])}, not {h}"
        if "heldout_loss" in arrays and (np.ndim(arrays["heldout_loss"]) != 3 or np.shape(arrays["heldout_loss"])[2] != h[0]):
            return f"examples/heldout_loss has shape {np.shape(arrays['heldout_loss'])}, not (chains, draws, {h[0]})"
    return None


def example_tables(runs: list[tuple[str, dict]]) -> tuple[Any, Any]:
    """(`examples` rows, `influence` rows) as Arrow tables (None where empty) of [(run ID, its
    EXAMPLE_ARRAYS by name)]. A run whose arrays disagree (`example_problem`) gets no rows."""
    import numpy as np
    import pyarrow as pa

    examples, influence = [], []
    for run_id, arrays in runs:
        if example_problem(arrays) is not None:
            continue
        rows = np.asarray(arrays["index"], np.int64)
        cols = {"run_id": _string_array([run_id] * len(rows)).cast(pa.string()), "example": _numeric_array(rows)}
        for name in ("loss_at_wstar", "llc_contribution"):
            values = np.asarray(arrays.get(name, np.full(len(rows), np.nan)), np.float64).reshape(-1)
            cols[name] = _numeric_array(values, ~np.isfinite(values))
        examples.append(pa.table(cols))
        pairs = []  # (influence matrix, its query examples' rows, whether they are held-out)
        if "influence" in arrays and "query" in arrays:
            pairs.append((arrays["influence"], rows[np.asarray(arrays["query"], np.int64)], False))
        if "heldout_influence" in arrays and "heldout_index" in arrays:
            pairs.append((arrays["heldout_influence"], np.asarray(arrays["heldout_index"], np.int64), True))
        for matrix, queries, heldout in pairs:
            bif = np.asarray(matrix, np.float64)
            values = bif.reshape(bif.size)
            influence.append(pa.table({
                "run_id": _string_array([run_id] * bif.size).cast(pa.string()),
                "example": _numeric_array(np.repeat(rows, len(queries))),
                "query_example": _numeric_array(np.tile(queries, len(rows))),
                "heldout": pa.array(np.full(bif.size, heldout)),
                "bif": _numeric_array(values, ~np.isfinite(values)),
            }))
    return (pa.concat_tables(examples) if examples else None, pa.concat_tables(influence) if influence else None)


def read_run_rows(layout: StoreLayout, records: list[Record]) -> dict[str, Any]:
    """{table: Arrow table or None} of every table in RUN_TABLES, from the runs' arrays."""
    examples, influence = read_examples(layout, records)
    return {TRACES_TABLE: read_traces(layout, records), EXAMPLES_TABLE: examples, INFLUENCE_TABLE: influence}


def insert_run_rows(con: Any, run_ids: list[str], rows: dict[str, Any]) -> None:
    """Replace the rows of `run_ids` in the RUN_TABLES with `rows` (`read_run_rows`)."""
    if run_ids:
        delete_run_rows(con, run_ids)
    for table, arrow in rows.items():
        if arrow is not None:
            with _arrow_view(con, "lh_rows", arrow):
                con.execute(f"INSERT INTO {table} SELECT * FROM lh_rows")


def delete_run_rows(con: Any, run_ids: list[str]) -> None:
    import pyarrow as pa

    with _arrow_view(con, "lh_gone", pa.table({"run_id": _string_array(run_ids)})):
        for table in RUN_TABLES:
            con.execute(f"DELETE FROM {table} WHERE run_id IN (SELECT run_id FROM lh_gone)")


def delete(con: Any, kind: str, ids: list[str]) -> None:
    if ids:
        _delete_rows(con, TABLE_OF[kind], ids)
        if kind == "run":
            delete_run_rows(con, ids)


def write(layout: StoreLayout, records: list[Record], deleted: dict[str, list[str]] | None = None,
          replace_all: bool = False, timeout_s: float = 10.0) -> bool:
    """One transaction: upsert `records`, delete `deleted` IDs (or everything first, with
    `replace_all`). Returns False if the tables had to be remade (the caller must refill them)."""
    # The runs' traces are read before the lock is taken, so readers wait only for the
    # insert; not when the tables are about to be made, since the caller then rebuilds.
    records = list({(r.manifest.type, r.manifest.id): r for r in records}.values())  # one row (and rows per run) per ID
    unread = object()
    run_rows = read_run_rows(layout, records) if replace_all or layout.index_path.exists() else unread
    with writer(layout, timeout_s) as (con, remade):
        if remade and not replace_all:
            run_rows = {}  # the caller refills every table, traces included, from the manifests
        elif run_rows is unread:
            run_rows = read_run_rows(layout, records)
        try:
            con.execute("BEGIN")
            if replace_all:
                for table in [*TABLES, *RUN_TABLES]:
                    con.execute(f"DELETE FROM {table}")
            for kind, ids in (deleted or {}).items():
                delete(con, kind, ids)
            replaced = insert(con, records)
            # Only a run indexed before has trace rows to drop: a finished run is new to the index,
            # and its record costs no scan of `traces` (rows per run × runs).
            insert_run_rows(con, replaced.get("run", []), run_rows)
            crash_point("index:in_transaction")
            con.execute("COMMIT")
        except Exception as err:  # a full disk is one line; any other error is raised as it is
            full = _disk_full(err, layout.index_path)
            if full is not None:
                raise full from None
            raise
        return not remade or replace_all


def attach_readonly(con: Any, path: Path, alias: str, timeout_s: float) -> None:
    """ATTACH the index at `path` read-only to `con` as `alias`, waiting out a writer's brief
    hold for up to `timeout_s`. Raises IndexBusy / IndexUnavailable / IndexCorrupt, or
    QueryFailed when it does not open within the connection's memory limit."""
    import duckdb

    _refuse_what_is_not_a_file(path)
    quoted = _for_duckdb(path).replace("'", "''")
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            con.execute(f"ATTACH '{quoted}' AS {alias} (READ_ONLY)")
            return
        except duckdb.OutOfMemoryException as err:
            raise QueryFailed(f"{path}: the index does not open within the query's --memory-limit "
                              f"({first_sentence(' '.join(str(err).split()))})") from None
        except duckdb.Error as err:
            classified = _classify(err, path)
            if "handle conflict" in str(err):  # this process holds it for writing (tests, notebooks)
                classified = IndexBusy(f"{path}: held by another connection in this process "
                                       f"({first_sentence(' '.join(str(err).split()))})")
            if type(classified) is IndexBusy and time.monotonic() < deadline:  # not IndexUnavailable
                time.sleep(0.05)  # a driver holds it for a few milliseconds each second
                continue
            raise classified from None


def tabulate(con: Any, manifests: list[Manifest], examples: list[tuple[str, dict]] = ()) -> None:
    """The index's tables made in `con`'s current catalog and filled with `manifests` (no
    trace rows, no file stamps): what the results file is made from, with the index's columns;
    `examples`, [(run ID, its EXAMPLE_ARRAYS)], fill the `examples` and `influence` tables."""
    for table, cols in TABLES.items():
        con.execute(f"CREATE TABLE {table} (" + ", ".join(f'"{c.name}" {c.sql_type}' for c in cols) + ")")
    for table, schema in RUN_TABLES.items():
        con.execute(f"CREATE TABLE {table} (" + ", ".join(f'"{n}" {t}' for n, t in schema) + ")")
    insert(con, [Record(m) for m in manifests])
    if examples:
        rows, bif = example_tables(list(examples))
        insert_run_rows(con, [], {EXAMPLES_TABLE: rows, INFLUENCE_TABLE: bif})


def rows_not_as_recorded(layout: StoreLayout, manifests: list[Manifest], timeout_s: float = 5.0) -> list[str]:
    """IDs among `manifests` whose `targets`/`runs` row in the index says other than their
    manifest would have it say (a row edited in the DuckDB file: lh query and lh status show
    the index): each manifest tabulated afresh, as a record writes it, and compared column by
    column but the file stamps. Trace rows are not compared (that reads every run's arrays).
    Raises IndexBusy / IndexCorrupt."""
    import duckdb

    if not manifests or not layout.index_path.exists():
        return []
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute("ATTACH ':memory:' AS fresh")
        con.execute("USE fresh")
        tabulate(con, manifests)
        con.execute("USE memory")
        attach_readonly(con, layout.index_path, "recorded", timeout_s)
        with _classified(layout):
            differ: list[str] = []
            for table, cols in TABLES.items():
                key = cols[0].name
                names = ", ".join(f'"{c.name}"' for c in cols if c.name not in ("manifest_size", "files_stamp"))
                differ += [r[0] for r in con.execute(
                    f"SELECT {key} FROM (SELECT {names} FROM recorded.{table} WHERE {key} IN (SELECT {key} FROM "
                    f"fresh.{table}) EXCEPT SELECT {names} FROM fresh.{table}) ORDER BY {key}").fetchall()]
            return differ
    finally:
        con.close()


@contextmanager
def connect_readonly(layout: StoreLayout, timeout_s: float = 5.0) -> Iterator[Any]:
    _refuse_what_is_not_a_file(layout.index_path)
    con = _connect(layout.index_path, read_only=True, timeout_s=timeout_s)
    try:
        yield con
    finally:
        con.close()


def _stat_tables(con: Any) -> dict[str, str]:
    """{kind: table} of the tables whose rows carry trustworthy manifest stats."""
    tables = _table_columns(con)
    if tables and any(table not in tables for table in RUN_TABLES):
        return {}  # made before traces or examples were indexed: nothing in it can be trusted by stat
    # A table without files stamps is from an older index: nothing in it can be trusted by stat.
    return {kind: table for kind, table in TABLE_OF.items() if "files_stamp" in tables.get(table, ())}


@contextmanager
def _classified(layout: StoreLayout) -> Iterator[None]:
    """DuckDB errors raised inside become IndexBusy / IndexCorrupt."""
    try:
        yield
    except Exception as err:
        import duckdb

        if isinstance(err, duckdb.Error):
            raise _classify(err, layout.index_path) from None
        raise


def schema_problem(layout: StoreLayout, timeout_s: float = 5.0) -> str | None:
    """Why the index is not one lh query and lh status can read (a DuckDB file made by
    something else, or by a lambda-hat whose tables had other columns), in the words they
    refuse it with; None when there is no index or its tables are this version's. A table of
    per-run arrays missing is no problem (an index from before it: the next execute adds it).
    Raises IndexBusy / IndexCorrupt."""
    if not layout.index_path.exists():
        return None
    with connect_readonly(layout, timeout_s) as con, _classified(layout):
        existing = _table_columns(con)
    wanted = {t: [c.name for c in cols] for t, cols in TABLES.items()}
    wanted.update({t: [name for name, _ in schema] for t, schema in RUN_TABLES.items() if t in existing})
    for table, cols in wanted.items():
        # manifest_size and files_stamp only let a plan trust a stat: an index without them still reads
        missing = [c for c in cols if c not in existing.get(table, ()) and c not in ("manifest_size", "files_stamp")]
        if table not in existing or missing:
            what = "no such table" if table not in existing else f"no column {', '.join(missing[:3])}"
            return f"made by another lambda-hat version ({table}: {what}); `lh index rebuild` remakes it"
    return None


def indexed_stats(layout: StoreLayout, timeout_s: float = 5.0) -> dict[str, dict[str, tuple[int | None, int | None]]]:
    """{kind: {id: (manifest_size, files_stamp)}} from one read per table. Raises
    IndexBusy / IndexCorrupt; empty when there is no index yet."""
    out: dict[str, dict[str, tuple]] = {"target": {}, "run": {}}
    if not layout.index_path.exists():
        return out
    with connect_readonly(layout, timeout_s) as con, _classified(layout):
        for kind, table in _stat_tables(con).items():
            key = TABLES[table][0].name
            rows = con.execute(f"SELECT {key}, manifest_size, files_stamp FROM {table}").fetchall()
            out[kind] = {r[0]: (r[1], r[2]) for r in rows}
    return out


NOT_INDEXED = -1  # in `aligned_stats`: no row for the ID, or a row without the manifest's stat


def aligned_stats(layout: StoreLayout, ids_by_kind: dict[str, list[str]],
                  timeout_s: float = 5.0) -> dict[str, tuple[array, array]]:
    """For each kind, the index's manifest size and files stamp of each of its IDs, in the IDs'
    order, as two int64 arrays (NOT_INDEXED where the index does not know). The answer of
    `read_stats` (sidecar when it describes the index, else DuckDB), without a Python object
    per indexed ID: at a million IDs a {id: (size, stamp)} dict is some 300 MB, these 16 MB.
    Raises IndexBusy / IndexCorrupt."""
    identity = _identity(layout)
    if identity is not None:
        cached = _read_sidecar(layout, identity)
        if cached is not None:
            return {kind: _aligned_from(cached[kind], ids) for kind, ids in ids_by_kind.items()}
    out = {kind: unknown_stats(len(ids)) for kind, ids in ids_by_kind.items()}
    if not layout.index_path.exists() or not any(ids_by_kind.values()):
        return out
    import pyarrow as pa

    with connect_readonly(layout, timeout_s) as con, _classified(layout):
        for kind, table in _stat_tables(con).items():
            ids = ids_by_kind.get(kind)
            if not ids:
                continue
            # The join happens in DuckDB, against the requested IDs as an Arrow table.
            positions = array("q", range(len(ids)))
            requested = pa.table({"pos": pa.Int64Array.from_buffers(pa.int64(), len(ids), [None, pa.py_buffer(positions)]),
                                  "id": _string_array(ids)})
            with _arrow_view(con, "lh_requested", requested):
                rows = con.sql(f"SELECT COALESCE(manifest_size, {NOT_INDEXED}) AS size, "
                               f"COALESCE(files_stamp, {NOT_INDEXED}) AS stamp FROM lh_requested "
                               f"LEFT JOIN {table} ON {TABLES[table][0].name} = lh_requested.id "
                               f"ORDER BY lh_requested.pos").to_arrow_table()
            out[kind] = (_int64s(rows["size"]), _int64s(rows["stamp"]))
    return out


def unknown_stats(n: int) -> tuple[array, array]:
    """`aligned_stats` of n IDs the index does not know."""
    return array("q", [NOT_INDEXED]) * n, array("q", [NOT_INDEXED]) * n


def _aligned_from(stats: dict[str, tuple], ids: list[str]) -> tuple[array, array]:
    if not stats:
        return unknown_stats(len(ids))
    sizes, stamps, missing = array("q"), array("q"), (NOT_INDEXED, NOT_INDEXED)
    for artifact_id in ids:
        size, stamp = stats.get(artifact_id, missing)
        sizes.append(NOT_INDEXED if size is None else size)
        stamps.append(NOT_INDEXED if stamp is None else stamp)
    return sizes, stamps


def _string_array(strings: list[str]) -> Any:
    """An Arrow (large) string array of `strings`, from one joined buffer: `pa.array(strings)`
    imports pandas on its first call (1.5 s) and converts one object at a time."""
    import pyarrow as pa

    data = "".join(strings).encode()
    offsets = array("q", [0])
    offsets.extend(accumulate(map(len, strings)))
    if offsets[-1] != len(data):  # not all ASCII: offsets count bytes, not characters
        offsets = array("q", [0])
        offsets.extend(accumulate(len(s.encode()) for s in strings))
    return pa.LargeStringArray.from_buffers(len(strings), pa.py_buffer(offsets), pa.py_buffer(data))


def _text_array(values: list) -> Any:
    """An Arrow string array of `values` as text for DuckDB to cast (None: NULL): floats as
    their repr (round-trips exactly), booleans as true/false, lists as JSON."""
    import numpy as np
    import pyarrow as pa

    def text(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (list, tuple, dict)):
            return json.dumps(v)
        return str(v)

    nulls = [v is None for v in values]
    strings = _string_array(["" if v is None else text(v) for v in values])
    if not any(nulls):
        return strings
    validity = pa.py_buffer(np.packbits(~np.asarray(nulls), bitorder="little"))
    return pa.LargeStringArray.from_buffers(len(values), strings.buffers()[1], strings.buffers()[2], validity,
                                            null_count=sum(nulls))


def _numeric_array(values: Any, mask: Any = None) -> Any:
    """An Arrow array of a 1-d numpy array (int, float or bool), NULL where `mask`: built from
    its buffer, since `pa.array` imports pandas on its first call (~1 s of the driver's CPU)."""
    import numpy as np
    import pyarrow as pa

    values = np.ascontiguousarray(values)
    kind = pa.from_numpy_dtype(values.dtype)
    data = np.packbits(values, bitorder="little") if values.dtype == np.bool_ else values
    validity, null_count = None, 0
    if mask is not None and mask.any():
        validity, null_count = pa.py_buffer(np.packbits(~mask, bitorder="little")), int(mask.sum())
    return pa.Array.from_buffers(kind, len(values), [validity, pa.py_buffer(data)], null_count=null_count)


def _int64s(column: Any) -> array:
    """An Arrow int64 column without nulls as an `array('q')`, copied from its buffer (its
    `to_numpy` and `to_pylist` import pandas, or make an object per value)."""
    col = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    if col.null_count or str(col.type) != "int64":
        raise AssertionError(f"an int64 column without nulls was expected, not {col.type} with {col.null_count} nulls")
    out = array("q")
    out.frombytes(memoryview(col.buffers()[1])[col.offset * 8:(col.offset + len(col)) * 8])
    return out


STATS_SIDECAR_MAX_ROWS = 50_000  # above this DuckDB's columnar read beats parsing a text copy
STATS_SIDECAR_MIN_AGE_S = 2.0  # a later write then always gets another mtime, even on coarse clocks
# 2: (size, files stamp) per ID, where 1 held (size, manifest mtime); 3: written by an index with
# the `examples` and `influence` tables (a 2 may stand beside an index without them: not trusted,
# so the next reconcile reads the index, finds it stale and refills it)
STATS_SIDECAR_VERSION = 3


@dataclass(frozen=True)
class IndexedStats:
    """`indexed_stats`'s answer, with the index file's identity before it was read (None: no
    index, or a WAL beside it) and whether it came from the `.index.stats` sidecar."""

    stats: dict[str, dict[str, tuple[int | None, int | None]]]
    identity: tuple[int, int, int, int] | None = None
    from_sidecar: bool = False


def _stats_sidecar(layout: StoreLayout) -> Path:
    return layout.root / ".index.stats"


def _identity(layout: StoreLayout) -> tuple[int, int, int, int] | None:
    """(size, mtime_ns, inode, ctime_ns) of the index file; None if it is missing or has a WAL
    (its content is then more than the file)."""
    try:
        st = os.stat(layout.index_path)
    except OSError:
        return None
    if os.path.lexists(_wal_path(layout.index_path)):
        return None
    return (st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns)


def _read_sidecar(layout: StoreLayout, identity: tuple) -> dict | None:
    try:
        text = read_regular_text(_stats_sidecar(layout))  # never through a link, never waiting on a FIFO
        if text is None:
            return None  # not the file remember_stats writes
        raw = text.encode()
        digest, _, payload = raw.partition(b"\n")
        if hashlib.sha256(payload).hexdigest().encode() != digest:
            return None  # torn or edited: not evidence of anything
        body = json.loads(payload)
        if body.get("version") != STATS_SIDECAR_VERSION or tuple(body.get("index", ())) != identity:
            return None
        return {kind: {i: (v[0], v[1]) for i, v in body[kind].items()} for kind in TABLE_OF}
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None


def read_stats(layout: StoreLayout, timeout_s: float = 5.0) -> IndexedStats:
    """`indexed_stats`, from the sidecar when it describes the index file as it is now, else
    from DuckDB. Raises IndexBusy / IndexCorrupt as `indexed_stats` does."""
    identity = _identity(layout)
    if identity is not None:
        cached = _read_sidecar(layout, identity)
        if cached is not None:
            return IndexedStats(cached, identity, from_sidecar=True)
    return IndexedStats(indexed_stats(layout, timeout_s), identity)


def remember_stats(layout: StoreLayout, read: IndexedStats) -> bool:
    """Keep `read` in the sidecar for the next reader, if it still describes the index: the
    file's identity unchanged since it was read, and old enough that any later write gets
    another mtime. Only the driver calls this (it owns the index). Returns whether it wrote."""
    if read.from_sidecar or read.identity is None or sum(map(len, read.stats.values())) > STATS_SIDECAR_MAX_ROWS:
        return False
    if _identity(layout) != read.identity or time.time() - read.identity[1] / 1e9 < STATS_SIDECAR_MIN_AGE_S:
        return False
    body = {"version": STATS_SIDECAR_VERSION, "index": list(read.identity),
            **{kind: {i: list(v) for i, v in read.stats[kind].items()} for kind in TABLE_OF}}
    payload = json.dumps(body, separators=(",", ":")).encode()
    try:
        # Its temporary file has a random name, created exclusively and never through a link.
        write_atomic(_stats_sidecar(layout), hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)
    except BadInput:
        return False  # not writable, or something not a file at its name: the next write removes it
    return True


def forget_stats(layout: StoreLayout) -> None:
    try:
        _stats_sidecar(layout).unlink()
    except OSError:
        pass


def move_aside(layout: StoreLayout) -> Path:
    """Move a corrupt index (and its WAL) out of the way; returns where it went."""
    forget_stats(layout)
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    dest = layout.index_path.with_name(f"{layout.index_path.name}.corrupt-{stamp}-{os.getpid()}")
    if os.path.lexists(layout.index_path):
        os.replace(layout.index_path, dest)
    wal = _wal_path(layout.index_path)
    if os.path.lexists(wal):
        os.replace(wal, dest.with_name(dest.name + ".wal"))
    return dest
