"""Results people read: the sandboxed `lh query`, its views, output formats, `lh export`.

`lh query` runs one SELECT against the store's index, and nothing it runs can write a file
or read one outside the index (ARCHITECTURE.md, invariant 8). Three layers, each enough on
its own for the attacks we know of (docs/query.md lists them):

1. DuckDB's own parser splits the text: exactly one statement, and of type SELECT
   (COPY, EXPORT, ATTACH, INSTALL, SET, PRAGMA, DELETE... are refused before they run);
2. the index is attached read-only to an in-memory database that holds the views;
3. then external access is switched off (no file, no network, no extension) and the
   configuration locked, so no statement can switch it back on. Spilling to disk is off
   too (`temp_directory=''`): a query too large for memory fails instead of writing.

The views are `targets`, `runs` (with every sampler hyperparameter, pulled from the stored
spec, and the target's columns) and `traces` (the index's long-format per-draw table).
`lh export` and the driver's `results/llc_runs.parquet` use the same `runs` view, built from
the manifests, so the file and `select * from runs` have the same columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import hashlib
import io
import json
import math
import os
import re
import stat
import textwrap
import threading
import types
import typing
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from lambda_hat.ids import is_artifact_id
from lambda_hat.errors import BadInput, QueryFailed, QueryInterrupted, QueryRefused, first_sentence
from lambda_hat.files import write_atomic
from lambda_hat.logs import FOLDERS, STORE_LINE, job_logs, named_by
from lambda_hat.store import Store
from lambda_hat.text import plural, significant

INDEX_ALIAS = "lh_index"
# The most rows a table fetches (`--limit 0` included): a table's rows are held in Python, outside
# DuckDB's memory limit; csv, json and parquet stream every row.
TABLE_ROWS_MAX = 100_000
# Manifest-file facts the store keeps to notice edited manifests: not results.
_INTERNAL = ("manifest_size", "manifest_mtime_ns")
_PROVENANCE = ("code_sha", "host", "created_at", "manifest_version", "spec", "metrics")
# What a reader looks for first in a run; the other columns follow in index order.
_RUN_LEAD = ("run_id", "target_id", "sampler", "status", "llc_mean", "llc_sem", "llc_std", "r_hat", "ess_bulk",
             "ess_tail", "llc_true", "llc_ref", "rel_error")
# Target columns already in `runs` under their own name, or not about the target as built.
_TARGET_SKIP = {"target_id", "spec", "status", "created_at", "code_sha", "host", "n_data", "n_params", "L0",
                "llc_true", "manifest_version", "metrics", *_INTERNAL}
# Target columns a run carries under their own name: a checkpoint's place in its trajectory.
_TARGET_AS_IS = ("trajectory_id", "step")
_TARGET_SKIP |= set(_TARGET_AS_IS)


def one_line(err: BaseException) -> str:
    # DuckDB appends the query with a caret line under the culprit: useless once on one line.
    return " ".join(str(err).split("\nLINE ")[0].split())


# --------------------------------------------------------------------------- views


def _sql_type(annotation: Any) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _sql_type(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _sql_type(args[0]) if len(args) == 1 else "VARCHAR"
    if origin is typing.Literal:
        return "VARCHAR"
    return {bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE"}.get(annotation, "VARCHAR")


def sampler_hyperparameters() -> list[tuple[str, str, str]]:
    """(column, spec field, SQL type) for every field of every sampler spec, in declaration
    order. A field whose name is already a `runs` column (`step_size` is also the adapted
    step size the sampler used, `draws` the draws it made) gets the prefix `spec_`."""
    from lambda_hat import registry

    taken = {c.name.lower() for c in Store.TABLES["runs"]}
    out, seen = [], set()
    for model in (s.spec for s in registry.samplers().values()):
        for name, info in model.model_fields.items():
            if name in ("name", "chains", "dtype") or name in seen:
                continue
            seen.add(name)
            column = f"spec_{name}" if name.lower() in taken else name
            out.append((column, name, _sql_type(info.annotation)))
    return out


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@dataclass(frozen=True)
class Scope:
    """One sweep's units: what `--sweep FILE` narrows the views to. A sweep's IDs follow from its
    file alone (the planner's expansion), so no record of who asked for what is needed: two
    sweeps that share a target both see it, and a unit not yet done is simply not there."""

    name: str
    target_ids: tuple[str, ...]
    run_ids: tuple[str, ...]


# The in-memory tables a scoped sandbox holds a sweep's IDs in (the views select through them).
_SCOPE_TABLES = {"target": ("lh_sweep_targets", "target_id"), "run": ("lh_sweep_runs", "run_id")}


def view_sql(src: str, scoped: bool = False) -> dict[str, str]:
    """CREATE VIEW statements for `targets`, `runs`, `traces`, `examples`, `influence` over the index tables in
    schema/catalog `src`; `scoped`: only the units listed in the _SCOPE_TABLES."""
    def only(kind: str, column: str) -> str:
        table, key = _SCOPE_TABLES[kind]
        return f" WHERE {column} IN (SELECT {key} FROM {table})" if scoped else ""

    target_cols = [c.name for c in Store.TABLES["targets"] if c.name not in _INTERNAL]
    run_cols = [c.name for c in Store.TABLES["runs"] if c.name not in _INTERNAL]
    middle = [c for c in run_cols if c not in _RUN_LEAD and c not in _PROVENANCE]
    select = [f"r.{_q(c)}" for c in (*_RUN_LEAD, *middle)]
    for column, name, sql_type in sampler_hyperparameters():
        select.append(f"TRY_CAST(json_extract_string(r.spec, '$.sampler.{name}') AS {sql_type}) AS {_q(column)}")
    select += [f"t.{_q(c)}" for c in _TARGET_AS_IS]
    select += [f"t.{_q(c)} AS {_q('target_' + c)}" for c in target_cols if c not in _TARGET_SKIP]
    select += [f"r.{_q(c)}" for c in _PROVENANCE]
    return {
        "targets": f"CREATE VIEW targets AS SELECT {', '.join(map(_q, target_cols))} FROM {src}.targets"
                   + only("target", "target_id"),
        "runs": f"CREATE VIEW runs AS SELECT {', '.join(select)} FROM {src}.runs r "
                f"LEFT JOIN {src}.targets t ON t.target_id = r.target_id" + only("run", "r.run_id"),
        "traces": f"CREATE VIEW traces AS SELECT * FROM {src}.{Store.TRACES_TABLE}" + only("run", "run_id"),
        "examples": f"CREATE VIEW examples AS SELECT * FROM {src}.{Store.EXAMPLES_TABLE}" + only("run", "run_id"),
        "influence": f"CREATE VIEW influence AS SELECT * FROM {src}.{Store.INFLUENCE_TABLE}" + only("run", "run_id"),
    }


# --------------------------------------------------------------------------- the sandbox


def check_statement(sql: str) -> None:
    """Exactly one SELECT statement, as DuckDB's own parser reads it; else QueryRefused."""
    import duckdb

    if not sql.strip():
        raise QueryRefused('no SQL given; e.g. lh query "select * from runs"')
    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryFailed(f"query failed: {one_line(err)}") from None
    if not statements:
        raise QueryRefused('no SQL statement given (only comments?); e.g. lh query "select * from runs"')
    if len(statements) > 1:
        raise QueryRefused(f"refused: {len(statements)} statements; lh query runs exactly one SELECT per call")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise QueryRefused(f"refused: {_statement_name(statements[0].query, kind.name)} is not run; lh query runs "
                           "one SELECT (or DESCRIBE, SHOW, SUMMARIZE) and writes nothing: save results with --format "
                           "and -o FILE")


_LEADING = re.compile(r"^(\s+|--[^\n]*(\n|$)|/\*.*?\*/)+", re.DOTALL)


def _statement_name(text: str, kind: str) -> str:
    """What the user wrote: its first keyword (DuckDB files CHECKPOINT under CALL, USE under
    SET, INSTALL under LOAD), or DuckDB's kind when the keyword does not say (WITH ...)."""
    head = _LEADING.sub("", text)[:64]
    words = [w.upper() for w in re.findall(r"[A-Za-z]+", head)[:2]]
    if not head[:1].isalpha() or words[0] == "WITH":
        return kind
    return " ".join(words) if words[0] == "FORCE" else words[0]


QUERY_TIMEOUT_S = 120.0  # `lh query --timeout`: a recursive CTE would otherwise run forever
QUERY_MEMORY_LIMIT = "2GB"  # `lh query --memory-limit`: DuckDB's, for everything the query holds
_MEMORY = re.compile(r"^\s*\d+(\.\d+)?\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)\s*$", re.IGNORECASE)


def check_memory_limit(text: str) -> str:
    """A DuckDB memory size (500MB, 2GB, 1.5GiB), else BadInput."""
    if not _MEMORY.match(text) or float(re.sub(r"[^\d.]", "", text)) <= 0:
        raise BadInput(f"--memory-limit {text!r}: not a memory size (e.g. 500MB, 2GB, 8GiB)")
    return text.strip()


_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def memory_bytes(text: str) -> int:
    """A memory size that check_memory_limit accepted, in bytes (DuckDB's units: KB = 1000)."""
    number, unit = re.match(r"^\s*([\d.]+)\s*([A-Za-z]+)\s*$", check_memory_limit(text)).groups()
    return int(float(number) * _UNITS[unit.upper()])


def _data_size() -> int | None:
    """This process's data (heap and private writable mappings: what RLIMIT_DATA counts) in
    bytes, from Linux's /proc; else None."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmData:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


@contextmanager
def memory_cap(memory_limit: str) -> Iterator[None]:
    """Bound the whole process, not only DuckDB, while a query runs and its rows are turned
    into Python values and text: DuckDB's memory_limit does not cover one huge value fetched
    into Python (`select range(100000000) from range(3)` held 7 GB under a 2GB limit). The
    process's data may grow by twice the limit, plus room for the libraries a query loads and
    DuckDB's threads; past it an allocation fails, and that is QueryFailed. RLIMIT_DATA, not
    RLIMIT_AS: address space reserved but unused (DuckDB maps 1 GB of it) is not memory.
    Linux only (the current size is read from /proc); elsewhere DuckDB's limit is the only one."""
    import resource

    size = _data_size()
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    cap = None
    if size is not None:
        cap = size + 2 * memory_bytes(memory_limit) + 512 * 2**20 + (os.cpu_count() or 1) * 64 * 2**20
        if hard != resource.RLIM_INFINITY:
            cap = min(cap, hard)
        if soft != resource.RLIM_INFINITY and soft < cap:
            cap = None  # a tighter limit is already set: keep it
    try:
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (cap, hard))
        try:
            yield
        except MemoryError:
            raise QueryFailed(f"query needs more memory than --memory-limit {memory_limit} allows "
                              "(its rows are too large to hold)") from None
    finally:
        if cap is not None:
            resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


