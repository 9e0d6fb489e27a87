"""The warehouse: a real SQL database through SQLAlchemy.

The embedded default is a DuckDB file; PostgreSQL is the other supported backend. Stages
read with SQL and write DataFrames through :func:`replace_rows`, which makes every write
idempotent for its partition (re-running a day replaces that day's rows).

**Reactions to writes, without the core knowing the stages.** Some state must follow every
write of a table: the versions of a state table (``churnflow.history``), the usage rollups
(``features.rollups``) and the ingest's per-day hashes of usage. Every write (``replace_rows``,
``insert_frame``, or a writer's own SQL followed by :func:`record_write`) ends in
:func:`record_write`, inside the write's transaction, which reacts from the table's
declaration in :mod:`churnflow.schema` alone, never from its name:

* a table with a history declared (``schema.HISTORY``) has its versions recorded at once,
  by the core's own ``churnflow.history`` (same transaction: the table and its history never
  disagree, and the extract's ``loaded_at`` is known only now);
* a table declared with ``journal_readers`` gets, per reader, the days the write touched (or
  "the whole table") in the write journal ``table_changes``; each reader catches up with
  :func:`take_changes` when it next runs (the rollups before rolling, the ingest before
  comparing its day hashes).

Why a journal and not a registry of stage callbacks: a process that writes ``usage`` (an
ingest, a demo book, a test) need not import ``features``, and an earlier stage must not
import a later one; a callback registered at import time would then be silently missing.
The journal is data, written by the core whoever writes: no registration to forget, and the
stage learns every write when it next runs.
"""

from __future__ import annotations

import io
import logging
import weakref
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from typing import Any

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow import history
from churnflow.errors import ChurnflowError
from churnflow.schema import DECLARED, HISTORY, TABLE_CHANGES, TableSpec

log = logging.getLogger(__name__)


class WarehouseError(ChurnflowError):
    """A warehouse problem a user can act on (locked file, a key the data breaks); the message says what."""


@lru_cache(maxsize=8)
def get_engine(url: str) -> sa.Engine:
    """One engine per URL per process.

    DuckDB allows one process per file: a second run for the same warehouse (two dailies at
    once, say) waits for the first to finish instead of failing, and says so; after the
    ``warehouse_lock_wait_seconds`` setting it fails with one clear message naming the holder.
    """
    from churnflow.settings import get_settings

    lock_wait_seconds = get_settings().warehouse_lock_wait_seconds
    engine = sa.create_engine(url, future=True)
    if url.startswith("duckdb:///"):
        from pathlib import Path

        path = Path(url.removeprefix("duckdb:///"))
        path.parent.mkdir(parents=True, exist_ok=True)
        sa.event.listen(engine, "do_connect", _wait_for_duckdb_lock(path, lock_wait_seconds))
    return engine


def _wait_for_duckdb_lock(path: object, wait_seconds: float):
    import time

    def connect(dialect, conn_rec, cargs, cparams):  # noqa: ANN001 - SQLAlchemy event signature
        deadline = time.monotonic() + wait_seconds
        delay, told = 0.2, False
        while True:
            try:
                return dialect.connect(*cargs, **cparams)
            except Exception as exc:  # noqa: BLE001 - duckdb.IOException, wrapped or not
                if "lock" not in str(exc).lower():
                    raise
                if time.monotonic() >= deadline:
                    raise WarehouseError(
                        f"the warehouse {path} is locked by another process ({_lock_holder(exc)}); "
                        f"waited {wait_seconds:.0f} s. Let that run finish, or stop it, and try again."
                    ) from None
                if not told:
                    log.warning("warehouse %s is in use by another process (%s): waiting for it", path, _lock_holder(exc))
                    told = True
                time.sleep(delay)
                delay = min(delay * 1.5, 2.0)

    return connect


def _lock_holder(exc: Exception) -> str:
    import re

    found = re.search(r"PID (\d+)", str(exc))
    return f"PID {found.group(1)}" if found else "another churnflow run"


def dialect(engine: sa.Engine) -> str:
    return engine.dialect.name


def table_exists(bind: sa.Engine | sa.Connection, name: str) -> bool:
    return sa.inspect(bind).has_table(name)


