"""Operator tools around the CRM sync: retry what failed, reconcile, plan a dry run.

* :func:`retry_failed` re-sends only the records the intent ledger holds as ``failed``
  (composite per-record errors and Bulk 2.0 failed rows both land there);
* :func:`reconcile` reads what the CRM holds and compares it with what churnflow
  intended, writing nothing (duplicate task keys included);
* :func:`repair_duplicates` closes the extra records of a duplicated task key;
* :func:`plan_changes` / :func:`estimate_api_calls` back the dry run: which records and
  fields would change, and how many API calls the push would take.
"""

from __future__ import annotations

import logging
import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.warehouse import table_exists
from crm_sync.client import connect, local_crm
from crm_sync.fields import is_missing
from churnflow.salesforce_ids import to_id18
from crm_sync.ledger import Ledger
from crm_sync.push import (BULK_THRESHOLD, COMPOSITE_BATCH, DEFAULT_RETRY, REPAIR_NOTE, TASK_SYNCED_FIELDS, TASK_TEXT_FIELDS,
                           AccountResolver, PushSummary, RetryPolicy, account_health_rows, composite_update, find_task_records,
                           in_clause_queries, is_older, is_unchanged, kept_task, query_all)

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
    from outreach.playbooks import existing_tasks

    if not table_exists(engine, "outreach_tasks"):
        return pd.DataFrame(columns=["task_key"])
    tasks = existing_tasks(engine)
    return tasks[~tasks["held_out"].astype(bool)].reset_index(drop=True)


