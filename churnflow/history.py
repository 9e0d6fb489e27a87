"""Versions of the rows of sources that overwrite them: what was known at each date.

Real ticket, subscription and CRM systems store the *current* state: a ticket reopened
after D, a term extended, ARR, seats or segment changed after D simply overwrite the row.
Features as of D built from such a table would read the future. churnflow therefore keeps,
for each state table (``accounts``, ``subscriptions``, ``tickets``, ``account_attributes``),
a history table ``<table>_history`` holding every version it loaded, with ``valid_from``,
``valid_to`` and ``first_version``.

**Recording.** Every write of a state table through churnflow (an ingest, a demo book, any
:func:`churnflow.warehouse.replace_rows`: the warehouse's :func:`~churnflow.warehouse.record_write`
calls :func:`record_versions` for every table with a declared history) compares the table, as just written, with the
current versions, inside the write's transaction: a new key gets a first version, a key
whose content changed has its current version closed (``valid_to`` = load time) and a new
one opened, a key that disappeared is closed, an unchanged key is left alone. The load
time is when the extract's state is known: ``churnflow ingest`` uses the end of its run
date (the extract may hold rows stamped during that day, so what it says is known from the
next midnight: features as of D read extracts with a run date before D), a demo book its
end date. A write without a load time (another tool's direct write, noticed when features
are next refreshed, or a ``replace_rows`` call without ``loaded_at``) corrects the latest
load: it is recorded at that load's time, as if the extract had said so. Loading again
at the same time (an ingest re-run for the same run date) replaces that load's versions;
loading an *older* extract than the latest discards the versions loaded after it (the
warehouse then holds that older state; a warning says how many were dropped).

**Reading.** Features as of D read the version of each row valid at D:
``(first_version OR valid_from <= D) AND (valid_to IS NULL OR valid_to > D)``. The
earliest version of a row stands for every D before it was first loaded: older states
cannot be known, so a book loaded once, today, gives the same features for past dates as
the table itself, except for the fields whose timing cannot be recovered (see
``features.build``: a reopen flag is used only from the load that reported it). A table another tool created gets its history, stamped with the
time churnflow first sees it, when features are next refreshed; until then it is read as
it is, with its reopen flags unknown.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime

import sqlalchemy as sa

from churnflow.errors import ChurnflowError
from churnflow.schema import DECLARED, HISTORY, TableSpec

log = logging.getLogger(__name__)

# state table -> its history table, for the state tables declared with a key
VERSIONED: dict[str, str] = {name.removesuffix("_history"): name for name in HISTORY}


class HistoryError(ChurnflowError, ValueError):
    """A state table whose rows cannot be versioned (a key missing or shared); names the table."""


@dataclass(frozen=True)
class VersionReport:
    """What one load did to a table's history (row counts)."""

    table: str
    loaded_at: datetime
    added: int  # keys with no current version: new, or back after disappearing
    changed: int  # current version closed and a new one opened
    gone: int  # keys no longer in the table: current version closed
    unchanged: int
    discarded: int  # versions loaded after ``loaded_at``, dropped (an older extract was loaded)
    seconds: float

    def describe(self) -> str:
        return (f"{self.table} history at {self.loaded_at:%Y-%m-%d %H:%M}: {self.added} added, {self.changed} changed, "
                f"{self.gone} gone, {self.unchanged} unchanged" + (f", {self.discarded} later version(s) discarded" if self.discarded else "")
                + f" ({self.seconds:.2f} s)")


def _as_datetime(value: datetime | date) -> datetime:
    if hasattr(value, "to_pydatetime"):  # a pandas Timestamp
        return value.to_pydatetime()
    return value if isinstance(value, datetime) else datetime(value.year, value.month, value.day)


def _key_match(spec: TableSpec, left: str, right: str) -> str:
    """Equality on the key, hash-joinable on both backends (a nullable key column is
    compared through COALESCE, not IS NOT DISTINCT FROM, which PostgreSQL cannot hash)."""
    kinds = {c.name: c for c in spec.columns}
    parts = []
    for k in spec.key:
        if kinds[k].required:
            parts.append(f'{left}."{k}" = {right}."{k}"')
        else:
            parts.append(f"COALESCE(CAST({left}.\"{k}\" AS VARCHAR), '\\N') = COALESCE(CAST({right}.\"{k}\" AS VARCHAR), '\\N')")
    return " AND ".join(parts)


