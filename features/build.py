"""Point-in-time account features.

Features as of date D use only rows stamped strictly before D, and subscription state as
it was known at D: a cancellation recorded on or after D is invisible, and so is a
subscription that starts on or after D. All aggregation runs in the warehouse as
dialect-neutral SQL with bound parameters (the same text runs on DuckDB and PostgreSQL):
usage windows read the daily rollups of ``features.rollups``; commercial, support and
perception read their tables directly. pandas assembles the per-account frame and derives
the ratios, trends and categories from the aggregates.

Accounts, subscriptions and tickets are read as they were known at D, from their history
(``churnflow.history.state_at_sql``): a segment, end date, ARR, seat count, priority or
close recorded by a load after D is invisible at D. Fields whose timing a row does not
carry are used only when it can be known at D:

* reopen flag (``reopen_rate_90d``, ``first_contact_resolution_90d``): a flag has no date,
  so it counts for D only when the version saying so was loaded at or before D, and only
  for tickets closed before D; otherwise it is unknown (NULL, the features are NaN). Not
  even ``false`` is used from a later load: keeping only the tickets that were never
  reopened would bias the rate to zero.
* first response (``median_first_response_minutes_90d``): counts only when it came before
  D, ``opened_at + first_response_minutes < D``.
* close, resolution time and CSAT: only for tickets closed before D (``closed_at < D``);
  a ticket closed on or after D is open at D.
* cancellation: only when recorded before D (``cancelled_at < D``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Mapping, Sequence
from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import sqlalchemy as sa

from churnflow import schema
from churnflow.fingerprint import source_version
from churnflow.manifest import available_tables, read_manifest
from churnflow.history import state_at_sql, sync_history
from churnflow.warehouse import content_hash_sql, ensure_table, read_sql, replace_rows, table_exists
from features.catalogue import CATALOGUE, CATEGORICAL, FEATURE_NAMES, FEATURE_SET_VERSION, Feature, feature_catalogue
from features.labels import active_accounts
from features.rollups import RollupReport, refresh_survey_text, refresh_usage_rollups, usage_writes_pending
from features.text import TOPICS

log = logging.getLogger(__name__)

FEATURE_TABLE = schema.ACCOUNT_FEATURES.name
HISTORY_DAYS = 365  # the longest look-back any feature uses


def _ts(d: date) -> datetime:
    return datetime(d.year, d.month, d.day)


def bounds(as_of: date) -> dict[str, datetime | date]:
    """Window starts, bound as parameters so SQL needs no date arithmetic: timestamps for raw
    tables, days (``day*``) for the daily rollups."""
    start = _ts(as_of)
    out: dict[str, datetime | date] = {
        "as_of": start,
        "d7": start - timedelta(days=7),
        "d30": start - timedelta(days=30),
        "d60": start - timedelta(days=60),
        "d90": start - timedelta(days=90),
        "d365": start - timedelta(days=HISTORY_DAYS),
    }
    out["as_of_day"] = as_of
    for days in (7, 30, 60, 90, 365):
        out[f"day{days}"] = as_of - timedelta(days=days)
    return out


# Usage windows read the daily rollups (features.rollups), never raw usage. Distinct users
# per window come from one pass over (account, user): a user is active in [D-k, D) when
# their last active day before D is on or after D-k.
USAGE_USERS_SQL = """
SELECT account_id,
  SUM(CASE WHEN last_date >= :day7 THEN 1 ELSE 0 END) AS active_users_7d,
  SUM(CASE WHEN last_date >= :day30 THEN 1 ELSE 0 END) AS active_users_30d,
  SUM(in_prev_30d) AS active_users_prev_30d,
  COUNT(*) AS active_users_90d
FROM (
  SELECT account_id, user_id, MAX(activity_date) AS last_date,
    MAX(CASE WHEN activity_date >= :day60 AND activity_date < :day30 THEN 1 ELSE 0 END) AS in_prev_30d
  FROM usage_daily
  WHERE activity_date >= :day90 AND activity_date < :as_of_day AND user_id IS NOT NULL
  GROUP BY account_id, user_id
) AS users
GROUP BY account_id
"""

USAGE_BREADTH_SQL = """
SELECT account_id, COUNT(DISTINCT feature) AS features_used_30d
FROM usage_daily
WHERE activity_date >= :day30 AND activity_date < :as_of_day
GROUP BY account_id
"""

USAGE_EVENTS_SQL = """
SELECT account_id,
  SUM(CASE WHEN activity_date >= :day7 THEN events ELSE 0 END) AS events_7d,
  SUM(CASE WHEN activity_date >= :day30 THEN events ELSE 0 END) AS events_30d,
  SUM(CASE WHEN activity_date >= :day60 AND activity_date < :day30 THEN events ELSE 0 END) AS events_prev_30d,
  SUM(CASE WHEN activity_date >= :day90 THEN events ELSE 0 END) AS events_90d,
  SUM(CASE WHEN activity_date >= :day30 THEN errors ELSE 0 END) AS errors_30d,
  MIN(activity_date) AS first_active_date,
  MAX(activity_date) AS last_active_date
