"""Fault matrix: whatever fails wherever in a push, re-running sync_crm converges.

Each fault kind is injected at the first, a middle and the last API call of a sync
(transient: one shot, the run's own retries must cope; persistent: every later matching
call fails too, the run gives up, the fault goes away, the next run must finish the job).
Afterwards the CRM holds exactly the intended state (reconcile finds nothing), every task
key exists once, and the ledger never claims a write the CRM does not hold.
"""

from __future__ import annotations

import itertools
import time
from collections import Counter
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow import schema
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows
from crm_sync.client import connect
from churnflow.salesforce_ids import make_id
from crm_sync.ledger import Ledger
from crm_sync.local.server import LocalSalesforce
from crm_sync.push.tasks import clear_owner_cache
from crm_sync.repair import intended_tasks, reconcile_with
from crm_sync.retry import RetryPolicy
from crm_sync.sync import CrmSyncFailed, load_account_health, sync_crm

from .test_crm_ledger_sync import _complete

AS_OF = date(2026, 11, 20)
RETRY = RetryPolicy(attempts=2, base_delay=0.005, max_delay=0.01)
N_ACCOUNTS, N_TASKS = 205, 205  # composite: 2 account calls, 2 task-create calls
_case = itertools.count(1)


@pytest.fixture(scope="module")
def matrix_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LocalSalesforce, Path]]:
    home = tmp_path_factory.mktemp("matrix")
    server = LocalSalesforce(cert_dir=home / "crm", page_size=2000)
    server.start()
    yield server, home
    server.stop()


def _build(engine: sa.Engine, tag: str, base: int) -> None:
    ids = [make_id("001", base + i) for i in range(N_ACCOUNTS)]
    accounts = pd.DataFrame({"account_id": [f"{tag}-A{i}" for i in range(N_ACCOUNTS)], "name": [f"{tag} customer {i}" for i in range(N_ACCOUNTS)],
                             "owner_email": [f"csm{i % 3}.{tag}@corp.test" for i in range(N_ACCOUNTS)], "crm_account_id": ids,
                             "created_at": pd.Timestamp("2024-01-01")})
    replace_rows(engine, "accounts", _complete(accounts, schema.ACCOUNTS, AS_OF), replace_all=True)
    scores = pd.DataFrame({"as_of_date": pd.Timestamp(AS_OF), "account_id": accounts["account_id"],
                           "p_churn": [i / N_ACCOUNTS for i in range(N_ACCOUNTS)], "health_score": [i % 101 for i in range(N_ACCOUNTS)],
                           "band": [("red", "yellow", "green")[i % 3] for i in range(N_ACCOUNTS)], "health_change_30d": 1.5,
                           "arr_at_risk": 100.0, "top_drivers_text": "Logins fell", "scored_at": pd.Timestamp("2026-11-20 06:00:00")})
    replace_rows(engine, "account_scores", _complete(scores, schema.ACCOUNT_SCORES, AS_OF), replace_all=True)
    tasks = pd.DataFrame({"task_key": [f"{tag}:save:{i:04d}" for i in range(N_TASKS)], "as_of_date": pd.Timestamp(AS_OF),
                          "account_id": accounts["account_id"][:N_TASKS], "crm_account_id": ids[:N_TASKS], "playbook": "save",
                          "subject": [f"Save call {i}" for i in range(N_TASKS)], "description": "Risk is high", "priority": "High",
                          "due_date": pd.Timestamp(AS_OF) + pd.Timedelta(days=3), "owner_email": accounts["owner_email"][:N_TASKS],
                          "status": "Not Started", "held_out": False, "crm_task_id": None, "created_at": pd.Timestamp("2026-11-20 06:00:00")})
    replace_rows(engine, "outreach_tasks", _complete(tasks, schema.OUTREACH_TASKS, AS_OF), replace_all=True)


# (fault kind, options) - without an endpoint: the nth data API call of the sync, whatever it is
DATA_API = {"path": r"^/services/data/"}  # the push's calls (not the login nor the local seeding)
FAULTS = {
    "limit_403": ("limit", DATA_API),
    "expired_401": ("expired", DATA_API),
    "unavailable_503": ("unavailable", DATA_API),
    "drop_before_write": ("drop", {"endpoint": "composite"}),
    "drop_after_write": ("drop", {"endpoint": "composite", "after": True}),
    "bulk_row_failures": ("bulk_row_failures", {"rows": 7}),
    # the server holds the request past the client's read timeout, then commits it: the client's
    # lookup meanwhile finds nothing (transient only: a late commit is one request's fate)
    "late_commit": ("late", {"endpoint": "composite", "delay": 1.0}),
}
# data calls of one clean sync: owner query, 2 account composites, task lookup, 2 task creates, status read-back
POSITIONS = {"first": 1, "middle": 4, "last": 7}
COMPOSITE_POSITIONS = {"first": 1, "middle": 2, "last": 4}
BULK_POSITIONS = {"first": 1, "middle": 1, "last": 2}  # upload calls: the accounts job, then the tasks job


