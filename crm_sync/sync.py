"""The CRM stage of the pipeline: warehouse rows in, Salesforce writes out.

``sync_crm`` reads the day's account scores and the pending outreach tasks from the
warehouse, pushes them with :mod:`crm_sync.push`, and stores the Task Ids it got back so
the next run does not send those tasks again. In local mode it also makes sure the local
org knows the warehouse's accounts and their owners (a real org already does).

Nothing is silent: every account a run does not write is named with the reason (no crm
id, older score), and records Salesforce rejected make :func:`sync_crm` raise
:class:`CrmSyncFailed` once everything else is written and recorded, so the flow run
fails and its notifications fire. :func:`retry_failed` re-sends exactly the records the
intent ledger holds as failed (composite per-record errors and Bulk 2.0 failed rows both
land there), through the same push.
"""

from __future__ import annotations

import logging
from contextlib import nullcontext
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import pandas as pd
import requests
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.errors import ChurnflowError
from churnflow.warehouse import read_sql, table_exists
from crm_sync.client import connect, local_crm
from crm_sync.ledger import Ledger
from crm_sync.local.server import LocalSalesforce
from crm_sync.plan import PlannedChange, estimate_api_calls, plan_changes
from crm_sync.push.accounts import AccountResolver, push_account_health
from crm_sync.push.bulk import BULK_THRESHOLD
from crm_sync.push.results import PushSummary, RecordFailure, RecordSkip
from crm_sync.push.tasks import push_tasks
from crm_sync.query import in_clause_queries, query_all
from crm_sync.retry import DEFAULT_RETRY, RetryPolicy

log = logging.getLogger(__name__)


@dataclass
class SyncSummary:
    """What one CRM sync did (or, for a dry run, would do)."""

    as_of: date
    dry_run: bool
    accounts: PushSummary | None = None
    tasks: PushSummary | None = None
    planned: dict[str, int] = field(default_factory=dict)
    statuses_changed: int = 0
    changes: list[PlannedChange] = field(default_factory=list)  # dry run: what would be written
    api_estimate: dict[str, int] = field(default_factory=dict)  # dry run: calls the push would take
    account_of: dict[str, str] = field(default_factory=dict)  # crm_account_id -> account_id, to name rejected accounts

    @property
    def failures(self) -> list[RecordFailure]:
        """Every record Salesforce (or churnflow's own checks) rejected in this run."""
        return [e for s in (self.accounts, self.tasks) if s is not None for e in s.errors]

    @property
    def skips(self) -> list[RecordSkip]:
        """Every record deliberately not written, with the reason."""
        return [k for s in (self.accounts, self.tasks) if s is not None for k in s.skips]

    def skipped_lines(self) -> list[str]:
        """One line per account or task not written (skipped, rejected or in doubt) and why."""
        lines: list[str] = []
        for push in (self.accounts, self.tasks):
            if push is None:
                continue
            what = "account" if push.kind == "account_health" else "task"
            lines += [f"{what} {skip.describe()}" for skip in push.skips]
            named = self.account_of if push.kind == "account_health" else {}
            lines += [f"{what} {named[e.key] + ' (' + e.key + ')' if e.key in named else e.key}: rejected - {e.code}: {e.message}"
                      for e in push.errors]
            lines += [f"{what} {key}: in doubt - {why}" for key, why in push.in_doubt.items()]
        return lines

    def describe(self) -> str:
        if self.dry_run:
            text = (f"dry run as of {self.as_of}: would write health fields on {self.planned.get('accounts', 0)} accounts "
                    f"and push {self.planned.get('tasks', 0)} pending tasks")
            if self.api_estimate:
                text += f" in about {self.api_estimate.get('total', 0)} API calls (" + ", ".join(
                    f"{k}: {v}" for k, v in self.api_estimate.items() if k != "total") + ")"
            return text
        parts = [s.describe() for s in (self.accounts, self.tasks) if s is not None]
        if self.statuses_changed:
            parts.append(f"{self.statuses_changed} task status(es) read back")
        return f"as of {self.as_of}: " + ("; ".join(parts) if parts else "nothing to push")


class CrmSyncFailed(ChurnflowError, RuntimeError):
    """Salesforce rejected records: the run wrote what it could, recorded everything, and fails
    loudly (the CLI exits non-zero, the Prefect task and flow fail and notify)."""

    def __init__(self, summary: SyncSummary) -> None:
        self.summary = summary
        failures = summary.failures
        first = "; ".join(f"{e.key}: {e.code} {e.message}"[:200] for e in failures[:5])
        super().__init__(f"CRM sync as of {summary.as_of}: {len(failures)} record(s) rejected (first: {first}). "
                         f"{summary.describe()}. Fix the cause, then `churnflow sync --retry-failed`.")


