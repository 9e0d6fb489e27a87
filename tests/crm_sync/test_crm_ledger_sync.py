"""Delta pushes, crash resumption through the intent ledger, and the pipeline's sync stage."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import SalesforceGeneralError

from churnflow import schema
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows
from crm_sync.client import connect, local_crm
from churnflow.salesforce_ids import make_id
from crm_sync.ledger import Ledger
from crm_sync.local.server import LocalSalesforce
from crm_sync.push.accounts import push_account_health
from crm_sync.push.tasks import push_tasks
from crm_sync.retry import RetryPolicy
from crm_sync.sync import sync_crm

from .test_crm_push import assert_accounts_match, assert_tasks_match, health_frame, seed_accounts, seed_owners, tasks_frame


@pytest.fixture
def engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


def test_account_health_delta(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy, engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    ids = seed_accounts(server, uid, 6)
    frame = health_frame(ids)
    first = push_account_health(sf, frame, retry=retry, ledger=ledger)
    assert (first.updated, first.unchanged) == (6, 0)
    again = push_account_health(sf, frame, retry=retry, ledger=ledger)
    assert (again.updated, again.unchanged, again.api_calls) == (0, 6, 0)
    frame.loc[2, ["health_score", "p_churn"]] = [3, 0.97]
    third = push_account_health(sf, frame, retry=retry, ledger=ledger)
    assert (third.updated, third.unchanged) == (1, 5)
    assert_accounts_match(server, frame)
    entries = ledger.entries("account_health")
    assert {e.status for e in entries.values()} == {"sent"} and entries[ids[2]].crm_id == ids[2]


def test_failed_records_are_retried_next_run(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy, engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    ids = seed_accounts(server, uid, 2)
    ghost = make_id("001", 777777)  # well-formed, but no such account yet
    frame = health_frame([*ids, ghost])
    first = push_account_health(sf, frame, retry=retry, ledger=ledger)
    assert [e.key for e in first.errors] == [ghost]
    assert ledger.entries("account_health", [ghost])[ghost].status == "failed"
    server.seed("Account", [{"Id": ghost, "Name": f"{uid} late"}])
    second = push_account_health(sf, frame, retry=retry, ledger=ledger)
    assert (second.updated, second.unchanged, second.failed) == (1, 2, 0)
    assert_accounts_match(server, frame)


def test_crashed_task_push_resumes_without_duplicates(server: LocalSalesforce, sf: Salesforce, uid: str, retry: RetryPolicy, engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    accounts = seed_accounts(server, uid, 5)
    emails = seed_owners(server, uid)
    tasks = tasks_frame(uid, accounts, emails, 450)  # creates go out in 3 composite calls
    # The 2nd create is applied but its response is lost, and the CRM then stays unreachable
    # for queries: the run gives up half way, as a crash would.
    server.faults.add("drop", endpoint="composite", method="POST", nth=2, after=True)
    server.faults.add("unavailable", endpoint="query", nth=4, count=1000)
    with pytest.raises(SalesforceGeneralError):
        push_tasks(sf, tasks, retry=retry, ledger=ledger)
    server.faults.clear()
    states = pd.Series({k: e.status for k, e in ledger.entries("tasks", tasks["task_key"]).items()})
    assert states.value_counts().to_dict() == {"sent": 200, "intended": 250}
    resumed = push_tasks(sf, tasks, retry=retry, ledger=ledger)
    assert resumed.failed == 0
    assert (resumed.unchanged, resumed.created) == (200 + 200, 50)  # chunk 1 by ledger, chunk 2 found in Salesforce
    assert_tasks_match(server, uid, tasks, resumed.ids)
    assert {e.status for e in ledger.entries("tasks", tasks["task_key"]).values()} == {"sent"}


# -- the pipeline stage -------------------------------------------------------------------------


def _complete(frame: pd.DataFrame, spec: schema.TableSpec, as_of: date) -> pd.DataFrame:
    """Fill the spec's columns this test does not care about, so it follows schema changes."""
    filler = {"str": "x", "int": 0, "float": 0.0, "bool": False, "date": pd.Timestamp(as_of), "timestamp": pd.Timestamp(as_of)}
    frame = frame.copy()
    for column in spec.columns:
        if column.name not in frame.columns:
            frame[column.name] = column.default if column.default is not None else filler[column.kind]
    return schema.coerce(frame, spec)


