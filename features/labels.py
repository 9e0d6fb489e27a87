"""Churn labels, derived from subscriptions (never supplied).

Definition (also in docs/data-model.md): an account's *coverage* is the union of its
subscriptions' terms, each running from ``start_date`` to ``end_date`` (exclusive) or to
the day of ``cancelled_at`` when that is earlier. Terms separated by at most the grace
period are one coverage block. The account *churns* on the end date of a block when no
later term starts within the grace period. The label for (account, D) is 1 when the block
covering D ends in [D, D + horizon), else 0. It is *matured* (known) only once
D + horizon + grace has passed; unmatured snapshots are excluded, never counted as retained.
With a lead time L (default 0) the window is [D + L, D + L + horizon): a churn too soon to
act on is not what the model should learn, so accounts whose coverage ends within [D, D + L)
are excluded, and maturity waits L days longer.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from churnflow.warehouse import read_sql


def _ts(d: date) -> pd.Timestamp:
    return pd.Timestamp(datetime(d.year, d.month, d.day))


def coverage_blocks(subscriptions: pd.DataFrame, grace_days: int) -> pd.DataFrame:
    """Merge subscription terms into coverage blocks: account_id, block_start, block_end."""
    subs = subscriptions[["account_id", "start_date", "end_date", "cancelled_at"]].copy()
    start = pd.to_datetime(subs["start_date"])
    end = pd.to_datetime(subs["end_date"])
    cancelled = pd.to_datetime(subs["cancelled_at"]).dt.normalize()
    subs["start"] = start
    subs["end"] = end.where(cancelled.isna() | (cancelled >= end), cancelled)
    subs = subs.sort_values(["account_id", "start"])
    grace = pd.Timedelta(days=grace_days)
    # A new block starts where a term begins after everything before it ended (+ grace).
    running_end = subs.groupby("account_id")["end"].cummax()
    prev_end = running_end.groupby(subs["account_id"]).shift(1)
    new_block = prev_end.isna() | (subs["start"] > prev_end + grace)
    subs["block"] = new_block.astype(int).groupby(subs["account_id"]).cumsum()
    blocks = subs.groupby(["account_id", "block"]).agg(block_start=("start", "min"), block_end=("end", "max")).reset_index()
    return blocks.drop(columns="block")


def labels_as_of(
    subscriptions: pd.DataFrame, as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0
) -> pd.DataFrame:
    """Labels for accounts covered at ``as_of``: account_id, churned (0/1), churn_date.

    Raises ValueError if the label has not matured by ``observed_until``.
    """
    return labels_from_blocks(
        coverage_blocks(subscriptions, grace_days), as_of, horizon_days=horizon_days, grace_days=grace_days,
        observed_until=observed_until, lead_days=lead_days,
    )


def labels_from_blocks(
    blocks: pd.DataFrame, as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0
) -> pd.DataFrame:
    """:func:`labels_as_of` from already merged coverage blocks (merged once for many dates)."""
    if not is_matured(as_of, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until, lead_days=lead_days):
        raise ValueError(
            f"labels as of {as_of} are not matured by {observed_until} (need {lead_days}+{horizon_days}+{grace_days} days)"
        )
    d = _ts(as_of)
    window_start = d + pd.Timedelta(days=lead_days)
    covering = blocks[(blocks["block_start"] < d) & (blocks["block_end"] >= window_start)]
    churned = covering["block_end"] < window_start + pd.Timedelta(days=horizon_days)
    out = pd.DataFrame(
        {
            "account_id": covering["account_id"].to_numpy(),
            "churned": churned.astype(int).to_numpy(),
            "churn_date": covering["block_end"].where(churned).to_numpy(),
        }
    )
    return out.drop_duplicates("account_id").reset_index(drop=True)


def is_matured(as_of: date, *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0) -> bool:
    return as_of + timedelta(days=lead_days + horizon_days + grace_days) <= observed_until


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
    last = observed_until - timedelta(days=lead_days + horizon_days + grace_days)
    dates = month_starts(first, last)
    return dates[-snapshots:]


def data_window(engine: sa.Engine) -> tuple[date, date]:
    """(first day with usage, day after the last usage): what the warehouse has observed."""
    row = read_sql(engine, "SELECT MIN(occurred_at) AS first_at, MAX(occurred_at) AS last_at FROM usage")
    if row.empty or pd.isna(row.loc[0, "first_at"]):
        raise ValueError("table 'usage' is empty: nothing to learn from")
    first = pd.Timestamp(row.loc[0, "first_at"]).date()
    last = pd.Timestamp(row.loc[0, "last_at"]).date() + timedelta(days=1)
    return first, last


def load_subscriptions(engine: sa.Engine) -> pd.DataFrame:
    return read_sql(engine, "SELECT account_id, start_date, end_date, cancelled_at FROM subscriptions")


def label_snapshots(
    subscriptions: pd.DataFrame, as_of_dates: Iterable[date], *, horizon_days: int, grace_days: int, observed_until: date,
    lead_days: int = 0,
) -> pd.DataFrame:
    frames = []
    blocks = coverage_blocks(subscriptions, grace_days)  # once for every date
    for as_of in as_of_dates:
        labels = labels_from_blocks(
            blocks, as_of, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until, lead_days=lead_days
        )
        labels.insert(0, "as_of_date", _ts(as_of))
        frames.append(labels)
    return pd.concat(frames, ignore_index=True)


# -- shared interface (thin versions until the subs package's churn-source dispatch lands) ----


def labels_for_dates(
    engine: sa.Engine, as_of_dates: Iterable[date], *, horizon_days: int, grace_days: int, observed_until: date, lead_days: int = 0
) -> pd.DataFrame:
    """Labels for several as-of dates: as_of_date (Timestamp), account_id, churned (0/1), churn_date.

    The one place trainers and the readiness profile get labels from, so both count the
    same churners."""
    dates = list(as_of_dates)
    if not dates:
        return pd.DataFrame({"as_of_date": pd.Series(dtype="datetime64[ns]"), "account_id": pd.Series(dtype=object),
                             "churned": pd.Series(dtype=int), "churn_date": pd.Series(dtype="datetime64[ns]")})
    return label_snapshots(
        load_subscriptions(engine), dates, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until,
        lead_days=lead_days,
    )


def observation_end(engine: sa.Engine, settings: object) -> date:
    """The day after the last observed event (the ``observation_end`` setting wins when set)."""
    configured = getattr(settings, "observation_end", None)
    return configured if isinstance(configured, date) else data_window(engine)[1]
