"""An events-only self-serve product, simulated independently of churnflow's demo generator.

A consumer-style app where each account is one person (one seat, one open-ended monthly
subscription). The only usage signal is a raw event log of eight event types, and churn is
recorded as a status and a date on the accounts export. Churn is driven by:

* recent behaviour per event type, with opposite effects: ``like`` and ``add_friend`` lower
  the hazard, ``dislike`` and ``unfriend`` raise it; ``login``, ``view_page``, ``post`` and
  ``report_content`` carry no effect of their own;
* two account attributes that are not in churnflow's canonical tables: the acquisition
  ``channel`` and the holder's ``age``.

The daily hazard is logistic in the trailing-30-day counts of the four driving types (log1p),
the channel and the age, so a model given exactly those drivers (:func:`true_driver_frame`) is
the reference the acceptance test compares churnflow with. Shapes unlike the demo: epoch
milliseconds, event names in CamelCase (``LikePost``...), one file per month of events, a
status column instead of subscription end dates, ``yes``/``no`` flags.

Usage::

    python examples/selfserve_events/make_export.py /tmp/selfserve [--accounts 1500] [--seed 5]
    churnflow validate --mapping /tmp/selfserve/sources.yaml --run-date 2026-11-01
"""

from __future__ import annotations

import argparse
import shutil
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

START = date(2025, 5, 1)
END = date(2026, 11, 1)  # exclusive: the export was taken at midnight of 1 November 2026
RUN_DATE = END.isoformat()

EVENT_TYPES = ("login", "view_page", "post", "like", "add_friend", "dislike", "unfriend", "report_content")
EXPORT_NAMES = {  # how the product's tracking plan spells them
    "login": "SessionStart", "view_page": "PageView", "post": "CreatePost", "like": "LikePost",
    "add_friend": "FriendAdded", "dislike": "DislikePost", "unfriend": "FriendRemoved", "report_content": "ReportContent",
}
BASE_RATE = {"login": 0.5, "view_page": 0.8, "post": 0.25, "like": 0.8, "add_friend": 0.12, "dislike": 0.25, "unfriend": 0.05, "report_content": 0.03}
"""Mean events per day of an average account."""
ENGAGEMENT_LOADING = {"login": 0.6, "view_page": 0.7, "post": 0.5, "like": 0.8, "add_friend": 0.7, "dislike": 0.1, "unfriend": 0.0, "report_content": 0.1}
FRUSTRATION_LOADING = {"login": -0.1, "view_page": 0.0, "post": 0.2, "like": -0.3, "add_friend": -0.2, "dislike": 0.9, "unfriend": 0.9, "report_content": 0.6}

DRIVER_WEIGHTS = {"like": -0.55, "add_friend": -0.75, "dislike": 0.55, "unfriend": 0.9}
"""Effect of log1p(trailing 30-day count) on the log-odds of the daily churn hazard."""
CHANNELS = {"organic": 0.0, "referral": -0.6, "search_ads": 0.35, "paid_social": 0.8, "partner_app": -0.2}
CHANNEL_SHARE = (0.35, 0.15, 0.2, 0.2, 0.1)
AGE_WEIGHT = -0.03  # per year above 35: younger holders churn more
INTERCEPT = -6.2


@dataclass
class SelfServeBook:
    accounts: pd.DataFrame  # account_id, signup, channel, age, churn_date (NaT while active)
    daily_counts: np.ndarray  # (accounts, days, types) events per day
    days: pd.DatetimeIndex