def _warehouse(engine: sa.Engine, as_of: date) -> tuple[pd.DataFrame, pd.DataFrame]:
    n = 8
    crm_ids = [make_id("001", 500000 + i) for i in range(n)]
    accounts = pd.DataFrame({
        "account_id": [f"A{i}" for i in range(n)], "name": [f"Customer {i}" for i in range(n)],
        "industry": "Software", "segment": "smb", "country": "DE",
        "created_at": pd.Timestamp("2024-01-01"),
        "owner_email": [None if i == 7 else f"csm{i % 2}@corp.test" for i in range(n)],
        "crm_account_id": crm_ids,
    })
    replace_rows(engine, "accounts", _complete(accounts, schema.ACCOUNTS, as_of), replace_all=True)
    scores = pd.DataFrame({
        "as_of_date": pd.Timestamp(as_of), "account_id": accounts["account_id"],
        "p_churn": [0.1 * i for i in range(n)], "health_score": [100 - 10 * i for i in range(n)],
        "band": ["green", "green", "yellow", "yellow", "red", "red", "red", "red"],
        "health_change_7d": 1.0, "health_change_30d": [None, 2.0, -3.0, 4.0, -5.0, 6.0, -7.0, 8.0],
        "arr": 10000.0, "arr_at_risk": [1000.0 * i for i in range(n)],
        "top_drivers": "[]", "top_drivers_text": "Logins fell\\nTickets up", "protective_driver_text": None,
        "model_name": "m", "model_version": "1", "scored_at": pd.Timestamp("2026-11-20 06:00:00"),
    })
    replace_rows(engine, "account_scores", _complete(scores, schema.ACCOUNT_SCORES, as_of), replace_all=True)
    tasks = pd.DataFrame({
        "task_key": [f"A{i}:save:{as_of}" for i in (4, 5, 6, 7)], "as_of_date": pd.Timestamp(as_of),
        "account_id": [f"A{i}" for i in (4, 5, 6, 7)], "crm_account_id": [crm_ids[i] for i in (4, 5, 6, 7)],
        "playbook": "save", "subject": "Save call", "description": "Risk is high", "priority": "High",
        "due_date": pd.Timestamp(as_of) + pd.Timedelta(days=3),
        "owner_email": ["csm0@corp.test", "csm1@corp.test", "csm0@corp.test", "renewals@corp.test"],
        "status": "Not Started", "held_out": [False, False, True, False], "crm_task_id": None,
        "created_at": pd.Timestamp("2026-11-20 06:00:00"),
    })
    replace_rows(engine, "outreach_tasks", _complete(tasks, schema.OUTREACH_TASKS, as_of), replace_all=True)
    return accounts, tasks


