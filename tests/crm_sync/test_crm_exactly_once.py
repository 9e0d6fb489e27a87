"""Issue #13: nothing duplicated, nothing stale, nothing silent between the warehouse and the CRM.

Each test names the item it proves and fails without it:
2 the CRM only moves forward; 3 exactly one task per key, even when the network lies;
4 external-id matching end to end; 5 loud failures; 6 a delta that shrinks.
"""

from __future__ import annotations

import time
from collections import Counter
from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from simple_salesforce import Salesforce
from typer.testing import CliRunner

from churnflow import schema
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows
from crm_sync.client import connect, connect_local, local_crm
from churnflow.salesforce_ids import make_id
from crm_sync.ledger import Ledger
from crm_sync.local.server import LocalSalesforce
from crm_sync.push.accounts import AccountResolver, push_account_health
from crm_sync.push.tasks import REPAIR_NOTE, push_tasks
from crm_sync.repair import reconcile, repair_duplicates
from crm_sync.retry import RetryPolicy
from crm_sync.sync import CrmSyncFailed, sync_crm

from .test_crm_ledger_sync import _complete, _warehouse
from .test_crm_push import health_frame, seed_accounts, seed_owners, tasks_frame

FAST = RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02)
D1, D2, D3 = date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


def _tasks_of(server: LocalSalesforce, prefix: str) -> Counter[str]:
    return Counter(t["Churnflow_Key__c"] for t in server.records("Task") if (t["Churnflow_Key__c"] or "").startswith(prefix))


# -- 3. exactly one task per key ------------------------------------------------------------------


def test_a_create_that_commits_after_the_client_gave_up_is_never_duplicated(server: LocalSalesforce, uid: str, engine: sa.Engine) -> None:
    """The server holds the create past the client's timeout and commits it later: the lookup
    the client makes meanwhile finds nothing, and the key must stay in doubt, not be re-sent."""
    impatient = connect_local(server, timeout=(5, 0.4))
    accounts, emails = seed_accounts(server, uid, 3), seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 5)
    ledger = Ledger(engine)
    server.faults.add("late", endpoint="composite", method="POST", delay=1.2)
    first = push_tasks(impatient, tasks, retry=FAST, ledger=ledger)
    assert (first.created, first.failed, sorted(first.in_doubt)) == (0, 0, sorted(tasks["task_key"])), first.describe()
    assert {e.status for e in ledger.entries("tasks").values()} == {"in_doubt"}
    time.sleep(1.5)  # the late commit lands
    assert _tasks_of(server, uid) == Counter({k: 1 for k in tasks["task_key"]})
    second = push_tasks(impatient, tasks, retry=FAST, ledger=ledger)  # the next run finds them: nothing is created
    assert (second.created, second.failed, second.in_doubt) == (0, 0, {})
    assert _tasks_of(server, uid) == Counter({k: 1 for k in tasks["task_key"]})
    assert {e.status for e in ledger.entries("tasks").values()} == {"sent"}
    # control: without the settle window the same fault duplicates every task (the bug this prevents)
    control = tasks.assign(task_key=tasks["task_key"].str.replace(uid, uid + "c"))
    server.faults.add("late", endpoint="composite", method="POST", delay=1.2)
    push_tasks(impatient, control, retry=FAST, settle_seconds=0)
    time.sleep(1.5)
    assert set(_tasks_of(server, uid + "c").values()) == {2}


def test_a_create_whose_response_came_too_late_is_found_not_recreated(server: LocalSalesforce, uid: str) -> None:
    """The server commits, then answers after the client's timeout: the lookup finds the records."""
    impatient = connect_local(server, timeout=(5, 0.4))
    accounts, emails = seed_accounts(server, uid, 3), seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 5)
    server.faults.add("slow", endpoint="composite", method="POST", delay=1.0)
    summary = push_tasks(impatient, tasks, retry=FAST)
    assert (summary.created, summary.failed, summary.in_doubt) == (5, 0, {})
    assert _tasks_of(server, uid) == Counter({k: 1 for k in tasks["task_key"]})


