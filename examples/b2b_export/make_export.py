"""A B2B SaaS export simulated independently of churnflow's demo generator.

The shape a mid-market vendor's billing, product and help-desk exports often have, and
unlike both the demo book and ``examples/foreign_export``:

* **no surveys at all** (the mapping declares them absent);
* **open-ended monthly subscriptions**: one per product module, no end date, billed monthly
  or annually (``Monthly`` / ``Annual``), MRR in cents;
* **churn only in a churn-events table** (``churned_customers.csv``: customer, date, reason,
  and a reactivation date for the few who came back); the subscriptions export is never
  updated when a customer leaves;
* **usage keyed by subscription**: one row per subscription, user and day with an action
  count, so the mapping joins it to the subscriptions export;
* **ticket priorities spelled P1-P4** and ``Medium``, recoded in the mapping;
* semicolon-delimited files with ISO dates.

Churn is driven by a latent account health that moves month to month: falling active users
and actions, urgent tickets and slow first replies precede a churn. A few bad rows are
appended (an unknown customer, a negative action count) for the quarantine.

Usage::

    python examples/b2b_export/make_export.py /tmp/b2b [--accounts 500] [--seed 3]
    churnflow validate --mapping /tmp/b2b/sources.yaml --run-date 2026-11-01
"""

from __future__ import annotations

import argparse
import shutil
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd

START = date(2025, 4, 1)
END = date(2026, 11, 1)  # exclusive
RUN_DATE = END.isoformat()
MODULES = ("core", "analytics", "automation")
PRIORITY_SPELLING = {"urgent": "P1", "high": "P2", "normal": "Medium", "low": "P4"}