def checked_scope(store: Store, scope: Scope | None) -> Scope:
    """The units of `scope` (else of the whole store) that check out as `lh plan` counts them
    (`Store.snapshot`: the index's stamps, or the artifact checked whole): a damaged or
    incomplete artifact, or one removed by hand, is not among them."""
    listing = {kind: store.ids(kind) for kind in ("target", "run")}
    if scope is not None:
        wanted = {"target": set(scope.target_ids), "run": set(scope.run_ids)}
        listing = {kind: [i for i in ids if i in wanted[kind]] for kind, ids in listing.items()}
    snap = store.snapshot(listing["target"], listing["run"])
    return Scope(scope.name if scope is not None else "", tuple(sorted(snap.target_ids)), tuple(sorted(snap.run_ids)))


@contextmanager
def sandbox(store: Store, timeout_s: float = 10.0, memory_limit: str = QUERY_MEMORY_LIMIT,
            scope: Scope | None = None, left_out: dict[str, int] | None = None) -> Iterator[Any]:
    """A DuckDB connection that sees the store's index (the views; its own tables as
    `lh_index.…`, rows as recorded) and nothing else,
    and holds at most `memory_limit` (nothing spills to disk: a larger query fails). With a
    `scope`, the views show only that sweep's targets and runs. With `left_out` (a dict to
    fill), they show only what checks out in the store (`checked_scope`), and `left_out` gets,
    by kind, how many of the index's rows (in scope) they leave out."""
    import duckdb

    if not store.index_path.is_file():
        if not (store.layout.targets_dir.is_dir() or store.layout.runs_dir.is_dir()):  # nothing to rebuild from
            raise BadInput(f"{store.root}: no index and nothing in it (run `lh execute` on a sweep first)")
        raise BadInput(f"{store.index_path}: no index (run `lh execute` first, or `lh index rebuild`)")
    shown = checked_scope(store, scope) if left_out is not None else scope
    con = duckdb.connect(":memory:", config={"temp_directory": "", "autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"SET memory_limit = '{check_memory_limit(memory_limit)}'")
        store.attach_index(con, INDEX_ALIAS, timeout_s)
        if shown is not None:
            for kind, ids in (("target", shown.target_ids), ("run", shown.run_ids)):
                table, key = _SCOPE_TABLES[kind]
                con.execute(f"CREATE TABLE {table} AS SELECT unnest($ids::VARCHAR[]) AS {key}", {"ids": list(ids)})
        present = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE database_name = ?",
                                             [INDEX_ALIAS]).fetchall()}
        for name, sql in view_sql(INDEX_ALIAS, scoped=shown is not None).items():
            if name in Store.RUN_TABLES and name not in present:
                # an index from before this table (the next execute adds it): the view, empty
                cols = ", ".join(f"CAST(NULL AS {t}) AS {_q(c)}" for c, t in Store.RUN_TABLES[name])
                sql = f"CREATE VIEW {name} AS SELECT {cols} WHERE false"
            try:
                con.execute(sql)
            except duckdb.Error as err:
                raise BadInput(f"{store.index_path}: made by another lambda-hat version ({name}: {one_line(err)[:120]}); "
                               "`lh index rebuild` remakes it") from None
        if left_out is not None:  # after the views: an index of another shape is refused there, in one line
            for kind, table, key in (("target", "targets", "target_id"), ("run", "runs", "run_id")):
                ids = None if scope is None else (scope.target_ids if kind == "target" else scope.run_ids)
                indexed = {r[0] for r in con.execute(f"SELECT {key} FROM {INDEX_ALIAS}.{table}").fetchall()}
                if ids is not None:
                    indexed &= set(ids)
                there = set(shown.target_ids if kind == "target" else shown.run_ids)
                left_out[kind] = len(indexed - there)
                left_out[f"unindexed {kind}"] = len(there - indexed)  # complete, but no row to show
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        yield con
    finally:
        con.close()