def test_a_create_lost_before_the_server_saw_it_is_sent_once_the_settle_window_passed(server: LocalSalesforce, sf: Salesforce, uid: str,
                                                                                     engine: sa.Engine) -> None:
    accounts, emails = seed_accounts(server, uid, 3), seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 5)
    ledger = Ledger(engine)
    server.faults.add("drop", endpoint="composite", method="POST")  # dropped before processing: nothing committed
    first = push_tasks(sf, tasks, retry=FAST, ledger=ledger, settle_seconds=0.5)
    assert (first.created, len(first.in_doubt)) == (0, 5) and not _tasks_of(server, uid)
    assert push_tasks(sf, tasks, retry=FAST, ledger=ledger, settle_seconds=0.5).created == 0  # still within the window
    time.sleep(0.6)
    third = push_tasks(sf, tasks, retry=FAST, ledger=ledger, settle_seconds=0.5)
    assert (third.created, third.in_doubt) == (5, {})
    assert _tasks_of(server, uid) == Counter({k: 1 for k in tasks["task_key"]})


def test_reconcile_reports_duplicate_tasks_and_repair_closes_the_extras(tmp_path: Path, engine: sa.Engine) -> None:
    _warehouse(engine, D2)
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    with local_crm(settings) as server:
        assert server is not None
        sync_crm(engine, settings, D2, retry=FAST)
        assert reconcile(engine, settings, D2) == []
        original = {t["Churnflow_Key__c"]: t for t in server.records("Task") if t["Churnflow_Key__c"]}
        dupes = [{k: original[key][k] for k in ("WhatId", "OwnerId", "Subject", "Description", "Priority", "Status", "ActivityDate", "Churnflow_Key__c")}
                 for key in ("A4:save:2026-11-20", "A5:save:2026-11-20", "A5:save:2026-11-20")]
        extra_ids = server.seed("Task", dupes)  # what a lost response + blind retry leaves behind
        diffs = reconcile(engine, settings, D2)
        dup = {d.record: d for d in diffs if d.field == "(duplicate)"}
        assert set(dup) == {"A4:save:2026-11-20", "A5:save:2026-11-20"} and len(diffs) == 2
        assert "2 extra open record(s)" in dup["A5:save:2026-11-20"].describe()
        assert original["A5:save:2026-11-20"]["Id"] in dup["A5:save:2026-11-20"].describe()  # the oldest is kept
        again = sync_crm(engine, settings, D2, retry=FAST)  # a re-run creates no third copy and updates the kept one only
        assert again.tasks is None or again.tasks.created == 0
        repaired = repair_duplicates(engine, settings, retry=FAST)
        assert repaired.keys_with_duplicates == 2 and set(repaired.closed) == set(extra_ids)
        for rid in extra_ids:
            closed = server.get_record("Task", rid)
            assert closed["Status"] == "Completed" and closed["Description"].startswith(REPAIR_NOTE)
        assert all(server.get_record("Task", t["Id"])["Status"] == "Not Started" for t in original.values())
        ledger = Ledger(engine, create=False)
        assert set(ledger.entries("task_repairs")) == set(extra_ids)
        assert reconcile(engine, settings, D2) == []
        assert repair_duplicates(engine, settings, retry=FAST).keys_with_duplicates == 0
        # an open churnflow task nobody intended (another warehouse's) is an extra record
        stray = server.seed("Task", [{**dupes[0], "Churnflow_Key__c": "Z9:save:2026-11-20"}])[0]
        assert [d.describe() for d in reconcile(engine, settings, D2)] == [
            f"Task Z9:save:2026-11-20 (extra): None → 'open Task {stray} churnflow did not intend'"]
        stored = read_sql(engine, "SELECT task_key, crm_task_id FROM outreach_tasks WHERE crm_task_id IS NOT NULL")
        assert dict(zip(stored["task_key"], stored["crm_task_id"], strict=True)) == {k: t["Id"] for k, t in original.items()}