def reconcile_with(sf: Salesforce, health: pd.DataFrame, tasks: pd.DataFrame, *,
                   retry: RetryPolicy | None = None, ledger: Ledger | None = None, match_field: str = "Id",
                   min_change: float = 1.0, min_trend: float = 3.0, extra_tasks: bool = False) -> list[Difference]:
    """Compare the CRM with what churnflow intended; read-only.

    An account is expected to hold the day's values, or, when the push rightly did not
    send them (unchanged by the change rule, or older than what the CRM holds), the values
    the ledger last confirmed. Each task key must exist exactly once: extra open records
    with the same key are reported as ``(duplicate)`` differences (``sync --repair`` closes them).
    With ``extra_tasks``, open Tasks carrying a churnflow key churnflow never intended (another
    warehouse's, or a held-out task's) are reported as ``(extra)``: one paginated query over the
    org's open churnflow tasks.
    """
    from crm_sync.push import _task_text, _due, TASK_TEXT_FIELDS  # the same conversions the push uses

    policy = retry or DEFAULT_RETRY
    out: list[Difference] = []
    resolver = AccountResolver(sf, match_field, policy)
    rows = account_health_rows(health, PushSummary(kind="account_health")) if len(health) else {}
    entries = ledger.entries("account_health", rows) if ledger is not None and rows else {}
    expected: dict[str, dict[str, Any]] = {}
    for key, row in rows.items():
        entry = entries.get(key)
        confirmed = entry is not None and entry.sent_state is not None and (is_older(entry, row) or is_unchanged(entry, row, min_change, min_trend))
        state = entry.sent_state if confirmed and entry is not None and entry.sent_state is not None else row.payload
        expected[key] = {f: state.get(f) for f in row.payload}
    ids = resolver.resolve(list(expected), None)
    for key, rid in ids.items():
        if rid is None:
            out.append(Difference("Account", key, "(record)", "exists", resolver.errors.get(key, ("NOT_FOUND",))[0]))
    by_id = {rid: key for key, rid in ids.items() if rid is not None}
    if by_id:
        fields = sorted({f for values in expected.values() for f in values})
        actual: dict[str, dict[str, Any]] = {}
        for soql in in_clause_queries(sf, f"SELECT Id, {', '.join(fields)} FROM Account", "Id", list(by_id)):
            for rec in query_all(sf, soql, policy):
                actual[rec["Id"]] = rec
        for rid, key in by_id.items():
            rec = actual.get(rid)
            if rec is None:
                out.append(Difference("Account", key, "(record)", "exists", None))
                continue
            for f, want in expected[key].items():
                if not _same(want, rec.get(f)):
                    out.append(Difference("Account", key, f, want, rec.get(f)))
    if len(tasks):
        keys = [str(k) for k in tasks["task_key"]]
        records = find_task_records(sf, keys, policy)
        crm_ids = [str(r["crm_account_id"]).strip() for r in tasks.to_dict("records") if not is_missing(r.get("crm_account_id"))]
        what_ids = resolver.resolve(crm_ids, None) if resolver.match_field != "Id" else {}
        for row in tasks.to_dict("records"):
            key = str(row["task_key"])
            recs = records.get(key, [])
            if not recs:
                out.append(Difference("Task", key, "(record)", "exists", None))
                continue
            rec = kept_task(recs)
            extras = duplicate_extras(recs)
            if extras:
                out.append(Difference("Task", key, "(duplicate)", f"1 record ({rec['Id']})",
                                      f"{len(extras)} extra open record(s): {', '.join(r['Id'] for r in extras)}"))
            if rec.get("IsDeleted"):
                out.append(Difference("Task", key, "(record)", "exists", "deleted"))
                continue
            crm_id = str(row["crm_account_id"]).strip()
            what = (to_id18(crm_id) or crm_id) if resolver.match_field == "Id" else what_ids.get(crm_id)
            want = {"WhatId": what,
                    "Subject": _task_text(row.get("subject"), TASK_TEXT_FIELDS["Subject"]),
                    "Description": _task_text(row.get("description"), TASK_TEXT_FIELDS["Description"]),
                    "Priority": row["priority"] if isinstance(row.get("priority"), str) else "Normal", "ActivityDate": _due(row.get("due_date"))}
            if rec.get("IsClosed"):
                continue  # a person closed it: what it says now is theirs
            for f in TASK_SYNCED_FIELDS:
                if not _same(want[f], rec.get(f)):
                    out.append(Difference("Task", key, f, want[f], rec.get(f)))
    if extra_tasks:
        intended = {str(k) for k in tasks["task_key"]} if len(tasks) else set()
        for rec in query_all(sf, "SELECT Id, Churnflow_Key__c FROM Task WHERE Churnflow_Key__c != null AND IsClosed = false "
                             "ORDER BY CreatedDate", policy):
            if rec["Churnflow_Key__c"] not in intended:
                out.append(Difference("Task", rec["Churnflow_Key__c"], "(extra)", None, f"open Task {rec['Id']} churnflow did not intend"))
    return out