@dataclass
class Result:
    columns: list[str]
    types: list[str]
    rows: list[tuple] = field(default_factory=list)
    arrow: Any = None  # the Arrow table, for parquet
    store_ids: list[str] = field(default_factory=list)  # every ID in the store, for unique prefixes
    more: bool = False  # rows beyond `rows` exist and were not fetched (run_query's max_rows)


class QueryStream:
    """An open query in the sandbox: its columns, then its rows a batch at a time, every
    fetch under the query's deadline (`fetched` counts them). DuckDB errors become
    QueryRefused / QueryFailed."""

    def __init__(self, cur: Any, columns: list[str], types: list[str], store_ids: list[str], errors: Any,
                 interrupted: threading.Event | None = None):
        self.cur, self.columns, self.types, self.store_ids = cur, columns, types, store_ids
        self._errors = errors
        self._interrupted = interrupted or threading.Event()
        self.fetched = 0

    def _check_interrupted(self) -> None:
        if self._interrupted.is_set():
            raise QueryInterrupted("query interrupted (Ctrl-C)")

    def fetch(self, n: int) -> list[tuple]:
        self._check_interrupted()
        if not self.columns:
            return []
        with self._errors():
            rows = self.cur.fetchmany(n)
        self._check_interrupted()
        self.fetched += len(rows)
        return rows

    def batches(self, n: int = 10_000) -> Iterator[list[tuple]]:
        while rows := self.fetch(n):
            yield rows

    def record_batches(self, n: int = 65_536) -> Iterator[Any]:
        """The rows as Arrow record batches (for Parquet), and first the schema."""
        with self._errors():
            reader = self.cur.to_arrow_reader(n)
        yield reader.schema
        while True:
            with self._errors():
                try:
                    batch = reader.read_next_batch()
                except StopIteration:
                    return
            self._check_interrupted()
            self.fetched += batch.num_rows
            yield batch


@contextmanager
def _query_errors(timeout_s: float, memory_limit: str, stopped: threading.Event) -> Iterator[None]:
    """DuckDB's errors while a query runs or is fetched, as one line each."""
    import duckdb

    try:
        yield
    except duckdb.InterruptException:
        if stopped.is_set():
            raise QueryFailed(f"query stopped after {timeout_s:g} s (--timeout SECONDS sets the limit, 0: none)") from None
        raise QueryInterrupted("query interrupted (Ctrl-C)") from None
    except duckdb.OutOfMemoryException as err:
        raise QueryFailed(f"query needs more memory than --memory-limit {memory_limit} allows "
                          f"({first_sentence(one_line(err))})") from None
    except MemoryError:  # a fetched value past memory_cap's bound
        raise QueryFailed(f"query needs more memory than --memory-limit {memory_limit} allows "
                          "(its rows are too large to hold)") from None
    except duckdb.PermissionException as err:
        raise QueryRefused(f"refused: lh query reads only the store's index ({one_line(err)})") from None
    except duckdb.Error as err:
        raise QueryFailed(f"query failed: {one_line(err)}") from None
    except Exception as err:  # Arrow's reader passes DuckDB's errors on as its own (ArrowInvalid, OSError)
        if stopped.is_set():
            raise QueryFailed(f"query stopped after {timeout_s:g} s (--timeout SECONDS sets the limit, 0: none)") from None
        if isinstance(err, RuntimeError) and "interrupted" in str(err).lower():  # DuckDB's word for Ctrl-C
            raise QueryInterrupted("query interrupted (Ctrl-C)") from None
        if type(err).__module__.startswith("pyarrow"):
            raise QueryFailed(f"query failed: {one_line(err)}") from None
        raise


@contextmanager
def open_query(store: Store, sql: str, *, timeout_s: float = QUERY_TIMEOUT_S,
               memory_limit: str = QUERY_MEMORY_LIMIT, arrow: bool = False,
               scope: Scope | None = None, left_out: dict[str, int] | None = None) -> Iterator[QueryStream]:
    """Run one SELECT in the sandbox and hand its rows out as they are fetched. After
    `timeout_s` (0: no limit) the query is interrupted, wherever it is (planning, running,
    fetching): the fetch then raises QueryFailed. `arrow`: the rows will be taken as Arrow
    record batches (a relation: no extra copy of each). Raises QueryRefused, QueryFailed,
    IndexBusy. `scope`: the views show only that sweep's units; `left_out`: see `sandbox`."""
    check_statement(sql)
    stopped = threading.Event()  # the time limit passed
    wake, finished = threading.Event(), threading.Event()
    with _ctrl_c_sets(wake) as interrupted, \
            sandbox(store, memory_limit=memory_limit, scope=scope, left_out=left_out) as con:

        def guard() -> None:
            if not wake.wait(timeout_s if timeout_s > 0 else None):
                stopped.set()
            # Interrupted until it gives up: DuckDB forgets an interrupt that comes before it
            # starts a statement, so once is not enough.
            while not finished.is_set():
                con.interrupt()
                finished.wait(0.05)

        watcher = threading.Thread(target=guard, daemon=True)
        watcher.start()

        def errors() -> Any:
            return _query_errors(timeout_s, memory_limit, stopped)

        try:
            with errors():
                # Prefixes unique in the whole store, as `lh show` resolves them, scope or not.
                store_ids = [r[0] for r in con.execute(
                    f"SELECT target_id FROM {INDEX_ALIAS}.targets UNION ALL SELECT run_id FROM {INDEX_ALIAS}.runs").fetchall()]
                if arrow:
                    cur = con.sql(sql)
                    columns, types = list(cur.columns), [str(t) for t in cur.types]
                else:
                    cur = con.execute(sql)
                    columns, types = [d[0] for d in cur.description or []], [str(d[1]) for d in cur.description or []]
            yield QueryStream(cur, columns, types, store_ids, errors, interrupted)
        finally:
            finished.set()
            wake.set()
            watcher.join()  # no interrupt reaches the connection once it is closed


@contextmanager
def _ctrl_c_sets(wake: threading.Event) -> Iterator[threading.Event]:
    """Ctrl-C, while a query is set up and runs, sets an event (and `wake`) instead of raising
    KeyboardInterrupt: DuckDB turns one raised inside its calls into its own error, or loses it
    (a query then ran to its time limit). Only where SIGINT has Python's own handler (the main
    thread; not ignored). Raises QueryInterrupted on the way out when nothing else was raised."""
    import signal

    interrupted = threading.Event()

    def on_sigint(signum: int, frame: Any) -> None:
        interrupted.set()
        wake.set()

    previous = signal.getsignal(signal.SIGINT)
    ours = previous is signal.default_int_handler and threading.current_thread() is threading.main_thread()
    if ours:
        signal.signal(signal.SIGINT, on_sigint)
    try:
        yield interrupted
        if interrupted.is_set():  # after the last row, or while the sandbox was set up: said all the same
            raise QueryInterrupted("query interrupted (Ctrl-C)")
    finally:
        if ours:
            signal.signal(signal.SIGINT, previous)