FROM usage_account_daily
WHERE activity_date >= :day365 AND activity_date < :as_of_day
GROUP BY account_id
"""

# ``{accounts}``, ``{subscriptions}``, ``{tickets}``: the rows as known at :as_of
# (churnflow.history.state_at_sql), filled in by :func:`_at_as_of`.
ACCOUNTS_SQL = "SELECT account_id, segment, created_at FROM {accounts} AS accounts WHERE created_at < :as_of"

# Commercial state as known at D: terms started before D; a cancellation recorded on or after
# D is invisible. A term is in force at D while it is not cancelled and its end_date is empty
# (open-ended) or after D: a term ending at midnight D is over. Only when every term of the
# account ends exactly at D does it stand for the renewal that starts on D (the account is
# active then only if that renewal exists: features.labels.active_accounts decides who is).
# The main term (plan, auto-renew) is the in-force one with the highest ARR; a downgrade is a
# term started in the last year at lower ARR than the account's term before it.
_COMMERCIAL_TERMS = """
known AS (
  SELECT subscription_id, account_id, plan, seats, arr, start_date, end_date, auto_renew, billing_period, renewal_date,
    CASE WHEN cancelled_at < :as_of THEN cancelled_at END AS cancelled_at
  FROM {subscriptions} AS subscriptions
  WHERE start_date < :as_of
), uncancelled AS (
  SELECT subscription_id, account_id, plan, seats, arr, start_date, end_date, auto_renew, billing_period, renewal_date,
    MAX(CASE WHEN end_date IS NULL OR end_date > :as_of THEN 1 ELSE 0 END) OVER (PARTITION BY account_id) AS runs_past_d
  FROM known
  WHERE cancelled_at IS NULL AND (end_date IS NULL OR end_date >= :as_of)
), active AS (
  SELECT subscription_id, account_id, plan, seats, arr, start_date, end_date, auto_renew, billing_period, renewal_date,
    ROW_NUMBER() OVER (PARTITION BY account_id ORDER BY arr DESC, subscription_id) AS arr_rank
  FROM uncancelled
  WHERE end_date IS NULL OR end_date > :as_of OR runs_past_d = 0
)"""

COMMERCIAL_SQL = "WITH " + _COMMERCIAL_TERMS + """, terms AS (
  SELECT account_id, start_date, arr,
    LAG(arr) OVER (PARTITION BY account_id ORDER BY start_date, subscription_id) AS previous_arr
  FROM known
), downgrades AS (
  SELECT account_id, SUM(CASE WHEN start_date >= :d365 AND arr < previous_arr THEN 1 ELSE 0 END) AS downgrades_365d
  FROM terms
  GROUP BY account_id
)
SELECT active.account_id,
  SUM(active.arr) AS arr,
  SUM(active.seats) AS seats,
  MAX(CASE WHEN active.arr_rank = 1 THEN active.plan END) AS plan,
  MAX(CASE WHEN active.arr_rank = 1 THEN CASE WHEN active.auto_renew THEN 1.0 ELSE 0.0 END END) AS auto_renew,
  MAX(downgrades.downgrades_365d) AS downgrades_365d
FROM active
LEFT JOIN downgrades ON downgrades.account_id = active.account_id
GROUP BY active.account_id
"""

# The in-force terms' renewal inputs; the next renewal is placed in pandas (month arithmetic
# is not dialect-neutral SQL), see next_renewal.
RENEWAL_TERMS_SQL = "WITH " + _COMMERCIAL_TERMS + """
SELECT account_id, start_date, end_date, renewal_date, billing_period FROM active
"""

PERIOD_MONTHS: dict[str, int] = {"month": 1, "quarter": 3, "year": 12}


def _add_months(anchor: pd.Series, months: np.ndarray) -> np.ndarray:
    """``anchor`` plus whole months, the day clipped to the month's end (Jan 31 + 1 month = Feb 28/29)."""
    a = pd.to_datetime(anchor).to_numpy(dtype="datetime64[D]")
    month = a.astype("datetime64[M]") + months.astype("int64")
    day = (a - a.astype("datetime64[M]").astype("datetime64[D]")).astype("int64")
    month_days = ((month + 1).astype("datetime64[D]") - month.astype("datetime64[D]")).astype("int64")
    return (month.astype("datetime64[D]") + np.minimum(day, month_days - 1)).astype("datetime64[ns]")


def _anniversary_after(anchor: pd.Series, period_months: pd.Series, as_of: pd.Timestamp, where: pd.Series) -> pd.Series:
    """The first ``anchor + k * period`` (any whole k) strictly after ``as_of``, for rows ``where``
    both are known; NaT elsewhere."""
    ok = where & anchor.notna() & period_months.notna()
    out = pd.Series(pd.NaT, index=anchor.index, dtype="datetime64[ns]")
    if not ok.any():
        return out
    a = anchor[ok]
    p = period_months[ok].astype("int64").to_numpy()
    months_between = (as_of.year * 12 + as_of.month) - (a.dt.year.to_numpy() * 12 + a.dt.month.to_numpy())
    k = np.floor_divide(months_between, p)  # the cycle date in or before as_of's month
    candidate = _add_months(a, k * p)
    out[ok] = np.where(candidate > as_of.to_datetime64(), candidate, _add_months(a, (k + 1) * p))
    return out


