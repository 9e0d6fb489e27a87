"""Push churnflow's outreach tasks to Salesforce exactly once, and keep them current.

Tasks are identified by ``Churnflow_Key__c`` (= ``task_key``). A create whose response was
lost may still have happened, or may still happen: Salesforce keeps running a request whose
client timed out. Before a create is retried, the records are looked up again by their key;
keys not found yet stay *in doubt* for ``settle_seconds`` instead of being re-sent, so a late
commit never makes a second task. :func:`task_payload` is the one place a task row becomes
Task fields: the push, the dry-run plan and reconcile all use it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd
from simple_salesforce import Salesforce

from churnflow.salesforce_ids import to_id18
from churnflow.vocabulary import DEFAULT_TASK_PRIORITY, NEW_TASK_STATUS, TASK_PRIORITIES, TASK_STATUSES
from crm_sync.fields import fields_for, is_missing
from crm_sync.ledger import Ledger, payload_hash
from crm_sync.push.accounts import AccountResolver
from crm_sync.push.bulk import BULK_THRESHOLD, bulk_update, bulk_write
from crm_sync.push.composite import COMPOSITE_BATCH, TRANSIENT_ROW_ERRORS, chunks, composite_update, first_error
from crm_sync.push.results import PushSummary, ledgered
from crm_sync.query import in_clause_queries, query_all
from crm_sync.retry import DEFAULT_RETRY, ONCE, RetryPolicy, call_with_retry, count_requests, describe_exc, is_ambiguous

log = logging.getLogger(__name__)

TASK_TEXT_FIELDS = {"Subject": 255, "Description": 32000}
#: Length of ``Churnflow_Key__c`` as declared in :mod:`crm_sync.fields`.
TASK_KEY_LENGTH = next(f.length for f in fields_for("Task") if f.api_name == "Churnflow_Key__c") or 80
_OWNER_CACHE: dict[tuple[str, str], tuple[float, str | None]] = {}
OWNER_CACHE_TTL = 3600.0
#: An unknown email is re-checked sooner: the user may be created in the meantime.
MISSING_OWNER_TTL = 300.0


def clear_owner_cache() -> None:
    _OWNER_CACHE.clear()


def resolve_owners(sf: Salesforce, emails: list[str], policy: RetryPolicy = DEFAULT_RETRY,
                   summary: PushSummary | None = None) -> dict[str, str | None]:
    """Active User Id per email (lower-cased), batched SOQL and cached per org for an hour."""
    now = time.monotonic()
    wanted = sorted({e.strip().lower() for e in emails if e and e.strip()})
    out: dict[str, str | None] = {}
    todo: list[str] = []
    for email in wanted:
        hit = _OWNER_CACHE.get((sf.sf_instance, email))
        if hit and now - hit[0] < (OWNER_CACHE_TTL if hit[1] else MISSING_OWNER_TTL):
            out[email] = hit[1]
        else:
            todo.append(email)
    found: dict[str, str] = {}
    for soql in in_clause_queries(sf, "SELECT Id, Email FROM User", "Email", todo, "ORDER BY CreatedDate", where="IsActive = true"):
        for rec in query_all(sf, soql, policy, summary):
            found.setdefault(str(rec["Email"]).lower(), rec["Id"])
    for email in todo:
        out[email] = found.get(email)
        _OWNER_CACHE[(sf.sf_instance, email)] = (now, out[email])
    return out


TASK_COLUMNS = ("task_key", "crm_account_id", "owner_email", "subject", "description", "priority", "due_date", "status")
_TASK_FIELDS = "Id, Churnflow_Key__c, WhatId, OwnerId, Subject, Description, Priority, Status, ActivityDate, IsClosed, IsDeleted"
#: Fields churnflow keeps in step on tasks it created; Status and OwnerId belong to people once the task exists.
TASK_SYNCED_FIELDS = ("WhatId", "Subject", "Description", "Priority", "ActivityDate")


def _due(value: Any) -> str | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        return date.fromisoformat(value[:10]).isoformat()
    if isinstance(value, (datetime, pd.Timestamp)):
        return value.date().isoformat()
    if isinstance(value, date):
        return value.isoformat()
    raise ValueError(f"due_date {value!r} is not a date")


def _task_text(value: Any, limit: int) -> str | None:
    if is_missing(value):
        return None
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_payload(key: str, row: Mapping[str, Any], what_id: str | None) -> dict[str, Any]:
    """The Task fields churnflow writes for one outreach task row (its owner aside: that takes a lookup).

    One function for the push, the dry-run plan and reconcile, so what a dry run shows, what
    the push writes and what reconcile expects never drift apart. A row without a priority
    gets :data:`churnflow.vocabulary.DEFAULT_TASK_PRIORITY`, without a status
    :data:`churnflow.vocabulary.NEW_TASK_STATUS`. Raises ValueError for a row Salesforce
    would reject (a key too long, a priority or status not in the picklist, a bad due date).
    """
    if len(key) > TASK_KEY_LENGTH:
        raise ValueError(f"task_key longer than {TASK_KEY_LENGTH} characters")
    priority = DEFAULT_TASK_PRIORITY if is_missing(row.get("priority")) else str(row["priority"])
    status = NEW_TASK_STATUS if is_missing(row.get("status")) else str(row["status"])
    if priority not in TASK_PRIORITIES:
        raise ValueError(f"priority {priority!r} is not one of {TASK_PRIORITIES}")
    if status not in TASK_STATUSES:
        raise ValueError(f"status {status!r} is not one of {TASK_STATUSES}")
    return {
        "Churnflow_Key__c": key,
        "WhatId": what_id,
        "Subject": _task_text(row.get("subject"), TASK_TEXT_FIELDS["Subject"]),
        "Description": _task_text(row.get("description"), TASK_TEXT_FIELDS["Description"]),
        "Priority": priority,
        "Status": status,
        "ActivityDate": _due(row.get("due_date")),
    }


#: Start of the Description of a duplicate task closed by ``churnflow sync --repair``.
REPAIR_NOTE = "[churnflow] Closed as a duplicate of"


def kept_task(records: list[dict[str, Any]]) -> dict[str, Any]:
    """Which of several tasks with one key is *the* task (records oldest first).

    Not one ``sync --repair`` closed as a duplicate; among those, an open one a person has
    started working on, else the oldest open one, else the oldest. The push, reconcile and
    repair all use this rule, so they agree on which records are the extras.
    """
    live = [r for r in records if not r.get("IsDeleted")] or records
    real = [r for r in live if not str(r.get("Description") or "").startswith(REPAIR_NOTE)] or live
    open_ = [r for r in real if not r.get("IsClosed")]
    worked = [r for r in open_ if r.get("Status") != NEW_TASK_STATUS]
    return (worked or open_ or real)[0]


def find_task_records(sf: Salesforce, keys: list[str], policy: RetryPolicy, summary: PushSummary | None = None,
                      *, include_deleted: bool = True) -> dict[str, list[dict[str, Any]]]:
    """Every Task per Churnflow_Key__c, oldest first (deleted ones included unless told)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for soql in in_clause_queries(sf, f"SELECT {_TASK_FIELDS} FROM Task", "Churnflow_Key__c", keys, "ORDER BY CreatedDate"):
        for rec in query_all(sf, soql, policy, summary, include_deleted=include_deleted):
            found.setdefault(rec["Churnflow_Key__c"], []).append(rec)
    return found


