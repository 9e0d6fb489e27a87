"""Point-in-time account features.

Features as of date D use only rows stamped strictly before D, and subscription state as
it was known at D: a cancellation recorded on or after D is invisible, and so is a
subscription that starts on or after D. Heavy usage aggregation runs in the warehouse as
dialect-neutral SQL with bound parameters (the same text runs on DuckDB and PostgreSQL);
pandas assembles the per-account frame.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow.warehouse import read_sql, replace_rows
from features.catalogue import BY_NAME, CATEGORICAL, FEATURE_NAMES
from features.text import sentiment, topic_flags

log = logging.getLogger(__name__)

FEATURE_TABLE = "account_features"
HISTORY_DAYS = 365  # the longest look-back any feature uses


def _ts(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def bounds(as_of: date) -> dict[str, datetime]:
    """Window start timestamps, bound as parameters so SQL needs no date arithmetic."""
    start = _ts(as_of)
    return {
        "as_of": start,
        "d7": start - timedelta(days=7),
        "d30": start - timedelta(days=30),
        "d60": start - timedelta(days=60),
        "d90": start - timedelta(days=90),
        "d365": start - timedelta(days=HISTORY_DAYS),
    }


USAGE_SQL = """
SELECT account_id,
  COUNT(DISTINCT CASE WHEN occurred_at >= :d7 THEN user_id END)  AS active_users_7d,
  COUNT(DISTINCT CASE WHEN occurred_at >= :d30 THEN user_id END) AS active_users_30d,
  COUNT(DISTINCT CASE WHEN occurred_at >= :d60 AND occurred_at < :d30 THEN user_id END) AS active_users_prev_30d,
  COUNT(DISTINCT user_id) AS active_users_90d,
  SUM(CASE WHEN occurred_at >= :d7 THEN quantity ELSE 0 END)  AS events_7d,
  SUM(CASE WHEN occurred_at >= :d30 THEN quantity ELSE 0 END) AS events_30d,
  SUM(CASE WHEN occurred_at >= :d60 AND occurred_at < :d30 THEN quantity ELSE 0 END) AS events_prev_30d,
  SUM(quantity) AS events_90d,
  COUNT(DISTINCT CASE WHEN occurred_at >= :d30 THEN feature END) AS features_used_30d,
  SUM(CASE WHEN occurred_at >= :d30 THEN errors ELSE 0 END) AS errors_30d
FROM usage
WHERE occurred_at >= :d90 AND occurred_at < :as_of
GROUP BY account_id
"""

ACTIVITY_SQL = """
SELECT account_id, MIN(occurred_at) AS first_activity_at, MAX(occurred_at) AS last_activity_at
FROM usage
WHERE occurred_at >= :d365 AND occurred_at < :as_of
GROUP BY account_id
"""

ACCOUNTS_SQL = "SELECT account_id, segment, created_at FROM accounts WHERE created_at < :as_of"

SUBSCRIPTIONS_SQL = """
SELECT subscription_id, account_id, plan, seats, arr, start_date, end_date, cancelled_at, auto_renew
FROM subscriptions WHERE start_date < :as_of
"""

TICKETS_SQL = """
SELECT account_id, opened_at, closed_at, priority, first_response_minutes, reopened, csat
FROM tickets
WHERE opened_at < :as_of AND (opened_at >= :d90 OR closed_at IS NULL OR closed_at >= :as_of)
"""

SURVEYS_SQL = """
SELECT account_id, submitted_at, kind, score, comment
FROM surveys WHERE submitted_at >= :d365 AND submitted_at < :as_of
"""


def subscriptions_known_at(subscriptions: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Subscription rows as they were known at ``as_of``: later cancellations are hidden."""
    subs = subscriptions[pd.to_datetime(subscriptions["start_date"]) < _ts(as_of)].copy()
    cancelled = pd.to_datetime(subs["cancelled_at"])
    subs["cancelled_at"] = cancelled.where(cancelled < _ts(as_of))
    return subs


def active_subscriptions(subscriptions: pd.DataFrame, as_of: date) -> pd.DataFrame:
    """Subscriptions covering ``as_of`` given what was known then."""
    subs = subscriptions_known_at(subscriptions, as_of)
    covering = (pd.to_datetime(subs["end_date"]) >= _ts(as_of)) & subs["cancelled_at"].isna()
    return subs[covering]