# An ID-shaped string literal (tgt_/run_ + up to the 12 hex digits of a whole ID): a prefix, as
# the tables print them, that `=` never matches, or a whole ID a sweep's scope may leave out.
_ID_LITERAL = re.compile(r"'((?:run|tgt)_[0-9a-f]{1,12})'")


def left_out_note(left_out: dict[str, int]) -> str | None:
    """What `sandbox` left out of the views, in words; None when nothing."""
    notes = []
    gone = {k: n for k, n in left_out.items() if k in ("run", "target") and n}
    if gone:
        many = sum(gone.values()) > 1
        parts = [plural(n, kind) for kind, n in sorted(gone.items(), key=lambda kv: kv[0] != "run")]
        notes.append(f"{' and '.join(parts)} of the index {'are' if many else 'is'} not shown: damaged, incomplete or "
                     f"gone from the store since {'they were' if many else 'it was'} recorded (lh verify names them; "
                     "the next lh execute of their sweep redoes them)")
    new = {k.split()[1]: n for k, n in left_out.items() if k.startswith("unindexed ") and n}
    if new:
        many = sum(new.values()) > 1
        parts = [plural(n, kind) for kind, n in sorted(new.items(), key=lambda kv: kv[0] != "run")]
        notes.append(f"{' and '.join(parts)} in the store {'are' if many else 'is'} not in the index yet, so not "
                     "shown (the next lh execute records them; lh index rebuild now)")
    return "; ".join(notes) or None


def prefix_hint(store: Store, sql: str, scope: Scope | None = None) -> str | None:
    """For a query that returned no rows: a line saying which of its ID literals are prefixes
    of stored IDs (IDs are compared whole: `run_id = 'run_3fa2'` matches nothing), or, under a
    sweep's `scope`, name units the sweep does not have; else None."""
    lines = []
    for literal in dict.fromkeys(_ID_LITERAL.findall(sql)):
        kind = "run" if literal.startswith("run_") else "target"
        found = [i for i in store.ids(kind) if i.startswith(literal)]
        if scope is not None:
            mine = set(scope.run_ids if kind == "run" else scope.target_ids)
            if found and not any(i in mine for i in found):
                lines.append(f"'{literal}' is in the store but not in sweep {scope.name} "
                             "(--sweep shows only the sweep's own targets and runs)")
                continue
            found = [i for i in found if i in mine]
        if found and literal not in found:
            shown = ", ".join(found[:3]) + (", …" if len(found) > 3 else "")
            lines.append(f"'{literal}' is a prefix of {shown}: IDs are compared whole; "
                         f"write the whole ID or LIKE '{literal}%'")
    return "; ".join(lines) or None


def run_query(store: Store, sql: str, *, as_arrow: bool = False, max_rows: int | None = None,
              timeout_s: float = QUERY_TIMEOUT_S, memory_limit: str = QUERY_MEMORY_LIMIT,
              scope: Scope | None = None, left_out: dict[str, int] | None = None) -> Result:
    """Run one SELECT in the sandbox; its rows (at most `max_rows`, with `more` set when there
    were others), or with `as_arrow` an Arrow table of all of them. Raises QueryRefused,
    QueryFailed, IndexBusy."""
    with open_query(store, sql, timeout_s=timeout_s, memory_limit=memory_limit, arrow=as_arrow, scope=scope,
                    left_out=left_out) as q:
        if as_arrow:
            import pyarrow as pa

            schema, *batches = q.record_batches()
            return Result(q.columns, q.types, arrow=pa.Table.from_batches(batches, schema=schema), store_ids=q.store_ids)
        if max_rows is None:
            rows = [row for batch in q.batches() for row in batch]
            return Result(q.columns, q.types, rows=rows, store_ids=q.store_ids)
        rows = q.fetch(max_rows)
        return Result(q.columns, q.types, rows=rows, store_ids=q.store_ids, more=bool(q.fetch(1)))


# --------------------------------------------------------------------------- formats


def _plain(value: Any, sql_type: str) -> Any:
    """A value as JSON: JSON columns nested, times as ISO text, NaN/inf as null."""
    if value is None:
        return None
    if sql_type == "JSON" and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    if isinstance(value, dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (bytes, bytearray)):
        return value.hex()
    if isinstance(value, dict):
        return {str(k): _plain(v, "") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v, "") for v in value]
    if not isinstance(value, (str, int, bool)):  # a UUID, an interval: what DuckDB prints, as text
        return str(value)
    return value


def to_json(res: Result) -> str:
    rows = [{c: _plain(v, t) for c, t, v in zip(res.columns, res.types, row)} for row in res.rows]
    return json.dumps(rows, indent=1, ensure_ascii=False) + "\n"


def _csv_cell(value: Any, sql_type: str) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value) if math.isfinite(value) else ("nan" if math.isnan(value) else ("inf" if value > 0 else "-inf"))
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(_plain(value, ""), separators=(",", ":"))
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return value.isoformat()
    return value


def to_csv(columns: list[str], sql_types: list[str], rows: list[tuple], header: bool = True) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    if header:
        w.writerow(columns)
    for row in rows:
        w.writerow([_csv_cell(v, t) for v, t in zip(row, sql_types)])
    return buf.getvalue()


def text_chunks(q: QueryStream, kind: str) -> Iterator[str]:
    """A query's rows as CSV or JSON text (what `to_csv` / `to_json` make of them), a batch at
    a time, so no more than a batch is held."""
    if kind == "csv":
        yield to_csv(q.columns, q.types, [])
        for batch in q.batches():
            yield to_csv(q.columns, q.types, batch, header=False)
        return
    first = True
    for batch in q.batches():
        items = [textwrap.indent(json.dumps({c: _plain(v, t) for c, t, v in zip(q.columns, q.types, row)},
                                            indent=1, ensure_ascii=False), " ") for row in batch]
        yield ("[\n" if first else ",\n") + ",\n".join(items)
        first = False
    yield "[]\n" if first else "\n]\n"


def write_parquet(q: QueryStream, f: Any) -> None:
    """A query's rows into the binary file `f` as Parquet, a record batch at a time."""
    import pyarrow.parquet as pq

    batches = q.record_batches()
    with pq.ParquetWriter(f, next(batches)) as writer:
        for batch in batches:
            writer.write_batch(batch)


_ID = re.compile(r"^(run|tgt)_[0-9a-f]{12}$")
MIN_ID_HEX = 4
MAX_CELL = 28
_NUMERIC = re.compile(r"^(TINYINT|SMALLINT|INTEGER|BIGINT|HUGEINT|UTINYINT|USMALLINT|UINTEGER|UBIGINT|FLOAT|DOUBLE|DECIMAL.*)$")


def unique_prefixes(ids: list[str]) -> dict[str, str]:
    """The shortest prefix (at least `run_` + 4 hex digits) of each ID that no other ID in
    `ids` starts with: what `lh show` accepts."""
    out: dict[str, str] = {}
    ordered = sorted(set(ids))
    for i, s in enumerate(ordered):
        need = 0
        for j in (i - 1, i + 1):
            if 0 <= j < len(ordered):
                other = ordered[j]
                k = 0
                while k < min(len(s), len(other)) and s[k] == other[k]:
                    k += 1
                need = max(need, k + 1)
        out[s] = s[: max(need, 4 + MIN_ID_HEX)]
    return out