def duplicate_extras(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The open records of one key that are not the kept task (what ``--repair`` closes)."""
    kept = kept_task(records)
    return [r for r in records if r["Id"] != kept["Id"] and not r.get("IsDeleted") and not r.get("IsClosed")]


def reconcile(engine: sa.Engine, settings: Any, as_of: date, *, retry: RetryPolicy | None = None) -> list[Difference]:
    """What the CRM holds vs. what churnflow intended (the day's account_scores, outreach_tasks). Writes nothing."""
    from crm_sync.sync import load_account_health

    health = load_account_health(engine, as_of)
    tasks = intended_tasks(engine)
    ledger = Ledger.existing(engine)
    local = settings.crm == "local"
    with local_crm(settings) if local else nullcontext():
        sf = connect(settings, retry=retry)
        return reconcile_with(sf, health, tasks, retry=retry, ledger=ledger, match_field=settings.sf_account_match_field,
                              min_change=settings.crm_min_health_change, min_trend=settings.crm_min_trend_change,
                              extra_tasks=True)


# --------------------------------------------------------------------------------------
# Repair duplicates
# --------------------------------------------------------------------------------------
@dataclass
class RepairSummary:
    keys_with_duplicates: int = 0
    closed: dict[str, str] = field(default_factory=dict)  # closed Id -> kept Id
    failed: dict[str, str] = field(default_factory=dict)  # Id -> error

    def describe(self) -> str:
        if not self.keys_with_duplicates:
            return "repair: no task key exists more than once"
        text = (f"repair: {self.keys_with_duplicates} task key(s) had duplicates; closed {len(self.closed)} extra record(s) "
                f"(Status Completed, with a note naming the task kept)")
        if self.failed:
            text += f"; {len(self.failed)} could not be closed: " + "; ".join(f"{k}: {v}" for k, v in list(self.failed.items())[:5])
        return text


def repair_duplicates_with(engine: sa.Engine, sf: Salesforce, tasks: pd.DataFrame, *, retry: RetryPolicy | None = None,
                           ledger: Ledger | None = None) -> RepairSummary:
    """Close every extra open task of churnflow's keys, keep the one :func:`kept_task` picks.

    Closing (Status=Completed and a note) rather than deleting keeps the org's history and
    whatever a person wrote on the extra; each closed record is recorded in the ledger
    (kind ``task_repairs``) and outreach_tasks points at the kept record.
    """
    from outreach.playbooks import record_task_ids

    policy = retry or DEFAULT_RETRY
    summary = RepairSummary()
    keys = [str(k) for k in tasks["task_key"]] if len(tasks) else []
    updates: dict[str, dict[str, Any]] = {}
    kept_ids: dict[str, str] = {}
    for key, records in find_task_records(sf, keys, policy, include_deleted=False).items():
        extras = duplicate_extras(records)
        if not extras:
            continue
        summary.keys_with_duplicates += 1
        kept = kept_task(records)
        kept_ids[key] = kept["Id"]
        for rec in extras:
            note = f"{REPAIR_NOTE} {kept['Id']} (same Churnflow key {key}); closed by churnflow sync --repair."
            description = note + ("\n\n" + rec["Description"] if rec.get("Description") else "")
            updates[rec["Id"]] = {"Status": "Completed", "Description": description[:TASK_TEXT_FIELDS["Description"]]}
            summary.closed[rec["Id"]] = kept["Id"]
    if updates:
        stats = PushSummary(kind="task_repairs")
        for rid, error in composite_update(sf, "Task", updates, policy, stats).items():
            if error is not None:
                summary.failed[rid] = f"{error[0]}: {error[1]}"
                summary.closed.pop(rid, None)
        if ledger is not None:
            ledger.record_repairs(summary.closed, {rid: updates[rid]["Description"].split("\n", 1)[0] for rid in summary.closed})
        record_task_ids(engine, kept_ids)
    log.info("%s", summary.describe())
    return summary


def repair_duplicates(engine: sa.Engine, settings: Any, *, retry: RetryPolicy | None = None) -> RepairSummary:
    """``churnflow sync --repair``: close duplicate churnflow tasks in the CRM (see :func:`repair_duplicates_with`)."""
    tasks = intended_tasks(engine)
    local = settings.crm == "local"
    with local_crm(settings) if local else nullcontext():
        sf = connect(settings, retry=retry)
        return repair_duplicates_with(engine, sf, tasks, retry=retry, ledger=Ledger(engine))


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


def plan_changes(engine: sa.Engine, as_of: date, health: pd.DataFrame, tasks: pd.DataFrame,
                 ledger: Ledger | None, min_change: float = 1.0, min_trend: float = 3.0) -> tuple[list[PlannedChange], int, int]:
    """(changes, accounts that would be sent, tasks that would be sent); reads the warehouse only.

    The same rule as the push (:func:`crm_sync.push.is_unchanged`, :func:`crm_sync.push.is_older`);
    old values come from the ledger's last confirmed state. Accounts the ledger does not
    know count as sent (the push may still refuse some as older after reading the CRM).
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
            if known and _same(new, old.get(f)):  # type: ignore[union-attr]
                continue
            changes.append(PlannedChange("Account", key, f, old.get(f) if known else None, new, known))  # type: ignore[union-attr]
    n_tasks = 0
    for row in tasks.to_dict("records") if len(tasks) else []:
        n_tasks += 1
        changes.append(PlannedChange("Task", str(row["task_key"]), "(create)", None, row.get("subject"), True))
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
