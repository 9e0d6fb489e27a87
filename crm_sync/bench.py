"""``churnflow bench crm``: API calls, record writes and wall time of CRM pushes to a fresh local org.

Accounts and Users are seeded in-process first (not counted). Then three daily pushes run
the way ``sync_crm`` does (ledger in a throwaway DuckDB, one account resolver per run):

* ``first_push``: day 1, every account's health fields and ``tasks`` new tasks;
* ``same_day_again``: the same day re-run (e.g. after a failure elsewhere): must cost nothing;
* ``next_day``: day 2 with realistic score drift (a daily random walk of each account's churn
  probability, a few larger jumps, the 30-day trend moving with it, some drivers changing)
  and 5% new tasks: only accounts that changed by the rule in ``crm_sync.fields`` are sent.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from datetime import date, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from churnflow.warehouse import get_engine
from crm_sync.client import connect_local
from crm_sync.ledger import Ledger
from crm_sync.local.server import LocalSalesforce
from crm_sync.push.accounts import AccountResolver, push_account_health
from crm_sync.push.bulk import BULK_THRESHOLD
from crm_sync.push.tasks import clear_owner_cache, push_tasks
from crm_sync.retry import RetryPolicy

N_OWNERS = 50
DAY1 = date(2026, 11, 20)
DRIVERS = ("Logins fell 40% in 30 days", "Two urgent tickets open", "Detractor NPS last month", "Seats unused",
           "Renewal in 45 days", "Feature adoption flat", "Champion left", "Support replies slow")


def score_history(n: int, days: int, seed: int = 7) -> np.ndarray:
    """Daily churn probabilities (days x n): a random walk in logit space around a skewed base
    rate (most accounts healthy), sigma 0.04 a day, and a 2% daily chance of a jump (sigma 0.6)."""
    rng = np.random.default_rng(seed)
    logit = rng.normal(np.log(0.06 / 0.94), 1.0, n)
    out = np.empty((days, n))
    for day in range(days):
        logit = logit + rng.normal(0, 0.04, n) + np.where(rng.random(n) < 0.02, rng.normal(0, 0.6, n), 0.0)
        out[day] = 1 / (1 + np.exp(-logit))
    return out


def health_frames(account_ids: list[str], seed: int = 7) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Day 1 and day 2 health frames of the accounts, from one 32-day score history."""
    n = len(account_ids)
    p = score_history(n, 32, seed)
    health = np.rint(100 * (1 - p)).astype(int)
    rng = np.random.default_rng(seed + 1)
    arr = rng.choice([6000.0, 12000.0, 24000.0, 60000.0, 150000.0], n)
    drivers = rng.integers(0, len(DRIVERS), (2, n))
    drivers[1] = np.where(rng.random(n) < 0.04, (drivers[0] + 1) % len(DRIVERS), drivers[0])  # 4% change driver a day

    def frame(t: int, which: int) -> pd.DataFrame:
        day = DAY1 + timedelta(days=which)
        return pd.DataFrame({
            "account_id": [f"BENCH{i:07d}" for i in range(n)], "crm_account_id": account_ids,
            "health_score": health[t], "p_churn": p[t].round(4),
            "band": np.select([p[t] >= 0.15, p[t] >= 0.05], ["red", "yellow"], "green"),
            "health_change_30d": (health[t] - health[t - 30]).astype(float),
            "top_drivers_text": [DRIVERS[d] for d in drivers[which]], "arr": arr, "arr_at_risk": (arr * p[t]).round(2),
            "scored_at": datetime(day.year, day.month, day.day, 6, 0, tzinfo=timezone.utc) + timedelta(days=1),
            "as_of_date": day,
        })

    return frame(30, 0), frame(31, 1)


