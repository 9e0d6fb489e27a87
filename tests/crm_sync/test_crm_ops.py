"""--retry-failed, --reconcile and the dry-run plan, against the local server."""

from __future__ import annotations

from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows
from crm_sync.client import connect, local_crm
from churnflow.salesforce_ids import make_id
from crm_sync.ledger import Ledger
from crm_sync.plan import estimate_api_calls
from crm_sync.repair import Difference, reconcile
from crm_sync.retry import RetryPolicy
from crm_sync.sync import CrmSyncFailed, retry_failed, sync_crm

from .test_crm_ledger_sync import _warehouse

AS_OF = date(2026, 11, 20)
FAST = RetryPolicy(attempts=2, base_delay=0.01, max_delay=0.02)


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(home=tmp_path / "home", crm="local", local_crm_port=0)


def test_reconcile_reports_changes_made_behind_churnflows_back(engine: sa.Engine, settings: Settings) -> None:
    accounts, _ = _warehouse(engine, AS_OF)
    with local_crm(settings) as server:
        assert server is not None
        sync_crm(engine, settings, AS_OF, retry=FAST)
        assert reconcile(engine, settings, AS_OF) == []
        sf = connect(settings)
        acct = accounts["crm_account_id"][6]
        sf.Account.update(acct, {"Churnflow_Health_Score__c": 99, "Churnflow_Health_Band__c": "Green"})
        key = "A4:save:2026-11-20"
        task_id = read_sql(engine, "SELECT crm_task_id FROM outreach_tasks WHERE task_key = :k", {"k": key})["crm_task_id"][0]
        sf.Task.update(task_id, {"Subject": "Edited by a CSM"})
        before = Counter(server.api_calls)
        ledger_before = read_sql(engine, "SELECT * FROM crm_sync_ledger ORDER BY kind, record_key")
        diffs = reconcile(engine, settings, AS_OF)
        assert set(diffs) == {
            Difference("Account", acct, "Churnflow_Health_Score__c", 40.0, 99.0),
            Difference("Account", acct, "Churnflow_Health_Band__c", "Red", "Green"),
            Difference("Task", key, "Subject", "Save call", "Edited by a CSM"),
        }
        assert "→" in diffs[0].describe()
        used = Counter(server.api_calls) - before
        assert set(used) <= {"total", "login", "query"}  # read-only
        pd.testing.assert_frame_equal(ledger_before, read_sql(engine, "SELECT * FROM crm_sync_ledger ORDER BY kind, record_key"))
        sf.Task.delete(task_id)
        assert Difference("Task", key, "(record)", "exists", "deleted") in reconcile(engine, settings, AS_OF)


def test_retry_failed_resends_exactly_the_failed_bulk_rows(engine: sa.Engine, settings: Settings) -> None:
    accounts, _ = _warehouse(engine, AS_OF)
    with local_crm(settings) as server:
        assert server is not None
        # every bulk job fails its first 3 rows: they still fail after the push's own retry rounds
        server.faults.add("bulk_row_failures", endpoint="bulk2", rows=3, count=100)
        with pytest.raises(CrmSyncFailed, match="3 record\\(s\\) rejected") as rejected:  # loud: the run fails
            sync_crm(engine, settings, AS_OF, retry=FAST, bulk_threshold=5, poll_interval=0.02)
        first = rejected.value.summary
        assert first.accounts is not None and (first.accounts.mode, first.accounts.failed, first.accounts.updated) == ("bulk", 3, 5)
        ledger = Ledger(engine, create=False)
        failed = {k for k, e in ledger.entries("account_health").items() if e.status == "failed"}
        assert len(failed) == 3
        server.faults.clear()
        before = Counter(server.api_calls)
        result = retry_failed(engine, settings, AS_OF, retry=FAST, bulk_threshold=5, poll_interval=0.02)
        assert result.failed_before == {"account_health": 3, "tasks": 0}
        assert result.accounts is not None and (result.accounts.sent, result.accounts.updated, result.accounts.failed) == (3, 3, 0)
        assert result.tasks is None and "3 now confirmed" in result.describe()
        assert (Counter(server.api_calls) - before)["bulk2"] == 0  # 3 rows go by composite
        assert {e.status for e in ledger.entries("account_health").values()} == {"sent"}
        assert reconcile(engine, settings, AS_OF) == []
        again = retry_failed(engine, settings, AS_OF, retry=FAST)
        assert again.accounts is None and "no failed records" in again.describe()