def test_sync_crm_end_to_end_in_local_mode(tmp_path: Path, engine: sa.Engine) -> None:
    as_of = date(2026, 11, 20)
    accounts, tasks = _warehouse(engine, as_of)
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    dry = sync_crm(engine, settings, as_of, dry_run=True)
    assert dry.planned == {"accounts": 8, "tasks": 3} and "would write" in dry.describe()
    assert not sa.inspect(engine).has_table("crm_sync_ledger")  # a dry run writes nothing
    with local_crm(settings) as server:
        assert server is not None and settings.local_crm_port == server.port
        first = sync_crm(engine, settings, as_of)
        assert first.accounts is not None and first.tasks is not None
        assert (first.accounts.updated, first.tasks.created, first.tasks.failed) == (8, 3, 0), first.describe()
        stored = read_sql(engine, "SELECT task_key, crm_task_id FROM outreach_tasks ORDER BY task_key")
        sent = stored[stored["crm_task_id"].notna()]
        assert len(sent) == 3 and all(server.get_record("Task", t) for t in sent["crm_task_id"])
        red = server.get_record("Account", accounts["crm_account_id"][6])
        assert (red["Churnflow_Health_Band__c"], red["Churnflow_Health_Score__c"], red["Churnflow_Churn_Risk__c"]) == ("Red", 40.0, 60.0)
        owner = {u["Id"]: u["Email"] for u in server.records("User")}
        assert owner[server.get_record("Account", accounts["crm_account_id"][0])["OwnerId"]] == "csm0@corp.test"
        second = sync_crm(engine, settings, as_of)
        assert second.tasks is None and second.accounts is not None and second.accounts.unchanged == 8
        assert sync_crm(engine, settings, as_of, dry_run=True).planned == {"accounts": 0, "tasks": 0}  # delta-aware
        assert len([t for t in server.records("Task") if t["Churnflow_Key__c"]]) == 3
    assert settings.local_crm_port == 0  # the picked port is not left behind
    # the org is persisted under crm_dir: a fresh connection to a restarted server sees it
    with local_crm(settings) as again:
        sf = connect(settings)
        assert sf.query("SELECT COUNT() FROM Task WHERE Priority = 'High'")["totalSize"] == 3
        assert again is not None


def test_connect_requires_credentials_for_a_real_org(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sf_username"):
        connect(Settings(home=tmp_path, crm="salesforce"))
    with pytest.raises(ValueError, match="password"):
        connect(Settings(home=tmp_path, crm="salesforce", sf_username="someone@example.com"))


def test_connect_real_mode_with_password_and_jwt(server: LocalSalesforce, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The real-org code path, pointed at the local server (trusted like a corporate CA bundle)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    caplog.set_level("DEBUG")
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert_path))
    base = {"home": tmp_path, "crm": "salesforce", "sf_domain": server.domain, "sf_username": server.username}
    sf = connect(Settings(**base, sf_password=server.password, sf_security_token=server.security_token))
    assert sf.sf_instance == f"127.0.0.1:{server.port}" and sf.query("SELECT COUNT() FROM User")["totalSize"] >= 1
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    key_file = tmp_path / "server.key"
    key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    jwt_sf = connect(Settings(**base, sf_consumer_key=server.consumer_key, sf_privatekey_file=key_file))
    assert jwt_sf.limits()["DailyApiRequests"]["Max"] > 0
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert server.password not in logged and server.security_token not in logged and sf.session_id not in logged


def test_seed_refuses_to_overwrite(server: LocalSalesforce, uid: str) -> None:
    rid = server.seed("Account", [{"Name": f"{uid} original"}])[0]
    with pytest.raises(ValueError, match="already exists"):
        server.seed("Account", [{"Id": rid, "Name": f"{uid} impostor"}])
    assert server.seed("Account", [{"Id": rid, "Name": f"{uid} impostor"}], skip_existing=True) == [rid]
    assert server.get_record("Account", rid)["Name"] == f"{uid} original"


def test_task_status_is_read_back_from_the_crm(tmp_path: Path, engine: sa.Engine) -> None:
    as_of = date(2026, 11, 20)
    _warehouse(engine, as_of)
    settings = Settings(home=tmp_path / "home", crm="local", local_crm_port=0)
    with local_crm(settings):
        sync_crm(engine, settings, as_of)
        stored = read_sql(engine, "SELECT task_key, crm_task_id, status FROM outreach_tasks WHERE crm_task_id IS NOT NULL ORDER BY task_key")
        assert set(stored["status"]) == {"Not Started"}
        done = stored.iloc[0]
        connect(settings).Task.update(done["crm_task_id"], {"Status": "Completed"})  # a CSM closes it in Salesforce
        again = sync_crm(engine, settings, as_of)
        assert again.statuses_changed == 1 and "read back" in again.describe()
        after = read_sql(engine, "SELECT task_key, status FROM outreach_tasks").set_index("task_key")["status"]
        assert after[done["task_key"]] == "Completed"
        assert (after.drop(done["task_key"]) != "Completed").all()
        assert sync_crm(engine, settings, as_of).statuses_changed == 0