def simulate(accounts: int = 500, seed: int = 3) -> dict[str, pd.DataFrame]:
    """Customers, subscriptions, per-user daily usage, tickets and churn events."""
    rng = np.random.default_rng(seed)
    days = pd.date_range(START, END - timedelta(days=1), freq="D")
    n_days = len(days)
    ids = np.array([f"CUST-{i:04d}" for i in range(accounts)])
    joined = np.where(rng.random(accounts) < 0.5, 0, rng.integers(1, 330, accounts))
    size = rng.choice(["small", "medium", "large"], accounts, p=(0.5, 0.35, 0.15))
    users_n = np.select([size == "small", size == "medium"], [rng.integers(3, 8, accounts), rng.integers(8, 20, accounts)], rng.integers(20, 45, accounts))
    health = rng.normal(0, 1, accounts)
    alive = np.zeros(accounts, dtype=bool)
    churn_day = np.full(accounts, -1)  # the latest churn, while the account is gone
    events: list[list[int]] = []  # [account, churn day, reactivation day or -1]
    usage_parts, ticket_parts = [], []
    user_activity = rng.beta(2, 2, (accounts, 45))  # per-user base propensity to be active on a day
    for d in range(n_days):
        alive |= joined == d
        if d % 7 == 0:  # health drifts weekly
            health = 0.97 * health + rng.normal(0, 0.25, accounts)
        p_active = user_activity * (1 / (1 + np.exp(-(0.3 + 0.9 * health))))[:, None] * (0.35 if days[d].dayofweek >= 5 else 1.0)
        active = (rng.random((accounts, 45)) < p_active) & (np.arange(45)[None, :] < users_n[:, None]) & alive[:, None]
        a, u = np.nonzero(active)
        if len(a):
            actions = rng.poisson(np.exp(1.5 + 0.3 * health[a])) + 1
            usage_parts.append(pd.DataFrame({"a": a, "u": u, "d": d, "n": actions}))
        # tickets: unhealthy accounts raise more, and more urgent ones
        t_rate = (0.02 + 0.0015 * users_n) * np.exp(-0.6 * health) * alive
        raised = rng.poisson(t_rate)
        ta = np.repeat(np.arange(accounts), raised)
        if len(ta):
            urgent_p = 1 / (1 + np.exp(-(-2.2 - 1.0 * health[ta])))
            pr = np.where(rng.random(len(ta)) < urgent_p, "urgent", rng.choice(["high", "normal", "low"], len(ta), p=(0.25, 0.5, 0.25)))
            reply = rng.lognormal(np.log(90) - 0.5 * health[ta], 0.8)
            ticket_parts.append(pd.DataFrame({"a": ta, "d": d, "priority": pr, "reply": reply, "hours": rng.lognormal(3, 1, len(ta))}))
        # monthly churn decision on each account's billing day
        due = alive & ((d - joined) % 30 == 29)
        hazard = 1 / (1 + np.exp(-(-3.6 - 1.3 * health)))
        leaving = due & (rng.random(accounts) < hazard)
        churn_day[leaving] = d
        events += [[int(a), d, -1] for a in np.flatnonzero(leaving)]
        alive &= ~leaving
        # a few come back 45 days later (a reactivation; they may churn again)
        returning = (churn_day >= 0) & (d - churn_day == 45) & (rng.random(accounts) < 0.08)
        for a in np.flatnonzero(returning):
            next(e for e in reversed(events) if e[0] == a)[2] = d
        churn_day[returning] = -1
        alive |= returning
    usage = pd.concat(usage_parts, ignore_index=True)
    tickets = pd.concat(ticket_parts, ignore_index=True)
    customers = pd.DataFrame({
        "customer_id": ids, "company": [f"Company {i}" for i in range(accounts)],
        "size_band": size, "region": rng.choice(["EMEA", "NA", "APAC"], accounts),
        "customer_since": days[joined].strftime("%Y-%m-%d"),
        "csm": [f"csm{i % 7}@vendor.example" for i in range(accounts)],
    })
    subs = []
    for i in range(accounts):
        mods = MODULES[: 1 + int(rng.integers(0, 3))]
        cadence = "Annual" if rng.random() < 0.3 else "Monthly"
        for m in mods:
            subs.append({"sub_ref": f"S-{i:04d}-{m}", "customer_id": ids[i], "module": m, "licensed_users": int(users_n[i]),
                         "mrr_cents": int(users_n[i] * {"core": 2500, "analytics": 1200, "automation": 900}[m]),
                         "started": days[joined[i]].strftime("%Y-%m-%d"), "billing": cadence})
    subscriptions = pd.DataFrame(subs)
    core = subscriptions.groupby("customer_id")["sub_ref"].first()
    usage_out = pd.DataFrame({
        "sub_ref": core.reindex(ids[usage["a"]]).to_numpy(),
        "user": [f"{ids[a].lower()}-u{u}" for a, u in zip(usage["a"], usage["u"])],
        "day": days[usage["d"]].strftime("%Y-%m-%d"),
        "actions": usage["n"],
    })
    opened = days[tickets["d"]] + pd.to_timedelta(rng.integers(0, 86_400, len(tickets)), unit="s")
    solved = opened + pd.to_timedelta(tickets["hours"], unit="h")
    end = pd.Timestamp(END)
    tickets_out = pd.DataFrame({
        "ticket": [f"T{i:06d}" for i in range(len(tickets))],
        "org": ids[tickets["a"]],
        "created": opened.strftime("%Y-%m-%d %H:%M:%S"),
        "solved": pd.Series(solved).where(solved < end).dt.strftime("%Y-%m-%d %H:%M:%S").fillna("").to_numpy(),
        "priority": tickets["priority"].map(PRIORITY_SPELLING).to_numpy(),
        "first_reply_mins": tickets["reply"].round(1).to_numpy(),
    })
    tickets_out = tickets_out[pd.to_datetime(tickets_out["created"]) < end]
    ev = np.array(events, dtype=np.int64).reshape(-1, 3)
    churn_events = pd.DataFrame({
        "customer": ids[ev[:, 0]], "churned_on": days[ev[:, 1]].strftime("%Y-%m-%d"),
        "reason": rng.choice(["price", "product fit", "consolidation", "budget"], len(ev)),
        "reactivated_on": [days[b].strftime("%Y-%m-%d") if b >= 0 else "" for b in ev[:, 2]],
    })
    return {"customers": customers, "subscriptions": subscriptions, "usage": usage_out, "tickets": tickets_out, "churn_events": churn_events}


def write_export(book: dict[str, pd.DataFrame], out: Path) -> dict[str, int]:
    """Write semicolon-delimited CSVs (with a few bad rows) and a copy of sources.yaml."""
    out.mkdir(parents=True, exist_ok=True)
    usage = book["usage"].copy()
    usage.loc[len(usage)] = ["S-9999-core", "ghost-u1", "2026-10-01", 3]  # unknown subscription -> no customer
    usage.loc[len(usage)] = [usage.loc[0, "sub_ref"], usage.loc[0, "user"], "2026-10-02", -4]  # negative count
    files = {"customers.csv": book["customers"], "subscriptions.csv": book["subscriptions"], "product_usage.csv": usage,
             "helpdesk_tickets.csv": book["tickets"], "churned_customers.csv": book["churn_events"]}
    for name, frame in files.items():
        frame.to_csv(out / name, index=False, sep=";")
    shutil.copy(Path(__file__).with_name("sources.yaml"), out / "sources.yaml")
    return {name: len(frame) for name, frame in files.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--accounts", type=int, default=500)
    parser.add_argument("--seed", type=int, default=3)
    args = parser.parse_args()
    for name, n in write_export(simulate(args.accounts, args.seed), args.out).items():
        print(f"{name}: {n:,} rows")  # noqa: T201 - a script


if __name__ == "__main__":
    main()