def _same_row(spec: TableSpec, left: str, right: str) -> str:
    values = [f'NOT ({left}."{c}" IS DISTINCT FROM {right}."{c}")' for c in spec.column_names if c not in spec.key]
    return " AND ".join([_key_match(spec, left, right), *values])


def _has_table(bind: sa.Engine | sa.Connection, name: str) -> bool:
    """``warehouse.table_exists``; this module sits below the warehouse (which calls it on every write)."""
    return sa.inspect(bind).has_table(name)


def _scalar(conn: sa.Connection, sql: str, params: dict | None = None) -> object:
    return conn.execute(sa.text(sql), params or {}).scalar()


def record_versions(conn: sa.Connection, table: str, *, loaded_at: datetime | date | None = None) -> VersionReport:
    """Record the versions of ``table``'s rows as it stands in ``conn``'s transaction.

    Call it in the transaction that wrote ``table`` (a full extract), so the table and its
    history never disagree. ``loaded_at`` is the extract's as-of (the ingest's run date);
    ``None`` corrects the latest load (see the module docstring). Compares in SQL, key by
    key, column by column (no hashes, so no collisions).
    """
    started = time.perf_counter()
    spec = DECLARED[table]
    history_name = VERSIONED[table]
    declared = DECLARED[history_name].sa_table(sa.MetaData())
    declared.create(conn, checkfirst=True)
    existing = {c["name"] for c in sa.inspect(conn).get_columns(history_name)}
    for column in declared.columns:  # a column added to the table's spec since: unknown (NULL) in older versions
        if column.name not in existing:
            conn.execute(sa.text(f'ALTER TABLE "{history_name}" ADD COLUMN "{column.name}" {column.type.compile(conn.dialect)}'))
    h, t = f'"{history_name}"', f'"{table}"'
    latest = _scalar(conn, f"SELECT MAX(valid_from) FROM {h}")
    if loaded_at is not None:
        at = _as_datetime(loaded_at)
    else:  # a correction of the latest load, or the first load: known from now on
        at = _as_datetime(latest) if latest is not None else datetime.now().replace(microsecond=0)
    params = {"at": at}

    discarded = 0
    if latest is not None and at < latest:  # an older extract: history after it is void
        discarded = int(_scalar(conn, f"SELECT COUNT(*) FROM {h} WHERE valid_from > :at", params) or 0)
        conn.execute(sa.text(f"DELETE FROM {h} WHERE valid_from > :at"), params)
        conn.execute(sa.text(f"UPDATE {h} SET valid_to = NULL WHERE valid_to > :at"), params)
        log.warning("%s: loaded an extract as of %s, older than the latest load (%s): %d later version(s) discarded",
                    table, at, latest, discarded)
        latest = _scalar(conn, f"SELECT MAX(valid_from) FROM {h}")

    keys = ", ".join(f'"{k}"' for k in spec.key)
    dupes = conn.execute(sa.text(f"SELECT {keys}, COUNT(*) AS n FROM {t} GROUP BY {keys} HAVING COUNT(*) > 1 LIMIT 1")).fetchone()
    if dupes is not None:
        key = ", ".join(f"{k}={v!r}" for k, v in zip(spec.key, dupes))
        raise HistoryError(f"table '{table}': {dupes[-1]} rows share the key {key}; its history needs one row per "
                           f"{'/'.join(spec.key)} (remove the duplicates, or load the table with churnflow ingest)")
    required = [k for k in spec.key if next(c for c in spec.columns if c.name == k).required]
    if required:
        missing = int(_scalar(conn, f"SELECT COUNT(*) FROM {t} WHERE " + " OR ".join(f'"{k}" IS NULL' for k in required)) or 0)
        if missing:
            raise HistoryError(f"table '{table}': {missing} row(s) have no {'/'.join(required)}; its history needs the key "
                               f"(remove those rows, or load the table with churnflow ingest)")

    columns = ", ".join(f'"{c}"' for c in spec.column_names)
    if latest is None:  # the first load: every row is a first version
        conn.execute(sa.text(f"INSERT INTO {h} ({columns}, valid_from, valid_to, first_version) SELECT {columns}, :at, NULL, TRUE FROM {t}"),
                     params)
        added = int(_scalar(conn, f"SELECT COUNT(*) FROM {h}") or 0)
        report = VersionReport(table, at, added, 0, 0, 0, 0, time.perf_counter() - started)
        log.info("%s", report.describe())
        return report
    if conn.dialect.name == "postgresql":  # both were just rewritten: plan the joins on fresh statistics
        conn.execute(sa.text(f"ANALYZE {t}"))
        conn.execute(sa.text(f"ANALYZE {h}"))

    # ``_present`` marks which side of an outer join a row came from (key columns may be NULL)
    differs = " OR ".join(f'NOT (t."{c}" IS NOT DISTINCT FROM v."{c}")' for c in spec.column_names if c not in spec.key) or "FALSE"
    counts = conn.execute(sa.text(
        "SELECT SUM(CASE WHEN v._present IS NULL THEN 1 ELSE 0 END) AS added, "
        "SUM(CASE WHEN t._present IS NULL THEN 1 ELSE 0 END) AS gone, "
        f"SUM(CASE WHEN t._present = 1 AND v._present = 1 AND ({differs}) THEN 1 ELSE 0 END) AS changed, COUNT(*) AS n "
        f"FROM (SELECT *, 1 AS _present FROM {t}) AS t "
        f"FULL OUTER JOIN (SELECT *, 1 AS _present FROM {h} WHERE valid_to IS NULL) AS v ON {_key_match(spec, 't', 'v')}"
    )).mappings().one()
    added, gone, changed = (int(counts[k] or 0) for k in ("added", "gone", "changed"))
    unchanged = int(counts["n"] or 0) - added - gone - changed
    if added or gone or changed:
        stale = f"valid_to IS NULL AND NOT EXISTS (SELECT 1 FROM {t} AS t WHERE {_same_row(spec, 't', h)})"
        # a version loaded at this very time is replaced (a re-run), an older one is closed
        conn.execute(sa.text(f"DELETE FROM {h} WHERE valid_from = :at AND {stale}"), params)
        conn.execute(sa.text(f"UPDATE {h} SET valid_to = :at WHERE {stale}"), params)
        selected = ", ".join(f't."{c}"' for c in spec.column_names)
        # joins, not a correlated subquery per row: PostgreSQL would rescan the history for each
        conn.execute(sa.text(
            f"INSERT INTO {h} ({columns}, valid_from, valid_to, first_version) "
            f"SELECT {selected}, :at, NULL, p._present IS NULL "
            f"FROM {t} AS t LEFT JOIN (SELECT {keys}, 1 AS _present FROM {h} GROUP BY {keys}) AS p ON {_key_match(spec, 't', 'p')} "
            f"WHERE NOT EXISTS (SELECT 1 FROM {h} AS o WHERE o.valid_to IS NULL AND {_key_match(spec, 't', 'o')})"
        ), params)
    report = VersionReport(table, at, added, changed, gone, unchanged, discarded, time.perf_counter() - started)
    log.info("%s", report.describe())
    return report


