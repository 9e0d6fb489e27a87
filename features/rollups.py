"""Derived tables the feature windows read, each materialized once and kept current.

* ``usage_daily`` (account, day, user, product feature) and ``usage_account_daily``
  (account, day): raw usage rolled up once per day. A daily run rolls only the new days
  (plus the last ``recheck_days``, for late-arriving rows), and a backfill over any date
  range reuses what is rolled, so feature cost follows new data, not history.
* ``usage_rollup_days``: which days are rolled. Every write to ``usage`` through churnflow
  is journaled by the warehouse (``table_changes``, reader ``usage_rollups``); a refresh first
  marks the days written since dirty (or forgets the state when the whole table was
  replaced), so a rollup is never silently stale, whoever wrote and whatever they imported.
* ``survey_text``: each verbatim comment scored once (sentiment and topic flags); a
  changed comment is scored again (matched by md5).

Rows written to ``usage`` by another tool, directly in the warehouse, are picked up when
they are newer than the last rolled day minus ``recheck_days``; for older days run
``churnflow features --rebuild-rollups``.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from churnflow import schema
from churnflow.warehouse import content_hash_sql, ensure_table, has_changes, insert_frame, read_sql, table_exists, take_changes
from features.text import TOPICS, sentiment, topic_flags
from ingest.usage_days import day_ranges

log = logging.getLogger(__name__)

CHUNK_DAYS = 31  # days rolled per transaction: bounds memory and keeps progress if a run dies
READER = "usage_rollups"  # this module's name in the write journal (declared with schema.USAGE)


@dataclass
class RollupReport:
    full: bool
    days_rolled: int
    source_rows: int
    seconds: float

    def describe(self) -> str:
        kind = "full roll" if self.full else "incremental roll"
        return f"usage rollups: {kind} of {self.days_rolled} day(s), {self.source_rows:,} raw rows, {self.seconds:.1f} s"


def _ts(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def _ensure(engine: sa.Engine | sa.Connection, *specs: schema.TableSpec) -> None:
    for spec in specs:
        ensure_table(engine, spec.name, pd.DataFrame(columns=spec.column_names))


def catch_up_usage_writes(conn: sa.Connection) -> None:
    """Mark the days written to ``usage`` since the last refresh dirty, from the write journal
    (churnflow.warehouse): a write that replaced the whole table forgets the rollup state, so
    the refresh rolls everything. Runs in the refresh's own transaction."""
    changes = take_changes(conn, READER, schema.USAGE.name)
    if changes.whole_table:
        if table_exists(conn, schema.USAGE_ROLLUP_DAYS.name):
            conn.execute(sa.text(f'DELETE FROM "{schema.USAGE_ROLLUP_DAYS.name}"'))
        return
    if changes.days:
        _mark_dirty(conn, list(changes.days))


def usage_writes_pending(engine: sa.Engine | sa.Connection) -> bool:
    """Whether usage was written since the last refresh (the rollups are behind it)."""
    return has_changes(engine, READER, schema.USAGE.name)


def _mark_dirty(conn: sa.Connection, days: list[date]) -> None:
    state = sa.table(schema.USAGE_ROLLUP_DAYS.name, *[sa.column(c) for c in schema.USAGE_ROLLUP_DAYS.column_names])
    if not table_exists(conn, state.name):  # without a state the next refresh rolls every day anyway
        return
    for start in range(0, len(days), 500):
        batch = days[start:start + 500]
        conn.execute(state.delete().where(state.c.activity_date.in_(batch)))
        conn.execute(state.insert(), [{"activity_date": d, "source_rows": 0, "events": 0.0, "content_hash": None, "dirty": True, "rolled_at": None} for d in batch])


_ROLL_USER_DAYS = """
INSERT INTO usage_daily (account_id, activity_date, user_id, feature, events, errors, duration_s, source_rows)
SELECT account_id, CAST(occurred_at AS DATE), user_id, feature, SUM(quantity), SUM(errors), SUM(duration_s), COUNT(*)
FROM usage
WHERE occurred_at >= :start_ts AND occurred_at < :end_ts
GROUP BY account_id, CAST(occurred_at AS DATE), user_id, feature
"""

_ROLL_ACCOUNT_DAYS = """
INSERT INTO usage_account_daily (account_id, activity_date, events, errors, source_rows)
SELECT account_id, activity_date, SUM(events), SUM(errors), SUM(source_rows)
FROM usage_daily
WHERE activity_date >= :start AND activity_date < :end
GROUP BY account_id, activity_date
"""

_ROLL_STATE = """
INSERT INTO usage_rollup_days (activity_date, source_rows, events, content_hash, dirty, rolled_at)
SELECT activity_date, SUM(source_rows), SUM(events), {content_hash}, FALSE, :now
FROM usage_daily
WHERE activity_date >= :start AND activity_date < :end
GROUP BY activity_date
"""


def _roll(engine: sa.Engine, start: date, end: date) -> int:
    """Re-roll the days in [start, end) in one transaction; return the raw rows read."""
    params = {"start": start, "end": end, "start_ts": _ts(start), "end_ts": _ts(end), "now": datetime.now()}
    with engine.begin() as conn:
        for table in ("usage_daily", "usage_account_daily", "usage_rollup_days"):
            conn.execute(sa.text(f'DELETE FROM "{table}" WHERE activity_date >= :start AND activity_date < :end'), params)
        conn.execute(sa.text(_ROLL_USER_DAYS), params)
        conn.execute(sa.text(_ROLL_ACCOUNT_DAYS), params)
        content_hash = content_hash_sql(conn.dialect.name, ["account_id", "user_id", "feature", "events", "errors", "duration_s", "source_rows"])
        conn.execute(sa.text(_ROLL_STATE.format(content_hash=content_hash)), params)
        rows = conn.execute(sa.text("SELECT COALESCE(SUM(source_rows), 0) FROM usage_rollup_days WHERE activity_date >= :start AND activity_date < :end"), params).scalar()
    return int(rows or 0)