def test_retry_failed_resends_failed_composite_tasks(engine: sa.Engine, settings: Settings) -> None:
    _warehouse(engine, AS_OF)
    ghost = make_id("001", 999_999)  # an Account the CRM does not hold yet: a per-record composite error
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE outreach_tasks SET crm_account_id = :g WHERE task_key = 'A5:save:2026-11-20'"), {"g": ghost})
    with local_crm(settings) as server:
        assert server is not None
        with pytest.raises(CrmSyncFailed, match="INVALID_CROSS_REFERENCE_KEY") as rejected:
            sync_crm(engine, settings, AS_OF, retry=FAST)
        first = rejected.value.summary
        assert first.tasks is not None and (first.tasks.created, first.tasks.failed) == (2, 1)
        assert any(line.startswith("task A5:save:2026-11-20: rejected") for line in first.skipped_lines())
        assert first.tasks.errors[0].code == "INVALID_CROSS_REFERENCE_KEY"
        ledger = Ledger(engine, create=False)
        assert {k for k, e in ledger.entries("tasks").items() if e.status == "failed"} == {"A5:save:2026-11-20"}
        server.seed("Account", [{"Id": ghost, "Name": "late account"}])
        before = Counter(server.api_calls)
        result = retry_failed(engine, settings, AS_OF, retry=FAST)
        assert result.accounts is None and result.tasks is not None
        assert (result.tasks.sent, result.tasks.created, result.tasks.failed) == (1, 1, 0)
        assert (Counter(server.api_calls) - before)["composite"] == 1
        keys = Counter(t["Churnflow_Key__c"] for t in server.records("Task") if t["Churnflow_Key__c"])
        assert keys == Counter({"A4:save:2026-11-20": 1, "A5:save:2026-11-20": 1, "A7:save:2026-11-20": 1})
        stored = read_sql(engine, "SELECT task_key FROM outreach_tasks WHERE crm_task_id IS NOT NULL")
        assert set(stored["task_key"]) == set(keys)


def test_dry_run_shows_changes_and_api_calls(engine: sa.Engine, settings: Settings) -> None:
    accounts, _ = _warehouse(engine, AS_OF)
    dry = sync_crm(engine, settings, AS_OF, dry_run=True)
    assert dry.planned == {"accounts": 8, "tasks": 3}
    assert dry.api_estimate["account_writes"] == 1 and dry.api_estimate["task_writes"] == 1
    assert dry.api_estimate["as_of_checks"] == 1  # accounts never confirmed: their CRM as-of dates are read first
    assert len([c for c in dry.changes if c.sobject == "Account"]) == 8 * 8
    assert all(not c.old_known for c in dry.changes if c.sobject == "Account")
    assert "API calls" in dry.describe()
    with local_crm(settings):
        sync_crm(engine, settings, AS_OF, retry=FAST)
    # the next day only account A2's score moves: the plan names that field with old -> new
    nxt = date(2026, 11, 21)
    day = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp(AS_OF).to_pydatetime()})
    day["as_of_date"] = pd.Timestamp(nxt)
    day.loc[day["account_id"] == "A2", ["health_score", "p_churn"]] = [55, 0.45]
    replace_rows(engine, "account_scores", day, where={"as_of_date": pd.Timestamp(nxt).to_pydatetime()})
    tables = set(sa.inspect(engine).get_table_names())
    dry2 = sync_crm(engine, settings, nxt, dry_run=True)
    assert dry2.planned == {"accounts": 1, "tasks": 0}
    by_field = {c.field: c for c in dry2.changes}
    assert set(by_field) == {"Churnflow_Health_Score__c", "Churnflow_Churn_Risk__c", "Churnflow_Score_As_Of__c"}
    change = by_field["Churnflow_Health_Score__c"]
    assert (change.record, change.field, change.old_known, change.old, change.new) == (
        accounts["crm_account_id"][2], "Churnflow_Health_Score__c", True, 80.0, 55.0)
    assert (by_field["Churnflow_Churn_Risk__c"].old, by_field["Churnflow_Churn_Risk__c"].new) == (20.0, 45.0)
    assert (by_field["Churnflow_Score_As_Of__c"].old, by_field["Churnflow_Score_As_Of__c"].new) == ("2026-11-20", "2026-11-21")
    assert "80 → 55" in change.describe()
    assert dry2.api_estimate == {"login": 1, "account_writes": 1, "total": 2}
    assert set(sa.inspect(engine).get_table_names()) == tables


def test_estimate_api_calls() -> None:
    assert estimate_api_calls(450, 0)["account_writes"] == 3
    assert estimate_api_calls(100_000, 10_000, 40)["total"] == 1 + 7 + 1 + 20 + 7 + 1
    assert estimate_api_calls(0, 0) == {"login": 0, "total": 0}
    assert estimate_api_calls(10_000, 0, n_unverified=10_000)["as_of_checks"] == 20