def next_renewal(terms: pd.DataFrame, as_of: date) -> pd.Series:
    """The next renewal after ``as_of`` of each term (start_date, end_date, renewal_date, billing_period).

    In order: the billing system's ``renewal_date`` (with a billing period it anchors the
    cycle, so an export taken later still places the renewal right for an earlier D; without
    one it is used when after D); else ``end_date`` when after D; else the next anniversary
    of ``start_date`` by billing period; else unknown (NaT), never a made-up date.
    """
    d = pd.Timestamp(_ts(as_of))
    period = terms["billing_period"].map(PERIOD_MONTHS) if "billing_period" in terms else pd.Series(np.nan, index=terms.index)
    period = pd.to_numeric(period, errors="coerce")
    renewal = pd.to_datetime(terms["renewal_date"]).astype("datetime64[ns]")
    end = pd.to_datetime(terms["end_date"]).astype("datetime64[ns]")
    start = pd.to_datetime(terms["start_date"]).astype("datetime64[ns]")
    everywhere = pd.Series(True, index=terms.index)
    stated = _anniversary_after(renewal, period, d, everywhere).where(period.notna(), renewal.where(renewal > d))
    out = stated.where(stated.notna(), end.where(end > d))
    return out.where(out.notna(), _anniversary_after(start, period, d, out.isna()))


def days_to_renewal(engine: sa.Engine, as_of: date, params: dict) -> pd.Series:
    """Days from D to each active account's earliest next renewal (NaN when unknown)."""
    terms = read_sql(engine, _at_as_of(engine, RENEWAL_TERMS_SQL), params)
    if terms.empty:
        return pd.Series(dtype=float, name="days_to_renewal")
    terms["next_renewal"] = next_renewal(terms, as_of)
    first = terms.groupby("account_id")["next_renewal"].min()
    return ((first - pd.Timestamp(_ts(as_of))).dt.days).astype(float).rename("days_to_renewal")


# Support, from the tickets as known at D: a close (and resolution time) counts only if it
# came before D, a first response only if it came before D, a reopen flag only if the
# version saying so was loaded by D (module docstring).
SUPPORT_SQL = """
SELECT account_id,
  SUM(CASE WHEN opened_at >= :d30 THEN 1 ELSE 0 END) AS tickets_30d,
  SUM(CASE WHEN opened_at >= :d90 THEN 1 ELSE 0 END) AS tickets_90d,
  SUM(CASE WHEN closed_at IS NULL OR closed_at >= :as_of THEN 1 ELSE 0 END) AS open_tickets,
  AVG(CASE WHEN opened_at >= :d90 THEN CASE WHEN priority IN ('high', 'urgent') THEN 1.0 ELSE 0.0 END END) AS high_priority_share_90d,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN opened_at >= :d90
    AND first_response_minutes < EXTRACT(EPOCH FROM (:as_of - opened_at)) / 60.0 THEN first_response_minutes END) AS median_first_response_minutes_90d,
  percentile_cont(0.5) WITHIN GROUP (ORDER BY CASE WHEN opened_at >= :d90 AND closed_at < :as_of
    THEN EXTRACT(EPOCH FROM (closed_at - opened_at)) / 3600.0 END) AS median_resolution_hours_90d,
  AVG(CASE WHEN opened_at >= :d90 AND closed_at < :as_of AND known_since <= :as_of
    THEN CASE WHEN reopened THEN 1.0 ELSE 0.0 END END) AS reopen_rate_90d
FROM {tickets} AS tickets
WHERE opened_at < :as_of AND (opened_at >= :d90 OR closed_at IS NULL OR closed_at >= :as_of)
GROUP BY account_id
"""

# Perception: scores over 90 days, the latest two NPS answers within a year, and the
# comments' sentiment and topics as scored once in survey_text (features.rollups).
PERCEPTION_SQL = """
SELECT account_id,
  AVG(CASE WHEN kind = 'csat' AND submitted_at >= :d90 THEN CASE WHEN score >= 4 THEN 1.0 ELSE 0.0 END END) AS csat_top2_box_90d,
  AVG(CASE WHEN kind = 'ces' AND submitted_at >= :d90 THEN score END) AS ces_mean_90d,
  MAX(CASE WHEN kind = 'nps' AND nps_recency = 1 THEN score END) AS nps_latest,
  MAX(CASE WHEN kind = 'nps' AND nps_recency = 2 THEN score END) AS nps_previous
FROM (
  SELECT account_id, kind, score, submitted_at,
    ROW_NUMBER() OVER (PARTITION BY account_id, kind ORDER BY submitted_at DESC, response_id DESC) AS nps_recency
  FROM surveys
  WHERE submitted_at >= :d365 AND submitted_at < :as_of AND (kind = 'nps' OR submitted_at >= :d90)
) AS recent
GROUP BY account_id
"""

VERBATIM_SQL = """
SELECT s.account_id, AVG(t.sentiment) AS comment_sentiment_90d,
  """ + ",\n  ".join(f"SUM(t.topic_{topic}) AS complaints_{topic}_90d" for topic in TOPICS) + """
FROM surveys s
JOIN survey_text t ON t.response_id = s.response_id AND t.comment_md5 = md5(s.comment)
WHERE s.submitted_at >= :d90 AND s.submitted_at < :as_of
GROUP BY s.account_id
"""


