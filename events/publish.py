"""Publishing accepted events to Prefect: one Prefect event per inbox event, about the account.

The deployment trigger of ``react`` (prefect.yaml) matches :data:`EVENT_NAME` and buckets by
the account resource, so a burst for one account within the debounce window starts one run.
"""

from __future__ import annotations

import logging
from datetime import datetime, timezone

log = logging.getLogger(__name__)

EVENT_NAME = "churnflow.event.accepted"
ACCOUNT_RESOURCE_PREFIX = "churnflow.account."
ACCOUNT_LABEL = "churnflow.account_id"


def account_resource(account_id: str) -> dict[str, str]:
    return {"prefect.resource.id": f"{ACCOUNT_RESOURCE_PREFIX}{account_id}", ACCOUNT_LABEL: account_id,
            "prefect.resource.name": account_id}


def publish(event_id: str, account_id: str, kind: str, source: str) -> bool:
    """Emit the Prefect event (buffered, sent by Prefect's events worker); False when Prefect
    is not configured to emit (no PREFECT_API_URL). The inbox row is already committed: a
    publish that is lost is redone by :func:`events.intake.redeliver`."""
    from prefect.events import emit_event
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:  # no server to react: the events wait in the inbox
        return False
    # The time goes in the payload as text too: the trigger's parameter template cannot
    # serialise the event's own `occurred` (a DateTime) and would create no run at all.
    occurred = datetime.now(timezone.utc)
    try:
        sent = emit_event(
            event=EVENT_NAME,
            resource=account_resource(account_id),
            occurred=occurred,
            related=[{"prefect.resource.id": f"churnflow.inbox-event.{event_id}", "prefect.resource.role": "inbox-event"}],
            payload={"event_id": event_id, "kind": kind, "source": source, "account_id": account_id, "occurred": occurred.isoformat()},
        )
    except Exception as exc:  # noqa: BLE001 - the event is durable; redelivery retries it
        log.warning("could not publish event %s to Prefect (%s); it is redelivered later", event_id, type(exc).__name__)
        return False
    return sent is not None