def _cell(value: Any, sql_type: str, prefixes: dict[str, str]) -> str:
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (float, decimal.Decimal)):
        return significant(float(value), 4)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M")
    if isinstance(value, str) and _ID.match(value):
        return prefixes.get(value, value)
    if isinstance(value, (dict, list, tuple)) or sql_type == "JSON":
        text = value if isinstance(value, str) else json.dumps(_plain(value, ""), separators=(",", ":"))
    else:
        text = str(value)
    return _clip(_printable(text), MAX_CELL)


def _printable(text: str) -> str:
    """One line of text a terminal shows as it is: runs of white space (newlines too) become
    one space, other control and format characters (escapes, bidi overrides) their code."""
    text = " ".join(text.split())
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else f"\\u{ord(c):04x}" for c in text)


def _clip(text: str, cells: int) -> str:
    """`text` cut to at most `cells` terminal columns (wide characters count 2), "…" marking a cut."""
    from rich.cells import cell_len, set_cell_size

    if cell_len(text) <= cells:
        return text
    return set_cell_size(text, cells - 1).rstrip() + "…"


def _pad(text: str, cells: int, right: bool) -> str:
    from rich.cells import cell_len

    fill = " " * max(cells - cell_len(text), 0)
    return fill + text if right else text + fill


def _names(names: list[str], budget: int) -> str:
    text = ", ".join(names)
    return text if len(text) <= budget else text[: budget - 1].rsplit(", ", 1)[0] + ", …"


def to_table(res: Result, width: int, limit: int = 0) -> str:
    """Plain text that fits `width` columns: IDs as unique prefixes, 4 significant digits,
    all-NULL columns and those without room left out (and named). A single row too wide
    for one line is folded into one `column  value` line per column."""
    width = max(width, 40)
    prefixes = unique_prefixes(res.store_ids + [v for row in res.rows for v in row if isinstance(v, str) and _ID.match(v)])
    shown_rows = res.rows if limit <= 0 else res.rows[:limit]
    from rich.cells import cell_len

    cells = [[_cell(v, t, prefixes) for v, t in zip(row, res.types)] for row in shown_rows]
    columns = [_clip(_printable(c), width) for c in res.columns]
    n_cols = len(columns)
    all_null = [i for i in range(n_cols) if shown_rows and all(row[i] is None for row in shown_rows)]
    candidates = [i for i in range(n_cols) if i not in all_null]
    widths = {i: max([cell_len(columns[i])] + [cell_len(r[i]) for r in cells]) for i in candidates}
    kept, used = [], 0
    for i in candidates:
        need = widths[i] + (2 if kept else 0)
        if used + need > width:
            break
        kept.append(i)
        used += need
    no_room = [i for i in candidates if i not in kept]
    lines: list[str] = []
    if len(cells) == 1 and no_room:
        # One row, many columns (`select * from runs where run_id = ...`): fold it.
        label = min(max(cell_len(columns[i]) for i in candidates), 24)
        for i in candidates:
            lines.append(_clip(f"{_pad(_clip(columns[i], label), label, False)}  {cells[0][i]}", width))
        no_room = []
    else:
        numeric = {i: bool(_NUMERIC.match(res.types[i])) for i in kept}

        def fmt(i: int, text: str) -> str:
            return _pad(text, widths[i], right=numeric[i])

        lines.append("  ".join(fmt(i, columns[i]) for i in kept).rstrip())
        lines.append("  ".join("-" * widths[i] for i in kept))
        lines += ["  ".join(fmt(i, r[i]) for i in kept).rstrip() for r in cells]
    footer = f"{len(res.rows)} row{'s' if len(res.rows) != 1 else ''}"
    if res.more:  # the query was not fetched past the shown rows: their number is not known
        footer = f"first {len(shown_rows)} rows shown, more not fetched " + (
            "(--limit 0: all)" if limit else f"(a table holds at most {TABLE_ROWS_MAX:,}; --format csv or json: every row)")
    elif len(shown_rows) < len(res.rows):
        footer += f", first {len(shown_rows)} shown (--limit 0: all)"
    rounded = any(isinstance(v, (float, decimal.Decimal)) for row in shown_rows for v in row)
    ids = any(isinstance(v, str) and _ID.match(v) for row in shown_rows for v in row)
    cut = any(c.endswith("…") for r in cells for c in r)
    notes = (["numbers to 4 significant digits"] if rounded else []) + (["IDs as unique prefixes"] if ids else []) + (
        ["long text cut"] if cut else [])
    if notes:
        footer += "; " + ", ".join(notes)
    notes_at = len(lines)
    lines.append(footer)
    if no_room:
        lines.append(f"not shown, no room for {len(no_room)}: " + _names([columns[i] for i in no_room], width - 30))
    if all_null:
        lines.append("not shown, all NULL: " + _names([columns[i] for i in all_null], width - 22))
    if no_room or all_null or notes or res.more or len(shown_rows) < len(res.rows):
        lines.append("everything in full: --format csv or json, or -o FILE (.csv .json .parquet)")
    lines[notes_at:] = [wrapped for note in lines[notes_at:] for wrapped in textwrap.wrap(note, width) or [""]]
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- writing results


def format_for(out: Path | None, fmt: str | None) -> str:
    """The output format: --format, else the -o file's extension, else a table."""
    if fmt is not None:
        return fmt
    if out is not None:
        ext = out.suffix.lower().lstrip(".")
        if ext in ("csv", "json", "parquet"):
            return ext
        if ext in ("txt", "text"):
            return "table"
        raise BadInput(f"-o {out}: cannot tell the format from {out.suffix or 'no extension'!r}; add --format csv|json|parquet|table")
    return "table"


def parquet_bytes(table: Any) -> bytes:
    import pyarrow as pa
    import pyarrow.parquet as pq

    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    return sink.getvalue().to_pybytes()


# --------------------------------------------------------------------------- export


@dataclass(frozen=True)
class Exported:
    """What `export_runs` wrote: its rows, and the sha256 of the file's bytes (what a later
    reader checks the file against before trusting it is still what was written)."""

    rows: int
    sha256: str


# What `lh export --view` can write: the view, and the order of its rows within a run.
EXPORT_VIEWS = {"runs": "", "examples": ", r.example", "influence": ", r.heldout, r.query_example, r.example"}