def find_tasks(sf: Salesforce, keys: list[str], policy: RetryPolicy, summary: PushSummary | None = None) -> dict[str, dict[str, Any]]:
    """The task of each key that exists in Salesforce (deleted ones included), see :func:`kept_task`."""
    out: dict[str, dict[str, Any]] = {}
    for key, records in find_task_records(sf, keys, policy, summary).items():
        if sum(1 for r in records if not r.get("IsDeleted") and not str(r.get("Description") or "").startswith(REPAIR_NOTE)) > 1:
            log.warning("task key %s exists %d times in Salesforce: `churnflow sync --reconcile` lists the extras, "
                        "`churnflow sync --repair` closes them", key, len(records))
        out[key] = kept_task(records)
    return out


def push_tasks(sf: Salesforce, frame: pd.DataFrame, *, bulk_threshold: int = BULK_THRESHOLD,
               retry: RetryPolicy | None = None, default_owner_id: str | None = None,
               poll_interval: float = 0.25, ledger: Ledger | None = None, match_field: str = "Id",
               resolver: AccountResolver | None = None, settle_seconds: float = 600.0) -> PushSummary:
    """Create churnflow's outreach tasks in Salesforce exactly once, and keep them current.

    Tasks are identified by ``Churnflow_Key__c`` (= ``task_key``): existing ones are looked
    up first, only missing ones are created, and open ones whose synced fields changed are
    updated by Id. Tasks a person completed or deleted are left alone. Owners are resolved
    from ``owner_email`` to active Users; a row without an owner email is assigned to
    ``default_owner_id`` (or, if None, to the integration user, which is Salesforce's
    default), a row whose email matches no active user fails. ``summary.ids`` maps every
    task_key that exists in Salesforce after the push to its Task Id. With a ``ledger``,
    rows identical to the last confirmed push are skipped without any API call.

    ``crm_account_id`` holds ``match_field`` of the Account; another field than Id is
    resolved to the Account Id (WhatId must be an Id) by ``resolver``, shared with the
    health push of the same run. A create whose response was lost (timeout, dropped
    connection, 5xx) may still commit later: its keys are looked up before any re-send, and
    keys not found yet stay *in doubt* (not re-created, recorded in the ledger) until
    ``settle_seconds`` after the lost send, so a late commit never makes a second task.
    """
    policy = retry or DEFAULT_RETRY
    summary = PushSummary(kind="tasks")
    resolver = resolver or AccountResolver(sf, match_field, policy)
    missing_cols = [c for c in TASK_COLUMNS if c not in frame.columns]
    if missing_cols:
        raise ValueError(f"tasks frame lacks columns {missing_cols}")
    with count_requests(sf.session) as calls, ledgered(ledger, summary) as intend:
        rows: dict[str, dict[str, Any]] = {}
        for row in frame.to_dict("records"):
            key = row.get("task_key")
            if is_missing(key) or not str(key).strip():
                summary.skip("?", "no task key", "outreach task without task_key", None if is_missing(row.get("account_id")) else str(row.get("account_id")))
                continue
            rows[str(key)] = row
        hashes = {k: payload_hash({c: r.get(c) for c in TASK_COLUMNS}) for k, r in rows.items()}
        if ledger is not None:
            for key, entry in ledger.unchanged(summary.kind, hashes).items():
                summary.unchanged += 1
                summary.ids[key] = entry.crm_id or ""
                del rows[key]
        desired: dict[str, dict[str, Any]] = {}
        owner_emails = {k: str(r["owner_email"]).strip().lower() for k, r in rows.items() if not is_missing(r.get("owner_email"))}
        owners = resolve_owners(sf, list(owner_emails.values()), policy, summary) if owner_emails else {}
        what_ids: dict[str, str | None] = {}
        if resolver.match_field != "Id":
            crm_ids = [str(r["crm_account_id"]).strip() for r in rows.values() if not is_missing(r.get("crm_account_id"))]
            what_ids = resolver.resolve(crm_ids, summary)
        for key, row in rows.items():
            try:
                if is_missing(row.get("crm_account_id")) or not str(row["crm_account_id"]).strip():
                    # Like its account's health: not a rejection, named in the summary every run.
                    summary.skip(key, "no crm id", "the task's account has no crm_account_id: no Account to attach it to",
                                 None if is_missing(row.get("account_id")) else str(row.get("account_id")))
                    continue
                crm_id = str(row["crm_account_id"]).strip()
                if resolver.match_field == "Id":
                    what_id = to_id18(crm_id) or crm_id  # a malformed id is Salesforce's to reject
                else:
                    what_id = what_ids.get(crm_id)
                    if what_id is None:
                        code, message = resolver.errors.get(crm_id, ("NOT_FOUND", f"no Account with {resolver.match_field} = {crm_id}"))
                        summary.fail(key, code, f"task's Account: {message}")
                        continue
                values = task_payload(key, row, what_id)
            except ValueError as exc:
                summary.fail(key, "INVALID_INPUT", str(exc))
                continue
            if key in owner_emails:
                owner = owners.get(owner_emails[key])
                if owner is None:
                    summary.fail(key, "OWNER_NOT_FOUND", f"no active Salesforce user with email {owner_emails[key]}")
                    continue
                values["OwnerId"] = owner
            elif default_owner_id:
                values["OwnerId"] = default_owner_id
            desired[key] = values

        doubted = {k: e for k, e in ledger.entries(summary.kind, desired).items() if e.status == "in_doubt"} if ledger is not None and desired else {}
        intend({k: hashes[k] for k in desired})
        existing = find_tasks(sf, list(desired), policy, summary) if desired else {}
        to_create = []
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        for key in desired:
            if key in existing:
                continue
            entry = doubted.get(key)
            since = pd.Timestamp(entry.updated_at).to_pydatetime() if entry is not None and entry.updated_at is not None else None
            if since is not None and (now - since).total_seconds() < settle_seconds:
                summary.in_doubt[key] = entry.error or "an earlier create's response was lost"  # type: ignore[union-attr]
                continue  # a lost create may still commit: wait for it rather than duplicate
            to_create.append(key)
        to_update: dict[str, dict[str, Any]] = {}
        for key in desired:
            rec = existing.get(key)
            if rec is None:
                continue
            summary.ids[key] = rec["Id"]
            if rec.get("IsDeleted") or rec.get("IsClosed"):
                summary.skip(key, "closed in CRM", "deleted" if rec.get("IsDeleted") else f"status {rec.get('Status')}",
                             None if is_missing(rows[key].get("account_id")) else str(rows[key].get("account_id")))
                continue
            changes = {f: desired[key][f] for f in TASK_SYNCED_FIELDS if _differs(rec.get(f), desired[key].get(f))}
            if changes:
                to_update[rec["Id"]] = changes
            else:
                summary.unchanged += 1
        summary.sent = len(to_create) + len(to_update)
        use_bulk = summary.sent >= bulk_threshold
        summary.mode = "none" if not summary.sent else "bulk" if use_bulk else "composite"
        if to_create:
            if use_bulk:
                _bulk_create_tasks(sf, {k: desired[k] for k in to_create}, policy, summary, poll_interval)
            else:
                _composite_create_tasks(sf, {k: desired[k] for k in to_create}, policy, summary, settle_seconds)
        if to_update:
            keys_by_id = {existing[k]["Id"]: k for k in desired if k in existing}
            if use_bulk:
                bulk_update(sf, "Task", to_update, keys_by_id, policy, summary, poll_interval)
            else:
                for rid, error in composite_update(sf, "Task", to_update, policy, summary).items():
                    if error is None:
                        summary.updated += 1
                    else:
                        summary.fail(keys_by_id[rid], *error)
    summary.api_calls = calls[0]
    log.info("%s", summary.describe())
    return summary


