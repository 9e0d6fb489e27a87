"""Composite sObject collections: up to 200 records per call, row errors read back.

Below the bulk threshold a push writes this way. Row failures with a transient code
(``UNABLE_TO_LOCK_ROW`` ...) go round again; updates are idempotent, so a retry after an
ambiguous failure simply sends them again. Creates, which are not, live with the task push
(:mod:`crm_sync.push.tasks`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from simple_salesforce import Salesforce

from crm_sync.push.results import PushSummary
from crm_sync.retry import RetryPolicy, call_with_retry

log = logging.getLogger(__name__)

T = TypeVar("T")

COMPOSITE_BATCH = 200
#: Record-level error codes that are worth retrying: the same write later usually succeeds.
TRANSIENT_ROW_ERRORS = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"})


def chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def first_error(result: dict[str, Any]) -> tuple[str, str]:
    errors = result.get("errors") or [{}]
    return str(errors[0].get("statusCode", "UNKNOWN")), str(errors[0].get("message", ""))


def composite_update(sf: Salesforce, sobject: str, updates: dict[str, dict[str, Any]], policy: RetryPolicy,
                     summary: PushSummary) -> dict[str, tuple[str, str] | None]:
    """Update records by Id, 200 per call (allOrNone false). Returns Id -> None (ok) or (code, message).

    Updates are idempotent, so a retry after an ambiguous failure simply sends them again.
    Rows failing with a transient code are retried in later rounds.
    """
    outcome: dict[str, tuple[str, str] | None] = {}
    pending = list(updates)
    for round_no in range(policy.attempts):
        transient: list[str] = []
        for chunk in chunks(pending, COMPOSITE_BATCH):
            body = {"allOrNone": False, "records": [{"attributes": {"type": sobject}, "Id": rid, **updates[rid]} for rid in chunk]}
            results = call_with_retry(sf, lambda _a, b=body: sf.restful("composite/sobjects", method="PATCH", json=b),
                                      f"composite update of {len(chunk)} {sobject}", policy, summary)
            for rid, result in zip(chunk, results or [], strict=True):
                if result.get("success"):
                    outcome[rid] = None
                else:
                    code, message = first_error(result)
                    outcome[rid] = (code, message)
                    if code in TRANSIENT_ROW_ERRORS:
                        transient.append(rid)
        if not transient or round_no + 1 >= policy.attempts:
            break
        log.warning("%d %s updates failed transiently; retrying them", len(transient), sobject)
        time.sleep(policy.delay(round_no))
        pending = transient
    return outcome