# Per-event-type usage: one row per account and event type, for the types of the catalogue.
USAGE_EVENT_TYPES_SQL = """
SELECT account_id, feature,
  SUM(CASE WHEN activity_date >= :day30 THEN events ELSE 0 END) AS n30,
  SUM(CASE WHEN activity_date >= :day60 AND activity_date < :day30 THEN events ELSE 0 END) AS prev30,
  SUM(events) AS n90
FROM usage_daily
WHERE activity_date >= :day90 AND activity_date < :as_of_day AND feature IN :event_types
GROUP BY account_id, feature
"""

# The most frequent event types (raw usage rows) in the year before D, for the default list.
TOP_EVENT_TYPES_SQL = """
SELECT feature, SUM(source_rows) AS n
FROM usage_daily
WHERE activity_date >= :day365 AND activity_date < :as_of_day
GROUP BY feature
ORDER BY n DESC, feature
LIMIT :k
"""

ATTRIBUTE_TABLE = "account_attributes"

# Account attributes: one value per account (rows without a subscription).
ACCOUNT_ATTRIBUTES_SQL = """
SELECT account_id, name, MAX(value_number) AS value_number, MAX(value_text) AS value_text
FROM {account_attributes} AS account_attributes
WHERE subscription_id IS NULL AND name IN :names
GROUP BY account_id, name
"""

# Subscription attributes: the value on the account's main active term at D (highest ARR,
# the same rule as the commercial features' plan), as known at D.
SUBSCRIPTION_ATTRIBUTES_SQL = "WITH " + _COMMERCIAL_TERMS + """
SELECT active.account_id, a.name, MAX(a.value_number) AS value_number, MAX(a.value_text) AS value_text
FROM {account_attributes} AS a
JOIN active ON active.subscription_id = a.subscription_id AND active.arr_rank = 1
WHERE a.name IN :names
GROUP BY active.account_id, a.name
"""

DEFAULT_EVENT_TYPES_TOP = 8  # the usage_event_types_top setting's default


def refresh_derived(engine: sa.Engine, since: date, *, recheck_days: int = 3) -> RollupReport:
    """Bring the tables the windows read up to date (usage rollups, scored comments, and the
    state tables' history, in case another tool rewrote a table directly), for the sources
    this book has."""
    sync_history(engine)
    available = available_tables(engine)
    report = refresh_usage_rollups(engine, recheck_days=recheck_days) if "usage" in available else RollupReport(False, 0, 0, 0.0)
    if "surveys" in available:
        refresh_survey_text(engine, since - timedelta(days=90))
    return report


def _per_account(engine: sa.Engine, sql: str, params: dict) -> pd.DataFrame:
    return read_sql(engine, sql, params).set_index("account_id")


def _at_as_of(engine: sa.Engine, sql: str) -> str:
    """``sql`` reading each state table as known at :as_of (its history, when it has one)."""
    return sql.format(**{table: state_at_sql(engine, table) for table in ("accounts", "subscriptions", "tickets", ATTRIBUTE_TABLE)})


def learn_event_types(engine: sa.Engine, as_of: date, top: int = DEFAULT_EVENT_TYPES_TOP) -> tuple[str, ...]:
    """The event types that get their own usage features as of ``as_of``: the mapping's
    ``usage_event_types`` when given, else the ``top`` most frequent ``usage.feature`` values
    in the year before D (only what was known at D; ties by name). Reads the rollups."""
    manifest = read_manifest(engine)
    if manifest.usage_event_types is not None:
        return tuple(dict.fromkeys(manifest.usage_event_types))
    if top <= 0 or "usage" not in available_tables(engine) or not table_exists(engine, schema.USAGE_DAILY.name):
        return ()
    rows = read_sql(engine, TOP_EVENT_TYPES_SQL, {**bounds(as_of), "k": int(top)})
    return tuple(str(v) for v in rows["feature"].dropna())


def book_catalogue(engine: sa.Engine, as_of: date, top: int = DEFAULT_EVENT_TYPES_TOP) -> tuple[Feature, ...]:
    """This book's catalogue as of ``as_of`` (:func:`features.catalogue.feature_catalogue` with
    the event types of :func:`learn_event_types`)."""
    return feature_catalogue(engine, learn_event_types(engine, as_of, top))


def _event_type_frame(engine: sa.Engine, params: dict, features: list[Feature], index: pd.Index) -> pd.DataFrame:
    """Per-event-type counts and trends, one column per catalogue entry; 0 when no event.
    The measure is the entry's declared unit and window (a customer's slug may end in "_trend")."""
    types = list(dict.fromkeys(f.key for f in features))
    stmt = sa.text(USAGE_EVENT_TYPES_SQL).bindparams(sa.bindparam("event_types", expanding=True))
    rows = read_sql(engine, stmt, {**params, "event_types": types})
    out = pd.DataFrame(index=index)
    for f in features:
        mine = rows[rows["feature"] == f.key].set_index("account_id")
        n30 = pd.to_numeric(mine["n30"]).reindex(index).fillna(0.0)
        prev30 = pd.to_numeric(mine["prev30"]).reindex(index).fillna(0.0)
        if f.unit == "ratio":
            out[f.name] = (n30 - prev30) / prev30.clip(lower=1)
        elif f.window_days == 90:
            out[f.name] = pd.to_numeric(mine["n90"]).reindex(index).fillna(0.0)
        else:
            out[f.name] = n30
    return out


