"""push_account_health / push_tasks end to end against the local server, faults included."""

from __future__ import annotations

import logging
from datetime import date, datetime, timezone
from urllib.parse import quote

import numpy as np
import pandas as pd
import pytest
from simple_salesforce import Salesforce

from crm_sync.client import connect_local
from crm_sync.local.server import MAX_URI_LENGTH, LocalSalesforce
from crm_sync.push.accounts import push_account_health
from crm_sync.push.tasks import push_tasks
from crm_sync.query import in_clause_queries
from crm_sync.retry import RetryPolicy

SCORED_AT = datetime(2026, 11, 20, 6, 30, tzinfo=timezone.utc)
AS_OF = date(2026, 11, 20)


def health_frame(ids: list[str], offset: int = 0) -> pd.DataFrame:
    n = len(ids)
    return pd.DataFrame({
        "account_id": [f"acc-{i}" for i in range(n)],
        "crm_account_id": ids,
        "health_score": [(30 + i + offset) % 101 for i in range(n)],
        "band": [("red", "yellow", "green")[i % 3] for i in range(n)],
        "p_churn": [round(0.05 + 0.9 * i / max(n, 1), 4) for i in range(n)],
        "health_change_30d": [np.nan if i % 4 == 0 else float(i % 9 - 4) for i in range(n)],
        "top_drivers_text": [f"Logins fell {i}%\nTickets up" for i in range(n)],
        "arr_at_risk": [1234.567 * (i + 1) for i in range(n)],
        "scored_at": [SCORED_AT] * n,
        "as_of_date": [AS_OF] * n,
    })


def expected_account(row: pd.Series) -> dict:
    return {
        "Churnflow_Health_Score__c": float(row.health_score),
        "Churnflow_Health_Band__c": row.band.title(),
        "Churnflow_Churn_Risk__c": round(row.p_churn * 100, 2),
        "Churnflow_Health_Trend__c": None if pd.isna(row.health_change_30d) else float(row.health_change_30d),
        "Churnflow_Top_Drivers__c": row.top_drivers_text,
        "Churnflow_ARR_At_Risk__c": round(row.arr_at_risk, 2),
        "Churnflow_Scored_At__c": "2026-11-20T06:30:00.000+0000",
        "Churnflow_Score_As_Of__c": pd.Timestamp(row.as_of_date).date().isoformat(),
    }


def assert_accounts_match(server: LocalSalesforce, frame: pd.DataFrame) -> None:
    for row in frame.itertuples():
        record = server.get_record("Account", row.crm_account_id)
        assert record is not None
        want = expected_account(row)
        assert {k: record[k] for k in want} == want


def seed_accounts(server: LocalSalesforce, uid: str, n: int, **values: object) -> list[str]:
    return server.seed("Account", [{"Name": f"{uid} acct {i}", **values} for i in range(n)])


def seed_owners(server: LocalSalesforce, uid: str, n: int = 2) -> list[str]:
    emails = [f"csm{i}.{uid}@example.test" for i in range(n)]
    server.seed("User", [{"Username": e, "Email": e, "LastName": f"Csm{i}"} for i, e in enumerate(emails)])
    return emails


def tasks_frame(uid: str, accounts: list[str], emails: list[str], n: int) -> pd.DataFrame:
    return pd.DataFrame({
        "task_key": [f"{uid}:playbook:{i:05d}" for i in range(n)],
        "crm_account_id": [accounts[i % len(accounts)] for i in range(n)],
        "owner_email": [emails[i % len(emails)].upper() if i % 5 == 0 else emails[i % len(emails)] for i in range(n)],
        "subject": [f"Call about renewal #{i}" for i in range(n)],
        "description": [f"Health dropped. Driver {i}." for i in range(n)],
        "priority": [("High", "Normal", "Low")[i % 3] for i in range(n)],
        "due_date": [date(2026, 12, 1 + i % 28) for i in range(n)],
        "status": ["Not Started"] * n,
    })


def server_tasks(server: LocalSalesforce, uid: str) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for rec in server.records("Task"):
        key = rec.get("Churnflow_Key__c") or ""
        if key.startswith(uid + ":"):
            assert key not in out, f"duplicate task for {key}"
            out[key] = rec
    return out