def _commercial(subs_known: pd.DataFrame, as_of: date) -> pd.DataFrame:
    active = subs_known[(pd.to_datetime(subs_known["end_date"]) >= _ts(as_of)) & subs_known["cancelled_at"].isna()].copy()
    if active.empty:
        return pd.DataFrame(columns=["arr", "seats", "plan", "days_to_renewal", "auto_renew", "downgrades_365d"]).rename_axis("account_id")
    active = active.sort_values(["account_id", "arr"], ascending=[True, False])
    grouped = active.groupby("account_id")
    main = grouped.head(1).set_index("account_id")
    out = pd.DataFrame(
        {
            "arr": grouped["arr"].sum(),
            "seats": grouped["seats"].sum(),
            "plan": main["plan"],
            "days_to_renewal": (pd.to_datetime(grouped["end_date"].min()) - _ts(as_of)).dt.days,
            "auto_renew": main["auto_renew"].astype(float),
        }
    )
    # A downgrade is a term that started in the last year at lower ARR than the term before it.
    ordered = subs_known.sort_values(["account_id", "start_date"])
    prev_arr = ordered.groupby("account_id")["arr"].shift(1)
    recent = pd.to_datetime(ordered["start_date"]) >= _ts(as_of) - timedelta(days=HISTORY_DAYS)
    downgrade = (ordered["arr"] < prev_arr) & recent
    out["downgrades_365d"] = downgrade.groupby(ordered["account_id"]).sum().reindex(out.index).fillna(0)
    return out


def _support(tickets: pd.DataFrame, as_of: date) -> pd.DataFrame:
    b = bounds(as_of)
    t = tickets.copy()
    if t.empty:
        return pd.DataFrame()
    t["opened_at"] = pd.to_datetime(t["opened_at"])
    closed = pd.to_datetime(t["closed_at"])
    t["closed_at"] = closed.where(closed < b["as_of"])  # a close after D is not known at D
    is_closed = t["closed_at"].notna()
    # reopened and csat carry no timestamp: trust them only for tickets closed before D.
    t["reopened"] = t["reopened"].astype("boolean").fillna(False).astype(bool) & is_closed
    t["high"] = t["priority"].isin(["high", "urgent"])
    t["resolution_hours"] = (t["closed_at"] - t["opened_at"]).dt.total_seconds() / 3600
    in90 = t["opened_at"] >= b["d90"]
    w = t[in90]
    g = w.groupby("account_id")
    closed90 = w[w["closed_at"].notna()].groupby("account_id")
    out = pd.DataFrame(
        {
            "tickets_30d": w[w["opened_at"] >= b["d30"]].groupby("account_id").size(),
            "tickets_90d": g.size(),
            "high_priority_share_90d": g["high"].mean(),
            "median_first_response_minutes_90d": g["first_response_minutes"].median(),
            "median_resolution_hours_90d": closed90["resolution_hours"].median(),
            "reopen_rate_90d": closed90["reopened"].mean(),
            "first_contact_resolution_90d": 1 - closed90["reopened"].mean(),
        }
    )
    open_counts = t[t["closed_at"].isna()].groupby("account_id").size()
    out = out.join(open_counts.rename("open_tickets"), how="outer")
    return out


def _perception(surveys: pd.DataFrame, as_of: date) -> pd.DataFrame:
    if surveys.empty:
        return pd.DataFrame()
    b = bounds(as_of)
    s = surveys.copy()
    s["submitted_at"] = pd.to_datetime(s["submitted_at"])
    s = s.sort_values("submitted_at")
    recent = s[s["submitted_at"] >= b["d90"]]
    csat = recent[recent["kind"] == "csat"]
    ces = recent[recent["kind"] == "ces"]
    nps = s[s["kind"] == "nps"]
    nps_g = nps.groupby("account_id")["score"]
    latest = nps_g.last()
    previous = nps_g.nth(-2)
    previous = pd.Series(previous.to_numpy(), index=nps.loc[previous.index, "account_id"]) if len(previous) else pd.Series(dtype=float)
    category = pd.cut(latest, bins=[-1, 6, 8, 10], labels=["detractor", "passive", "promoter"]).astype(object)
    commented = recent[recent["comment"].notna() & (recent["comment"].astype(str).str.len() > 0)]
    flags = topic_flags(commented["comment"]).groupby(commented["account_id"]).sum()
    out = pd.DataFrame(
        {
            "csat_top2_box_90d": (csat["score"] >= 4).groupby(csat["account_id"]).mean(),
            "nps_latest": latest,
            "nps_category": category,
            "nps_trend": latest - previous.reindex(latest.index),
            "ces_mean_90d": ces.groupby("account_id")["score"].mean(),
            "comment_sentiment_90d": sentiment(commented["comment"]).groupby(commented["account_id"]).mean(),
        }
    )
    for topic in ("wait_time", "billing", "bugs", "onboarding"):
        out[f"complaints_{topic}_90d"] = flags[topic] if topic in flags else 0
    return out


