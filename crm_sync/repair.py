"""Compare the CRM with what churnflow intended, and repair what a lost response duplicated.

* :func:`reconcile` reads what the CRM holds and compares it with what churnflow intended,
  writing nothing (duplicate task keys included); it expects exactly what the push writes
  (:func:`crm_sync.push.tasks.task_payload`, :func:`crm_sync.plan.same_value`);
* :func:`repair_duplicates` closes the extra records of a duplicated task key, keeping the
  one :func:`crm_sync.push.tasks.kept_task` picks (the push and reconcile agree on it).
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pandas as pd
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.salesforce_ids import to_id18
from churnflow.warehouse import table_exists
from crm_sync.client import connect, local_crm
from crm_sync.fields import is_missing
from crm_sync.ledger import Ledger
from crm_sync.plan import same_value
from crm_sync.push.accounts import AccountResolver, account_health_rows, is_older, is_unchanged
from crm_sync.push.composite import composite_update
from crm_sync.push.results import PushSummary
from crm_sync.push.tasks import REPAIR_NOTE, TASK_SYNCED_FIELDS, TASK_TEXT_FIELDS, find_task_records, kept_task, task_payload
from crm_sync.query import in_clause_queries, query_all
from crm_sync.retry import DEFAULT_RETRY, RetryPolicy
from crm_sync.sync import load_account_health

log = logging.getLogger(__name__)


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


def intended_tasks(engine: sa.Engine) -> pd.DataFrame:
    """Every task churnflow decided to send (held-out ones excluded)."""
    from outreach.task_table import existing_tasks

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
                if not same_value(want, rec.get(f)):
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
            try:
                wanted = task_payload(key, row, what)  # exactly what the push writes
            except ValueError as exc:
                out.append(Difference("Task", key, "(invalid)", None, str(exc)))
                continue
            if rec.get("IsClosed"):
                continue  # a person closed it: what it says now is theirs
            for f in TASK_SYNCED_FIELDS:
                if not same_value(wanted[f], rec.get(f)):
                    out.append(Difference("Task", key, f, wanted[f], rec.get(f)))
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
    from outreach.task_table import record_task_ids

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
