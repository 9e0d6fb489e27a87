"""Webhook bodies in each documented shape, built as their senders build them, and signed.

One copy for the tests, the benchmark (flows/events_bench.py) and anyone trying the intake by
hand: what a Zendesk ticket event or a Typeform response looks like is written down once.
"""

from __future__ import annotations

import json
from typing import Any

from events.auth import sign


def signed(scheme: str, payload: dict[str, Any] | bytes, secret: bytes) -> tuple[bytes, dict[str, str]]:
    """The body and headers a sender using ``scheme`` (churnflow, zendesk, typeform) posts."""
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return body, {**sign(scheme, secret, body), "Content-Type": "application/json"}


def zendesk_ticket(event_id: str, account: str, ticket: str = "5158", *, kind: str = "created", status: str = "OPEN",
                   priority: str | None = "URGENT", at: str = "2026-10-31T10:00:00Z",
                   opened_at: str = "2026-10-31T09:58:00Z") -> dict[str, Any]:
    """A Zendesk event webhook for a ticket event, in the documented shape."""
    return {
        "account_id": 22129848, "id": event_id, "subject": f"zen:ticket:{ticket}", "time": at,
        "type": f"zen:event-type:ticket.{kind}", "zendesk_event_version": "2022-11-06",
        "detail": {"actor_id": "8447388090494", "assignee_id": None, "brand_id": "8447346621310", "created_at": opened_at,
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


def failure_event(event_id: str, account: str, at: str, feature: str = "export") -> dict[str, Any]:
    """churnflow's own form for a product failure (one usage row with an error)."""
    return {"event_id": event_id, "data": {"account_id": account, "occurred_at": at, "feature": feature}}