def read_sql(engine: sa.Engine, sql: str | sa.TextClause | sa.Select, params: Mapping[str, Any] | None = None) -> pd.DataFrame:
    """Run a query with bound parameters and return a DataFrame."""
    stmt = sa.text(sql) if isinstance(sql, str) else sql
    if engine.dialect.name == "duckdb":
        return _read_duckdb(engine, stmt, dict(params or {}))
    with engine.connect() as conn:
        result = conn.execute(stmt, dict(params or {}))
        frame = pd.DataFrame(result.fetchall(), columns=list(result.keys()))
    return frame


def _read_duckdb(engine: sa.Engine, stmt: sa.Executable, params: dict[str, Any]) -> pd.DataFrame:
    """DuckDB's own columnar fetch: 10x faster than building rows through the DB-API for the
    large frames features and scoring read. Same SQL text and bound (never inlined) values."""
    import duckdb

    bound = stmt.params(**params) if params else stmt  # values in place so IN lists can expand
    compiled = bound.compile(dialect=engine.dialect, compile_kwargs={"render_postcompile": True})
    values = compiled.construct_params()
    positional = [values[name] for name in (compiled.positiontup or [])]
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        try:
            return raw.execute(compiled.string, positional).df()
        except duckdb.Error as exc:
            raise sa.exc.DBAPIError.instance(compiled.string, positional, exc, duckdb.Error) from None


def content_hash_sql(dialect_name: str, columns: list[str]) -> str:
    """An aggregate SQL expression: an order-independent hash of the rows' ``columns``, as text.

    The one dialect-specific piece of SQL: DuckDB's ``hash`` and PostgreSQL's
    ``hashtextextended``; a sum of 64-bit row hashes changes when any value of any row does.
    ``columns`` are churnflow's own column names, never user input.
    """
    cols = ", ".join(f'"{c}"' for c in columns)
    if dialect_name == "duckdb":
        return f"CAST(COALESCE(SUM(hash({cols})), 0) AS VARCHAR)"
    if dialect_name == "postgresql":
        text = ", ".join(f"COALESCE(CAST(\"{c}\" AS VARCHAR), '\\N')" for c in columns)
        return f"CAST(COALESCE(SUM(hashtextextended(concat_ws('|', {text}), 0)), 0) AS VARCHAR)"
    raise NotImplementedError(f"content hashes are not implemented for {dialect_name}")


def read_table(engine: sa.Engine, name: str) -> pd.DataFrame:
    return read_sql(engine, sa.select(sa.text("*")).select_from(sa.table(name)))


def _sa_type(series: pd.Series) -> sa.types.TypeEngine:
    dtype = series.dtype
    if pd.api.types.is_bool_dtype(dtype):
        return sa.Boolean()
    if pd.api.types.is_integer_dtype(dtype):
        return sa.BigInteger()
    if pd.api.types.is_float_dtype(dtype):
        return sa.Double()
    if pd.api.types.is_datetime64_any_dtype(dtype):
        return sa.DateTime()
    return sa.String()


# Declared tables already brought up to their spec, per engine (an engine is one warehouse).
_UPGRADED: weakref.WeakKeyDictionary[sa.Engine, set[str]] = weakref.WeakKeyDictionary()


def _upgrade_declared(bind: sa.Engine | sa.Connection, name: str) -> None:
    """Bring a declared table created by an older churnflow up to its spec, once per process:
    add the optional columns it lacks and drop NOT NULL where a column became optional (e.g.
    ``subscriptions.end_date`` for open-ended subscriptions). Values are never rewritten."""
    engine = bind.engine
    if name in _UPGRADED.get(engine, ()):
        return
    spec = DECLARED[name]
    existing = {c["name"]: c for c in sa.inspect(bind).get_columns(name)}
    with transaction(bind) as conn:
        for col in spec.columns:
            kind = spec.sa_table(sa.MetaData()).c[col.name].type.compile(dialect=engine.dialect)
            if col.name not in existing:
                conn.execute(sa.text(f'ALTER TABLE "{name}" ADD COLUMN "{col.name}" {kind}'))
                log.info("table %s: added column %s (declared since the table was created)", name, col.name)
            elif not col.required and not existing[col.name].get("nullable", True):
                conn.execute(sa.text(f'ALTER TABLE "{name}" ALTER COLUMN "{col.name}" DROP NOT NULL'))
                log.info("table %s: column %s is optional now", name, col.name)
    _UPGRADED.setdefault(engine, set()).add(name)