def simulate(accounts: int = 1500, seed: int = 5) -> SelfServeBook:
    """Simulate signups, daily event counts per type and churn, day by day."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(START, END - timedelta(days=1), freq="D")
    n_days, n_types = len(days), len(EVENT_TYPES)
    # signups spread over the first 13 months (a third of the book already there at the start)
    signup = np.where(rng.random(accounts) < 0.33, 0, rng.integers(1, 400, accounts))
    channel = rng.choice(list(CHANNELS), size=accounts, p=CHANNEL_SHARE)
    age = np.clip(rng.normal(35, 11, accounts).round(), 16, 80)
    base = np.array([BASE_RATE[t] for t in EVENT_TYPES])
    load_e = np.array([ENGAGEMENT_LOADING[t] for t in EVENT_TYPES])
    load_f = np.array([FRUSTRATION_LOADING[t] for t in EVENT_TYPES])
    taste = rng.normal(0, 0.35, (accounts, n_types))  # stable per-account preferences
    engagement = rng.normal(0, 0.8, accounts)
    frustration = rng.normal(0, 0.8, accounts)
    drivers = {t: EVENT_TYPES.index(t) for t in DRIVER_WEIGHTS}
    weights = np.array(list(DRIVER_WEIGHTS.values()))
    static = INTERCEPT + np.vectorize(CHANNELS.get)(channel) + AGE_WEIGHT * (age - 35)
    counts = np.zeros((accounts, n_days, n_types), dtype=np.int32)
    trailing = np.zeros((accounts, n_types), dtype=np.int64)
    alive = np.zeros(accounts, dtype=bool)
    churn_day = np.full(accounts, -1)
    for d in range(n_days):
        alive |= signup == d
        # slow random walks: behaviour drifts, so recent counts matter more than old ones
        engagement = 0.985 * engagement + rng.normal(0, 0.12, accounts)
        frustration = 0.98 * frustration + rng.normal(0, 0.14, accounts)
        rate = base * np.exp(engagement[:, None] * load_e + frustration[:, None] * load_f + taste)
        today = rng.poisson(rate).astype(np.int32) * alive[:, None]
        counts[:, d, :] = today
        trailing += today
        if d >= 30:
            trailing -= counts[:, d - 30, :]
        # the hazard reads what the account did in the 30 days up to yesterday
        tenure = d - signup
        logit = static + (np.log1p(trailing[:, list(drivers.values())] - today[:, list(drivers.values())]) * weights).sum(axis=1)
        hazard = 1 / (1 + np.exp(-logit))
        churns = alive & (tenure >= 14) & (rng.random(accounts) < hazard)
        churn_day[churns] = d
        alive &= ~churns
    frame = pd.DataFrame({
        "account_id": [f"u{i:05d}" for i in range(accounts)],
        "signup": days[np.minimum(signup, n_days - 1)],
        "channel": channel,
        "age": age.astype(int),
        "churn_date": pd.to_datetime(np.where(churn_day >= 0, days[np.maximum(churn_day, 0)], pd.NaT)),
    })
    return SelfServeBook(frame, counts, days)


def true_driver_frame(book: SelfServeBook, as_of: date) -> pd.DataFrame:
    """The simulator's own drivers as of ``as_of`` for accounts active then: log1p of the
    trailing-30-day counts of the four driving types, the channel and the age."""
    d = book.days.get_loc(pd.Timestamp(as_of))
    acc = book.accounts
    active = (acc["signup"] < pd.Timestamp(as_of)) & (acc["churn_date"].isna() | (acc["churn_date"] >= pd.Timestamp(as_of)))
    window = book.daily_counts[:, max(0, d - 30):d, :].sum(axis=1)
    out = pd.DataFrame({"account_id": acc["account_id"]})
    for t in DRIVER_WEIGHTS:
        out[f"log_{t}_30d"] = np.log1p(window[:, EVENT_TYPES.index(t)])
    for c in CHANNELS:
        out[f"channel_{c}"] = (acc["channel"] == c).astype(float)
    out["age"] = acc["age"].astype(float)
    return out[active.to_numpy()].reset_index(drop=True)


def write_export(book: SelfServeBook, out: Path, seed: int = 5) -> dict[str, int]:
    """Write the export files and a copy of sources.yaml into ``out``; return rows per file."""
    rng = np.random.default_rng(seed + 1)
    out.mkdir(parents=True, exist_ok=True)
    acc = book.accounts
    status = np.where(acc["churn_date"].notna(), "churned", "active")
    accounts = pd.DataFrame({
        "uid": acc["account_id"],
        "display_name": "user " + acc["account_id"].str[1:],
        "signed_up": (acc["signup"] + pd.to_timedelta(rng.integers(0, 86_400, len(acc)), unit="s")).dt.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "acquisition_channel": acc["channel"],
        "age": acc["age"],
        "status": status,
        "churned_on": acc["churn_date"].dt.strftime("%Y-%m-%d").fillna(""),
        "country": rng.choice(["US", "GB", "DE", "BR", "IN"], len(acc)),
    })
    accounts.to_csv(out / "users.csv", index=False)
    plans = pd.DataFrame({
        "plan_id": "sub-" + acc["account_id"],
        "uid": acc["account_id"],
        "tier": rng.choice(["plus", "basic"], len(acc), p=(0.3, 0.7)),
        "monthly_price": np.where(rng.random(len(acc)) < 0.3, 9.99, 4.99),
        "started": acc["signup"].dt.strftime("%Y-%m-%d"),
        "billing": "monthly",
        "autorenew": "yes",
    })
    plans.to_csv(out / "plans.csv", index=False)
    rows = {"users.csv": len(accounts), "plans.csv": len(plans)}
    # raw event log, one row per event, one file per month, epoch milliseconds
    a_idx, d_idx, t_idx = np.nonzero(book.daily_counts)
    reps = book.daily_counts[a_idx, d_idx, t_idx]
    a_idx, d_idx, t_idx = np.repeat(a_idx, reps), np.repeat(d_idx, reps), np.repeat(t_idx, reps)
    day_ms = book.days.asi8[d_idx] // 1_000_000
    ts = day_ms + rng.integers(0, 86_400_000, len(day_ms))
    names = np.array([EXPORT_NAMES[t] for t in EVENT_TYPES])
    events = pd.DataFrame({"event_ts": ts, "uid": acc["account_id"].to_numpy()[a_idx], "event": names[t_idx]})
    month = pd.to_datetime(events["event_ts"], unit="ms").dt.strftime("%Y-%m")
    (out / "events").mkdir(exist_ok=True)
    for m, part in events.groupby(month, sort=True):
        part.sort_values("event_ts").to_csv(out / "events" / f"events-{m}.csv", index=False)
    rows["events"] = len(events)
    shutil.copy(Path(__file__).with_name("sources.yaml"), out / "sources.yaml")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--accounts", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=5)
    args = parser.parse_args()
    rows = write_export(simulate(args.accounts, args.seed), args.out, args.seed)
    for name, n in rows.items():
        print(f"{name}: {n:,} rows")  # noqa: T201 - a script


if __name__ == "__main__":
    main()