CASES = [(f, p) for f in FAULTS for p in POSITIONS if not (f == "bulk_row_failures" and p == "middle")]  # 2 bulk jobs only


@pytest.mark.parametrize("persistent", [False, True], ids=["transient", "persistent"])
@pytest.mark.parametrize(("fault", "position"), CASES, ids=[f"{f}-{p}" for f, p in CASES])
def test_rerun_converges(matrix_env: tuple[LocalSalesforce, Path], tmp_path: Path, fault: str, position: str, persistent: bool) -> None:
    if fault == "late_commit" and persistent:
        pytest.skip("a late commit is one request's fate; a persistent one is the slow/unavailable cases")
    server, home = matrix_env
    case = next(_case)
    tag = f"fm{case:03d}"
    engine = get_engine(f"duckdb:///{tmp_path / 'w.duckdb'}")
    _build(engine, tag, 600_000 + case * 1000)
    # settle 0: a create lost before it reached the server is re-sent by the next lookup-then-create;
    # creates that commit after the client gave up are tested in test_crm_exactly_once.py
    late = fault == "late_commit"  # it needs the settle window: with 0 it duplicates every task of the chunk
    settings = Settings(home=home, crm="local", local_crm_port=server.port, crm_task_settle_seconds=600 if late else 0)
    kind, options = FAULTS[fault]
    bulk = kind == "bulk_row_failures"
    nth = (BULK_POSITIONS if bulk else COMPOSITE_POSITIONS if options.get("endpoint") == "composite" else POSITIONS)[position]
    server.faults.clear()
    clear_owner_cache()
    injected = server.faults.add(kind, nth=nth, count=1000 if persistent else 1, **options)
    sync = {"retry": RETRY, "poll_interval": 0.01, "bulk_threshold": 100 if bulk else 100_000, **({"timeout": (5, 0.4)} if late else {})}
    try:
        sync_crm(engine, settings, AS_OF, **sync)
        first_error = None
    except Exception as exc:  # noqa: BLE001 - a persistent fault may make the run give up
        first_error = exc
    if kind == "bulk_row_failures" and persistent:  # rejected rows are never silent: the run fails, naming them
        assert isinstance(first_error, CrmSyncFailed) and "rejected" in str(first_error)
    assert injected.fired >= 1, "the fault must actually hit the sync"
    if late:
        time.sleep(1.3)  # the held request commits now, long after the client gave up on it
    if not persistent and kind != "bulk_row_failures":
        assert first_error is None, f"a one-shot {kind} must be retried within the run: {first_error!r}"
    sf = connect(settings)
    ledger = Ledger(engine, create=False) if sa.inspect(engine).has_table("crm_sync_ledger") else None
    if ledger is not None:  # the ledger never claims a write the CRM does not hold
        for key, entry in ledger.entries("tasks").items():
            if entry.status == "sent":
                assert server.get_record("Task", entry.crm_id)["Churnflow_Key__c"] == key
        assert {e.status for e in ledger.entries("account_health").values()} <= {"sent", "failed", "intended"}
    server.faults.clear()
    clear_owner_cache()
    again = sync_crm(engine, settings, AS_OF, **sync)  # the next run finishes the job
    assert (again.accounts is None or again.accounts.failed == 0) and (again.tasks is None or again.tasks.failed == 0)
    assert sync_crm(engine, settings, AS_OF, dry_run=True).planned == {"accounts": 0, "tasks": 0}  # nothing left to send
    assert reconcile_with(sf, load_account_health(engine, AS_OF), intended_tasks(engine), retry=RETRY) == []
    keys = Counter(t["Churnflow_Key__c"] for t in server.records("Task") if (t["Churnflow_Key__c"] or "").startswith(tag + ":"))
    assert len(keys) == N_TASKS and set(keys.values()) == {1}, "no duplicate and no missing task"
    ledger = Ledger(engine, create=False)
    assert {e.status for e in ledger.entries("account_health").values()} == {"sent"}
    assert {e.status for e in ledger.entries("tasks").values()} == {"sent"}
    stored = read_sql(engine, "SELECT task_key, crm_task_id FROM outreach_tasks")
    assert stored["crm_task_id"].notna().all()
    assert {server.get_record("Task", t)["Churnflow_Key__c"] for t in stored["crm_task_id"]} == set(stored["task_key"])
