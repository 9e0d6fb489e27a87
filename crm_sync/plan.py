"""The dry run's plan: which records and fields a push would change, and what it would cost.

Read-only: the warehouse and the ledger are read, the CRM is not called. The plan applies
the push's own rules (:func:`crm_sync.push.accounts.is_unchanged`,
:func:`crm_sync.push.accounts.is_older`, :func:`crm_sync.push.tasks.task_payload`), so a dry
run shows exactly the values the push would write.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import date
from typing import Any

import pandas as pd
import sqlalchemy as sa

from churnflow.salesforce_ids import to_id18
from crm_sync.fields import is_missing
from crm_sync.ledger import Ledger
from crm_sync.push.accounts import account_health_rows, is_older, is_unchanged
from crm_sync.push.bulk import BULK_THRESHOLD
from crm_sync.push.composite import COMPOSITE_BATCH
from crm_sync.push.results import PushSummary
from crm_sync.push.tasks import task_payload

#: Rough API calls of one Bulk 2.0 job: create, upload, close, >=1 status poll, 3 result downloads.
BULK_JOB_CALLS = 7
#: Values per IN clause of the lookup queries (see ``in_clause_queries``).
LOOKUP_BATCH = 500


def same_value(intended: Any, actual: Any) -> bool:
    """Does the CRM hold what churnflow meant, as Salesforce renders it back (empty = None,
    floats to rounding, a datetime with another fraction or offset suffix)?"""
    if intended in (None, "") and actual in (None, ""):
        return True
    if isinstance(intended, (int, float)) and isinstance(actual, (int, float)) and not isinstance(intended, bool):
        return math.isclose(float(intended), float(actual), rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(intended, str) and isinstance(actual, str) and intended[:19] == actual[:19] and "T" in intended[:19]:
        return True  # the same datetime, rendered with another fraction/offset suffix
    return bool(intended == actual)


@dataclass(frozen=True)
class PlannedChange:
    """One field a push would write; for a task to be created, ``old`` is None and known."""

    sobject: str
    record: str
    field: str
    old: Any  # None when the ledger cannot tell (first write, or values unknown)
    new: Any
    old_known: bool = False

    def describe(self) -> str:
        old = repr(self.old) if self.old_known else "?"
        return f"{self.sobject} {self.record} {self.field}: {old} → {self.new!r}"


def plan_changes(engine: sa.Engine, as_of: date, health: pd.DataFrame, tasks: pd.DataFrame,
                 ledger: Ledger | None, min_change: float = 1.0, min_trend: float = 3.0,
                 match_field: str = "Id") -> tuple[list[PlannedChange], int, int]:
    """(changes, accounts that would be sent, tasks that would be sent); reads the warehouse only.

    The same rule as the push (:func:`crm_sync.push.accounts.is_unchanged`, :func:`crm_sync.push.accounts.is_older`);
    old values come from the ledger's last confirmed state. Accounts the ledger does not
    know count as sent (the push may still refuse some as older after reading the CRM).
    A pending task is listed with the fields its create would send (those not empty, built
    by :func:`crm_sync.push.tasks.task_payload`); its owner and, when accounts are matched by
    another field than Id, its WhatId need the CRM and are not shown. A task the push would
    skip (no crm id) or reject (invalid row) is listed as such and not counted.
    """
    changes: list[PlannedChange] = []
    rows = account_health_rows(health, PushSummary(kind="account_health")) if len(health) else {}
    entries = ledger.entries("account_health", rows) if ledger is not None and rows else {}
    n_accounts = 0
    for key, row in rows.items():
        entry = entries.get(key)
        if is_older(entry, row) or is_unchanged(entry, row, min_change, min_trend):
            continue
        n_accounts += 1
        old = entry.sent_state if entry is not None else None
        for f, new in row.payload.items():
            known = old is not None and f in old
            if known and same_value(new, old.get(f)):  # type: ignore[union-attr]
                continue
            changes.append(PlannedChange("Account", key, f, old.get(f) if known else None, new, known))  # type: ignore[union-attr]
    n_tasks = 0
    for row in tasks.to_dict("records") if len(tasks) else []:
        key = str(row["task_key"])
        crm_id = None if is_missing(row.get("crm_account_id")) else str(row["crm_account_id"]).strip()
        if not crm_id:
            changes.append(PlannedChange("Task", key, "(skipped)", None, "no crm_account_id", True))
            continue
        what_id = (to_id18(crm_id) or crm_id) if match_field.lower() == "id" else None
        try:
            payload = task_payload(key, row, what_id)
        except ValueError as exc:
            changes.append(PlannedChange("Task", key, "(invalid)", None, str(exc), True))
            continue
        n_tasks += 1
        changes += [PlannedChange("Task", key, f, None, value, True) for f, value in payload.items()
                    if value is not None and f != "Churnflow_Key__c"]
    return changes, n_accounts, n_tasks


def estimate_api_calls(n_accounts: int, n_tasks: int, n_owner_emails: int = 0, *,
                       bulk_threshold: int = BULK_THRESHOLD, n_unverified: int = 0) -> dict[str, int]:
    """API calls a push of this size would take (login, lookups, writes), by step.

    ``n_unverified``: accounts the ledger has never confirmed; the push reads their score
    as-of date from the CRM first (forward-only), one query per batch."""
    est: dict[str, int] = {"login": 1 if (n_accounts or n_tasks) else 0}
    if n_unverified:
        est["as_of_checks"] = math.ceil(n_unverified / LOOKUP_BATCH)
    if n_accounts:
        est["account_writes"] = BULK_JOB_CALLS if n_accounts >= bulk_threshold else math.ceil(n_accounts / COMPOSITE_BATCH)
    if n_tasks:
        est["owner_lookups"] = math.ceil(n_owner_emails / LOOKUP_BATCH)
        est["task_lookups"] = math.ceil(n_tasks / LOOKUP_BATCH)
        est["task_writes"] = BULK_JOB_CALLS if n_tasks >= bulk_threshold else math.ceil(n_tasks / COMPOSITE_BATCH)
        est["status_readback"] = 1
    est["total"] = sum(est.values())
    return est