def _attribute_frame(engine: sa.Engine, params: dict, features: list[Feature], index: pd.Index) -> pd.DataFrame:
    """Mapped attribute values, one column per catalogue entry; missing when the account (or
    its main active subscription) has no value."""
    out = pd.DataFrame(index=index)
    if not table_exists(engine, ATTRIBUTE_TABLE):
        log.warning("the mapping declares attributes but table %s does not exist: they are all missing", ATTRIBUTE_TABLE)
        for f in features:
            out[f.name] = np.nan
        return out
    for table, sql in (("accounts", ACCOUNT_ATTRIBUTES_SQL), ("subscriptions", SUBSCRIPTION_ATTRIBUTES_SQL)):
        mine = [f for f in features if (f.table or "accounts") == table]
        if not mine:
            continue
        stmt = sa.text(_at_as_of(engine, sql)).bindparams(sa.bindparam("names", expanding=True))
        rows = read_sql(engine, stmt, {**params, "names": [f.key for f in mine]})
        for f in mine:
            values = rows[rows["name"] == f.key].set_index("account_id")
            column = "value_text" if f.is_categorical else "value_number"
            out[f.name] = values[column].reindex(index) if len(values) else np.nan
    return out


def build_features(engine: sa.Engine, as_of: date, *, refresh: bool = True, catalogue: Sequence[Feature] | None = None,
                   event_types_top: int = DEFAULT_EVENT_TYPES_TOP) -> pd.DataFrame:
    """Features of every account active at ``as_of``, one row per account.

    Columns: ``as_of_date``, ``account_id`` and every feature of ``catalogue``, in its order.
    The catalogue defaults to the book's (:func:`book_catalogue`: families whose source is
    absent are left out, event types learned as of D); a model passes its own so scoring
    builds the columns it was trained on. ``refresh=False`` skips bringing the derived
    tables up to date (the caller just did).
    """
    if refresh:
        refresh_derived(engine, as_of)
    catalogue = tuple(catalogue) if catalogue is not None else book_catalogue(engine, as_of, event_types_top)
    available = available_tables(engine)
    params = bounds(as_of)
    accounts = _per_account(engine, _at_as_of(engine, ACCOUNTS_SQL), params)
    if "subscriptions" in available:
        commercial = _per_account(engine, _at_as_of(engine, COMMERCIAL_SQL), params)
        commercial = commercial.join(days_to_renewal(engine, as_of, params))
    else:  # no subscriptions (churn from churn_events): commercial features are unknown
        commercial = pd.DataFrame(columns=["arr", "seats", "plan", "auto_renew", "downgrades_365d", "days_to_renewal"],
                                  index=pd.Index([], name="account_id"), dtype=float)
    # The same rule as the labels: features exist for exactly the accounts labels can be given.
    active_ids = active_accounts(engine, as_of).intersection(accounts.index)
    frame = pd.DataFrame(index=pd.Index(active_ids, name="account_id"))
    if len(frame.index) == 0:
        log.warning("no active accounts as of %s", as_of)
        return _finish(frame, as_of, catalogue)

    # A source is read only when the catalogue asks for it and the book has it; a feature
    # whose source is gone (a model trained before surveys were declared absent) stays missing.
    wanted = {table for f in catalogue for table in f.sources}
    missing = sorted(wanted - available)
    if missing:
        log.warning("features as of %s: source(s) %s not available; their features are missing", as_of, ", ".join(missing))
    queries = {"usage": (USAGE_USERS_SQL, USAGE_BREADTH_SQL, USAGE_EVENTS_SQL), "tickets": (_at_as_of(engine, SUPPORT_SQL),), "surveys": (PERCEPTION_SQL, VERBATIM_SQL)}
    for table, sqls in queries.items():
        if table in wanted and table in available:
            for sql in sqls:
                frame = frame.join(_per_account(engine, sql, params))
    frame = frame.join(commercial)
    frame = frame.join(accounts)
    as_of_ts = params["as_of"]
    created = pd.to_datetime(frame["created_at"])

    def counts(*cols: str) -> None:
        for col in cols:
            frame[col] = pd.to_numeric(frame[col], errors="coerce").fillna(0.0) if col in frame else 0.0

    frame["tenure_days"] = (as_of_ts - created).dt.days
    frame["journey_stage"] = np.select(
        [frame["tenure_days"] < 90, frame["days_to_renewal"] <= 90], ["onboarding", "renewal_window"], default="adoption"
    )
    if "usage" in wanted and "usage" in available:
        counts("active_users_7d", "active_users_30d", "active_users_prev_30d", "active_users_90d", "events_7d", "events_30d",
               "events_prev_30d", "events_90d", "features_used_30d", "errors_30d")
        frame["usage_trend_30d"] = (frame["events_30d"] - frame["events_prev_30d"]) / frame["events_prev_30d"].clip(lower=1)
        frame["active_users_trend_30d"] = (frame["active_users_30d"] - frame["active_users_prev_30d"]) / frame["active_users_prev_30d"].clip(lower=1)
        frame["error_rate_30d"] = frame["errors_30d"] / frame["events_30d"].clip(lower=1)
        frame["seat_utilisation_30d"] = frame["active_users_30d"] / pd.to_numeric(frame["seats"]).clip(lower=1)
        # Full days since the last active day: 0 when someone used the product the day before D.
        last = pd.to_datetime(frame["last_active_date"])
        frame["days_since_last_activity"] = ((as_of_ts - last).dt.days - 1).fillna(HISTORY_DAYS).clip(upper=HISTORY_DAYS)
        first = pd.to_datetime(frame["first_active_date"])
        # Calendar days from the day the account was created to its first active day; only
        # measurable when the account's whole life lies inside the look-back window.
        ttfv = (first - created.dt.normalize()).dt.days.clip(lower=0)
        frame["days_to_first_value"] = ttfv.where(frame["tenure_days"] <= HISTORY_DAYS)
    if "tickets" in wanted and "tickets" in available:
        counts("tickets_30d", "tickets_90d", "open_tickets")
        frame["first_contact_resolution_90d"] = 1 - pd.to_numeric(frame["reopen_rate_90d"], errors="coerce")
    if "surveys" in wanted and "surveys" in available:
        counts(*(f"complaints_{topic}_90d" for topic in TOPICS))
        nps_latest = pd.to_numeric(frame["nps_latest"], errors="coerce")
        frame["nps_trend"] = nps_latest - pd.to_numeric(frame["nps_previous"], errors="coerce")
        frame["nps_category"] = pd.cut(nps_latest, bins=[-1, 6, 8, 10], labels=["detractor", "passive", "promoter"]).astype(object).fillna("none")
    # Dynamic features last, assigned column by column: a customer's event type or attribute
    # may slug to the name of an intermediate column above (e.g. "prev"), never mixed up.
    event_types = [f for f in catalogue if f.origin == "event_type"]
    if event_types and "usage" in available:
        for name, values in _event_type_frame(engine, params, event_types, frame.index).items():
            frame[name] = values
    attributes = [f for f in catalogue if f.origin == "attribute"]
    if attributes:
        for name, values in _attribute_frame(engine, params, attributes, frame.index).items():
            frame[name] = values
    return _finish(frame, as_of, catalogue)


