"""Intake fixtures: a warehouse holding a few accounts (from the demo generator) and signed posts."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from churnflow.demo_data import generate_book
from churnflow.schema import ACCOUNTS, coerce
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, replace_rows
from events.auth import sign

SECRET = b"test-webhook-secret-7d2a"


@pytest.fixture(scope="session")
def few_accounts() -> pd.DataFrame:
    return generate_book(accounts=20, days=60, seed=5)["accounts"]


def load_accounts(url: str, accounts: pd.DataFrame) -> None:
    replace_rows(get_engine(url), "accounts", coerce(accounts, ACCOUNTS), replace_all=True)


@pytest.fixture
def intake_settings(tmp_path: Path, few_accounts: pd.DataFrame) -> Settings:
    settings = Settings(home=tmp_path / "home")  # type: ignore[arg-type]
    settings.ensure_home()
    load_accounts(settings.warehouse, few_accounts)
    return settings


def signed(scheme: str, payload: dict[str, Any] | bytes, secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {**sign(scheme, secret, body), "Content-Type": "application/json"}


def zendesk_ticket(event_id: str, account: str, ticket: str = "5158", *, kind: str = "created", status: str = "OPEN",
                   priority: str | None = "URGENT", at: str = "2026-10-31T10:00:00Z") -> dict[str, Any]:
    """A Zendesk event webhook for a ticket event, in the documented shape."""
    return {
        "account_id": 22129848, "id": event_id, "subject": f"zen:ticket:{ticket}", "time": at,
        "type": f"zen:event-type:ticket.{kind}", "zendesk_event_version": "2022-11-06",
        "detail": {"actor_id": "8447388090494", "assignee_id": None, "brand_id": "8447346621310", "created_at": "2026-10-31T09:58:00Z",
                   "description": "Export fails", "external_id": None, "form_id": "8447325", "group_id": "8447320", "id": ticket,
                   "is_public": True, "organization_id": account, "priority": priority, "requester_id": "8447388090494",
                   "status": status, "subject": "Export fails", "submitter_id": "8447388090494", "tags": ["export"], "type": "PROBLEM",
                   "updated_at": at, "via": {"channel": "web_service"}},
        "event": {},
    }


def typeform_response(event_id: str, account: str, score: int, comment: str = "Support is slow, still waiting",
                      at: str = "2026-10-31T11:00:00Z") -> dict[str, Any]:
    """A Typeform form_response webhook with an NPS question and a long-text question."""
    return {
        "event_id": event_id, "event_type": "form_response",
        "form_response": {
            "form_id": "lT4Z3j", "token": f"tok-{event_id}", "landed_at": at, "submitted_at": at,
            "hidden": {"account_id": account},
            "definition": {"id": "lT4Z3j", "title": "How are we doing?", "fields": []},
            "answers": [
                {"type": "number", "number": score, "field": {"id": "nps1", "type": "nps", "ref": "nps"}},
                {"type": "text", "text": comment, "field": {"id": "why1", "type": "long_text", "ref": "why"}},
            ],
        },
    }