def export_runs(store: Any, run_ids: list[str], out_path: Path, damaged: list[tuple[str, str]] | None = None,
                view: str = "runs", check_files: bool = True) -> Exported:
    """Write the given runs, in order, as the `runs` view shows them (or their rows of the
    `examples` or `influence` view), to Parquet or CSV (by extension), from the manifests and
    arrays (the truth; no index lock involved), atomically. Runs not in the store are left
    out; so are runs whose manifest or files do not check out (and targets whose manifest
    does not), and those are added to `damaged` as (ID, why): damage is reported, never
    silently dropped nor exported as a good row."""
    import duckdb

    from lambda_hat.errors import ArtifactError

    # `lh export` checks each run whole (its files against their checksums, as `lh verify`): a
    # row is a claim that the run is good. The driver's results file (`check_files=False`)
    # relies on the reconcile it has just made, which checked every artifact whose files
    # changed since it was indexed (docs/store.md). Targets give columns from their manifests.
    runs, bad = store.checked_manifests("run", run_ids, files=check_files)
    # a target's files too (once per target): promote names a damaged one, and so does export
    targets, bad_targets = store.checked_manifests("target", sorted({m.spec.get("target_id") for m in runs}),
                                                   files=check_files)
    recorded = []
    if view != "runs":
        for m in runs:
            if "examples/index" in m.arrays:
                try:
                    recorded.append((m.id, store.read_examples(m.id, store.EXAMPLE_ARRAYS)))
                except ArtifactError as err:
                    bad.append((m.id, str(err).removeprefix(f"{m.id}: ")))
    if damaged is not None:
        damaged += bad + bad_targets
    con = duckdb.connect(":memory:")
    try:
        con.execute("SET enable_progress_bar = false")
        con.execute(f"ATTACH ':memory:' AS {INDEX_ALIAS}")
        con.execute(f"USE {INDEX_ALIAS}")
        store.tabulate(con, runs + targets, recorded)
        con.execute("USE memory")
        for sql in view_sql(INDEX_ALIAS).values():
            con.execute(sql)
        con.execute("CREATE TEMP TABLE wanted (pos INTEGER, run_id VARCHAR)")
        if run_ids:  # DuckDB's executemany refuses an empty list
            con.executemany("INSERT INTO wanted VALUES (?, ?)", list(enumerate(run_ids)))
        rel = con.sql(f"SELECT r.* FROM wanted w JOIN {view} r USING (run_id) ORDER BY w.pos{EXPORT_VIEWS[view]}")
        if out_path.suffix.lower() == ".csv":
            rows = rel.fetchall()
            data, n = to_csv(rel.columns, [str(t) for t in rel.types], rows).encode(), len(rows)
        else:
            table = rel.to_arrow_table()
            data, n = parquet_bytes(table), table.num_rows
    finally:
        con.close()
    write_atomic(out_path, data)
    return Exported(n, hashlib.sha256(data).hexdigest())


def describe_damaged(damaged: list[tuple[str, str]], shown: int = 3) -> str:
    """`run_x (why); run_y (why); … and N more` for a one-line report."""
    parts = [f"{i} ({why})" for i, why in damaged[:shown]]
    return "; ".join(parts) + (f"; and {len(damaged) - shown} more" if len(damaged) > shown else "")


# --------------------------------------------------------------------------- lh status, lh show

def run_flags(row: dict) -> list[str]:
    """Why a run's numbers should not be taken as they are (empty: nothing flagged): the status
    its sampling job decided, with the thresholds of the sweep that sampled it, and the reasons
    stored beside it. Displayed, never recomputed: a view with rules of its own would disagree
    with the run's stored status under a sweep's `diagnostics:` (ARCHITECTURE.md, invariant 9)."""
    status = row.get("status")
    if status in (None, "ok"):
        return []
    reason = row.get("status_reason")
    return [f"{status} ({reason})" if reason else str(status)]


def _last_line(path: Path, limit: int = 160) -> str:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):  # a FIFO would block, a link is not a log we wrote
            return ""
        with open(path, "rb") as f:
            f.seek(max(0, path.stat().st_size - 8192))
            # NULs are no text (a sparse or preallocated log): dropped, not shown as 160 marks
            lines = [x.strip() for x in f.read().replace(b"\0", b"").decode(errors="replace").splitlines() if x.strip()]
    except OSError:
        return ""
    # shown on a terminal: a control character (an escape sequence, NUL) is not the log's to send
    return "".join(c if c.isprintable() else "\ufffd" for c in (lines[-1] if lines else "")[:limit])


# The last line a worker writes to a job's .log when the job finished (execute/apps.py): a
# target's "wrote <store>/targets/<id>: ...", a run's "<id>: llc_mean=... status=...", a
# batch's per-run lines, or "<id> already complete in the store".
_JOB_FINISHED = re.compile(r"^(wrote \S|(run|tgt)_[0-9a-f]+: llc_mean=|\S+ already complete in the store)")


def _failed_here(err: Path, kind: str, targets: set[str], root: Path) -> bool:
    """Whether the job that left `err` failed, in this store (`root`, resolved). A logs folder
    may be shared by several stores (the default `logs/`). A job's .log starts with the store
    it wrote to (`STORE_LINE`); it failed here if that is this store and the .log does not end
    with the worker's last line (the driver writes that line too for a job that failed before
    a worker wrote its logs). A log without it (an older lambda-hat's) is judged by its names: it counts only if (1) it did not finish
    (a job that finished, in this store or another, is nobody's failure), and (2) for a run,
    its target is in this store: runs are submitted only once their target is built, in the
    store they sample for, so a run log whose target this store lacks was written for another."""
    written_for = _first_line(err.with_suffix(".log"))
    if written_for.startswith(STORE_LINE):  # the store the job named (lambda-hat 0.2 on)
        try:  # the same directory, however each node spells it (a compute node may resolve links otherwise)
            same = os.path.samefile(written_for.removeprefix(STORE_LINE), root)
        except OSError:
            same = None  # not reachable from here: judged by its names, below
        if same is False:
            return False
        if same:
            return not _JOB_FINISHED.match(_last_line(err.with_suffix(".log"), limit=400))
    if kind == "run":
        target_id = named_by(err, "run")[1]
        if target_id not in targets:
            return False
    return not _JOB_FINISHED.match(_last_line(err.with_suffix(".log"), limit=400))


def _first_line(path: Path) -> str:
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return ""
        with open(path, "rb") as f:
            return f.readline(4096).decode(errors="replace").rstrip("\n")
    except OSError:
        return ""


@dataclass
class StatusReport:
    root: Path
    targets_by_status: dict[str, int] = field(default_factory=dict)
    runs_by_status: dict[str, int] = field(default_factory=dict)
    not_indexed: dict[str, int] = field(default_factory=dict)  # kind -> artifact dirs not in the index yet
    gone: dict[str, int] = field(default_factory=dict)  # kind -> index rows whose artifact is not there
    flagged: list[tuple[str, str, list[str]]] = field(default_factory=list)  # (run_id, sampler, reasons)
    failed_jobs: list[tuple[str, Path, str]] = field(default_factory=list)  # (id, .err path, its last line)
    claims: list[tuple[str, str, str]] = field(default_factory=list)  # (id, holder, its heartbeat in words)
    temporary: int = 0
    quarantined: int = 0
    size_bytes: int = 0
    scope: Scope | None = None
    not_done: dict[str, int] = field(default_factory=dict)  # kind -> the scope's units not in the store
    damaged: dict[str, int] = field(default_factory=dict)  # kind -> entries there that do not check out