def ensure_table(engine: sa.Engine | sa.Connection, name: str, frame: pd.DataFrame) -> sa.Table:
    """Create ``name`` if missing: declared tables from their spec (with their key), others from
    the frame's dtypes. A declared table that exists is brought up to its spec: columns added
    since (see :func:`_upgrade_declared`) and its key, if an older churnflow created it without."""
    metadata = sa.MetaData()
    if name in DECLARED:
        spec = DECLARED[name]
        extra = tuple(sa.Column(str(c), _sa_type(frame[c]), quote=True) for c in frame.columns
                      if spec.extra_columns and c not in spec.column_names)
        table = spec.sa_table(metadata, extra=extra)
    else:
        table = sa.Table(name, metadata, *[sa.Column(str(c), _sa_type(frame[c]), quote=True) for c in frame.columns])
    existed = table_exists(engine, name)
    if name in DECLARED and existed and name not in _UPGRADED.get(engine.engine, ()):
        _upgrade_declared(engine, name)
    table.create(engine, checkfirst=True)
    if existed and name in DECLARED and DECLARED[name].key and DECLARED[name].key_is_primary:
        _ensure_key(engine, name, DECLARED[name].key)
    if engine.dialect.name == "postgresql" and name in DECLARED:
        for cols in DECLARED[name].indexes:
            sa.Index(f"ix_{name}_{'_'.join(cols)}", *[table.c[c] for c in cols]).create(engine, checkfirst=True)
    return table


_KEYED: set[tuple[str, str]] = set()


def _ensure_key(bind: sa.Engine | sa.Connection, name: str, key: tuple[str, ...]) -> None:
    """Add the declared primary key to a table an older churnflow created without one (once per process)."""
    marker = (str(bind.engine.url), name)
    if marker in _KEYED:
        return
    with transaction(bind) as conn:
        if conn.dialect.name == "duckdb":
            has_key = conn.execute(sa.text("SELECT COUNT(*) FROM duckdb_constraints() WHERE table_name = :t AND constraint_type = 'PRIMARY KEY'"),
                                   {"t": name}).scalar()
        else:
            has_key = conn.execute(sa.text("SELECT COUNT(*) FROM information_schema.table_constraints WHERE table_name = :t "
                                           "AND constraint_type = 'PRIMARY KEY' AND table_schema = current_schema()"), {"t": name}).scalar()
        if not has_key:
            cols = ", ".join(f'"{c}"' for c in key)
            dupes = conn.execute(sa.text(f'SELECT COUNT(*) FROM (SELECT {cols} FROM "{name}" GROUP BY {cols} HAVING COUNT(*) > 1) AS d')).scalar()
            if dupes:
                raise WarehouseError(
                    f"table '{name}' holds {dupes} duplicated key(s) ({', '.join(key)}), written before churnflow enforced its key; "
                    f"remove the extra copies (e.g. re-run the stage for the affected days after deleting them) and run again"
                )
            conn.execute(sa.text(f'ALTER TABLE "{name}" ADD PRIMARY KEY ({cols})'))
            log.info("table %s: primary key (%s) added", name, ", ".join(key))
    _KEYED.add(marker)


def serialize_writes(conn: sa.Connection, name: str) -> None:
    """Serialize writers of one table until the transaction ends (PostgreSQL advisory lock):
    two runs of a stage for the same day then replace each other's rows instead of both
    inserting. DuckDB needs none: one process holds the file (see :func:`get_engine`)."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(hashtextextended(:k, 0))"), {"k": f"churnflow:{name}"})


@contextmanager
def transaction(bind: sa.Engine | sa.Connection) -> Iterator[sa.Connection]:
    """A connection in a transaction: a new one committed at the end for an engine, or the
    caller's own connection (and transaction) as is, so several writes can commit together."""
    if isinstance(bind, sa.Connection):
        yield bind
        return
    with bind.begin() as conn:
        yield conn


