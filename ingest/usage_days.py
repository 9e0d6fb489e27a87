"""Loading a usage extract day by day: only the days whose rows changed are rewritten.

Ingest hands over the whole ``usage`` table each run. The hash of each day's canonical rows
is kept in ``usage_ingest_days``; the next load compares and deletes and rewrites only the
days that are new, changed or gone, which keeps the write (and the rollups' work after it)
to what changed. Every write to ``usage`` is journaled by the warehouse (reader
``usage_ingest_days``): a day written by anyone else since the last load has its hash
forgotten first, so it is rewritten from the extract, never trusted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from churnflow import schema
from churnflow.warehouse import ensure_table, insert_frame, record_write, replace_rows, serialize_writes, take_changes, transaction

log = logging.getLogger(__name__)

READER = "usage_ingest_days"  # this module's name in the write journal (declared with schema.USAGE)
CHUNK_DAYS = 31  # days per DELETE / INSERT range: bounded statements


def _ts(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def day_ranges(days: list[date], max_days: int = CHUNK_DAYS) -> list[tuple[date, date]]:
    """Contiguous [start, end) ranges of at most ``max_days`` days covering ``days``."""
    out: list[tuple[date, date]] = []
    for d in sorted(set(days)):
        if out and out[-1][1] == d and (d - out[-1][0]).days < max_days:
            out[-1] = (out[-1][0], d + timedelta(days=1))
        else:
            out.append((d, d + timedelta(days=1)))
    return out


def day_hash_parts(frame: pd.DataFrame) -> pd.DataFrame:
    """Per day: the (wrapping) sum of the canonical rows' 64-bit hashes and the row count.

    Sums of row hashes are additive, so an extract read in chunks gives the same per-day hash
    as the whole extract at once (:func:`add_day_hash_parts`)."""
    day = pd.to_datetime(frame["occurred_at"]).dt.normalize()
    row_hash = pd.util.hash_pandas_object(frame[schema.USAGE.column_names], index=False)
    grouped = pd.DataFrame({"day": day, "h": row_hash.to_numpy(dtype="uint64")}).groupby("day")["h"]
    return pd.DataFrame({"total": grouped.sum(), "rows": grouped.size()})  # uint64 sums wrap: still a hash


def add_day_hash_parts(parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Combine the per-day parts of several chunks of one extract."""
    if not parts:
        return pd.DataFrame({"total": pd.Series(dtype="uint64"), "rows": pd.Series(dtype="int64")})
    both = pd.concat(parts)
    grouped = both.groupby(level=0)
    return pd.DataFrame({"total": grouped["total"].sum().astype("uint64"), "rows": grouped["rows"].sum()})


def day_hashes_from_parts(parts: pd.DataFrame) -> pd.DataFrame:
    """The ``usage_ingest_days`` rows for per-day parts: day, content hash, rows."""
    return pd.DataFrame({
        "activity_date": pd.DatetimeIndex(parts.index).date if len(parts) else pd.Series(dtype=object),
        "content_hash": [f"{int(t):016x}-{int(n)}" for t, n in zip(parts["total"], parts["rows"])],
        "source_rows": parts["rows"].astype("int64").to_numpy(),
    })


def replace_usage_by_day(engine: sa.Engine | sa.Connection, frame: pd.DataFrame) -> int:
    """Load a full usage extract, rewriting only the days whose rows changed since the last load.

    Returns the rows written. Given a connection, the write joins the caller's transaction
    (ingest loads every table or none).
    """
    def write(conn: sa.Connection, days: set[date] | None) -> int:
        if days is None:
            return replace_rows(conn, "usage", frame, replace_all=True)
        rows = frame[pd.to_datetime(frame["occurred_at"]).dt.normalize().dt.date.isin(days)]
        if len(rows):
            insert_frame(conn, "usage", rows)
        return len(rows)

    return _replace_changed_days(engine, day_hashes_from_parts(day_hash_parts(frame)), write)