def _differs(current: Any, wanted: Any) -> bool:
    if current in (None, "") and wanted in (None, ""):
        return False
    return current != wanted


def _composite_create_tasks(sf: Salesforce, payloads: dict[str, dict[str, Any]], policy: RetryPolicy, summary: PushSummary,
                            settle_seconds: float = 600.0) -> None:
    """Create tasks 200 per call; before any retry, keys that now exist are taken as created.

    When a create failed ambiguously (the request may have been applied, see
    :func:`is_ambiguous`), a key the lookup does not find may still be committing on the
    server: it is re-sent only once ``settle_seconds`` have passed since that send,
    otherwise left in doubt for a later run (``summary.in_doubt``).
    """
    pending = list(payloads)
    for round_no in range(policy.attempts):
        transient: list[str] = []
        for chunk in chunks(pending, COMPOSITE_BATCH):
            lost: dict[str, float] = {}  # when a send of this chunk ended ambiguously

            def send(attempt: int, chunk: list[str] = chunk, lost: dict[str, float] = lost) -> list[tuple[str, dict[str, Any]]]:
                todo = chunk
                done: list[tuple[str, dict[str, Any]]] = []
                if attempt > 0:  # the previous try may have been applied: never create twice
                    # One try only: the enclosing call_with_retry already retries this whole step.
                    found = find_tasks(sf, chunk, ONCE, summary)
                    for key in chunk:
                        if key in found:
                            summary.ids[key] = found[key]["Id"]
                    todo = [k for k in chunk if k not in found]
                    done = [(k, {"success": True, "id": found[k]["Id"], "errors": []}) for k in chunk if k in found]
                    if todo and "at" in lost and time.monotonic() - lost["at"] < settle_seconds:
                        why = f"create sent, response lost ({lost['why']}); not found yet, re-checked before any re-send"
                        done += [(k, {"success": None, "in_doubt": why}) for k in todo]
                        return done
                    if not todo:
                        return done
                body = {"allOrNone": False, "records": [{"attributes": {"type": "Task"}, **{f: v for f, v in payloads[k].items() if v is not None}} for k in todo]}
                try:
                    results = sf.restful("composite/sobjects", method="POST", json=body) or []
                except Exception as exc:
                    if is_ambiguous(exc):
                        lost.update(at=time.monotonic(), why=describe_exc(exc))
                    raise
                return done + list(zip(todo, results, strict=True))

            for key, result in call_with_retry(sf, send, f"composite create of {len(chunk)} Task", policy, summary):
                if result.get("in_doubt"):
                    summary.in_doubt[key] = result["in_doubt"]
                elif result.get("success"):
                    summary.created += 1
                    summary.ids[key] = result["id"]
                else:
                    code, message = first_error(result)
                    if code in TRANSIENT_ROW_ERRORS and round_no + 1 < policy.attempts:
                        transient.append(key)
                    else:
                        summary.fail(key, code, message)
        if not transient:
            return
        log.warning("%d task creates failed transiently; retrying them", len(transient))
        time.sleep(policy.delay(round_no))
        pending = transient


def _bulk_create_tasks(sf: Salesforce, payloads: dict[str, dict[str, Any]], policy: RetryPolicy, summary: PushSummary,
                       poll_interval: float) -> None:
    """Bulk 2.0 insert; results are matched back by Churnflow_Key__c; transient row failures go round again."""

    def already_created(pending: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        # A failed row may still have been written by an earlier job's retry: check first.
        found = find_tasks(sf, list(pending), policy, summary)
        for key in pending:
            if key in found:
                summary.created += 1
                summary.ids[key] = found[key]["Id"]
        return {k: v for k, v in pending.items() if k not in found}

    columns = sorted({c for p in payloads.values() for c in p})
    bulk_write(sf, "Task", "insert", payloads, columns, "Churnflow_Key__c", policy, summary, poll_interval=poll_interval,
               recheck=already_created)