# -- 4. external-id matching end to end ----------------------------------------------------------


def _book_by_customer_number(engine: sa.Engine, numbers: list[str], as_of: date) -> None:
    n = len(numbers)
    accounts = pd.DataFrame({"account_id": [f"B{i}" for i in range(n)], "name": [f"Customer {i}" for i in range(n)],
                             "owner_email": [f"csm{i % 2}@ext.test" for i in range(n)], "crm_account_id": numbers,
                             "created_at": pd.Timestamp("2024-01-01")})
    replace_rows(engine, "accounts", _complete(accounts, schema.ACCOUNTS, as_of), replace_all=True)
    scores = pd.DataFrame({"as_of_date": pd.Timestamp(as_of), "account_id": accounts["account_id"], "p_churn": 0.3, "health_score": 70,
                           "band": "red", "health_change_30d": -2.0, "arr": 1000.0, "arr_at_risk": 300.0, "top_drivers_text": "Logins fell",
                           "scored_at": pd.Timestamp("2026-11-20 06:00:00")})
    replace_rows(engine, "account_scores", _complete(scores, schema.ACCOUNT_SCORES, as_of), replace_all=True)
    tasks = pd.DataFrame({"task_key": [f"B{i}:save:{as_of}" for i in range(n)], "as_of_date": pd.Timestamp(as_of),
                          "account_id": accounts["account_id"], "crm_account_id": numbers, "playbook": "save", "subject": "Save call",
                          "description": "Risk is high", "priority": "High", "due_date": pd.Timestamp(as_of) + pd.Timedelta(days=3),
                          "owner_email": accounts["owner_email"], "status": "Not Started", "held_out": False, "crm_task_id": None,
                          "created_at": pd.Timestamp("2026-11-20 06:00:00")})
    replace_rows(engine, "outreach_tasks", _complete(tasks, schema.OUTREACH_TASKS, as_of), replace_all=True)


def test_tasks_attach_to_accounts_matched_by_an_external_id(tmp_path: Path, engine: sa.Engine) -> None:
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0, sf_account_match_field="Customer_Number__c")
    numbers = [f"CUST-{i:04d}" for i in range(6)]
    _book_by_customer_number(engine, numbers, D2)
    with local_crm(settings) as server:
        assert server is not None
        ids = server.seed("Account", [{"Name": f"Customer {i}", "Customer_Number__c": c} for i, c in enumerate(numbers)])
        summary = sync_crm(engine, settings, D2, retry=FAST)
        assert summary.accounts is not None and summary.tasks is not None
        assert (summary.accounts.updated, summary.tasks.created, summary.tasks.failed) == (6, 6, 0), summary.describe()
        by_key = {t["Churnflow_Key__c"]: t for t in server.records("Task") if (t["Churnflow_Key__c"] or "").startswith("B")}
        assert {k: t["WhatId"] for k, t in by_key.items()} == {f"B{i}:save:{D2}": ids[i] for i in range(6)}
        assert reconcile(engine, settings, D2) == []
        # an account the org does not hold fails its task loudly instead of sending a wrong WhatId
        with engine.begin() as conn:
            conn.execute(sa.text("UPDATE outreach_tasks SET crm_account_id = 'CUST-9999', crm_task_id = NULL, task_key = 'B9:save:x' "
                                 "WHERE task_key = :k"), {"k": f"B0:save:{D2}"})
        with pytest.raises(CrmSyncFailed, match="B9:save:x: NOT_FOUND"):
            sync_crm(engine, settings, D2, retry=FAST)