def refresh_usage_rollups(engine: sa.Engine, *, recheck_days: int = 3, rebuild: bool = False) -> RollupReport:
    """Bring the usage rollups up to date with ``usage``; reads raw rows of new or dirty days only.

    The first call (or ``rebuild=True``, or after the whole usage table was replaced) rolls
    every day; later calls roll the dirty days, the days after the last rolled one, and the
    last ``recheck_days`` rolled days again (rows that arrive a day or two late).
    """
    started = time.perf_counter()
    _ensure(engine, schema.USAGE_DAILY, schema.USAGE_ACCOUNT_DAILY, schema.USAGE_ROLLUP_DAYS)
    with engine.begin() as conn:
        catch_up_usage_writes(conn)
    state = read_sql(engine, "SELECT activity_date, dirty FROM usage_rollup_days")
    state["activity_date"] = pd.to_datetime(state["activity_date"]).dt.date
    clean = state[~state["dirty"].astype(bool)]
    full = rebuild or clean.empty
    if full:
        span = read_sql(engine, "SELECT MIN(occurred_at) AS lo, MAX(occurred_at) AS hi FROM usage")
        with engine.begin() as conn:
            for table in ("usage_daily", "usage_account_daily", "usage_rollup_days"):
                conn.execute(sa.text(f'DELETE FROM "{table}"'))
        lo, hi = span.loc[0, "lo"], span.loc[0, "hi"]
        if pd.isna(lo):
            return RollupReport(True, 0, 0, time.perf_counter() - started)
        first, last = pd.Timestamp(lo).date(), pd.Timestamp(hi).date()
        days = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    else:
        tail = max(clean["activity_date"]) - timedelta(days=max(recheck_days, 1) - 1)
        hi = read_sql(engine, "SELECT MAX(occurred_at) AS hi FROM usage WHERE occurred_at >= :tail", {"tail": _ts(tail)}).loc[0, "hi"]
        days = list(state.loc[state["dirty"].astype(bool), "activity_date"])
        if not pd.isna(hi):
            last = pd.Timestamp(hi).date()
            days += [tail + timedelta(days=i) for i in range((last - tail).days + 1)]
    rows = sum(_roll(engine, start, end) for start, end in day_ranges(days, CHUNK_DAYS))
    if full:
        _analyze(engine, "usage_daily", "usage_account_daily", "usage_rollup_days")
    report = RollupReport(full, len(set(days)), rows, time.perf_counter() - started)
    log.info(report.describe())
    return report


_SURVEYS_TO_SCORE = """
SELECT s.response_id, s.account_id, s.submitted_at, s.comment, md5(s.comment) AS comment_md5
FROM surveys s
LEFT JOIN survey_text t
  ON t.response_id = s.response_id AND t.comment_md5 = md5(s.comment)
  AND t.account_id = s.account_id AND t.submitted_at = s.submitted_at
WHERE s.submitted_at >= :since AND s.comment IS NOT NULL AND s.comment <> '' AND t.response_id IS NULL
"""

_STALE_TEXT = """
DELETE FROM survey_text
WHERE (submitted_at >= :since OR response_id IN (SELECT response_id FROM surveys WHERE submitted_at >= :since))
  AND NOT EXISTS (
    SELECT 1 FROM surveys s
    WHERE s.response_id = survey_text.response_id AND md5(s.comment) = survey_text.comment_md5
      AND s.account_id = survey_text.account_id AND s.submitted_at = survey_text.submitted_at)
"""


def refresh_survey_text(engine: sa.Engine, since: date) -> int:
    """Score the comments submitted on or after ``since`` that are new or changed; return how many."""
    _ensure(engine, schema.SURVEY_TEXT)
    params = {"since": _ts(since)}
    todo = read_sql(engine, _SURVEYS_TO_SCORE, params)
    out = todo[["response_id", "account_id", "submitted_at", "comment_md5"]].copy()
    out["sentiment"] = sentiment(todo["comment"]).to_numpy()
    flags = topic_flags(todo["comment"])
    for topic in TOPICS:
        out[f"topic_{topic}"] = flags[topic].astype("int64").to_numpy()
    with engine.begin() as conn:
        conn.execute(sa.text(_STALE_TEXT), params)  # changed, moved or deleted responses
        if len(out):
            insert_frame(conn, schema.SURVEY_TEXT.name, out)
    if len(out) > 10_000:
        _analyze(engine, schema.SURVEY_TEXT.name)
    if len(out):
        log.info("scored %d new or changed survey comment(s)", len(out))
    return len(out)


def _analyze(engine: sa.Engine, *tables: str) -> None:
    """Fresh planner statistics after a bulk load, on PostgreSQL: the next run's deletes and
    joins on these tables must not be planned as if they were empty (autovacuum comes later)."""
    if engine.dialect.name != "postgresql":
        return
    with engine.begin() as conn:
        for table in tables:
            conn.execute(sa.text(f'ANALYZE "{table}"'))
