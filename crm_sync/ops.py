"""Operator tools around the CRM sync: retry what failed, reconcile, plan a dry run.

* :func:`retry_failed` re-sends only the records the intent ledger holds as ``failed``
  (composite per-record errors and Bulk 2.0 failed rows both land there);
* :func:`reconcile` reads what the CRM holds and compares it with what churnflow
  intended, writing nothing;
* :func:`plan_changes` / :func:`estimate_api_calls` back the dry run: which records and
  fields would change, and how many API calls the push would take.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pandas as pd
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.warehouse import read_sql, table_exists
from crm_sync.client import connect, local_crm
from crm_sync.ids import to_id18
from crm_sync.ledger import Ledger, payload_hash
from crm_sync.push import (BULK_THRESHOLD, COMPOSITE_BATCH, DEFAULT_RETRY, TASK_SYNCED_FIELDS, PushSummary, RetryPolicy,
                           account_health_updates, find_tasks, in_clause_queries, query_all)

log = logging.getLogger(__name__)

#: Rough API calls of one Bulk 2.0 job: create, upload, close, >=1 status poll, 3 result downloads.
BULK_JOB_CALLS = 7
#: Values per IN clause of the lookup queries (see ``in_clause_queries``).
LOOKUP_BATCH = 500


# --------------------------------------------------------------------------------------
# Retry what failed
# --------------------------------------------------------------------------------------
@dataclass
class RetrySummary:
    failed_before: dict[str, int] = field(default_factory=dict)
    accounts: PushSummary | None = None
    tasks: PushSummary | None = None
    not_pending: list[str] = field(default_factory=list)

    def describe(self) -> str:
        if not any(self.failed_before.values()):
            return "retry: the ledger holds no failed records"
        parts = [f"retry: {self.failed_before.get('account_health', 0)} failed account(s), "
                 f"{self.failed_before.get('tasks', 0)} failed task(s) in the ledger"]
        for s in (self.accounts, self.tasks):
            if s is not None:
                ok = s.updated + s.created + s.unchanged
                parts.append(f"{s.kind}: {ok} now confirmed, {s.failed} still failing; {s.describe()}")
        if self.not_pending:
            parts.append(f"{len(self.not_pending)} failed record(s) are no longer in today's data and were not re-sent")
        return "\n".join(parts)


def _failed_keys(ledger: Ledger, kind: str) -> set[str]:
    return {k for k, e in ledger.entries(kind).items() if e.status == "failed"}


def retry_failed(engine: sa.Engine, settings: Any, as_of: date, *, retry: RetryPolicy | None = None,
                 bulk_threshold: int = BULK_THRESHOLD, poll_interval: float = 0.25) -> RetrySummary:
    """Re-send exactly the records the ledger records as failed (today's values), nothing else."""
    from crm_sync.sync import load_account_health, load_pending_tasks, push_health_and_tasks

    summary = RetrySummary()
    ledger = Ledger.existing(engine)
    if ledger is None:
        return summary
    failed_accounts = _failed_keys(ledger, "account_health")
    failed_tasks = _failed_keys(ledger, "tasks")
    summary.failed_before = {"account_health": len(failed_accounts), "tasks": len(failed_tasks)}
    if not failed_accounts and not failed_tasks:
        return summary
    health = load_account_health(engine, as_of)
    if len(health):
        health = health[health["crm_account_id"].astype(str).str.strip().isin(failed_accounts)]
    tasks = load_pending_tasks(engine)
    if len(tasks):
        tasks = tasks[tasks["task_key"].astype(str).isin(failed_tasks)]
    found = set(health["crm_account_id"].astype(str).str.strip()) | set(tasks["task_key"].astype(str))
    summary.not_pending = sorted((failed_accounts | failed_tasks) - found)
    local = settings.crm == "local"
    with local_crm(settings) if local else nullcontext():
        sf = connect(settings)
        push_health_and_tasks(engine, sf, settings, health, tasks, summary, ledger=ledger, retry=retry,
                              bulk_threshold=bulk_threshold, poll_interval=poll_interval)
    log.info("%s", summary.describe())
    return summary


# --------------------------------------------------------------------------------------
# Reconcile
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Difference:
    """One field where the CRM holds something else than churnflow intended."""

    sobject: str
    record: str
    field: str
    intended: Any
    actual: Any

    def describe(self) -> str:
        return f"{self.sobject} {self.record} {self.field}: {self.intended!r} → {self.actual!r}"


def _same(intended: Any, actual: Any) -> bool:
    if intended in (None, "") and actual in (None, ""):
        return True
    if isinstance(intended, (int, float)) and isinstance(actual, (int, float)) and not isinstance(intended, bool):
        return math.isclose(float(intended), float(actual), rel_tol=1e-9, abs_tol=1e-6)
    if isinstance(intended, str) and isinstance(actual, str) and intended[:19] == actual[:19] and "T" in intended[:19]:
        return True  # the same datetime, rendered with another fraction/offset suffix
    return bool(intended == actual)


def intended_tasks(engine: sa.Engine) -> pd.DataFrame:
    """Every task churnflow decided to send (held-out ones excluded)."""
    from churnflow.outreach import existing_tasks

    if not table_exists(engine, "outreach_tasks"):
        return pd.DataFrame(columns=["task_key"])
    tasks = existing_tasks(engine)
    return tasks[~tasks["held_out"].astype(bool)].reset_index(drop=True)


def reconcile_with(sf: Salesforce, health: pd.DataFrame, tasks: pd.DataFrame, *,
                   retry: RetryPolicy | None = None) -> list[Difference]:
    """Compare the CRM with the intended health fields and tasks; read-only."""
    from crm_sync.push import _task_text, _due, TASK_TEXT_FIELDS  # the same conversions the push uses

    policy = retry or DEFAULT_RETRY
    out: list[Difference] = []
    updates = account_health_updates(health, PushSummary(kind="account_health")) if len(health) else {}
    by_id = {to_id18(k) or k: k for k in updates}
    if updates:
        fields = sorted({f for values in updates.values() for f in values})
        actual: dict[str, dict[str, Any]] = {}
        for soql in in_clause_queries(sf, f"SELECT Id, {', '.join(fields)} FROM Account", "Id", list(by_id)):
            for rec in query_all(sf, soql, policy):
                actual[rec["Id"]] = rec
        for rid, key in by_id.items():
            rec = actual.get(rid)
            if rec is None:
                out.append(Difference("Account", key, "(record)", "exists", None))
                continue
            for f, want in updates[key].items():
                if not _same(want, rec.get(f)):
                    out.append(Difference("Account", key, f, want, rec.get(f)))
    if len(tasks):
        keys = [str(k) for k in tasks["task_key"]]
        found = find_tasks(sf, keys, policy)
        for row in tasks.to_dict("records"):
            key = str(row["task_key"])
            rec = found.get(key)
            if rec is None:
                out.append(Difference("Task", key, "(record)", "exists", None))
                continue
            if rec.get("IsDeleted"):
                out.append(Difference("Task", key, "(record)", "exists", "deleted"))
                continue
            want = {"WhatId": to_id18(str(row["crm_account_id"]).strip()) or str(row["crm_account_id"]).strip(),
                    "Subject": _task_text(row.get("subject"), TASK_TEXT_FIELDS["Subject"]),
                    "Description": _task_text(row.get("description"), TASK_TEXT_FIELDS["Description"]),
                    "Priority": row["priority"] if isinstance(row.get("priority"), str) else "Normal", "ActivityDate": _due(row.get("due_date"))}
            for f in TASK_SYNCED_FIELDS:
                if not _same(want[f], rec.get(f)):
                    out.append(Difference("Task", key, f, want[f], rec.get(f)))
    return out


def reconcile(engine: sa.Engine, settings: Any, as_of: date, *, retry: RetryPolicy | None = None) -> list[Difference]:
    """What the CRM holds vs. what churnflow intended (the day's account_scores, outreach_tasks). Writes nothing."""
    from crm_sync.sync import load_account_health

    health = load_account_health(engine, as_of)
    tasks = intended_tasks(engine)
    local = settings.crm == "local"
    with local_crm(settings) if local else nullcontext():
        sf = connect(settings)
        return reconcile_with(sf, health, tasks, retry=retry)


# --------------------------------------------------------------------------------------
# Dry-run plan
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PlannedChange:
    sobject: str
    record: str
    field: str
    old: Any  # None when the ledger cannot tell (first write, or values unknown)
    new: Any
    old_known: bool = False

    def describe(self) -> str:
        old = repr(self.old) if self.old_known else "?"
        return f"{self.sobject} {self.record} {self.field}: {old} → {self.new!r}"


def _previous_updates(engine: sa.Engine, as_of: date) -> dict[str, dict[str, Any]]:
    """Health payloads of the latest scored day before ``as_of`` (candidates for the last sent values)."""
    if not table_exists(engine, "account_scores"):
        return {}
    day = datetime(as_of.year, as_of.month, as_of.day)
    prev = read_sql(engine, "SELECT max(as_of_date) AS d FROM account_scores WHERE as_of_date < :d", {"d": day})
    if prev.empty or pd.isna(prev["d"].iloc[0]):
        return {}
    d = pd.Timestamp(prev["d"].iloc[0]).to_pydatetime()
    frame = read_sql(engine, "SELECT s.*, a.crm_account_id FROM account_scores s JOIN accounts a ON a.account_id = s.account_id "
                     "WHERE s.as_of_date = :d AND a.crm_account_id IS NOT NULL", {"d": d})
    return account_health_updates(frame, PushSummary(kind="account_health")) if len(frame) else {}


def plan_changes(engine: sa.Engine, as_of: date, health: pd.DataFrame, tasks: pd.DataFrame,
                 ledger: Ledger | None) -> tuple[list[PlannedChange], int, int]:
    """(changes, accounts that would be sent, tasks that would be sent); reads the warehouse only.

    The ledger stores hashes, not values: an old value is shown when the previous day's
    scores hash to what the ledger confirmed as sent (so they are what the CRM got).
    """
    changes: list[PlannedChange] = []
    updates = account_health_updates(health, PushSummary(kind="account_health")) if len(health) else {}
    hashes = {k: payload_hash(v) for k, v in updates.items()}
    entries = ledger.entries("account_health", hashes) if ledger is not None and hashes else {}
    previous = _previous_updates(engine, as_of) if entries else {}
    n_accounts = 0
    for key, values in updates.items():
        entry = entries.get(key)
        if entry is not None and entry.status == "sent" and entry.sent_hash == hashes[key] and entry.crm_id:
            continue
        n_accounts += 1
        old = previous.get(key)
        known = old is not None and entry is not None and entry.sent_hash == payload_hash(old)
        for f, new in values.items():
            if known and _same(new, old.get(f)):  # type: ignore[union-attr]
                continue
            changes.append(PlannedChange("Account", key, f, old.get(f) if known else None, new, known))  # type: ignore[union-attr]
    n_tasks = 0
    for row in tasks.to_dict("records") if len(tasks) else []:
        n_tasks += 1
        changes.append(PlannedChange("Task", str(row["task_key"]), "(create)", None, row.get("subject"), True))
    return changes, n_accounts, n_tasks


def estimate_api_calls(n_accounts: int, n_tasks: int, n_owner_emails: int = 0, *,
                       bulk_threshold: int = BULK_THRESHOLD) -> dict[str, int]:
    """API calls a push of this size would take (login, lookups, writes), by step."""
    est: dict[str, int] = {"login": 1 if (n_accounts or n_tasks) else 0}
    if n_accounts:
        est["account_writes"] = BULK_JOB_CALLS if n_accounts >= bulk_threshold else math.ceil(n_accounts / COMPOSITE_BATCH)
    if n_tasks:
        est["owner_lookups"] = math.ceil(n_owner_emails / LOOKUP_BATCH)
        est["task_lookups"] = math.ceil(n_tasks / LOOKUP_BATCH)
        est["task_writes"] = BULK_JOB_CALLS if n_tasks >= bulk_threshold else math.ceil(n_tasks / COMPOSITE_BATCH)
        est["status_readback"] = 1
    est["total"] = sum(est.values())
    return est