def replace_rows(
    engine: sa.Engine | sa.Connection,
    name: str,
    frame: pd.DataFrame,
    where: Mapping[str, Any] | None = None,
    *,
    replace_all: bool = False,
    loaded_at: datetime | date | None = None,
) -> int:
    """Delete the rows matching ``where`` (or all rows) and insert ``frame``, in one transaction.

    This is how every stage writes: a re-run for the same partition replaces, never
    duplicates. Returns the number of rows inserted. Given a connection, the write joins
    the caller's transaction (ingest commits all its tables at once). A write to a state
    table (accounts, subscriptions, tickets...) also records its rows' versions, as of
    ``loaded_at`` (the extract's as-of; ``None`` corrects the latest load), in the same
    transaction (churnflow.history).
    """
    created = ensure_table(engine, name, frame)
    # A lightweight table clause: no reflection (duckdb-engine cannot reflect constraints).
    table = sa.table(name, *[sa.column(c) for c in created.columns.keys()])
    with transaction(engine) as conn:
        serialize_writes(conn, name)
        if replace_all:
            conn.execute(table.delete())
        elif where:
            conn.execute(table.delete().where(sa.and_(*[table.c[k] == v for k, v in where.items()])))
        if len(frame):
            _insert_frame(conn, table, frame)
        record_write(conn, name, frame, whole_table=replace_all or bool(where), loaded_at=loaded_at)
    log.debug("wrote %d rows to %s", len(frame), name)
    return len(frame)


def record_write(conn: sa.Connection, name: str, frame: pd.DataFrame | None = None, *, whole_table: bool = False,
                 days: list[date] | None = None, loaded_at: datetime | date | None = None) -> None:
    """React to a write of ``name`` as its declaration says (see the module docstring), in the
    write's transaction: record a state table's versions, journal the days a journaled table's
    write touched for each of its readers.

    :func:`replace_rows` and :func:`insert_frame` call it; a writer that writes with its own
    SQL calls it after, with ``days`` (the days it rewrote) or ``whole_table``. ``frame`` gives
    the days of rows written (by the declared ``journal_day`` column); a write that deleted
    rows it cannot name by day passes ``whole_table``.
    """
    spec = DECLARED.get(name)
    if spec is None:
        return
    if spec.journal_readers:
        _journal(conn, spec, frame, whole_table=whole_table, days=days)
    if f"{name}_history" in HISTORY:  # features as of D read the version known at D
        history.record_versions(conn, name, loaded_at=loaded_at)


_JOURNAL = sa.table(TABLE_CHANGES.name, *[sa.column(c) for c in TABLE_CHANGES.column_names])


def _journal(conn: sa.Connection, spec: TableSpec, frame: pd.DataFrame | None, *, whole_table: bool, days: list[date] | None) -> None:
    TABLE_CHANGES.sa_table(sa.MetaData()).create(conn, checkfirst=True)
    mine = sa.and_(_JOURNAL.c.table_name == spec.name, _JOURNAL.c.reader.in_(spec.journal_readers))
    if whole_table:  # one entry stands for every day: earlier entries say nothing more
        conn.execute(_JOURNAL.delete().where(mine))
        conn.execute(_JOURNAL.insert(), [{"reader": r, "table_name": spec.name, "day": None} for r in spec.journal_readers])
        return
    touched = set(days or ())
    if frame is not None and len(frame) and spec.journal_day in frame.columns:
        touched |= {d.date() for d in pd.to_datetime(frame[spec.journal_day]).dt.normalize().dropna()}
    ordered = sorted(touched)
    for start in range(0, len(ordered), 500):
        batch = ordered[start:start + 500]
        conn.execute(_JOURNAL.delete().where(sa.and_(mine, _JOURNAL.c.day.in_(batch))))
        conn.execute(_JOURNAL.insert(), [{"reader": r, "table_name": spec.name, "day": d} for r in spec.journal_readers for d in batch])


@dataclass(frozen=True)
class TableChanges:
    """What was written to a table since a reader last caught up: the whole table, or days."""

    whole_table: bool
    days: tuple[date, ...]

    @property
    def empty(self) -> bool:
        return not self.whole_table and not self.days


