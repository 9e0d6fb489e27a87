"""The intake over HTTP (FastAPI's test client): signatures, idempotency, refusals, vendor shapes."""

from __future__ import annotations

import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from events.intake import create_app
from events.shapes import SHAPES
from tests.events.conftest import SECRET, signed, typeform_response, zendesk_ticket


@pytest.fixture
def client(intake_settings: Settings) -> TestClient:
    app = create_app(intake_settings, {name: SECRET for name in SHAPES}, publish_events=False)
    with TestClient(app) as c:
        yield c


def _inbox(settings: Settings) -> pd.DataFrame:
    return read_sql(get_engine(settings.warehouse), "SELECT * FROM event_inbox ORDER BY event_id")


def _quarantine(settings: Settings) -> pd.DataFrame:
    return read_sql(get_engine(settings.warehouse), "SELECT * FROM quarantine WHERE table_name = 'event_inbox'")


def test_zendesk_ticket_maps_to_the_canonical_ticket(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[3])
    body, headers = signed("zendesk", zendesk_ticket("zd-1", account, priority="HIGH"))
    answer = client.post("/events/zendesk", content=body, headers=headers)
    assert answer.status_code == 202, answer.text
    row = _inbox(intake_settings).iloc[0]
    assert (row["event_id"], row["account_id"], row["kind"], row["table_name"]) == ("zd-1", account, "ticket.created", "tickets")
    ticket = json.loads(row["row_json"])
    assert ticket["ticket_id"] == "5158" and ticket["priority"] == "high" and ticket["channel"] == "web"
    assert ticket["opened_at"] == "2026-10-31T09:58:00" and ticket["closed_at"] is None


def test_zendesk_solved_ticket_is_a_close(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[0])
    body, headers = signed("zendesk", zendesk_ticket("zd-2", account, kind="status_changed", status="SOLVED", at="2026-10-31T12:30:00Z"))
    assert client.post("/events/zendesk", content=body, headers=headers).status_code == 202
    row = _inbox(intake_settings).iloc[0]
    assert row["kind"] == "ticket.closed" and json.loads(row["row_json"])["closed_at"] == "2026-10-31T12:30:00"


def test_typeform_response_maps_to_a_survey(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[1])
    body, headers = signed("typeform", typeform_response("tf-1", account, score=2))
    assert client.post("/events/typeform", content=body, headers=headers).status_code == 202
    survey = json.loads(_inbox(intake_settings).iloc[0]["row_json"])
    assert survey == {"account_id": account, "comment": "Support is slow, still waiting", "kind": "nps", "response_id": "tok-tf-1",
                      "score": 2.0, "submitted_at": "2026-10-31T11:00:00"}


def test_canonical_failure_event_becomes_a_usage_row(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[2])
    payload = {"event_id": "f-1", "data": {"account_id": account, "occurred_at": "2026-10-31T08:00:00Z", "feature": "export"}}
    body, headers = signed("churnflow", payload)
    assert client.post("/events/failure", content=body, headers=headers).status_code == 202
    usage = json.loads(_inbox(intake_settings).iloc[0]["row_json"])
    assert usage["errors"] == 1 and usage["quantity"] == 1.0 and usage["feature"] == "export"


def test_bad_signature_is_refused_and_nothing_is_stored(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[0])
    body, headers = signed("typeform", typeform_response("tf-bad", account, score=9), secret=b"not-the-secret")
    answer = client.post("/events/typeform", content=body, headers=headers)
    assert answer.status_code == 401 and "Typeform-Signature" in answer.json()["reason"]
    body, headers = signed("typeform", typeform_response("tf-bad", account, score=9))
    tampered = body.replace(b'"number": 9', b'"number": 0')
    assert client.post("/events/typeform", content=tampered, headers=headers).status_code == 401
    assert client.post("/events/typeform", content=body, headers={"Content-Type": "application/json"}).status_code == 401
    assert _inbox(intake_settings).empty


def test_duplicate_event_id_changes_nothing(client: TestClient, intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[0])
    body, headers = signed("zendesk", zendesk_ticket("zd-dup", account))
    assert client.post("/events/zendesk", content=body, headers=headers).status_code == 202
    before = _inbox(intake_settings)
    body2, headers2 = signed("zendesk", zendesk_ticket("zd-dup", account, priority="LOW"))  # a redelivery, changed or not
    again = client.post("/events/zendesk", content=body2, headers=headers2)
    assert again.status_code == 200 and again.json()["status"] == "duplicate"
    pd.testing.assert_frame_equal(_inbox(intake_settings), before)


def test_bad_payload_is_refused_with_the_field_and_quarantined(client: TestClient, intake_settings: Settings,
                                                              few_accounts: pd.DataFrame) -> None:
    account = str(few_accounts["account_id"].iloc[0])
    body, headers = signed("typeform", typeform_response("tf-range", account, score=14))
    answer = client.post("/events/typeform", content=body, headers=headers)
    assert answer.status_code == 422 and answer.json()["field"] == "score" and "0-10" in answer.json()["reason"]
    body, headers = signed("zendesk", zendesk_ticket("zd-who", "NO-SUCH-ACCOUNT"))
    answer = client.post("/events/zendesk", content=body, headers=headers)
    assert answer.status_code == 422 and answer.json()["field"] == "account_id" and "unknown account_id" in answer.json()["reason"]
    body, headers = signed("churnflow", b"{not json")
    assert client.post("/events/survey", content=body, headers=headers).status_code == 400
    quarantined = _quarantine(intake_settings)
    assert set(quarantined["field"]) == {"score", "account_id", "body"}
    assert set(quarantined["source_key"].dropna()) == {"tf-range", "zd-who"}
    assert not len(read_sql(get_engine(intake_settings.warehouse), "SELECT * FROM event_inbox"))


def test_redelivery_backs_off_per_account_while_events_wait(intake_settings: Settings, few_accounts: pd.DataFrame) -> None:
    """Unapplied events are re-published, but not every round: a queued reaction is not a lost one."""
    from datetime import datetime, timedelta

    from events.intake import REDELIVER_AFTER, Intake
    from events.shapes import SHAPES

    intake = Intake(intake_settings, {name: SECRET for name in SHAPES}, publish_events=False)
    accounts = [str(a) for a in few_accounts["account_id"].iloc[:2]]
    for i, account in enumerate(accounts):
        body, headers = signed("zendesk", zendesk_ticket(f"zd-wait-{i}", account, ticket=f"W{i}"))
        assert intake.handle("zendesk", body, headers)[0] == 202
    start = datetime.utcnow()
    assert intake.redeliver(now=start) == 0  # just received: their reaction may still come
    first = start + REDELIVER_AFTER + timedelta(seconds=1)
    assert intake.redeliver(now=first) == 2
    assert intake.redeliver(now=first + timedelta(seconds=30)) == 0  # the next round waits
    assert intake.redeliver(now=first + REDELIVER_AFTER + timedelta(seconds=1)) == 2
    assert intake.redeliver(now=first + 2 * REDELIVER_AFTER + timedelta(seconds=2)) == 0  # the wait doubled
    assert intake.redeliver(now=first + 3 * REDELIVER_AFTER + timedelta(seconds=2)) == 2