def assert_tasks_match(server: LocalSalesforce, uid: str, frame: pd.DataFrame, ids: dict[str, str]) -> None:
    stored = server_tasks(server, uid)
    assert set(stored) == set(frame["task_key"])
    users = {u["Email"].lower(): u["Id"] for u in server.records("User")}
    for row in frame.itertuples():
        rec = stored[row.task_key]
        assert ids[row.task_key] == rec["Id"]
        assert (rec["Subject"], rec["Description"], rec["Priority"], rec["Status"]) == (row.subject, row.description, row.priority, "Not Started")
        assert rec["ActivityDate"] == row.due_date.isoformat()
        assert rec["WhatId"] == row.crm_account_id and rec["OwnerId"] == users[row.owner_email.lower()]


# -- account health ----------------------------------------------------------------------------


def test_push_account_health_composite(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    ids = seed_accounts(server, uid, 5, Churnflow_Health_Trend__c=9.0)
    frame = health_frame(ids)
    before = server.api_calls["total"]
    summary = push_account_health(sf, frame, retry=retry)
    assert (summary.sent, summary.updated, summary.failed, summary.mode) == (5, 5, 0, "composite")
    # one query (no ledger: the CRM's score as-of dates guard against older scores) + one update
    assert summary.api_calls == server.api_calls["total"] - before == 2
    assert_accounts_match(server, frame)  # NaN trend cleared the seeded 9.0
    assert server.get_record("Account", ids[0])["Churnflow_Health_Trend__c"] is None


def test_push_account_health_reports_bad_rows(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    ids = seed_accounts(server, uid, 2)
    frame = health_frame([ids[0], ids[1], "001000000000000AAA", "garbage", None])
    frame.loc[1, "band"] = "purple"
    summary = push_account_health(sf, frame, retry=retry)
    codes = {e.key: e.code for e in summary.errors}
    assert codes == {ids[1]: "INVALID_INPUT", "001000000000000AAA": "NOT_FOUND", "garbage": "MALFORMED_ID"}
    assert (summary.updated, summary.skipped) == (1, 1)


def test_push_account_health_by_external_match_field(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    ids = seed_accounts(server, uid, 3)
    # Name stands in for an external id field: the match is resolved with SOQL first
    names = [server.get_record("Account", i)["Name"] for i in ids]
    summary = push_account_health(sf, health_frame(names), match_field="Name", retry=retry)
    assert summary.updated == 3 and set(summary.ids.values()) == set(ids)
    assert server.get_record("Account", ids[2])["Churnflow_Health_Band__c"] == "Green"


def test_push_account_health_bulk_with_failing_rows(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    ids = seed_accounts(server, uid, 30, Churnflow_Health_Trend__c=7.0)
    frame = health_frame(ids, offset=3)
    server.faults.add("bulk_row_failures", rows=4)  # UNABLE_TO_LOCK_ROW inside a successful job
    summary = push_account_health(sf, frame, bulk_threshold=10, retry=retry, poll_interval=0.01)
    assert (summary.mode, summary.updated, summary.failed) == ("bulk", 30, 0)
    assert_accounts_match(server, frame)  # includes '#N/A' clearing the trend


# -- tasks ---------------------------------------------------------------------------------------


def test_push_tasks_creates_once_and_updates_changes(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    accounts = seed_accounts(server, uid, 3)
    emails = seed_owners(server, uid)
    frame = tasks_frame(uid, accounts, emails, 12)
    first = push_tasks(sf, frame, retry=retry)
    assert (first.created, first.updated, first.failed, first.mode) == (12, 0, 0, "composite")
    assert_tasks_match(server, uid, frame, first.ids)

    again = push_tasks(sf, frame, retry=retry)
    assert (again.created, again.updated, again.unchanged, again.sent) == (0, 0, 12, 0)
    assert again.ids == first.ids
    assert len(server_tasks(server, uid)) == 12

    # people own Status: a completed task is left alone; open tasks follow churnflow's changes
    sf.Task.update(first.ids[frame.task_key[0]], {"Status": "Completed"})
    changed = frame.copy()
    changed.loc[:, "subject"] = changed["subject"] + " (updated)"
    third = push_tasks(sf, changed, retry=retry)
    assert (third.created, third.updated, third.skipped) == (0, 11, 1)
    stored = server_tasks(server, uid)
    assert stored[frame.task_key[0]]["Subject"] == frame.subject[0]
    assert stored[frame.task_key[1]]["Subject"] == frame.subject[1] + " (updated)"


def test_push_tasks_reports_unusable_rows(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    accounts = seed_accounts(server, uid, 1)
    emails = seed_owners(server, uid, 1)
    frame = tasks_frame(uid, accounts, emails, 5)
    frame.loc[1, "owner_email"] = f"nobody.{uid}@example.test"
    frame.loc[2, "priority"] = "Urgent"
    frame.loc[3, "crm_account_id"] = None
    frame.loc[4, "owner_email"] = None  # no owner: assigned to the integration user
    summary = push_tasks(sf, frame, retry=retry)
    assert {e.key: e.code for e in summary.errors} == {
        frame.task_key[1]: "OWNER_NOT_FOUND", frame.task_key[2]: "INVALID_INPUT"}
    assert [(s.key, s.reason) for s in summary.skips] == [(frame.task_key[3], "no crm id")]  # skipped and named, not rejected
    stored = server_tasks(server, uid)
    assert set(stored) == {frame.task_key[0], frame.task_key[4]}
    assert stored[frame.task_key[4]]["OwnerId"] == server.integration_user_id


def test_push_tasks_bulk(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    accounts = seed_accounts(server, uid, 4)
    emails = seed_owners(server, uid)
    frame = tasks_frame(uid, accounts, emails, 40)
    server.faults.add("bulk_row_failures", rows=3)
    summary = push_tasks(sf, frame, bulk_threshold=20, retry=retry, poll_interval=0.01)
    assert (summary.mode, summary.created, summary.failed) == ("bulk", 40, 0)
    assert_tasks_match(server, uid, frame, summary.ids)
    assert push_tasks(sf, frame, bulk_threshold=20, retry=retry).created == 0


def test_lookups_respect_uri_length(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    keys = [f"{uid}:{'x' * 60}:{i:05d}" for i in range(800)]
    queries = list(in_clause_queries(sf, "SELECT Id FROM Task", "Churnflow_Key__c", keys))
    assert len(queries) > 1
    for soql in queries:
        assert len(sf.base_url + "queryAll/?q=" + quote(soql)) < MAX_URI_LENGTH
    accounts = seed_accounts(server, uid, 1)
    emails = seed_owners(server, uid, 1)
    frame = tasks_frame(uid, accounts, emails, 800)
    frame["task_key"] = keys
    before = len(server.request_log)
    summary = push_tasks(sf, frame, retry=retry)
    assert summary.created == 800 and summary.failed == 0
    assert all(status != 414 for _, _, status in server.request_log[before:])


# -- faults: the final CRM state must be exactly as intended ----------------------------------

FAULTS = {
    "403 request limit on a composite call": ("limit", {"endpoint": "composite", "nth": 2, "count": 2}),
    "401 expired session on a composite call": ("expired", {"endpoint": "composite", "nth": 2}),
    "503 on a query": ("unavailable", {"endpoint": "query", "nth": 2, "count": 2}),
    "dropped before a create": ("drop", {"endpoint": "composite", "method": "POST", "nth": 1}),
    "dropped after a create was applied": ("drop", {"endpoint": "composite", "method": "POST", "nth": 2, "after": True}),
    "dropped after an update was applied": ("drop", {"endpoint": "composite", "method": "PATCH", "after": True}),
}


@pytest.mark.parametrize("fault", list(FAULTS), ids=list(FAULTS))
def test_composite_pushes_survive_faults(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy, fault: str) -> None:
    kind, options = FAULTS[fault]
    accounts = seed_accounts(server, uid, 250)
    emails = seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 450)  # 3 create calls
    health = health_frame(accounts)  # 2 update calls
    injected = server.faults.add(kind, **options)
    logins = server.api_calls["login"]
    # settle 0: a create whose response was lost is re-sent as soon as the lookup does not find it
    # (the default waits for a late commit first: test_a_create_that_commits_late_is_never_duplicated)
    task_summary = push_tasks(sf, tasks, retry=retry, settle_seconds=0)
    health_summary = push_account_health(sf, health, retry=retry)
    assert injected.fired == injected.count, "the fault never triggered"
    assert task_summary.failed == 0 and health_summary.failed == 0
    assert_tasks_match(server, uid, tasks, task_summary.ids)
    assert_accounts_match(server, health)
    if kind == "expired":  # simple-salesforce itself re-logs in for REST calls
        assert server.api_calls["login"] == logins + 1
    else:
        assert task_summary.retries + health_summary.retries >= 1


@pytest.mark.parametrize(("kind", "options"), [
    ("expired", {"endpoint": "bulk2", "nth": 1}),  # job creation
    ("expired", {"endpoint": "bulk2", "method": "PUT"}),  # upload: the open job is abandoned
    ("unavailable", {"endpoint": "bulk2", "method": "PATCH", "count": 2}),  # close rejected
    ("drop", {"endpoint": "bulk2", "method": "PATCH", "after": True}),  # close applied, response lost
    ("limit", {"endpoint": "bulk2", "method": "GET", "nth": 2}),  # polling / results
    ("expired", {"endpoint": "bulk2", "path": "successfulResults"}),
], ids=["401-create", "401-upload", "503-close", "drop-after-close", "403-poll", "401-results"])
def test_bulk_pushes_survive_faults(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy, kind: str, options: dict) -> None:
    accounts = seed_accounts(server, uid, 3)
    emails = seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 25)
    injected = server.faults.add(kind, **options)
    summary = push_tasks(sf, tasks, bulk_threshold=10, retry=retry, poll_interval=0.01)
    assert injected.fired == injected.count
    assert (summary.mode, summary.created, summary.failed) == ("bulk", 25, 0)
    assert_tasks_match(server, uid, tasks, summary.ids)


def test_timeouts_are_retried_without_duplicates(server: LocalSalesforce, uid: str, retry: RetryPolicy) -> None:
    sf = connect_local(server, timeout=(5, 1.0))
    accounts = seed_accounts(server, uid, 2)
    emails = seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 10)
    injected = server.faults.add("slow", endpoint="composite", delay=2.0)  # applied, but the client gives up
    summary = push_tasks(sf, tasks, retry=retry)
    assert injected.fired == 1 and summary.retries >= 1
    assert summary.created == 10 and summary.failed == 0
    assert_tasks_match(server, uid, tasks, summary.ids)


def test_retries_are_bounded(server: LocalSalesforce, sf: Salesforce, uid: str) -> None:
    from simple_salesforce.exceptions import SalesforceGeneralError

    ids = seed_accounts(server, uid, 2)
    server.faults.add("unavailable", endpoint="composite", count=100)
    before = server.api_calls["composite"]
    with pytest.raises(SalesforceGeneralError):
        push_account_health(sf, health_frame(ids), retry=RetryPolicy(attempts=3, base_delay=0.01, max_delay=0.02))
    assert server.api_calls["composite"] - before == 3


def test_credentials_never_logged(server: LocalSalesforce, uid: str, retry: RetryPolicy, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sf = connect_local(server)
    accounts = seed_accounts(server, uid, 2)
    emails = seed_owners(server, uid)
    server.faults.add("expired", endpoint="composite")
    server.faults.add("expired", endpoint="bulk2")
    push_tasks(sf, tasks_frame(uid, accounts, emails, 4), retry=retry)
    push_account_health(sf, health_frame(accounts), retry=retry, bulk_threshold=1, poll_interval=0.01)
    assert any("session expired" in r.getMessage() for r in caplog.records)
    text = "\n".join(f"{r.getMessage()} {r.args!r} {r.exc_text or ''}" for r in caplog.records)
    for secret in (server.password, server.security_token, sf.session_id):
        assert secret not in text


def test_push_tasks_respects_deleted_tasks_and_windows_newlines(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy) -> None:
    accounts = seed_accounts(server, uid, 2)
    emails = seed_owners(server, uid)
    frame = tasks_frame(uid, accounts, emails, 30)
    frame.loc[:, "description"] = frame["description"] + "\r\nSecond line, \"quoted\", with commas"
    first = push_tasks(sf, frame, bulk_threshold=10, retry=retry, poll_interval=0.01)
    assert (first.mode, first.created, first.failed) == ("bulk", 30, 0)
    assert_tasks_match(server, uid, frame, first.ids)
    deleted = first.ids[frame.task_key[3]]
    sf.Task.delete(deleted)
    again = push_tasks(sf, frame, retry=retry)
    assert (again.created, again.skipped, again.unchanged) == (0, 1, 29)  # a CSM deleted it: not recreated
    assert again.ids[frame.task_key[3]] == deleted


@pytest.mark.parametrize("endpoint", ["composite", "bulk2"])
def test_expired_session_and_a_failing_login(server: LocalSalesforce, uid: str, retry: RetryPolicy, endpoint: str) -> None:
    sf = connect_local(server)
    accounts = seed_accounts(server, uid, 12)
    server.faults.add("expired", endpoint=endpoint)
    server.faults.add("unavailable", endpoint="login", count=2)  # the re-login itself hits 503s first
    summary = push_account_health(sf, health_frame(accounts), retry=retry, bulk_threshold=10 if endpoint == "bulk2" else 100,
                                  poll_interval=0.01)
    assert summary.updated == 12 and summary.failed == 0
    assert not server.faults.pending
    assert_accounts_match(server, health_frame(accounts))