def store_status(store: Any, logs: Path, scope: Scope | None = None) -> StatusReport:
    """What the store holds, what to look at, what failed, what is in flight. Counts come from
    the index (a query); artifacts finished since the last record are counted as not indexed.
    With a `scope`, only that sweep's units (the store's size and temporary entries stay whole)."""
    rep = StatusReport(store.root, scope=scope)
    listing = {kind: set(store.ids(kind)) for kind in ("target", "run")}
    present = listing  # in the store, damaged or not (`listing` becomes what checks out)
    wanted = None if scope is None else {"target": set(scope.target_ids), "run": set(scope.run_ids)}
    if wanted is not None:
        rep.not_done = {kind: len(wanted[kind] - listing[kind]) for kind in listing}
        listing = {kind: listing[kind] & wanted[kind] for kind in listing}
    # What counts is what checks out, as for lh plan: the index's row of an artifact whose files
    # changed since it was recorded (an edited manifest, a truncated zip) does not vouch for it.
    snap = store.snapshot(sorted(listing["target"]), sorted(listing["run"]))
    complete = {"target": set(snap.target_ids), "run": set(snap.run_ids)}
    rep.damaged = {kind: len(listing[kind] - complete[kind]) for kind in listing}
    listing = complete
    if store.index_path.is_file():
        with sandbox(store, scope=scope) as con:
            # Counted and flagged: the index's rows whose artifact is there (a row outlives an
            # artifact removed by hand until the next record or rebuild).
            by_status, indexed = {}, {}
            for kind, table, key in (("target", "targets", "target_id"), ("run", "runs", "run_id")):
                rows = con.execute(f"SELECT {key}, status FROM {table}").fetchall()
                indexed_kind = {r[0] for r in rows}
                by_status[kind] = Counter(st for i, st in rows if i in listing[kind])
                rep.gone[kind] = len(indexed_kind - present[kind])  # a damaged one is counted as damaged
                indexed[kind] = indexed_kind
            rep.targets_by_status, rep.runs_by_status = (dict(by_status[kind].most_common()) for kind in ("target", "run"))
            cur = con.execute("SELECT run_id, sampler, status, status_reason FROM runs ORDER BY run_id")
            names = [d[0] for d in cur.description]
            for values in cur.fetchall():
                row = dict(zip(names, values))
                if row["run_id"] not in listing["run"]:
                    continue
                reasons = run_flags(row)
                if reasons:
                    rep.flagged.append((row["run_id"], row["sampler"], reasons))
    else:
        indexed = {"target": set(), "run": set()}
    rep.not_indexed = {kind: len(listing[kind] - indexed[kind]) for kind in listing}
    claimed = {}
    for artifact_id, holder in store.live_claims():
        if wanted is not None and artifact_id not in wanted["target"] | wanted["run"]:
            continue
        claimed[artifact_id] = holder
        beat = (f"heartbeat stamped {holder.ahead_s:.0f}s ahead (clock skew)" if holder.ahead_s > 1.0
                else f"heartbeat {holder.heartbeat_age_s:.0f}s ago")
        rep.claims.append((artifact_id, holder.owner.describe(), beat))
    here = Path(store.root).resolve()
    for kind, sub in FOLDERS.items():
        folder = logs / sub
        if not folder.is_dir():
            continue
        for err in sorted(folder.glob("*.err")):
            artifact_id, of_target = named_by(err, kind)
            # not a job log lh wrote: its name, shown on a terminal, could hold anything
            if not is_artifact_id(artifact_id) or (kind == "run" and not is_artifact_id(of_target or "")) \
                    or not err.name.isprintable():
                continue
            if artifact_id in listing[kind] or artifact_id in claimed:
                continue
            if wanted is not None and artifact_id not in wanted[kind]:
                continue
            if not _failed_here(err, kind, listing["target"], here):
                continue
            rep.failed_jobs.append((artifact_id, err, _last_line(err) or "(no error output: interrupted?)"))
    rep.temporary = sum(1 for _ in store.tmp_entries())
    q = store.layout.quarantine_dir
    rep.quarantined = len(list(q.iterdir())) if q.is_dir() and not q.is_symlink() else 0
    rep.size_bytes = store.size_bytes()
    return rep


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def format_status(rep: StatusReport, logs: Path, limit: int = 20) -> str:
    def counts(by: dict[str, int]) -> str:
        total = sum(by.values())
        return f"{total}" + (" (" + ", ".join(f"{n} {s}" for s, n in by.items()) + ")" if by else "")

    lines = [f"store {rep.root}: {human_bytes(rep.size_bytes)}"]
    if rep.scope is not None:
        todo = {k: n for k, n in rep.not_done.items() if n}
        lines.append(f"sweep {rep.scope.name}: {plural(len(rep.scope.target_ids), 'target')}, "
                     f"{plural(len(rep.scope.run_ids), 'run')}"
                     + (" (" + ", ".join(plural(n, k) for k, n in todo.items()) + " not done: lh execute)" if todo else "")
                     + "; only these below")
    lines += [f"  targets  {counts(rep.targets_by_status)}",
              f"  runs     {counts(rep.runs_by_status)}"]
    gone = {k: n for k, n in rep.gone.items() if n}
    if gone:
        lines.append("  in the index but not in the store: " + ", ".join(plural(n, k) for k, n in gone.items())
                     + " (removed by hand? lh index rebuild drops them; lh execute redoes what a sweep needs)")
    damaged = {k: n for k, n in rep.damaged.items() if n}
    if damaged:
        lines.append("  damaged or incomplete, not counted: " + ", ".join(plural(n, k) for k, n in damaged.items())
                     + " (lh verify names them; the next lh execute quarantines and redoes them)")
    waiting = {k: n for k, n in rep.not_indexed.items() if n}
    if waiting:
        lines.append("  not in the index yet: " + ", ".join(f"{n} {k}s" for k, n in waiting.items())
                     + " (lh execute records them; lh index rebuild now)")
    if rep.claims:
        lines.append(f"in flight: {plural(len(rep.claims), 'job')} claimed by running lh execute")
        lines += [f"  {i}  {who}, {beat}" for i, who, beat in rep.claims[:limit]]
    lines.append(f"flagged runs: {len(rep.flagged)}" + (" (status not ok, by the thresholds they were sampled with)"
                                                         if rep.flagged else ""))
    prefixes = unique_prefixes([i for i, _, _ in rep.flagged])
    lines += [f"  {prefixes[i]}  {sampler:<6} {'; '.join(reasons)}" for i, sampler, reasons in rep.flagged[:limit]]
    if len(rep.flagged) > limit:
        lines.append(f"  … {len(rep.flagged) - limit} more: lh query \"select run_id, status, r_hat, ess_bulk, divergences from runs\"")
    lines.append(f"failed jobs: {len(rep.failed_jobs)}" + (f" (an error log in {logs}/ and no artifact)" if rep.failed_jobs else ""))
    for artifact_id, err, last in rep.failed_jobs[:limit]:
        lines.append(f"  {artifact_id}  {err}")
        lines.append(f"      {last}")
    if len(rep.failed_jobs) > limit:
        lines.append(f"  … {len(rep.failed_jobs) - limit} more in {logs}/")
    if rep.temporary or rep.quarantined:
        lines.append(f"{rep.temporary} temporary and {rep.quarantined} quarantined "
                     f"{'entry' if rep.temporary + rep.quarantined == 1 else 'entries'} (lh verify explains, lh gc removes)")
    return "\n".join(lines) + "\n"


SHOW_WIDTH = 80
_LABEL = 12  # `lh show`'s label column


