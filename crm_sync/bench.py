"""``churnflow bench crm``: API calls and wall time of a large push to a fresh local org.

Accounts and Users are seeded in-process first (not counted). Then the accounts' health
fields and the tasks are pushed the way ``sync_crm`` does (ledger in a throwaway DuckDB),
and the same push is repeated: the ledger must make the second one free of data calls.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from churnflow.warehouse import get_engine
from crm_sync.client import connect_local
from crm_sync.ledger import Ledger
from crm_sync.local_server import LocalSalesforce
from crm_sync.push import BULK_THRESHOLD, RetryPolicy, clear_owner_cache, push_account_health, push_tasks

N_OWNERS = 50


def _frames(account_ids: list[str], emails: list[str], n_tasks: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = len(account_ids)
    health = pd.DataFrame({
        "crm_account_id": account_ids,
        "health_score": [(i * 7) % 101 for i in range(n)],
        "band": [("red", "yellow", "green")[i % 3] for i in range(n)],
        "p_churn": [round((i % 1000) / 1000, 4) for i in range(n)],
        "health_change_30d": [float(i % 9 - 4) for i in range(n)],
        "top_drivers_text": [f"Logins fell {i % 50}%" for i in range(n)],
        "arr_at_risk": [100.0 + i % 5000 for i in range(n)],
        "scored_at": datetime(2026, 11, 20, 6, 0, tzinfo=timezone.utc),
        "as_of_date": date(2026, 11, 20),
    })
    tasks = pd.DataFrame({
        "task_key": [f"bench:save:{i:07d}" for i in range(n_tasks)],
        "crm_account_id": [account_ids[i % n] for i in range(n_tasks)],
        "owner_email": [emails[i % len(emails)] for i in range(n_tasks)],
        "subject": [f"Save call {i}" for i in range(n_tasks)],
        "description": "Health dropped",
        "priority": [("High", "Normal", "Low")[i % 3] for i in range(n_tasks)],
        "due_date": date(2026, 12, 1),
        "status": "Not Started",
    })
    return health, tasks


def bench_crm(accounts: int = 100_000, tasks: int = 10_000, workdir: Path | None = None,
              bulk_threshold: int = BULK_THRESHOLD) -> dict[str, Any]:
    """Push ``accounts`` changed accounts and ``tasks`` new tasks; return calls and seconds, twice."""
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
            health, task_frame = _frames(account_ids, emails, tasks)
            engine = get_engine(f"duckdb:///{root / 'ledger.duckdb'}")
            ledger = Ledger(engine)
            sf = connect_local(server)
            policy = RetryPolicy(attempts=3, base_delay=0.5, max_delay=2.0)
            result: dict[str, Any] = {"accounts": accounts, "tasks": tasks, "seed_seconds": round(seed_seconds, 2)}
            for run in ("first_push", "second_push"):
                clear_owner_cache()
                before = Counter(server.api_calls)
                t0 = time.perf_counter()
                acc = push_account_health(sf, health, ledger=ledger, retry=policy, bulk_threshold=bulk_threshold, poll_interval=0.1)
                tsk = push_tasks(sf, task_frame, ledger=ledger, retry=policy, bulk_threshold=bulk_threshold, poll_interval=0.1)
                seconds = time.perf_counter() - t0
                used = Counter(server.api_calls) - before
                result[run] = {
                    "wall_seconds": round(seconds, 2),
                    "api_calls_total": used.pop("total", 0),
                    "api_calls_by_endpoint": dict(sorted(used.items())),
                    "data_calls": sum(n for k, n in used.items() if k != "login"),
                    "accounts": {"api_calls": acc.api_calls, "mode": acc.mode, "updated": acc.updated, "unchanged": acc.unchanged, "failed": acc.failed},
                    "tasks": {"api_calls": tsk.api_calls, "mode": tsk.mode, "created": tsk.created, "unchanged": tsk.unchanged, "failed": tsk.failed},
                }
            engine.dispose()
            return result
        finally:
            server.stop()