def load_account_health(engine: sa.Engine, as_of: date) -> pd.DataFrame:
    """The day's account_scores rows with the accounts' crm_account_id."""
    if not table_exists(engine, "account_scores"):
        return pd.DataFrame(columns=["account_id", "crm_account_id"])
    # Accounts without a crm id are kept: the push names them as skipped instead of dropping them silently.
    return read_sql(
        engine,
        "SELECT s.*, a.crm_account_id FROM account_scores s JOIN accounts a ON a.account_id = s.account_id "
        "WHERE s.as_of_date = :d",
        {"d": datetime(as_of.year, as_of.month, as_of.day)},
    )


def load_pending_tasks(engine: sa.Engine) -> pd.DataFrame:
    from outreach.task_table import pending_tasks

    if not table_exists(engine, "outreach_tasks"):
        return pd.DataFrame(columns=["task_key"])
    return pending_tasks(engine)


def _user_record(email: str) -> dict[str, Any]:
    local = email.split("@", 1)[0]
    parts = [p for p in local.replace("_", ".").replace("-", ".").split(".") if p]
    return {"Username": email, "Email": email, "FirstName": parts[0].title() if len(parts) > 1 else None,
            "LastName": (parts[-1] if parts else local).title(), "IsActive": True}


def mirror_book_to_local(engine: sa.Engine, sf: Salesforce, server: LocalSalesforce | None, extra_emails: list[str],
                         match_field: str = "Id") -> int:
    """Make the local org hold every warehouse account (by its crm_account_id) and owner user.

    Idempotent: existing records are left untouched. Goes through the server object when
    it runs in this process, else through the server's churnflow-only seed endpoint.
    """
    accounts = read_sql(engine, "SELECT name, owner_email, crm_account_id FROM accounts WHERE crm_account_id IS NOT NULL")
    emails = sorted({e.strip().lower() for e in [*accounts["owner_email"].dropna(), *extra_emails] if isinstance(e, str) and e.strip()})

    def seed(sobject: str, records: list[dict[str, Any]]) -> list[str]:
        if server is not None:
            return server.seed(sobject, records, skip_existing=True)
        url = f"https://{sf.sf_instance}/local/seed/{sobject}"
        response = sf.session.post(url, json={"records": records}, headers={"Authorization": "Bearer " + sf.session_id})
        response.raise_for_status()
        return list(response.json()["ids"])

    user_ids = dict(zip(emails, seed("User", [_user_record(e) for e in emails]), strict=True)) if emails else {}
    if match_field.lower() != "id":  # crm ids are another field's values, not Ids: the org must hold the accounts already
        log.info("accounts are matched by %s: only owners are mirrored into the local CRM", match_field)
        return 0
    records = [
        {"Id": r.crm_account_id, "Name": str(r.name)[:255],
         **({"OwnerId": user_ids[r.owner_email.lower()]} if isinstance(r.owner_email, str) and r.owner_email.lower() in user_ids else {})}
        for r in accounts.itertuples()
    ]
    for start in range(0, len(records), 5000):
        seed("Account", records[start:start + 5000])
    return len(records)


def push_health_and_tasks(engine: sa.Engine, sf: Salesforce, settings: Any, health: pd.DataFrame, tasks: pd.DataFrame,
                          summary: Any, *, ledger: Ledger | None, retry: RetryPolicy | None, bulk_threshold: int,
                          poll_interval: float) -> None:
    """Push account health rows and tasks, store the Task Ids returned: shared by sync and retry."""
    from outreach.task_table import record_task_ids

    # One resolver per run: accounts matched by an external id are looked up once, for both pushes.
    resolver = AccountResolver(sf, settings.sf_account_match_field, retry or DEFAULT_RETRY)
    if len(health) and hasattr(summary, "account_of"):
        known = health.dropna(subset=["crm_account_id"])
        summary.account_of.update(zip(known["crm_account_id"].astype(str).str.strip(), known["account_id"].astype(str), strict=True))
    if len(health):
        summary.accounts = push_account_health(sf, health, match_field=settings.sf_account_match_field, ledger=ledger,
                                               retry=retry, bulk_threshold=bulk_threshold, poll_interval=poll_interval,
                                               resolver=resolver, min_change=settings.crm_min_health_change,
                                               min_trend=settings.crm_min_trend_change)
    if len(tasks):
        summary.tasks = push_tasks(sf, tasks, ledger=ledger, retry=retry, bulk_threshold=bulk_threshold,
                                   poll_interval=poll_interval, resolver=resolver,
                                   settle_seconds=settings.crm_task_settle_seconds)
        record_task_ids(engine, {k: v for k, v in summary.tasks.ids.items() if v})