def _field(label: str, items: str | list[str], sep: str = ", ", width: int = SHOW_WIDTH) -> list[str]:
    """`label` in its column and `items` joined by `sep` after it, wrapped at `width` between
    items (never inside one), continuation lines indented to the text."""
    from rich.cells import cell_len

    items = [items] if isinstance(items, str) else items
    lines, line = [], _pad(label, _LABEL - 1, False) + " "
    for i, item in enumerate(items):
        piece = item + (sep.rstrip() if i < len(items) - 1 and not item.endswith(":") else "")
        if len(line.rstrip()) >= _LABEL and cell_len(line) + cell_len(piece) > width:
            lines.append(line.rstrip())
            line = " " * _LABEL
        line += piece + (" " if i < len(items) - 1 else "")
    return [*lines, line.rstrip()]


def _when(created_at: str) -> str:
    try:
        return dt.datetime.fromisoformat(created_at).astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    except (TypeError, ValueError):
        return str(created_at)


def _files_lines(store: Any, kind: str, artifact_id: str, arrays: dict, d: Path) -> list[str]:
    """An artifact's files on disk, and the arrays inside its arrays.zarr.zip listed under it
    (indented: they are members of the zip, not files), with their shapes."""
    from lambda_hat.store import ARRAYS_ZIP, MANIFEST

    sizes = store.sizes_by_array(kind, artifact_id, list(arrays))
    lines = [f"{'files':<{_LABEL - 1}} {human_bytes(sum(sizes.values()))} in {d}/"]

    def array_line(indent: str, name: str, size: int) -> str:
        shape = arrays.get(name)
        return (f"{indent}{name:<{30 - len(indent)}} {human_bytes(size):>9}"
                + (f"  {' × '.join(map(str, shape)) or 'scalar'}" if shape is not None else ""))

    if (d / ARRAYS_ZIP).is_file():  # the zip layout: the manifest and the zip are the files
        lines.append(array_line("  ", MANIFEST, sizes.get(MANIFEST, 0)))
        lines.append(array_line("  ", ARRAYS_ZIP, sum(v for k, v in sizes.items() if k != MANIFEST)) + "  holding:")
        lines += [array_line("    ", name, size) for name, size in sizes.items() if name in arrays]
    else:  # the older layout: each array a directory tree of its own
        lines += [array_line("  ", name, size) for name, size in sizes.items()]
    return lines


def format_show(store: Any, kind: str, artifact_id: str, logs: Path, plots_dir: Path | None = None) -> str:
    """One artifact for a reader, in 80 columns: what it is, its numbers, its files, its logs,
    its relatives."""
    manifest = store.read_manifest(kind, artifact_id)
    spec, metrics = manifest.spec, manifest.metrics
    d = store.layout.artifact_dir(kind, artifact_id)

    def num(key: str, src: dict = metrics) -> str:
        v = src.get(key)
        return "NULL" if v is None else f"{v:.4g}" if isinstance(v, float) else str(v)

    def settings(values: dict, skip: str = "") -> list[str]:
        return [f"{k}={v}" for k, v in values.items() if k != skip]

    lines = [f"{kind} {artifact_id}   {d}", *_field("status", manifest.status)]
    if kind == "run":
        s = spec.get("sampler", {})
        lines += _field("sampler", [f"{s.get('name')}:", *settings(s, "name")])
        lines += _field("posterior", [*settings(spec.get("posterior", {})), f"seed={spec.get('seed')}"])
        tid = str(spec.get("target_id"))
        there = store.layout.target_dir(tid).is_dir() if tid.startswith("tgt_") else False
        lines += _field("target", tid + ("" if there else " (not in the store: lh plan rebuilds it; lh verify says more)"))
        lines += _field("λ̂", [f"{num('llc_mean')} ± {num('llc_sem')} (SEM)", f"std over chains {num('llc_std')}"]
                        + ([f"exact λ {num('llc_true')}"] if metrics.get("llc_true") is not None else [])
                        + ([f"finite-n reference {num('llc_ref')} ± {num('llc_ref_se')}"]
                           if metrics.get("llc_ref") is not None else [])
                        + ([f"rel. error {num('rel_error')}"] if metrics.get("rel_error") is not None else []))
        lines += _field("diagnostics", [f"R-hat {num('r_hat')}", f"ESS bulk {num('ess_bulk')}", f"tail {num('ess_tail')}"]
                        + ([f"divergences {num('divergences')}"] if metrics.get("divergences") is not None else [])
                        + ([f"acceptance {num('accept_rate_mean')}"] if metrics.get("accept_rate_mean") is not None else []))
        lines += _field("cost", [f"{num('total_fge')} gradient evaluations,", f"{num('walltime_sec')} s",
                                 f"(compile {num('compile_sec')} s"
                                 + (": the worker's compiled program, reused," if metrics.get("compile_cache_hit") else ","),
                                 f"sample {num('sample_sec')} s)"], sep=" ")
        flags = run_flags({**metrics, "status": manifest.status})
        if flags:
            lines += _field("flagged", flags, sep="; ")
    else:
        m = spec.get("model", {})
        lines += _field("model", [f"{m.get('kind')}:", *settings(m, "kind")])
        lines += _field("data", settings(spec.get("data", {})))
        lines += _field("numbers", [f"n_params {num('n_params')}", f"L0 {num('L0')}", f"exact λ {num('llc_true')}",
                                    f"train loss {num('final_train_loss')}", f"test loss {num('test_loss')}"])
    lines += _field("made", [f"{_when(manifest.created_at)} on {manifest.host}",
                             f"code {(manifest.code.sha or '?')[:12]}" + (" (dirty)" if manifest.code.dirty else "")])
    lines += _files_lines(store, kind, artifact_id, manifest.arrays, d)
    s = spec.get("sampler", {})
    logs_of = job_logs(logs, kind, artifact_id, spec.get("target_id"), s.get("name"))
    lines.append("logs" + ("" if any(p.exists() for p in logs_of) else f" (none under {logs}/; --logs DIR)"))
    lines += [f"  {p}" for p in logs_of if p.exists()]
    if plots_dir is not None and (plots_dir / artifact_id).is_dir():
        lines.append("plots (lh promote)")
        lines += [f"  {p}" for p in sorted((plots_dir / artifact_id).iterdir())]
    if kind == "target":
        damaged: list[str] = []  # whose target a damaged run names is not known
        runs = [m for m in store.manifests("run", damaged) if m.spec.get("target_id") == artifact_id]
        unread = len(damaged)
        lines += _field("runs", str(len(runs)) + (f" (and {unread} damaged run{'s' if unread > 1 else ''} in the store, "
                                                    "whose target cannot be read: lh verify)" if unread else ""))
        pad = max((len(m.status) for m in runs), default=0)
        lines += [f"  {m.id}  {m.spec.get('sampler', {}).get('name', '?'):<6} {m.status:<{pad}}  "
                  f"λ̂ {num('llc_mean', m.metrics)} ± {num('llc_sem', m.metrics)}" for m in runs]
    lines.append("spec")
    lines += ["  " + line for line in json.dumps(spec, indent=2, sort_keys=True).splitlines()]
    return "\n".join(lines) + "\n"