def replace_usage_by_day_from(engine: sa.Engine | sa.Connection, load_table: str, parts: pd.DataFrame) -> int:
    """:func:`replace_usage_by_day` for an extract already written, chunk by chunk, to
    ``load_table`` (canonical usage columns) with its per-day hash ``parts``: the rows are
    copied in SQL, so an extract of any size loads in bounded memory."""
    cols = ", ".join(f'"{c}"' for c in schema.USAGE.column_names)

    def write(conn: sa.Connection, days: set[date] | None) -> int:
        if days is None:
            conn.execute(sa.text("DELETE FROM usage"))
            written = int(conn.execute(sa.text(f'INSERT INTO usage ({cols}) SELECT {cols} FROM "{load_table}"')).rowcount or 0)
            record_write(conn, "usage", whole_table=True)
            return written
        written = 0
        for start, end in day_ranges(sorted(days)):
            written += int(conn.execute(sa.text(f'INSERT INTO usage ({cols}) SELECT {cols} FROM "{load_table}" '
                                                "WHERE occurred_at >= :a AND occurred_at < :b"), {"a": _ts(start), "b": _ts(end)}).rowcount or 0)
        record_write(conn, "usage", days=sorted(days))
        return written

    return _replace_changed_days(engine, day_hashes_from_parts(parts), write)


WriteDays = Callable[[sa.Connection, "set[date] | None"], int]


def _replace_changed_days(engine: sa.Engine | sa.Connection, hashes: pd.DataFrame, write: WriteDays) -> int:
    """The day delta both loaders share: the first load writes everything, later loads delete
    and rewrite the days whose hash changed, and forget the days that are gone."""
    ensure_table(engine, "usage", pd.DataFrame(columns=schema.USAGE.column_names))
    ensure_table(engine, schema.USAGE_INGEST_DAYS.name, pd.DataFrame(columns=schema.USAGE_INGEST_DAYS.column_names))
    ingest_days = sa.table(schema.USAGE_INGEST_DAYS.name, sa.column("activity_date"))
    with transaction(engine) as conn:
        serialize_writes(conn, "usage")
        _forget_days_written_since(conn, ingest_days)
        previous = pd.DataFrame(conn.execute(sa.text("SELECT activity_date, content_hash FROM usage_ingest_days")).fetchall(),
                                columns=["activity_date", "content_hash"])
        if previous.empty:
            written = write(conn, None)
            take_changes(conn, READER, "usage")  # our own write: the hashes below describe it
            replace_rows(conn, schema.USAGE_INGEST_DAYS.name, hashes, replace_all=True)
            log.info("usage: loaded all %d day(s), %d rows", len(hashes), written)
            return written
        previous["activity_date"] = pd.to_datetime(previous["activity_date"]).dt.date
        before = dict(zip(previous["activity_date"], previous["content_hash"]))
        now = dict(zip(hashes["activity_date"], hashes["content_hash"]))
        changed = sorted(d for d, h in now.items() if before.get(d) != h)
        gone = sorted(set(before) - set(now))
        for start, end in day_ranges(changed + gone):
            conn.execute(sa.text("DELETE FROM usage WHERE occurred_at >= :a AND occurred_at < :b"), {"a": _ts(start), "b": _ts(end)})
        written = write(conn, set(changed)) if changed else 0
        record_write(conn, "usage", days=changed + gone)  # the deletes above (gone days have no rows to name them)
        take_changes(conn, READER, "usage")  # our own write: the hashes below describe it
        stale = changed + gone
        for start in range(0, len(stale), 500):
            conn.execute(ingest_days.delete().where(ingest_days.c.activity_date.in_(stale[start:start + 500])))
        if changed:
            insert_frame(conn, schema.USAGE_INGEST_DAYS.name, hashes[hashes["activity_date"].isin(set(changed))])
    log.info("usage: %d of %d day(s) changed, %d gone; %d rows rewritten", len(changed), len(now), len(gone), written)
    return written


def _forget_days_written_since(conn: sa.Connection, ingest_days: sa.TableClause) -> None:
    """Days of ``usage`` written by anyone since the last load no longer match their hash:
    forget it (all of them when the whole table was replaced), so they are rewritten."""
    changes = take_changes(conn, READER, "usage")
    if changes.whole_table:
        conn.execute(ingest_days.delete())
        return
    days = list(changes.days)
    for start in range(0, len(days), 500):
        conn.execute(ingest_days.delete().where(ingest_days.c.activity_date.in_(days[start:start + 500])))