MISSING_CATEGORY = "none"  # the label of a categorical feature with no value (e.g. no NPS answer)


def _finish(frame: pd.DataFrame, as_of: date, catalogue: Sequence[Feature] = CATALOGUE) -> pd.DataFrame:
    """The catalogue's columns in its order, typed: numbers as float, categories as their raw
    text (no fixed lists: the model learns its categories at training), missing as "none"."""
    out = pd.DataFrame(index=frame.index)
    for feature in catalogue:
        name = feature.name
        values = frame[name] if name in frame else pd.Series(np.nan, index=frame.index)
        if feature.is_categorical:
            text = values.astype(object).where(values.notna(), MISSING_CATEGORY).astype(str).str.strip()
            out[name] = text.where(text != "", MISSING_CATEGORY)
        else:
            out[name] = pd.to_numeric(values, errors="coerce").astype(float)
    out = out.reset_index()
    out.insert(0, "as_of_date", pd.Timestamp(as_of))
    return out.sort_values("account_id").reset_index(drop=True)


OTHER_CATEGORY = "other"


def learn_categories(values: pd.Series, min_rows: int | None = None) -> list[str]:
    """The categories a model keeps for a categorical feature: the values seen on at least
    ``min_rows`` rows (default max(20, 1% of the rows)), most frequent first, then "other"
    for everything rarer or new. Enough rows per category for a leaf, no fixed list."""
    text = values.astype(object).where(values.notna(), MISSING_CATEGORY).astype(str)
    threshold = max(20, int(0.01 * len(text))) if min_rows is None else min_rows
    frequent = text.value_counts()
    kept = sorted((v for v, n in frequent.items() if n >= threshold and v != OTHER_CATEGORY), key=lambda v: (-frequent[v], v))
    return [*kept, OTHER_CATEGORY]


def as_model_frame(features: pd.DataFrame, names: Sequence[str] | None = None, categories: Mapping[str, Sequence[str]] | None = None) -> pd.DataFrame:
    """Feature columns typed for LightGBM.

    ``categories`` (feature -> learned categories, as stored on a model) makes those columns
    categoricals; a value outside them becomes "other". Without it, the static catalogue's
    categorical features are categoricals of the values present. Other columns are numeric.
    """
    X = features[list(names or FEATURE_NAMES)].copy()
    if categories is None:
        categories = {name: learn_categories(X[name], min_rows=1) for name in X.columns if name in CATEGORICAL}
    for name in X.columns:
        if name in categories:
            cats = list(categories[name])
            text = X[name].astype(object).where(X[name].notna(), MISSING_CATEGORY).astype(str)
            X[name] = pd.Categorical(text.where(text.isin(cats), OTHER_CATEGORY), categories=cats)
        elif X[name].dtype == object:
            X[name] = pd.to_numeric(X[name], errors="coerce")
    return X