def take_changes(conn: sa.Connection, reader: str, name: str) -> TableChanges:
    """The journal entries of ``reader`` for table ``name``, removed as they are read (in the
    caller's transaction: if the caller's work rolls back, the entries come back too)."""
    if reader not in DECLARED[name].journal_readers:
        raise WarehouseError(f"'{reader}' is not a declared journal reader of table '{name}' (churnflow/schema.py)")
    if not table_exists(conn, TABLE_CHANGES.name):
        return TableChanges(False, ())
    serialize_writes(conn, name)  # a writer of the table commits its entries before, or after, we take them
    mine = sa.and_(_JOURNAL.c.reader == reader, _JOURNAL.c.table_name == name)
    rows = conn.execute(sa.select(_JOURNAL.c.day).where(mine)).fetchall()
    conn.execute(_JOURNAL.delete().where(mine))
    days = sorted({_as_date(r.day) for r in rows if r.day is not None})
    return TableChanges(any(r.day is None for r in rows), tuple(days))


def has_changes(bind: sa.Engine | sa.Connection, reader: str, name: str) -> bool:
    """Whether ``reader`` has journal entries for ``name`` it has not taken yet (its derived
    state is behind the table), without taking them."""
    if not table_exists(bind, TABLE_CHANGES.name):
        return False
    stmt = sa.select(sa.func.count()).select_from(_JOURNAL).where(_JOURNAL.c.reader == reader, _JOURNAL.c.table_name == name)
    with transaction(bind) as conn:
        return bool(conn.execute(stmt).scalar())


def _as_date(value: object) -> date:
    if isinstance(value, datetime):
        return value.date()
    return value if isinstance(value, date) else pd.Timestamp(value).date()


def append_rows(engine: sa.Engine, name: str, frame: pd.DataFrame) -> int:
    return replace_rows(engine, name, frame)


def insert_frame(conn: sa.Connection, name: str, frame: pd.DataFrame) -> None:
    """Insert ``frame`` into the declared table ``name`` inside the caller's transaction (a
    write like any other: :func:`record_write` reacts to it)."""
    _insert_frame(conn, sa.table(name, *[sa.column(c) for c in DECLARED[name].column_names]), frame)
    record_write(conn, name, frame)


def _insert_frame(conn: sa.Connection, table: sa.TableClause, frame: pd.DataFrame) -> None:
    try:
        _bulk_insert(conn, table, frame)
    except Exception as exc:  # noqa: BLE001 - the drivers' own constraint errors, raised outside SQLAlchemy
        if type(exc).__name__ not in ("ConstraintException", "UniqueViolation", "NotNullViolation"):
            raise
        spec = DECLARED.get(table.name)
        key = f" (key: {', '.join(spec.key)})" if spec is not None and spec.key else ""
        first = (str(exc).strip().splitlines() or [""])[0]
        raise WarehouseError(f"table '{table.name}' refused the rows{key}: {first}; nothing of this write was kept") from None


def _bulk_insert(conn: sa.Connection, table: sa.TableClause, frame: pd.DataFrame) -> None:
    columns = [c for c in table.columns.keys() if c in frame.columns]
    frame = frame[columns]
    name = conn.dialect.name
    if name == "duckdb":
        raw = conn.connection.driver_connection
        raw.register("_churnflow_frame", frame)
        failed = False
        try:
            cols = ", ".join(f'"{c}"' for c in columns)
            raw.execute(f'INSERT INTO "{table.name}" ({cols}) SELECT {cols} FROM _churnflow_frame')
        except Exception:
            failed = True
            raise
        finally:
            if not failed:  # an aborted transaction refuses even this; the view goes with the rollback
                raw.unregister("_churnflow_frame")
    elif name == "postgresql":
        buffer = io.StringIO()
        frame.to_csv(buffer, index=False, header=False, na_rep="\\N", date_format="%Y-%m-%d %H:%M:%S.%f")
        buffer.seek(0)
        cols = ", ".join(f'"{c}"' for c in columns)
        raw = conn.connection.driver_connection
        with raw.cursor() as cur:
            with cur.copy(f"COPY \"{table.name}\" ({cols}) FROM STDIN WITH (FORMAT csv, NULL '\\N')") as copy:
                copy.write(buffer.getvalue())
    else:  # pragma: no cover - other dialects take the portable path
        records = frame.replace({np.nan: None}).to_dict("records")
        conn.execute(table.insert(), records)


def drop_tables(engine: sa.Engine, names: list[str]) -> None:
    with engine.begin() as conn:
        for name in names:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))