def test_external_ids_are_resolved_once_per_batch_and_cached_for_the_run(server: LocalSalesforce, sf: Salesforce, uid: str,
                                                                        retry: RetryPolicy) -> None:
    numbers = [f"{uid}-N{i}" for i in range(7)]
    ids = server.seed("Account", [{"Name": n, "Customer_Number__c": n} for n in numbers])
    emails = seed_owners(server, uid)
    resolver = AccountResolver(sf, "Customer_Number__c", retry)
    health = push_account_health(sf, health_frame(numbers), match_field="Customer_Number__c", retry=retry, resolver=resolver)
    tasks = push_tasks(sf, tasks_frame(uid, numbers, emails, 7), retry=retry, resolver=resolver)
    assert (health.updated, tasks.created, tasks.failed) == (7, 7, 0)
    assert resolver.queries == 1  # one SOQL for the batch, reused by the task push (and no separate as-of query)
    assert sorted(t["WhatId"] for t in server.records("Task") if (t["Churnflow_Key__c"] or "").startswith(uid)) == sorted(ids)


# -- 2. the CRM only moves forward, 6. a delta that shrinks ---------------------------------------


def _scores(engine: sa.Engine, day: date, health: list[int], drivers: str = "Logins fell") -> None:
    """Replace the scores of ``day`` for the accounts A0..A7 of ``_warehouse``."""
    n = len(health)
    frame = pd.DataFrame({"as_of_date": pd.Timestamp(day), "account_id": [f"A{i}" for i in range(n)],
                          "p_churn": [(100 - h) / 100 + 0.001 * (day.day % 3) for h in health], "health_score": health,
                          "band": ["red" if h < 85 else "yellow" if h < 95 else "green" for h in health], "health_change_30d": 1.0,
                          "arr": 10000.0, "arr_at_risk": [100.0 * (100 - h) for h in health], "top_drivers_text": drivers,
                          "scored_at": pd.Timestamp(day) + pd.Timedelta(hours=30)})
    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM account_scores WHERE as_of_date = :d"), {"d": pd.Timestamp(day).to_pydatetime()})
    replace_rows(engine, "account_scores", _complete(frame, schema.ACCOUNT_SCORES, day))


def test_an_older_run_never_replaces_a_newer_score(tmp_path: Path, engine: sa.Engine) -> None:
    accounts, _ = _warehouse(engine, D2)
    crm_ids = list(accounts["crm_account_id"])
    _scores(engine, D1, [50] * 8)
    _scores(engine, D2, [60] * 8)
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    with local_crm(settings) as server:
        assert server is not None
        sync_crm(engine, settings, D2, retry=FAST)
        held = {rid: server.get_record("Account", rid) for rid in crm_ids}
        assert {r["Churnflow_Score_As_Of__c"] for r in held.values()} == {"2026-11-20"}
        older = sync_crm(engine, settings, D1, retry=FAST)  # ops re-run an older day from the Prefect UI
        assert older.accounts is not None and (older.accounts.older, older.accounts.updated) == (8, 0)
        lines = older.skipped_lines()
        assert sorted(line.split(" ", 2)[1] for line in lines) == sorted(accounts["account_id"])  # every account named
        assert all("older score" in line and "2026-11-20" in line for line in lines)
        assert "older score: 8" in older.describe()
        for rid in crm_ids:  # untouched, not even re-written
            assert server.get_record("Account", rid)["LastModifiedDate"] == held[rid]["LastModifiedDate"]
        # the newer day was unchanged on D3: not sent, but an older day is still refused for it
        _scores(engine, D3, [60] * 8)
        assert sync_crm(engine, settings, D3, retry=FAST).accounts.unchanged == 8  # type: ignore[union-attr]
        _scores(engine, D2, [61] * 8)  # D2 re-scored with other values
        assert sync_crm(engine, settings, D2, retry=FAST).accounts.older == 8  # type: ignore[union-attr]
        # without the ledger (lost, or another churnflow) the CRM's own as-of date refuses the older score
        with engine.begin() as conn:
            conn.execute(sa.text("DROP TABLE crm_sync_ledger"))
        fresh = sync_crm(engine, settings, D1, retry=FAST)
        assert fresh.accounts is not None and (fresh.accounts.older, fresh.accounts.updated) == (8, 0)
        assert {server.get_record("Account", rid)["Churnflow_Health_Score__c"] for rid in crm_ids} == {60.0}


