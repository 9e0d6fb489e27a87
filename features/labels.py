"""Churn labels: who is a customer at a date D, and who churns after it.

Definition (also in docs/data-model.md). Dates are days; a date stands for midnight at the
start of that day, so something dated D is in effect at D (a term ending on D is over at
D; a churn dated D has happened at D). Timestamps are known at D only when strictly before D.

**Churn events.** Churn is a list of (account, ``churn_date``, ``reactivated_at``) events:
``churn_date`` is the first day the account is no longer a customer, ``reactivated_at`` the
first day it is one again (empty: it never came back). They come from one of two sources,
chosen by the mapping (``churn: {source: ...}``):

* ``coverage`` (default): derived from ``subscriptions``. Each subscription covers
  ``[start_date, end)``, where ``end`` is ``end_date``, or the day after the day
  ``cancelled_at`` was recorded when that is earlier (the customer is covered through the day
  they cancel; the cancellation is known from the next day on), or open (no end date and not
  cancelled: ongoing). A subscription cancelled before it started covers nothing. Terms that
  overlap or touch (a renewal starting the day the previous term ends) form one stretch of
  coverage; each stretch that ends is a churn event dated on its end, reactivated at the
  start of the next stretch, if any.
* ``churn_events``: the rows of the ``churn_events`` table, as the customer's system of
  record states them.

**Active at D.** An account is active (a customer) at D when it was created before D (the
``accounts.created_at`` timestamp is before D; with coverage, its first covered day is also
before D) and has no churn event dated on or before D that was not reactivated before D:
no event with ``churn_date <= D <= reactivated_at`` (or an empty ``reactivated_at``). With
coverage this means: D lies strictly inside a stretch of coverage that began before D, so a
term ending at midnight D is over, a renewal starting on D continues the coverage, and a new
or returning customer counts from the day after its coverage starts. Features are built for
exactly these accounts (``features.labels.active_accounts``, used by the feature builder).

**Label.** A churn event *counts* unless the account was reactivated within the grace period
(``reactivated_at - churn_date <= grace``): a late renewal is not churn. For an account active
at D, with horizon H and lead time L (default 0), the label is 1 when its first counting
churn after D falls in ``(D + L, D + L + H]`` (strictly after D), else 0; ``churn_date`` is
that churn's date. An account whose first counting churn falls in ``(D, D + L]`` is excluded
(churn too soon to act on is not what the model should learn). A label is *matured* (known)
only once ``D + L + H + grace <= observed_until``; unmatured snapshots are refused, never
counted as retained. The two sources give identical labels when the events describe the
same coverage.

**Observation end.** ``observed_until`` is the setting ``observation_end`` when set, else the
day after the newest event in any present source: usage ``occurred_at``, tickets
``opened_at``, surveys ``submitted_at``, churn events ``churn_date`` and subscriptions
``start_date``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow.manifest import ChurnSource, available_tables, read_manifest
from churnflow.warehouse import read_sql

if TYPE_CHECKING:
    from churnflow.settings import Settings

# Internal stand-in for "coverage never ends" inside the coverage SQL only: it never leaves
# the query (open stretches produce no churn event), so no feature or label ever sees it.
_OPEN_END = date(9999, 12, 31)

# Churn events derived from subscription coverage (gaps and islands over the terms).
_COVERAGE_EVENTS = """
cov_terms AS (
  SELECT account_id, start_date,
    CASE WHEN cancelled_at IS NOT NULL AND (end_date IS NULL OR CAST(cancelled_at AS DATE) + 1 < end_date)
      THEN CAST(cancelled_at AS DATE) + 1 ELSE COALESCE(end_date, :open_end) END AS cov_end
  FROM subscriptions
), cov_ordered AS (
  SELECT account_id, start_date, cov_end,
    MAX(cov_end) OVER (PARTITION BY account_id ORDER BY start_date, cov_end
                       ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
  FROM cov_terms
  WHERE cov_end > start_date
), cov_marked AS (
  SELECT account_id, start_date, cov_end,
    SUM(CASE WHEN prev_end IS NULL OR start_date > prev_end THEN 1 ELSE 0 END)
      OVER (PARTITION BY account_id ORDER BY start_date, cov_end ROWS UNBOUNDED PRECEDING) AS stretch
  FROM cov_ordered
), cov_stretches AS (
  SELECT account_id, stretch, MIN(start_date) AS stretch_start, MAX(cov_end) AS stretch_end
  FROM cov_marked
  GROUP BY account_id, stretch
), cov_next AS (
  SELECT account_id, stretch_start, stretch_end,
    LEAD(stretch_start) OVER (PARTITION BY account_id ORDER BY stretch) AS next_start
  FROM cov_stretches
), events AS (
  SELECT account_id, stretch_end AS churn_date, next_start AS reactivated_at
  FROM cov_next
  WHERE stretch_end < :open_end
), starts AS (
  SELECT account_id, MIN(stretch_start) AS first_start
  FROM cov_stretches
  GROUP BY account_id
)"""

_SOURCE_EVENTS = """
events AS (
  SELECT account_id, churn_date, reactivated_at FROM churn_events
), starts AS (
  SELECT account_id, created_at AS first_start FROM accounts
)"""

# The one rule for "active at D", shared by labels and the feature builder.
_ACTIVE = """
active AS (
  SELECT a.account_id
  FROM accounts a
  JOIN starts s ON s.account_id = a.account_id
  WHERE a.created_at < :as_of AND s.first_start < :as_of
    AND NOT EXISTS (
      SELECT 1 FROM events e
      WHERE e.account_id = a.account_id AND e.churn_date <= :as_of
        AND (e.reactivated_at IS NULL OR e.reactivated_at >= :as_of)
    )
)"""

# A churn event counts unless the account came back within the grace period.
_COUNTS = "(reactivated_at IS NULL OR reactivated_at - churn_date > :grace_days)"

_NEXT_CHURN = f"""
next_churn AS (
  SELECT account_id, MIN(churn_date) AS churn_date
  FROM events
  WHERE churn_date > :as_of AND {_COUNTS}
  GROUP BY account_id
)"""

_SOURCE_TABLES: dict[str, str] = {"coverage": "subscriptions", "churn_events": "churn_events"}


def _ts(d: date) -> pd.Timestamp:
    return pd.Timestamp(datetime(d.year, d.month, d.day))


def _events_cte(churn_source: ChurnSource) -> str:
    if churn_source == "coverage":
        return _COVERAGE_EVENTS
    if churn_source == "churn_events":
        return _SOURCE_EVENTS
    raise ValueError(f"churn source '{churn_source}' is not one of coverage, churn_events")


def active_accounts_sql(churn_source: ChurnSource) -> str:
    """SQL selecting ``account_id`` of the accounts active at ``:as_of`` (bind :func:`rule_params`)."""
    return f"WITH {_events_cte(churn_source)},{_ACTIVE}\nSELECT account_id FROM active"


def churn_events_sql(churn_source: ChurnSource) -> str:
    """SQL of the churn events (account_id, churn_date, reactivated_at) the labels read."""
    return f"WITH {_events_cte(churn_source)}\nSELECT account_id, churn_date, reactivated_at FROM events"


def rule_params(as_of: date, grace_days: int = 0) -> dict[str, object]:
    return {"as_of": _ts(as_of).to_pydatetime(), "open_end": _OPEN_END, "grace_days": int(grace_days)}


def resolve_churn_source(engine: sa.Engine, churn_source: ChurnSource | None = None) -> ChurnSource:
    """The churn source to use (the manifest's unless overridden), checked to be present."""
    source: ChurnSource = churn_source or read_manifest(engine).churn_source
    table = _SOURCE_TABLES.get(source)
    if table is None:
        raise ValueError(f"churn source '{source}' is not one of coverage, churn_events")
    present = available_tables(engine)
    for needed in ("accounts", table):
        if needed not in present:
            raise ValueError(
                f"churn source '{source}' needs table '{needed}', which the warehouse does not have"
                + (" (map subscriptions, or churn events with churn: {source: churn_events})" if needed != "accounts" else "")
            )
    return source


def active_accounts(engine: sa.Engine, as_of: date, churn_source: ChurnSource | None = None) -> pd.Index:
    """Accounts active at ``as_of`` (the rule in this module's docstring), sorted."""
    source = resolve_churn_source(engine, churn_source)
    ids = read_sql(engine, active_accounts_sql(source), rule_params(as_of))["account_id"]
    return pd.Index(sorted(ids.astype(str)), name="account_id")


def counting_churns(
    engine: sa.Engine, first: date, last: date, *, grace_days: int, churn_source: ChurnSource | None = None,
) -> pd.DataFrame:
    """The churns that count (not reactivated within the grace period) dated in ``[first, last]``:
    account_id, churn_date, from the manifest's churn source unless overridden.

    The churns labels are made of, for readers that report them by period (the digest's
    "churned this week") rather than per as-of date."""
    source = resolve_churn_source(engine, churn_source)
    sql = (f"WITH {_events_cte(source)}\nSELECT account_id, churn_date FROM events "
           f"WHERE churn_date >= :first AND churn_date <= :last AND {_COUNTS} ORDER BY churn_date, account_id")
    params = {**rule_params(first, grace_days), "first": _ts(first).to_pydatetime(), "last": _ts(last).to_pydatetime()}
    out = read_sql(engine, sql, params)
    out["account_id"] = out["account_id"].astype(str)
    out["churn_date"] = pd.to_datetime(out["churn_date"]).astype("datetime64[ns]")
    return out


def label_wait_days(*, horizon_days: int, grace_days: int, lead_days: int = 0) -> int:
    """Days after an as-of date D until its label is known: lead + horizon + grace."""
    return lead_days + horizon_days + grace_days


def is_matured(as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0) -> bool:
    """Whether the label of ``as_of`` is known by ``observed_until`` (the one maturity rule)."""
    return as_of + timedelta(days=label_wait_days(horizon_days=horizon_days, grace_days=grace_days, lead_days=lead_days)) <= observed_until


def _require_matured(as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int) -> None:
    if not is_matured(as_of, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until, lead_days=lead_days):
        raise ValueError(
            f"labels as of {as_of} are not matured by {observed_until} (need {lead_days}+{horizon_days}+{grace_days} days)"
        )


def labels_for_dates(
    engine: sa.Engine, as_of_dates: Iterable[date], *, horizon_days: int, grace_days: int, observed_until: date,
    lead_days: int = 0, churn_source: ChurnSource | None = None,
) -> pd.DataFrame:
    """Labels of the accounts active at each date: as_of_date, account_id, churned (0/1), churn_date.

    ``churn_source`` defaults to the manifest's. Raises ValueError if a date's label has not
    matured by ``observed_until`` or the source's table is missing.
    """
    dates = list(as_of_dates)
    for as_of in dates:
        _require_matured(as_of, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until, lead_days=lead_days)
    source = resolve_churn_source(engine, churn_source)
    sql = (f"WITH {_events_cte(source)},{_ACTIVE},{_NEXT_CHURN}\n"
           "SELECT active.account_id, next_churn.churn_date FROM active "
           "LEFT JOIN next_churn ON next_churn.account_id = active.account_id")
    frames = [_label_frame(read_sql(engine, sql, rule_params(as_of, grace_days)), as_of, horizon_days, lead_days) for as_of in dates]
    if not frames:
        return pd.DataFrame({"as_of_date": pd.Series(dtype="datetime64[ns]"), "account_id": pd.Series(dtype=object),
                             "churned": pd.Series(dtype=int), "churn_date": pd.Series(dtype="datetime64[ns]")})
    return pd.concat(frames, ignore_index=True)


def _label_frame(next_churn: pd.DataFrame, as_of: date, horizon_days: int, lead_days: int) -> pd.DataFrame:
    """Apply the label window to each active account's first counting churn after D."""
    d = _ts(as_of)
    churn = pd.to_datetime(next_churn["churn_date"]).astype("datetime64[ns]")
    window_start = d + pd.Timedelta(days=lead_days)
    keep = ~(churn <= window_start)  # churn inside the lead (or exactly at D + L): excluded
    churned = (churn <= window_start + pd.Timedelta(days=horizon_days)) & keep
    out = pd.DataFrame({
        "as_of_date": pd.Series(d, index=next_churn.index, dtype="datetime64[ns]"),
        "account_id": next_churn["account_id"].astype(str),
        "churned": churned.astype(int),
        "churn_date": churn.where(churned),
    })[keep.to_numpy()]
    return out.sort_values("account_id").reset_index(drop=True)


# ------------------------------------------------------------------ subscriptions as frames
# The frame API (callers hold subscriptions in memory) runs the same SQL on an in-memory
# DuckDB, so there is one rule. Without an accounts table, an account counts as created on its
# first covered day.


def _frame_engine(subscriptions: pd.DataFrame) -> sa.Engine:
    engine = sa.create_engine("duckdb:///:memory:", poolclass=sa.pool.StaticPool)
    frame = pd.DataFrame({
        "account_id": subscriptions["account_id"].astype(str),
        "start_date": pd.to_datetime(subscriptions["start_date"]).dt.normalize(),
        "end_date": pd.to_datetime(subscriptions["end_date"] if "end_date" in subscriptions else pd.Series(pd.NaT, index=subscriptions.index)).dt.normalize(),
        "cancelled_at": pd.to_datetime(subscriptions["cancelled_at"] if "cancelled_at" in subscriptions else pd.Series(pd.NaT, index=subscriptions.index)),
    }).astype({"start_date": "datetime64[ns]", "end_date": "datetime64[ns]", "cancelled_at": "datetime64[ns]"})
    with engine.connect() as conn:
        raw = conn.connection.driver_connection
        raw.register("subscriptions_frame", frame)
        raw.execute("CREATE TABLE subscriptions AS SELECT account_id, CAST(start_date AS DATE) AS start_date, "
                    "CAST(end_date AS DATE) AS end_date, CAST(cancelled_at AS TIMESTAMP) AS cancelled_at FROM subscriptions_frame")
        raw.execute("CREATE TABLE accounts AS SELECT account_id, CAST(MIN(start_date) AS TIMESTAMP) AS created_at "
                    "FROM subscriptions GROUP BY account_id")
        raw.unregister("subscriptions_frame")
    return engine


def coverage_events(subscriptions: pd.DataFrame) -> pd.DataFrame:
    """The churn events subscription coverage implies: account_id, churn_date, reactivated_at."""
    engine = _frame_engine(subscriptions)
    try:
        out = read_sql(engine, churn_events_sql("coverage") + " ORDER BY account_id, churn_date", rule_params(date(2000, 1, 1)))
    finally:
        engine.dispose()
    for col in ("churn_date", "reactivated_at"):
        out[col] = pd.to_datetime(out[col]).astype("datetime64[ns]")
    return out


def coverage_blocks(subscriptions: pd.DataFrame, grace_days: int) -> pd.DataFrame:
    """Coverage merged across gaps of at most the grace period: account_id, block_start, block_end.

    ``block_end`` is the churn date of the block (empty while the coverage is ongoing).
    """
    subs = subscriptions.copy()
    if "end_date" not in subs:
        subs["end_date"] = pd.NaT
    if "cancelled_at" not in subs:
        subs["cancelled_at"] = pd.NaT
    engine = _frame_engine(subs)
    sql = (f"WITH {_COVERAGE_EVENTS}\nSELECT account_id, stretch_start, "
           "CASE WHEN stretch_end < :open_end THEN stretch_end END AS stretch_end FROM cov_next ORDER BY account_id, stretch_start")
    try:
        stretches = read_sql(engine, sql, rule_params(date(2000, 1, 1)))
    finally:
        engine.dispose()
    for col in ("stretch_start", "stretch_end"):
        stretches[col] = pd.to_datetime(stretches[col]).astype("datetime64[ns]")
    # A stretch starts a new block unless it follows the previous one within the grace period
    # (an open stretch is always an account's last: it covers everything after its start).
    first = ~stretches["account_id"].duplicated()
    prev_end = stretches.groupby("account_id")["stretch_end"].shift(1)
    new_block = first | ((stretches["stretch_start"] - prev_end).dt.days > grace_days)
    stretches["block"] = new_block.astype(int).groupby(stretches["account_id"]).cumsum()
    stretches["open"] = stretches["stretch_end"].isna()
    blocks = stretches.groupby(["account_id", "block"]).agg(
        block_start=("stretch_start", "min"), block_end=("stretch_end", "max"), is_open=("open", "any")).reset_index()
    blocks["block_end"] = blocks["block_end"].where(~blocks["is_open"])
    return blocks.drop(columns=["block", "is_open"])


def labels_as_of(
    subscriptions: pd.DataFrame, as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0
) -> pd.DataFrame:
    """Coverage labels from a subscriptions frame: account_id, churned (0/1), churn_date.

    Raises ValueError if the label has not matured by ``observed_until``.
    """
    frame = label_snapshots(subscriptions, [as_of], horizon_days=horizon_days, grace_days=grace_days,
                            observed_until=observed_until, lead_days=lead_days)
    return frame.drop(columns="as_of_date")


def label_snapshots(
    subscriptions: pd.DataFrame, as_of_dates: Iterable[date], *, horizon_days: int, grace_days: int, observed_until: date,
    lead_days: int = 0,
) -> pd.DataFrame:
    """Coverage labels from a subscriptions frame for several dates (see :func:`labels_for_dates`)."""
    dates = list(as_of_dates)
    for as_of in dates:
        _require_matured(as_of, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until, lead_days=lead_days)
    engine = _frame_engine(subscriptions)
    try:
        return labels_for_dates(engine, dates, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until,
                                lead_days=lead_days, churn_source="coverage")
    finally:
        engine.dispose()


def load_subscriptions(engine: sa.Engine) -> pd.DataFrame:
    return read_sql(engine, "SELECT account_id, start_date, end_date, cancelled_at FROM subscriptions")


# ------------------------------------------------------------------ dates


def month_starts(first: date, last: date) -> list[date]:
    """First days of months in [first, last]."""
    months = pd.date_range(pd.Timestamp(first).to_period("M").to_timestamp(), _ts(last), freq="MS")
    return [m.date() for m in months if first <= m.date() <= last]


def training_dates(
    *, data_start: date, observed_until: date, horizon_days: int, grace_days: int, snapshots: int, min_history_days: int = 90,
    lead_days: int = 0,
) -> list[date]:
    """The newest ``snapshots`` monthly as-of dates whose labels have matured and that have
    at least ``min_history_days`` of history behind them."""
    first = data_start + timedelta(days=min_history_days)
    last = observed_until - timedelta(days=label_wait_days(horizon_days=horizon_days, grace_days=grace_days, lead_days=lead_days))
    dates = month_starts(first, last)
    return dates[-snapshots:]


# Event sources that bound what the warehouse has observed: (table, column).
_ACTIVITY_SOURCES = (("usage", "occurred_at"), ("tickets", "opened_at"), ("surveys", "submitted_at"))
_STATE_SOURCES = (("churn_events", "churn_date"), ("subscriptions", "start_date"))


def _event_bounds(engine: sa.Engine, sources: Iterable[tuple[str, str]]) -> tuple[date | None, date | None]:
    present = available_tables(engine)
    firsts: list[date] = []
    lasts: list[date] = []
    for table, column in sources:
        if table not in present:
            continue
        row = read_sql(engine, f'SELECT MIN("{column}") AS first_at, MAX("{column}") AS last_at FROM "{table}"')
        if len(row) and not pd.isna(row.loc[0, "first_at"]):
            firsts.append(pd.Timestamp(row.loc[0, "first_at"]).date())
            lasts.append(pd.Timestamp(row.loc[0, "last_at"]).date())
    return (min(firsts) if firsts else None), (max(lasts) if lasts else None)


def observation_end(engine: sa.Engine, settings: "Settings | None" = None) -> date:
    """The day observation ends: the ``observation_end`` setting, else the day after the newest
    event in any present source (usage, tickets, surveys, churn events, subscription starts)."""
    if settings is not None and settings.observation_end is not None:
        return settings.observation_end
    _, last = _event_bounds(engine, (*_ACTIVITY_SOURCES, *_STATE_SOURCES))
    if last is None:
        raise ValueError("no events to observe: tables usage, tickets, surveys, churn_events and subscriptions are all empty or absent")
    return last + timedelta(days=1)


def data_window(engine: sa.Engine, settings: "Settings | None" = None) -> tuple[date, date]:
    """(first observed day, observation end): what the warehouse has observed.

    The first day is the earliest activity (usage, tickets, surveys) — history features can
    look back on — or, with no activity source at all, the earliest churn event or
    subscription start. The end is :func:`observation_end`. Usage is not required.
    """
    first, _ = _event_bounds(engine, _ACTIVITY_SOURCES)
    if first is None:
        first, _ = _event_bounds(engine, _STATE_SOURCES)
    if first is None:
        raise ValueError("no events to observe: tables usage, tickets, surveys, churn_events and subscriptions are all empty or absent")
    return first, observation_end(engine, settings)


# ------------------------------------------------------------------ leak warnings
# A data-contract check of the subscriptions extract: ingest runs it on every load
# (ingest.contracts); re-exported here, beside the churn rule it protects.

from ingest.contracts import subscription_leak_warnings, subscriptions_table_check  # noqa: E402,F401 - re-export