def task_frame(account_ids: list[str], emails: list[str], n_tasks: int, start: int = 0) -> pd.DataFrame:
    n = len(account_ids)
    index = range(start, start + n_tasks)
    return pd.DataFrame({
        "task_key": [f"bench:save:{i:07d}" for i in index],
        "crm_account_id": [account_ids[i % n] for i in index],
        "owner_email": [emails[i % len(emails)] for i in index],
        "subject": [f"Save call {i}" for i in index],
        "description": "Health dropped",
        "priority": [("High", "Normal", "Low")[i % 3] for i in index],
        "due_date": date(2026, 12, 1),
        "status": "Not Started",
    })


def bench_crm(accounts: int = 100_000, tasks: int = 10_000, workdir: Path | None = None,
              bulk_threshold: int = BULK_THRESHOLD, min_change: float = 1.0, min_trend: float = 3.0) -> dict[str, Any]:
    """Day 1, the same day again, day 2 with drift: API calls, record writes and seconds of each."""
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        root = Path(tmp)
        server = LocalSalesforce(cert_dir=root / "crm")
        server.start()
        try:
            emails = [f"csm{i}@bench.test" for i in range(N_OWNERS)]
            server.seed("User", [{"Username": e, "Email": e, "LastName": f"Csm{i}", "IsActive": True} for i, e in enumerate(emails)])
            t0 = time.perf_counter()
            account_ids: list[str] = []
            for start in range(0, accounts, 5000):
                account_ids += server.seed("Account", [{"Name": f"Bench {i}"} for i in range(start, min(accounts, start + 5000))])
            seed_seconds = time.perf_counter() - t0
            day1, day2 = health_frames(account_ids)
            first_tasks = task_frame(account_ids, emails, tasks)
            new_tasks = task_frame(account_ids, emails, tasks // 20, start=tasks)
            engine = get_engine(f"duckdb:///{root / 'ledger.duckdb'}")
            ledger = Ledger(engine)
            sf = connect_local(server)
            policy = RetryPolicy(attempts=3, base_delay=0.5, max_delay=2.0)
            result: dict[str, Any] = {"accounts": accounts, "tasks": tasks, "seed_seconds": round(seed_seconds, 2),
                                      "min_health_change": min_change, "min_trend_change": min_trend}
            runs = {"first_push": (day1, first_tasks), "same_day_again": (day1, first_tasks.iloc[:0]), "next_day": (day2, new_tasks)}
            for run, (health, task_rows) in runs.items():
                clear_owner_cache()
                before = Counter(server.api_calls)
                t0 = time.perf_counter()
                resolver = AccountResolver(sf, "Id", policy)
                acc = push_account_health(sf, health, ledger=ledger, retry=policy, bulk_threshold=bulk_threshold, poll_interval=0.1,
                                          resolver=resolver, min_change=min_change, min_trend=min_trend)
                tsk = push_tasks(sf, task_rows, ledger=ledger, retry=policy, bulk_threshold=bulk_threshold, poll_interval=0.1,
                                 resolver=resolver) if len(task_rows) else None
                seconds = time.perf_counter() - t0
                used = Counter(server.api_calls) - before
                result[run] = {
                    "wall_seconds": round(seconds, 2),
                    "api_calls_total": used.pop("total", 0),
                    "api_calls_by_endpoint": dict(sorted(used.items())),
                    "data_calls": sum(n for k, n in used.items() if k != "login"),
                    "record_writes": acc.updated + (tsk.created + tsk.updated if tsk else 0),
                    "accounts": {"api_calls": acc.api_calls, "mode": acc.mode, "updated": acc.updated, "unchanged": acc.unchanged,
                                 "older": acc.older, "failed": acc.failed},
                    "tasks": {"api_calls": tsk.api_calls if tsk else 0, "mode": tsk.mode if tsk else "none",
                              "created": tsk.created if tsk else 0, "unchanged": tsk.unchanged if tsk else 0,
                              "failed": tsk.failed if tsk else 0},
                }
            engine.dispose()
            return result
        finally:
            server.stop()