def test_accounts_without_a_crm_id_are_named(tmp_path: Path, engine: sa.Engine) -> None:
    _warehouse(engine, D2)
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET crm_account_id = NULL WHERE account_id = 'A3'"))
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    with local_crm(settings):
        summary = sync_crm(engine, settings, D2, retry=FAST)
    assert summary.accounts is not None and summary.accounts.updated == 7
    assert [line for line in summary.skipped_lines() if "no crm id" in line] == [
        "account A3: no crm id - accounts.crm_account_id is empty: the account has no CRM record to write to"]
    # a rejected account is named by its account id too
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET crm_account_id = 'not-an-id' WHERE account_id = 'A5'"))
    with local_crm(settings), pytest.raises(CrmSyncFailed) as rejected:
        sync_crm(engine, settings, D2, retry=FAST)
    assert "account A5 (not-an-id): rejected - MALFORMED_ID: Account ID: id value of incorrect type: not-an-id" in rejected.value.summary.skipped_lines()


def test_unchanged_accounts_cost_no_call_and_no_record_update(server: LocalSalesforce, sf: Salesforce, uid: str, engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    ids = seed_accounts(server, uid, 6)
    day1 = health_frame(ids)
    push_account_health(sf, day1, retry=FAST, ledger=ledger)
    stamps = {rid: server.get_record("Account", rid)["LastModifiedDate"] for rid in ids}
    # next day: new as-of date, new run time, the probability drifts less than a health point
    day2 = day1.assign(as_of_date=date(2026, 11, 21), scored_at=pd.Timestamp("2026-11-21 06:30", tz="UTC"),
                       p_churn=day1["p_churn"] + 0.002, arr_at_risk=day1["arr_at_risk"] * 1.01)
    before = server.api_calls["total"]
    quiet = push_account_health(sf, day2, retry=FAST, ledger=ledger)
    assert (quiet.unchanged, quiet.sent, quiet.api_calls, server.api_calls["total"] - before) == (6, 0, 0, 0)
    assert {rid: server.get_record("Account", rid)["LastModifiedDate"] for rid in ids} == stamps  # no trigger, no field history
    assert {e.seen_as_of for e in ledger.entries("account_health").values()} == {date(2026, 11, 21)}
    moved = day2.copy()
    moved.loc[1, "p_churn"] -= 0.012  # 1.2 - 0.2 drift = one health point (one risk percentage point): a change
    moved.loc[1, "health_score"] += 1
    moved.loc[2, "top_drivers_text"] = "Tickets up"
    moved.loc[3, "band"] = "green" if moved.loc[3, "band"] != "green" else "red"
    assert push_account_health(sf, moved, retry=FAST, ledger=ledger, min_change=2).sent == 2  # 1 point is below 2
    third = push_account_health(sf, moved, retry=FAST, ledger=ledger)
    assert (third.sent, third.unchanged) == (1, 5)
    assert server.get_record("Account", ids[1])["Churnflow_Score_As_Of__c"] == "2026-11-21"
    assert server.get_record("Account", ids[0])["Churnflow_Score_As_Of__c"] == "2026-11-20"  # unchanged: its score still dates from D


# -- 5. loud failures ---------------------------------------------------------------------------


def test_the_first_login_is_retried(server: LocalSalesforce, tmp_path: Path) -> None:
    fault = server.faults.add("unavailable", endpoint="login", count=2)
    settings = Settings(home=tmp_path, crm="local", local_crm_port=server.port)
    settings_dir = settings.crm_dir
    settings_dir.mkdir(parents=True, exist_ok=True)
    (settings_dir / server.cert_path.name).write_bytes(server.cert_path.read_bytes())
    sf = connect(settings, retry=FAST)
    assert fault.fired == 2 and sf.query("SELECT COUNT() FROM User")["totalSize"] >= 1
    server.faults.add("unavailable", endpoint="login", count=10)
    from simple_salesforce.exceptions import SalesforceAuthenticationFailed

    with pytest.raises(SalesforceAuthenticationFailed):  # bounded
        connect(settings, retry=FAST)


def test_rejected_records_fail_the_cli_with_the_reasons(cli_home: sa.Engine) -> None:
    from churnflow.cli import app

    engine = cli_home
    _warehouse(engine, D2)
    with engine.begin() as conn:  # an Account the CRM does not hold: Salesforce rejects the task
        conn.execute(sa.text("UPDATE outreach_tasks SET crm_account_id = :g WHERE task_key = 'A5:save:2026-11-20'"), {"g": make_id("001", 999_998)})
    engine.dispose()
    result = CliRunner().invoke(app, ["sync", "--as-of", "2026-11-20"], catch_exceptions=False)
    assert result.exit_code == 1, result.output
    assert "1 record(s) rejected" in result.output and "A5:save:2026-11-20: rejected - INVALID_CROSS_REFERENCE_KEY" in result.output


def test_the_prefect_task_does_not_retry_rejections() -> None:
    from prefect.states import Failed

    from crm_sync.sync import SyncSummary
    from flows.tasks import retry_crm_unless_rejected

    rejected = CrmSyncFailed(SyncSummary(as_of=D2, dry_run=False))
    assert retry_crm_unless_rejected(None, None, Failed(data=rejected)) is False
    assert retry_crm_unless_rejected(None, None, Failed(data=ConnectionError("reset"))) is True


def test_a_refused_login_is_one_clear_line_not_a_traceback(server: LocalSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from churnflow.cli import app

    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert_path))
    for name, value in {"CRM": "salesforce", "SF_DOMAIN": server.domain, "SF_USERNAME": server.username,
                        "SF_PASSWORD": "wrong-password-123"}.items():
        monkeypatch.setenv(f"CHURNFLOW_{name}", value)
    (tmp_path / "home").mkdir()
    engine = get_engine(f"duckdb:///{tmp_path / 'home' / 'warehouse.duckdb'}")
    _warehouse(engine, D2)
    engine.dispose()
    logins = server.api_calls["login"]
    result = CliRunner().invoke(app, ["sync", "--as-of", "2026-11-20"], catch_exceptions=False)
    assert result.exit_code == 1 and "CRM request failed: SalesforceAuthenticationFailed" in result.output and "INVALID_LOGIN" in result.output
    assert "Traceback" not in result.output and "wrong-password-123" not in result.output
    assert server.api_calls["login"] == logins + 1  # a real rejection is not retried


def test_forward_only_and_delta_on_postgresql(tmp_path: Path, pg_engine: sa.Engine) -> None:
    """The same sync with the warehouse (scores, tasks, ledger) on PostgreSQL."""
    _warehouse(pg_engine, D2)
    _scores(pg_engine, D1, [50] * 8)
    _scores(pg_engine, D2, [60] * 8)
    _scores(pg_engine, D3, [60] * 8)
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    with local_crm(settings):
        first = sync_crm(pg_engine, settings, D2, retry=FAST)
        assert first.accounts is not None and first.tasks is not None and (first.accounts.updated, first.tasks.created) == (8, 3)
        quiet = sync_crm(pg_engine, settings, D3, retry=FAST)
        assert quiet.accounts is not None and (quiet.accounts.unchanged, quiet.accounts.api_calls) == (8, 0)
        older = sync_crm(pg_engine, settings, D1, retry=FAST)
        assert older.accounts is not None and older.accounts.older == 8
        assert reconcile(pg_engine, settings, D3) == []
