"""What the digest reads from the warehouse: score days, scores, accounts, churns, surveys, checks.

The digest only reads what earlier stages stored; the section maths (:mod:`digest.sections`)
gets frames from here and never touches the warehouse itself.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from datetime import date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from churnflow.manifest import available_tables
from churnflow.warehouse import read_sql, table_exists
from features.labels import counting_churns, resolve_churn_source

log = logging.getLogger(__name__)

#: Weeks of score history behind trends and charts.
HISTORY_WEEKS = 12


def _as_date(value: object) -> date | None:
    if value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NaT:
        return None
    return pd.Timestamp(value).date()


def _midnight(day: date) -> datetime:
    return datetime.combine(day, datetime.min.time())


def score_dates(engine: sa.Engine, week_ending: date) -> list[date]:
    """Every day with account scores on or before ``week_ending``, oldest first."""
    if not table_exists(engine, "account_scores"):
        return []
    frame = read_sql(
        engine,
        "SELECT DISTINCT as_of_date FROM account_scores WHERE as_of_date <= :d ORDER BY as_of_date",
        {"d": week_ending},
    )
    return [d for d in (_as_date(v) for v in frame["as_of_date"]) if d is not None]


def latest_on_or_before(dates: Sequence[date], day: date) -> date | None:
    eligible = [d for d in dates if d <= day]
    return max(eligible) if eligible else None


def weekly_dates(dates: Sequence[date], week_ending: date, weeks: int = HISTORY_WEEKS) -> list[date]:
    """The score day of each of the last ``weeks`` weeks (latest on or before each week end)."""
    picked = {latest_on_or_before(dates, week_ending - timedelta(days=7 * k)) for k in range(weeks)}
    return sorted(d for d in picked if d is not None)


def scores_on(engine: sa.Engine, days: Sequence[date], columns: str) -> pd.DataFrame:
    """``columns`` of account_scores on ``days``, one row per (day, account): the last written wins."""
    if not days:
        return pd.DataFrame()
    stmt = sa.text(f"SELECT {columns} FROM account_scores WHERE as_of_date IN :days").bindparams(
        sa.bindparam("days", expanding=True)
    )
    frame = read_sql(engine, stmt, {"days": list(days)})
    frame["as_of_date"] = pd.to_datetime(frame["as_of_date"]).dt.date
    return frame.drop_duplicates(["as_of_date", "account_id"], keep="last") if not frame.empty else frame


def score_history(engine: sa.Engine, weekly: Sequence[date]) -> pd.DataFrame:
    """The weekly score rows the trends and charts are drawn from."""
    return scores_on(engine, weekly, "as_of_date, account_id, band, health_score, arr, arr_at_risk")


def accounts(engine: sa.Engine) -> pd.DataFrame:
    if not table_exists(engine, "accounts"):
        return pd.DataFrame(columns=["account_id", "name", "owner_email"])
    return read_sql(engine, "SELECT account_id, name, owner_email FROM accounts")


def churned_between(engine: sa.Engine, first: date, last: date, *, grace_days: int) -> pd.DataFrame:
    """Churns that count, dated in ``[first, last]`` (the labels' rule and churn source), with the
    ARR each account had in its last score before the churn: account_id, churn_date, arr.

    ARR comes from the scores because they carry it for every churn source (a book whose churn
    comes from ``churn_events`` may have no subscriptions), and it is the ARR the digest showed
    at risk; an account never scored before its churn counts with no ARR."""
    try:
        source = resolve_churn_source(engine)
    except ValueError as exc:  # e.g. a book whose churn source table is not loaded yet
        log.warning("no churn in the digest: %s", exc)
        return pd.DataFrame({"account_id": pd.Series(dtype=object), "churn_date": pd.Series(dtype="datetime64[ns]"),
                             "arr": pd.Series(dtype=float)})
    churns = counting_churns(engine, first, last, grace_days=grace_days, churn_source=source)
    churns["arr"] = 0.0
    if churns.empty or not table_exists(engine, "account_scores"):
        return churns
    stmt = sa.text("SELECT account_id, as_of_date, arr FROM account_scores WHERE account_id IN :ids AND as_of_date < :before").bindparams(
        sa.bindparam("ids", expanding=True)
    )
    scored = read_sql(engine, stmt, {"ids": sorted(set(churns["account_id"])), "before": _midnight(last + timedelta(days=1))})
    scored["account_id"] = scored["account_id"].astype(str)
    scored["as_of_date"] = pd.to_datetime(scored["as_of_date"]).astype("datetime64[ns]")
    before = churns[["account_id", "churn_date"]].merge(scored, on="account_id")
    before = before[before["as_of_date"] < before["churn_date"]].sort_values("as_of_date")
    last_arr = before.groupby(["account_id", "churn_date"])["arr"].last()
    keys = pd.MultiIndex.from_frame(churns[["account_id", "churn_date"]])
    churns["arr"] = last_arr.reindex(keys).fillna(0.0).astype(float).to_numpy()
    return churns


def survey_responses(engine: sa.Engine, week_ending: date) -> pd.DataFrame | None:
    """Survey responses of this week and the one before (14 days up to ``week_ending``); None
    when the book has no surveys (declared absent in the mapping, or never loaded)."""
    if "surveys" not in available_tables(engine):
        return None
    frame = read_sql(
        engine,
        "SELECT account_id, submitted_at, kind, score, comment FROM surveys "
        "WHERE submitted_at >= :lo AND submitted_at < :hi",
        {"lo": _midnight(week_ending - timedelta(days=13)), "hi": _midnight(week_ending + timedelta(days=1))},
    )
    frame["submitted_at"] = pd.to_datetime(frame["submitted_at"])
    frame["kind"] = frame["kind"].astype(str).str.lower()
    frame["score"] = pd.to_numeric(frame["score"], errors="coerce")
    return frame


def monitoring_checks(engine: sa.Engine, week_ending: date) -> pd.DataFrame | None:
    """Model monitoring results about days up to ``week_ending``; None when monitoring never ran.

    The day a check is *about* (as_of_date) decides its week, not when it ran: a re-run or a
    backfill checks past days, and a book whose data stops before today is checked later."""
    if not table_exists(engine, "model_monitoring"):
        return None
    return read_sql(
        engine,
        "SELECT checked_at, as_of_date, model_version, metric, value, breached, detail FROM model_monitoring WHERE as_of_date < :hi",
        {"hi": _midnight(week_ending + timedelta(days=1))},
    )