# The rows features as of D read, per input table: (columns, rows-known-at-D condition).
# State tables are read as known at D (their version valid at D, and when it was loaded).
_FINGERPRINTED: dict[str, tuple[list[str], str]] = {
    "accounts": (["account_id", "segment", "created_at"], "created_at < :as_of"),
    # start_date = D too: a renewal starting on D keeps an account whose term ends on D active.
    "subscriptions": (["subscription_id", "account_id", "plan", "seats", "arr", "start_date", "end_date", "cancelled_at", "auto_renew",
                       "billing_period", "renewal_date"], "start_date <= :as_of"),
    "churn_events": (["account_id", "churn_date", "reactivated_at"], "churn_date <= :as_of"),
    "tickets": (["ticket_id", "account_id", "opened_at", "closed_at", "priority", "first_response_minutes", "reopened", "known_since"],
                "opened_at < :as_of"),
    "surveys": (["response_id", "account_id", "submitted_at", "kind", "score", "comment"], "submitted_at >= :d365 AND submitted_at < :as_of"),
    ATTRIBUTE_TABLE: (["account_id", "subscription_id", "name", "value_number", "value_text"], "1 = 1"),
}


# The code a day's features are a function of (part of their fingerprint).
BUILDER_MODULES = ("features.build", "features.catalogue", "features.labels", "features.rollups", "features.text", "churnflow.manifest",
                   "churnflow.history")


def catalogue_signature(catalogue: Sequence[Feature]) -> str:
    """The feature list as text, part of the fingerprint: another list is another build."""
    return "|".join(f"{f.name}:{f.origin}:{f.key}:{f.table}:{int(f.is_categorical)}" for f in catalogue)


def input_fingerprint(engine: sa.Engine, as_of: date, catalogue: Sequence[Feature] | None = None) -> str:
    """A hash of everything features as of ``as_of`` depend on: the feature-set version and
    list, and the content of every input row known at D (usage through the rollups' per-day
    hashes).

    Reads the small tables' relevant rows in the warehouse and a year of rollup state rows;
    call it after :func:`refresh_derived`. Any changed value changes the fingerprint.
    """
    catalogue = tuple(catalogue) if catalogue is not None else book_catalogue(engine, as_of)
    params = bounds(as_of)
    available = available_tables(engine)
    parts = [FEATURE_SET_VERSION, source_version(*BUILDER_MODULES), as_of.isoformat(), catalogue_signature(catalogue),
             ",".join(sorted(available)), read_manifest(engine).churn_source]
    for table, (columns, condition) in _FINGERPRINTED.items():
        if table in schema.CANONICAL and table not in available:
            parts.append(f"{table}:absent")
            continue
        if table == ATTRIBUTE_TABLE and not (any(f.origin == "attribute" for f in catalogue) and table_exists(engine, table)):
            continue
        source = state_at_sql(engine, table)
        sql = f'SELECT COUNT(*) AS n, {content_hash_sql(engine.dialect.name, columns)} AS h FROM {source} AS "{table}" WHERE {condition}'
        row = read_sql(engine, sql, params).iloc[0]
        parts.append(f"{table}:{int(row['n'])}:{row['h']}")
    if "usage" in available:
        days = read_sql(engine, "SELECT activity_date, content_hash, dirty FROM usage_rollup_days "
                                "WHERE activity_date >= :day365 AND activity_date < :as_of_day ORDER BY activity_date", params)
        if days["dirty"].astype(bool).any() or usage_writes_pending(engine):  # not refreshed: no fingerprint can vouch for the rollups
            return f"unrolled-{datetime.now().isoformat()}"
        parts += [f"{d}:{h}" for d, h in zip(days["activity_date"].astype(str), days["content_hash"])]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def _stored_features(engine: sa.Engine, as_of: date, catalogue: Sequence[Feature] = CATALOGUE) -> pd.DataFrame | None:
    """The stored features of the day with the catalogue's columns; None if the table lacks one."""
    frame = read_sql(engine, f"SELECT * FROM {FEATURE_TABLE} WHERE as_of_date = :d", {"d": _ts(as_of)})
    names = [f.name for f in catalogue]
    if any(name not in frame.columns for name in names):
        return None
    out = frame[["account_id", *names]].copy()
    out.insert(0, "as_of_date", pd.Timestamp(as_of))
    for f in catalogue:
        out[f.name] = out[f.name].astype(str) if f.is_categorical else pd.to_numeric(out[f.name]).astype(float)
    return out.sort_values("account_id").reset_index(drop=True)