def build_features(engine: sa.Engine, as_of: date) -> pd.DataFrame:
    """Features of every account active at ``as_of``, one row per account.

    Columns: ``as_of_date``, ``account_id`` and every catalogue feature, in catalogue order.
    """
    params = bounds(as_of)
    accounts = read_sql(engine, ACCOUNTS_SQL, params).set_index("account_id")
    subs = subscriptions_known_at(read_sql(engine, SUBSCRIPTIONS_SQL, params), as_of)
    commercial = _commercial(subs, as_of)
    active_ids = commercial.index.intersection(accounts.index)
    frame = pd.DataFrame(index=pd.Index(active_ids, name="account_id"))
    if len(frame.index) == 0:
        log.warning("no active accounts as of %s", as_of)
        return _finish(frame, as_of)

    usage = read_sql(engine, USAGE_SQL, params).set_index("account_id")
    activity = read_sql(engine, ACTIVITY_SQL, params).set_index("account_id")
    tickets = read_sql(engine, TICKETS_SQL, params)
    surveys = read_sql(engine, SURVEYS_SQL, params)

    frame = frame.join(commercial).join(usage).join(activity).join(_support(tickets, as_of)).join(_perception(surveys, as_of))
    frame = frame.join(accounts)
    as_of_ts = params["as_of"]
    created = pd.to_datetime(frame["created_at"])
    count_cols = [
        "active_users_7d", "active_users_30d", "active_users_prev_30d", "active_users_90d", "events_7d", "events_30d",
        "events_prev_30d", "events_90d", "features_used_30d", "errors_30d", "tickets_30d", "tickets_90d", "open_tickets",
        "complaints_wait_time_90d", "complaints_billing_90d", "complaints_bugs_90d", "complaints_onboarding_90d",
    ]
    for col in count_cols:
        frame[col] = pd.to_numeric(frame.get(col), errors="coerce").fillna(0.0) if col in frame else 0.0
    frame["usage_trend_30d"] = (frame["events_30d"] - frame["events_prev_30d"]) / frame["events_prev_30d"].clip(lower=1)
    frame["active_users_trend_30d"] = (frame["active_users_30d"] - frame["active_users_prev_30d"]) / frame["active_users_prev_30d"].clip(lower=1)
    frame["error_rate_30d"] = frame["errors_30d"] / frame["events_30d"].clip(lower=1)
    frame["seat_utilisation_30d"] = frame["active_users_30d"] / pd.to_numeric(frame["seats"]).clip(lower=1)
    last = pd.to_datetime(frame.get("last_activity_at"))
    frame["days_since_last_activity"] = ((as_of_ts - last).dt.days).fillna(HISTORY_DAYS).clip(upper=HISTORY_DAYS)
    frame["tenure_days"] = (as_of_ts - created).dt.days
    first = pd.to_datetime(frame.get("first_activity_at"))
    # Only measurable when the account's whole life lies inside the look-back window.
    ttfv = (first - created).dt.days.clip(lower=0)
    frame["days_to_first_value"] = ttfv.where(frame["tenure_days"] <= HISTORY_DAYS)
    frame["journey_stage"] = np.select(
        [frame["tenure_days"] < 90, frame["days_to_renewal"] <= 90], ["onboarding", "renewal_window"], default="adoption"
    )
    frame["nps_category"] = frame.get("nps_category").fillna("none") if "nps_category" in frame else "none"
    return _finish(frame, as_of)


def _finish(frame: pd.DataFrame, as_of: date) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for name in FEATURE_NAMES:
        feature = BY_NAME[name]
        values = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
        if feature.is_categorical:
            values = values.astype(object).where(values.isin(feature.categories), feature.categories[-1])
            out[name] = values.astype(str)
        else:
            out[name] = pd.to_numeric(values, errors="coerce").astype(float)
    out = out.reset_index()
    out.insert(0, "as_of_date", pd.Timestamp(as_of))
    return out.sort_values("account_id").reset_index(drop=True)


def as_model_frame(features: pd.DataFrame, names: list[str] | None = None) -> pd.DataFrame:
    """Feature columns typed for LightGBM: categoricals with the catalogue's fixed categories
    (columns outside the catalogue are taken as numeric)."""
    X = features[list(names or FEATURE_NAMES)].copy()
    for name in X.columns:
        if name in CATEGORICAL:
            X[name] = pd.Categorical(X[name], categories=list(BY_NAME[name].categories))
        elif X[name].dtype == object:
            X[name] = pd.to_numeric(X[name], errors="coerce")
    return X


def materialize_features(engine: sa.Engine, as_of_dates: Iterable[date]) -> pd.DataFrame:
    """Build and store features for each date; a re-run of a date replaces its rows."""
    frames = []
    for as_of in as_of_dates:
        frame = build_features(engine, as_of)
        replace_rows(engine, FEATURE_TABLE, frame, where={"as_of_date": _ts(as_of)})
        log.info("features as of %s: %d accounts", as_of, len(frame))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def default_as_of(engine: sa.Engine, today: date | None = None) -> date:
    """Today, or the day after the newest usage row when the data stops earlier (demo books)."""
    today = today or date.today()
    row = read_sql(engine, "SELECT MAX(occurred_at) AS last_at FROM usage WHERE occurred_at < :t", {"t": _ts(today)})
    last = row.loc[0, "last_at"] if len(row) else None
    if last is None or pd.isna(last):
        return today
    return min(today, pd.Timestamp(last).date() + timedelta(days=1))