def sync_history(engine: sa.Engine) -> list[VersionReport]:
    """Bring every state table's history in step with the table (a no-op unless another tool
    rewrote a table directly: that write then corrects the latest load)."""
    reports = []
    for table in VERSIONED:
        if _has_table(engine, table):
            with engine.begin() as conn:
                reports.append(record_versions(conn, table))
    return reports


def reset_history(engine: sa.Engine, tables: list[str]) -> None:
    """Forget the history of ``tables`` (a demo book is a new world, not a later extract)."""
    with engine.begin() as conn:
        for name in [VERSIONED[t] for t in tables if t in VERSIONED]:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}"'))  # churnflow's own table names, never input


def state_at_sql(bind: sa.Engine | sa.Connection, table: str) -> str:
    """SQL for "the rows of ``table`` as known at ``:as_of``": a parenthesised subquery with
    the table's columns and ``known_since`` (when that version was loaded).

    Reads the history (the version valid at :as_of; the first version for dates before the
    first load); without a history, the table itself with ``known_since`` unknown (NULL).
    A table that keeps no history (events such as ``surveys``) is returned as itself.
    """
    if table not in VERSIONED:
        return f'"{table}"'
    columns = ", ".join(f'"{c}"' for c in DECLARED[table].column_names)
    if _has_table(bind, VERSIONED[table]):
        return (f'(SELECT {columns}, valid_from AS known_since FROM "{VERSIONED[table]}" '
                f"WHERE (first_version OR valid_from <= :as_of) AND (valid_to IS NULL OR valid_to > :as_of))")
    return f'(SELECT {columns}, CAST(NULL AS TIMESTAMP) AS known_since FROM "{table}")'