def _fit_feature_table(engine: sa.Engine, frame: pd.DataFrame) -> None:
    """Make ``account_features`` able to hold ``frame``: the feature set changes with the book
    (event types, attributes, absent families). New columns are added (other days' rows keep
    theirs, read back by their own catalogue); a column whose kind changed (number <->
    category) cannot be kept, so the table is dropped and recreated and every day's build
    record forgotten (those days are rebuilt when next asked for)."""
    if not table_exists(engine, FEATURE_TABLE):
        return
    existing = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns(FEATURE_TABLE)}
    added = [c for c in frame.columns if c not in existing]
    text_kinds = (sa.String, sa.Text, sa.Enum)
    conflicts = [c for c in frame.columns if c in existing and c not in ("as_of_date", "account_id")
                 and (frame[c].dtype == object) != isinstance(existing[c], text_kinds)]
    if conflicts:
        log.warning("table %s: column(s) %s changed kind; dropping and recreating it (other days are rebuilt on demand)",
                    FEATURE_TABLE, ", ".join(conflicts))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE "{FEATURE_TABLE}"'))
            if table_exists(conn, schema.FEATURE_BUILDS.name):
                conn.execute(sa.text(f'DELETE FROM "{schema.FEATURE_BUILDS.name}"'))
        return
    if added:
        with engine.begin() as conn:
            for column in added:
                kind = sa.String() if frame[column].dtype == object else sa.Double()
                conn.execute(sa.text(f'ALTER TABLE "{FEATURE_TABLE}" ADD COLUMN "{column}" {kind.compile(dialect=engine.dialect)}'))
        log.info("table %s: added column(s) %s", FEATURE_TABLE, ", ".join(added))


def store_features(engine: sa.Engine, as_of: date, frame: pd.DataFrame, fingerprint: str) -> None:
    """Replace the day's stored features and record what they were built from."""
    _fit_feature_table(engine, frame)
    replace_rows(engine, FEATURE_TABLE, frame, where={"as_of_date": _ts(as_of)})
    builds = schema.FEATURE_BUILDS
    record = pd.DataFrame({"as_of_date": [pd.Timestamp(as_of)], "input_fingerprint": [fingerprint],
                           "feature_rows": [len(frame)], "built_at": [pd.Timestamp(datetime.now())]})
    replace_rows(engine, builds.name, record, where={"as_of_date": as_of})


def materialize_features(engine: sa.Engine, as_of_dates: Iterable[date], *, recheck_days: int = 3, refresh: bool = True,
                         reuse: bool = True, catalogue: Sequence[Feature] | None = None,
                         event_types_top: int = DEFAULT_EVENT_TYPES_TOP) -> pd.DataFrame:
    """Build and store features for each date; a re-run of a date replaces its rows.

    The derived tables are brought up to date once (unless ``refresh=False``: the caller
    just did), then every date reads them. With ``reuse``, a date whose stored features
    were built from exactly the same inputs and feature list (same :func:`input_fingerprint`)
    is read back instead of rebuilt: re-runs and backfills cost a fingerprint, not a build.
    ``catalogue`` defaults to each date's book catalogue (:func:`book_catalogue`).
    """
    as_of_dates = list(as_of_dates)
    if as_of_dates and refresh:
        refresh_derived(engine, min(as_of_dates), recheck_days=recheck_days)
    builds = schema.FEATURE_BUILDS
    ensure_table(engine, builds.name, pd.DataFrame(columns=builds.column_names))
    stored = read_sql(engine, "SELECT as_of_date, input_fingerprint, feature_rows FROM feature_builds")
    previous = {d: (f, int(n)) for d, f, n in zip(pd.to_datetime(stored["as_of_date"]).dt.date, stored["input_fingerprint"], stored["feature_rows"])}
    frames = []
    for as_of in as_of_dates:
        day_catalogue = tuple(catalogue) if catalogue is not None else book_catalogue(engine, as_of, event_types_top)
        fingerprint = input_fingerprint(engine, as_of, day_catalogue)
        if reuse and previous.get(as_of, ("", -1))[0] == fingerprint and table_exists(engine, FEATURE_TABLE):
            frame = _stored_features(engine, as_of, day_catalogue)
            if frame is not None and len(frame) == previous[as_of][1]:  # the stored rows are all there
                log.info("features as of %s: %d accounts, reused (inputs unchanged since they were built)", as_of, len(frame))
                frames.append(frame)
                continue
        frame = build_features(engine, as_of, refresh=False, catalogue=day_catalogue)
        store_features(engine, as_of, frame, fingerprint)
        log.info("features as of %s: %d accounts, %d features", as_of, len(frame), len(day_catalogue))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def features_for(engine: sa.Engine, as_of: date, features: pd.DataFrame, catalogue: Sequence[Feature], names: Sequence[str]) -> pd.DataFrame:
    """``features`` when they hold every column in ``names`` (a model's), else the same
    accounts' features rebuilt with ``catalogue`` (the model's own, e.g. its event types
    are no longer today's most frequent). Not stored: the day's stored features stay the book's."""
    if all(name in features.columns for name in names):
        return features
    log.info("features as of %s lack %d of the model's columns: building them with the model's catalogue",
             as_of, sum(name not in features.columns for name in names))
    rebuilt = build_features(engine, as_of, refresh=False, catalogue=catalogue)
    wanted = features["account_id"].astype(str)
    return rebuilt[rebuilt["account_id"].astype(str).isin(set(wanted))].reset_index(drop=True)


def default_as_of(engine: sa.Engine, today: date | None = None) -> date:
    """Today, or the day after the newest usage row when the data stops earlier (demo books)."""
    today = today or date.today()
    row = read_sql(engine, "SELECT MAX(occurred_at) AS last_at FROM usage WHERE occurred_at < :t", {"t": _ts(today)})
    last = row.loc[0, "last_at"] if len(row) else None
    if last is None or pd.isna(last):
        return today
    return min(today, pd.Timestamp(last).date() + timedelta(days=1))