def sync_crm(engine: sa.Engine, settings: Any, as_of: date, *, dry_run: bool = False, use_ledger: bool = True,
             retry: RetryPolicy | None = None, bulk_threshold: int = BULK_THRESHOLD, poll_interval: float = 0.25,
             accounts: list[str] | None = None, timeout: float | tuple[float, float] | None = None) -> SyncSummary:
    """Push the day's health fields and all pending tasks; store the Task Ids returned.

    The intent ledger (table ``crm_sync_ledger``) makes the push a delta (unchanged
    accounts are not sent again), refuses scores older than what the CRM holds, and lets a
    crashed run resume without duplicates. Raises :class:`CrmSyncFailed` (carrying the
    summary) when Salesforce rejected any record, after everything else was written.
    ``timeout`` overrides the client's (connect, read) timeout in seconds.
    """
    health = load_account_health(engine, as_of)
    tasks = load_pending_tasks(engine)
    if accounts is not None:  # a subset run (ops re-running a few accounts) pushes only those
        wanted = set(accounts)
        health = health[health["account_id"].isin(wanted)].reset_index(drop=True)
        tasks = tasks[tasks["account_id"].isin(wanted)].reset_index(drop=True) if "account_id" in tasks else tasks
    summary = SyncSummary(as_of=as_of, dry_run=dry_run, planned={"accounts": len(health), "tasks": len(tasks)})
    if dry_run:  # read-only: not even the ledger table is created
        ledger = Ledger.existing(engine) if use_ledger else None
        summary.changes, n_accounts, n_tasks = plan_changes(engine, as_of, health, tasks, ledger, settings.crm_min_health_change,
                                                            settings.crm_min_trend_change, settings.sf_account_match_field)
        summary.planned.update(accounts=n_accounts, tasks=n_tasks)
        emails = {str(e).strip().lower() for e in tasks.get("owner_email", pd.Series(dtype=object)).dropna()}
        unverified = len({c.record for c in summary.changes if c.sobject == "Account" and not c.old_known})
        summary.api_estimate = estimate_api_calls(n_accounts, n_tasks, len(emails), bulk_threshold=bulk_threshold,
                                                  n_unverified=unverified)
        log.info("%s", summary.describe())
        return summary
    ledger = Ledger(engine) if use_ledger else None
    local = settings.crm == "local"
    with local_crm(settings) if local else nullcontext() as server:
        sf = connect(settings, retry=retry, **({"timeout": timeout} if timeout is not None else {}))
        if local:
            emails = [e for e in tasks.get("owner_email", pd.Series(dtype=object)).dropna()]
            try:
                mirror_book_to_local(engine, sf, server, emails, settings.sf_account_match_field)
            except (requests.RequestException, ValueError) as exc:
                log.warning("could not mirror warehouse accounts into the local CRM: %s", exc)
        push_health_and_tasks(engine, sf, settings, health, tasks, summary, ledger=ledger, retry=retry,
                              bulk_threshold=bulk_threshold, poll_interval=poll_interval)
        summary.statuses_changed = refresh_task_status(engine, sf, retry or DEFAULT_RETRY)
    log.info("crm sync %s", summary.describe())
    for line in summary.skipped_lines():
        log.info("crm sync: %s", line)
    if summary.failures:
        raise CrmSyncFailed(summary)
    return summary


def refresh_task_status(engine: sa.Engine, sf: Salesforce, policy: RetryPolicy = DEFAULT_RETRY) -> int:
    """Read the status of churnflow's open tasks back from the CRM into ``outreach_tasks``.

    CS teams complete tasks in Salesforce; cooldowns, the open-task cap and the digest's
    completion and lift figures must use those real outcomes. Returns how many changed.
    """
    from outreach.task_table import TASKS_TABLE
    from churnflow.vocabulary import CLOSED_TASK_STATUSES

    if not table_exists(engine, TASKS_TABLE):
        return 0
    closed = ", ".join(f"'{s}'" for s in CLOSED_TASK_STATUSES)  # constants, not input
    ours = read_sql(engine, f"SELECT crm_task_id, status FROM {TASKS_TABLE} WHERE crm_task_id IS NOT NULL AND status NOT IN ({closed})")
    if ours.empty:
        return 0
    current: dict[str, str] = {}
    for soql in in_clause_queries(sf, "SELECT Id, Status FROM Task", "Id", ours["crm_task_id"].tolist()):
        for record in query_all(sf, soql, policy):
            current[record["Id"]] = record["Status"]
    known = dict(zip(ours["crm_task_id"], ours["status"], strict=True))
    changed = [{"status": status, "task_id": task_id} for task_id, status in current.items() if known.get(task_id) != status]
    if changed:
        with engine.begin() as conn:
            conn.execute(sa.text(f"UPDATE {TASKS_TABLE} SET status = :status WHERE crm_task_id = :task_id"), changed)
    log.info("task status read back: %d of %d open tasks changed", len(changed), len(ours))
    return len(changed)


@dataclass
class RetrySummary:
    """What ``churnflow sync --retry-failed`` found in the ledger and what re-sending it did."""

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
