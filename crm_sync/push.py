"""Push account health fields and outreach tasks to Salesforce, safely.

Why this module exists rather than a few ``sf.Account.update`` calls:

* Salesforce calls fail in ordinary ways (request limits, expired sessions, 503s, dropped
  connections, row locks) and simple-salesforce 1.12.10 retries none of them, so every call
  goes through :func:`call_with_retry` (bounded exponential backoff with jitter; re-login
  once on ``INVALID_SESSION_ID``, including for Bulk 2.0, which never refreshes itself).
* A create whose response was lost may still have happened, or may still happen: Salesforce
  keeps running a request whose client timed out. Before a create is retried, the records
  are looked up again by their ``Churnflow_Key__c``; keys not found yet stay *in doubt* for
  ``settle_seconds`` instead of being re-sent, so a late commit never makes a second task.
* The CRM only moves forward, and only what changed is written: accounts whose score is
  older than what the CRM holds are skipped, and accounts that did not change by the rule
  in :func:`crm_sync.fields.material_change` cost no call (see :func:`push_account_health`).
* Above ``bulk_threshold`` records the Bulk API 2.0 is used (one job instead of hundreds of
  calls); below it, composite sObject collections (200 records per call). Bulk row failures
  do not raise in simple-salesforce; they are read back and reported (or retried when the
  cause is transient, like ``UNABLE_TO_LOCK_ROW``).
* Every SOQL value is quoted with :func:`crm_sync.soql.soql_quote`, and IN lists are split
  so no query URI exceeds Salesforce's length limit.
"""

from __future__ import annotations

import csv
import io
import logging
import random
import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from decimal import Decimal
from typing import Any, TypeVar
from urllib.parse import quote_plus

import pandas as pd
import requests
from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import _Bulk2Client, Operation  # pinned 1.12.10: the step-level client
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceRefusedRequest,
)

from churnflow.vocabulary import NEW_TASK_STATUS, TASK_PRIORITIES, TASK_STATUSES
from crm_sync.fields import (account_health_payload, change_state, fields_for, is_missing,
                             material_change)
from churnflow.salesforce_ids import to_id18
from crm_sync.ledger import Ledger, LedgerEntry, payload_hash
from crm_sync.soql import soql_quote

log = logging.getLogger(__name__)

T = TypeVar("T")

COMPOSITE_BATCH = 200
BULK_THRESHOLD = 2000
#: Keep query URIs well under Salesforce's 16,384-character limit.
MAX_QUERY_URI = 12000
#: Record-level error codes that are worth retrying: the same write later usually succeeds.
TRANSIENT_ROW_ERRORS = frozenset({"UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "REQUEST_RUNNING_TOO_LONG", "QUERY_TIMEOUT"})
TASK_TEXT_FIELDS = {"Subject": 255, "Description": 32000}


# --------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RecordFailure:
    """One record that did not reach Salesforce, with Salesforce's (or our) error code."""

    key: str
    code: str
    message: str


@dataclass(frozen=True)
class RecordSkip:
    """One record a push deliberately did not write, and why (named in the run summary)."""

    key: str
    reason: str  # "no crm id" | "older score" | "closed in CRM" | "no task key"
    detail: str = ""
    account: str | None = None  # the warehouse account_id, when known

    def describe(self) -> str:
        who = f"{self.account} ({self.key})" if self.account and self.account != self.key else self.key
        return f"{who}: {self.reason}" + (f" - {self.detail}" if self.detail else "")


@dataclass
class PushSummary:
    """What one push did. ``ids`` maps the caller's key (task_key / crm_account_id) to the Salesforce Id."""

    kind: str
    sent: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    skipped: int = 0
    errors: list[RecordFailure] = field(default_factory=list)
    api_calls: int = 0
    retries: int = 0
    mode: str = "none"
    ids: dict[str, str] = field(default_factory=dict)
    skips: list[RecordSkip] = field(default_factory=list)
    #: Creates whose outcome is unknown (the response was lost and the record has not shown up
    #: yet): not re-sent until ``settle_seconds`` have passed, so a late commit never duplicates.
    in_doubt: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> int:
        return len(self.errors)

    @property
    def older(self) -> int:
        return sum(1 for s in self.skips if s.reason == "older score")

    def fail(self, key: str, code: str, message: str) -> None:
        self.errors.append(RecordFailure(str(key), code, message))

    def skip(self, key: str, reason: str, detail: str = "", account: str | None = None) -> None:
        self.skipped += 1
        self.skips.append(RecordSkip(str(key), reason, detail, account))

    def describe(self) -> str:
        text = (f"{self.kind}: {self.sent} sent via {self.mode}, {self.created} created, {self.updated} updated, "
                f"{self.unchanged} unchanged, {self.skipped} skipped, {self.failed} failed, {self.api_calls} API calls")
        if self.errors:
            codes: dict[str, int] = {}
            for e in self.errors:
                codes[e.code] = codes.get(e.code, 0) + 1
            text += " (" + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())) + ")"
        if self.skips:
            reasons: dict[str, int] = {}
            for skip in self.skips:
                reasons[skip.reason] = reasons.get(skip.reason, 0) + 1
            text += "; skipped: " + ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items()))
        if self.in_doubt:
            text += f"; {len(self.in_doubt)} create(s) in doubt (response lost; checked again before any re-send)"
        return text


# --------------------------------------------------------------------------------------
# Retries
# --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter (spreads retries of concurrent runs)."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(self.base_delay / 2, min(self.max_delay, self.base_delay * 2 ** attempt))


DEFAULT_RETRY = RetryPolicy()
_ONCE = RetryPolicy(attempts=1)


def _content_codes(exc: SalesforceError) -> set[str]:
    content = exc.content
    codes: set[str] = set()
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("errorCode"):
                codes.add(str(item["errorCode"]))
    elif isinstance(content, (str, bytes)):
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        if "REQUEST_LIMIT_EXCEEDED" in text:
            codes.add("REQUEST_LIMIT_EXCEEDED")
    return codes


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: 5xx, request limits, timeouts and connection errors (not TLS/auth)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, SalesforceAuthenticationFailed):
        # A real rejection carries Salesforce's code (INVALID_LOGIN, invalid_grant...). None
        # means an error page without one (a 503 from a proxy or maintenance): transient.
        return exc.code is None or (isinstance(exc.code, int) and exc.code >= 500)
    if isinstance(exc, SalesforceRefusedRequest):
        return "REQUEST_LIMIT_EXCEEDED" in _content_codes(exc)
    if isinstance(exc, SalesforceGeneralError):
        return exc.status >= 500
    return False


def is_ambiguous(exc: BaseException) -> bool:
    """May Salesforce have applied a request that failed this way? (Then a create must not be
    blindly re-sent.) A read timeout, a connection dropped after sending, a 500/502/504 may
    hide a commit; a refused connection, a 503, a 401 or a request limit never do."""
    if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, SalesforceGeneralError):
        return exc.status >= 500 and exc.status != 503
    return False


def _describe_exc(exc: BaseException) -> str:
    if isinstance(exc, SalesforceError) and not isinstance(exc, SalesforceAuthenticationFailed):
        codes = _content_codes(exc)
        return f"HTTP {exc.status} {','.join(sorted(codes))}".strip()
    return type(exc).__name__


def relogin(sf: Salesforce) -> None:
    """Log in again (new session id) with the credentials simple-salesforce already holds."""
    sf._refresh_session()  # noqa: SLF001 - simple-salesforce's own re-login entry point (regenerates headers)


def _relogin_with_retry(sf: Salesforce, policy: RetryPolicy, what: str) -> None:
    """The login endpoint fails transiently too (503, dropped connection): retry it, bounded."""
    for attempt in range(policy.attempts):
        try:
            relogin(sf)
            return
        except Exception as exc:
            if not is_retryable(exc) or attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            log.warning("%s: login failed (%s); retrying in %.2f s", what, _describe_exc(exc), pause)
            time.sleep(pause)


def call_with_retry(sf: Salesforce, fn: Callable[[int], T], what: str, policy: RetryPolicy = DEFAULT_RETRY,
                    stats: PushSummary | None = None) -> T:
    """Run ``fn(attempt)`` until it succeeds, retrying transient failures a bounded number of times.

    ``attempt`` > 0 tells ``fn`` that an earlier try may have been applied by Salesforce
    (a timeout or dropped connection after the request was sent), so creates re-check
    what exists first. A 401 INVALID_SESSION_ID re-logs in once and repeats the same
    attempt: Salesforce rejected it before doing anything.
    """
    attempt = 0
    relogged = False
    while True:
        try:
            return fn(attempt)
        except SalesforceExpiredSession:
            if relogged or getattr(sf, "_salesforce_login_partial", None) is None:
                raise
            relogged = True
            log.warning("%s: session expired; logging in again", what)
            _relogin_with_retry(sf, policy, what)
            if stats is not None:
                stats.retries += 1
        except Exception as exc:
            if not is_retryable(exc) or attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            attempt += 1
            if stats is not None:
                stats.retries += 1
            log.warning("%s failed (%s); retry %d of %d in %.2f s", what, _describe_exc(exc), attempt, policy.attempts - 1, pause)
            time.sleep(pause)


@contextmanager
def count_requests(session: requests.Session) -> Iterator[list[int]]:
    """Count HTTP requests made through ``session`` (logins, retries and bulk steps included)."""
    counter = [0]
    had_own = "request" in vars(session)
    original = session.request

    def counting(*args: Any, **kwargs: Any) -> requests.Response:
        counter[0] += 1
        return original(*args, **kwargs)

    session.request = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        if had_own:
            session.request = original  # type: ignore[method-assign]
        else:
            del session.request


# --------------------------------------------------------------------------------------
# SOQL helpers
# --------------------------------------------------------------------------------------
def in_clause_queries(sf: Salesforce, head: str, field_name: str, values: list[str], tail: str = "", *,
                      where: str = "", max_uri: int = MAX_QUERY_URI, max_values: int = 500) -> Iterator[str]:
    """Split ``head WHERE [where AND] field IN (...) tail`` into queries whose URI stays under ``max_uri``."""
    prefix = f"{head} WHERE {where + ' AND ' if where else ''}{field_name} IN ("
    suffix = ")" + (f" {tail}" if tail else "")
    base = len(sf.base_url) + len("queryAll/?q=") + len(quote_plus(prefix + suffix))
    batch: list[str] = []
    size = base
    for value in values:
        literal = soql_quote(value)
        cost = len(quote_plus(literal)) + 3  # ", " separator
        if batch and (size + cost > max_uri or len(batch) >= max_values):
            yield prefix + ", ".join(soql_quote(v) for v in batch) + suffix
            batch, size = [], base
        batch.append(value)
        size += cost
    if batch:
        yield prefix + ", ".join(soql_quote(v) for v in batch) + suffix


def query_all(sf: Salesforce, soql: str, policy: RetryPolicy, stats: PushSummary | None = None,
              include_deleted: bool = False) -> list[dict[str, Any]]:
    """All records of a query (pagination followed), each page retried on its own."""
    first = call_with_retry(sf, lambda _a: sf.query(soql, include_deleted=include_deleted), "query", policy, stats)
    records = list(first["records"])
    page = first
    while not page.get("done", True):
        url = page["nextRecordsUrl"]
        page = call_with_retry(sf, lambda _a, u=url: sf.query_more(u, identifier_is_url=True), "query_more", policy, stats)
        records.extend(page["records"])
    return records


# --------------------------------------------------------------------------------------
# Composite and Bulk 2.0 writers
# --------------------------------------------------------------------------------------
def _chunks(items: list[T], size: int) -> Iterator[list[T]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _first_error(result: dict[str, Any]) -> tuple[str, str]:
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
        for chunk in _chunks(pending, COMPOSITE_BATCH):
            body = {"allOrNone": False, "records": [{"attributes": {"type": sobject}, "Id": rid, **updates[rid]} for rid in chunk]}
            results = call_with_retry(sf, lambda _a, b=body: sf.restful("composite/sobjects", method="PATCH", json=b),
                                      f"composite update of {len(chunk)} {sobject}", policy, summary)
            for rid, result in zip(chunk, results or [], strict=True):
                if result.get("success"):
                    outcome[rid] = None
                else:
                    code, message = _first_error(result)
                    outcome[rid] = (code, message)
                    if code in TRANSIENT_ROW_ERRORS:
                        transient.append(rid)
        if not transient or round_no + 1 >= policy.attempts:
            break
        log.warning("%d %s updates failed transiently; retrying them", len(transient), sobject)
        time.sleep(policy.delay(round_no))
        pending = transient
    return outcome


@dataclass
class BulkResult:
    job_id: str
    successes: list[dict[str, str]]
    failures: list[dict[str, str]]
    unprocessed: list[dict[str, str]]


class BulkJobFailed(RuntimeError):
    """The whole Bulk 2.0 job failed (bad CSV, bad header, aborted): no row was written."""


def _bulk_client(sf: Salesforce, sobject: str) -> _Bulk2Client:
    # Built per step from the current session id, so a re-login is picked up.
    headers = {"Content-Type": "application/json", "Authorization": "Bearer " + sf.session_id, "X-PrettyPrint": "1"}
    return _Bulk2Client(sobject, sf.bulk2_url, headers, sf.session)


def rows_to_csv(rows: list[dict[str, Any]], columns: list[str], clear_nulls: bool) -> str:
    """CSV for Bulk 2.0. None becomes ``#N/A`` (clears the field) when ``clear_nulls``, else empty."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        out = []
        for column in columns:
            value = row.get(column)
            if value is None:
                out.append("#N/A" if clear_nulls else "")
            elif isinstance(value, bool):
                out.append("true" if value else "false")
            elif isinstance(value, float):
                # Plain decimal notation: Salesforce does not read '1e-05'.
                out.append(str(int(value)) if value.is_integer() else format(Decimal(repr(value)), "f"))
            else:
                out.append(str(value))
        writer.writerow(out)
    return buffer.getvalue()


def run_bulk_ingest(sf: Salesforce, sobject: str, operation: str, rows: list[dict[str, Any]], columns: list[str],
                    policy: RetryPolicy, summary: PushSummary, *, external_id: str | None = None,
                    poll_interval: float = 0.25, max_wait: float = 3600.0) -> BulkResult:
    """Run one Bulk 2.0 ingest job step by step, retrying each step safely.

    simple-salesforce's one-call helpers retry nothing and cannot re-login. Here the
    create/upload/close steps are retried as a unit (a fresh job each time; the stale
    open job is aborted), but once Salesforce has accepted ``UploadComplete`` the job is
    never submitted again: polling and result downloads are retried on their own.
    """
    data = rows_to_csv(rows, columns, clear_nulls=operation in ("update", "upsert"))
    state: dict[str, Any] = {"job": None}

    def submit(_attempt: int) -> str:
        client = _bulk_client(sf, sobject)
        stale = state["job"]
        if stale:
            try:
                client.abort_job(stale, False)
            except (SalesforceError, requests.RequestException):
                log.debug("could not abort stale bulk job %s", stale)
        job = client.create_job(Operation(operation), external_id_field=external_id)
        state["job"] = job["id"]
        client.upload_job_data(job["id"], data)
        try:
            client.close_job(job["id"])
        except Exception as exc:
            if not is_retryable(exc):
                raise
            info = call_with_retry(sf, lambda _a: _bulk_client(sf, sobject).get_job(job["id"], False), "bulk job status", policy, summary)
            if info["state"] not in ("UploadComplete", "InProgress", "JobComplete"):
                raise
            log.info("bulk job %s was closed although the response was lost", job["id"])
        state["job"] = None
        return str(job["id"])

    try:
        job_id = call_with_retry(sf, submit, f"bulk {operation} of {len(rows)} {sobject}", policy, summary)
    except Exception:
        if state["job"]:  # created but never closed: abort it rather than leave it open for days
            try:
                _bulk_client(sf, sobject).abort_job(state["job"], False)
            except (SalesforceError, requests.RequestException):
                log.debug("could not abort bulk job %s", state["job"])
        raise
    deadline = time.monotonic() + max_wait
    pause = poll_interval
    while True:
        info = call_with_retry(sf, lambda _a: _bulk_client(sf, sobject).get_job(job_id, False), "bulk job status", policy, summary)
        if info["state"] in ("JobComplete", "Failed", "Aborted"):
            break
        if time.monotonic() > deadline:
            raise BulkJobFailed(f"bulk job {job_id} still {info['state']} after {max_wait:.0f} s")
        time.sleep(pause)
        pause = min(pause * 1.5, 5.0)
    if info["state"] != "JobComplete":
        raise BulkJobFailed(f"bulk job {job_id} {info['state']}: {info.get('errorMessage', '')}")

    def results(kind: str) -> list[dict[str, str]]:
        text = call_with_retry(sf, lambda _a: _bulk_client(sf, sobject).get_ingest_results(job_id, kind), f"bulk {kind}", policy, summary)
        return list(csv.DictReader(io.StringIO(text)))

    return BulkResult(job_id, results("successfulResults"), results("failedResults"), results("unprocessedrecords"))


def _bulk_error(row: dict[str, str]) -> tuple[str, str]:
    text = row.get("sf__Error", "")
    code, _, message = text.partition(":")
    return code or "UNKNOWN", message.rstrip(" -")


@contextmanager
def _ledgered(ledger: Ledger | None, summary: PushSummary) -> Iterator[Callable[[dict[str, str]], None]]:
    """Yield ``intend(hashes)``; on exit (also on an exception) record every intended record's outcome."""
    intended: set[str] = set()

    def intend(hashes: dict[str, str], states: dict[str, dict[str, Any]] | None = None,
               as_of: dict[str, date] | None = None) -> None:
        if ledger is not None and hashes:
            ledger.record_intents(summary.kind, hashes, states=states, as_of=as_of)
            intended.update(hashes)

    try:
        yield intend
    finally:
        if ledger is not None:
            failed = {e.key: f"{e.code}: {e.message}" for e in summary.errors}
            sent = {k: v for k, v in summary.ids.items() if k in intended and v and k not in failed}
            doubt = {k: v for k, v in summary.in_doubt.items() if k not in sent and k not in failed}
            try:
                ledger.record_outcomes(summary.kind, sent, failed, doubt)
            except Exception:  # never mask the push's own exception; the intents stay for the next run
                log.exception("could not record CRM outcomes in the ledger")


# --------------------------------------------------------------------------------------
# Account health
# --------------------------------------------------------------------------------------
ACCOUNT_HEALTH_COLUMNS = ("crm_account_id", "health_score", "band", "p_churn", "health_change_30d",
                          "top_drivers_text", "arr_at_risk", "scored_at", "as_of_date")
#: The Account field holding the as-of date of the score shown (declared in fields.py).
AS_OF_FIELD = next(f.api_name for f in fields_for("Account") if f.source == "as_of_date")


@dataclass(frozen=True)
class HealthRow:
    """One account's health as the push sees it: what to write, what decides a change, which day."""

    key: str
    account: str | None
    payload: dict[str, Any]
    state: dict[str, Any]
    as_of: date | None


def _day(value: Any) -> date | None:
    if is_missing(value):
        return None
    if isinstance(value, str):
        return date.fromisoformat(value[:10])
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()


def account_health_rows(frame: pd.DataFrame, summary: PushSummary) -> dict[str, HealthRow]:
    """crm_account_id -> the account's health row; rows without a crm id are skipped (named), rows
    that cannot be converted are reported as failed."""
    missing = [c for c in ACCOUNT_HEALTH_COLUMNS if c not in frame.columns]
    if missing:
        raise ValueError(f"account health frame lacks columns {missing}")
    rows: dict[str, HealthRow] = {}
    for row in frame.to_dict("records"):
        key = row.get("crm_account_id")
        account = None if is_missing(row.get("account_id")) else str(row["account_id"])
        if is_missing(key) or not str(key).strip():
            summary.skip(account or "?", "no crm id", "accounts.crm_account_id is empty: the account has no CRM record to write to", account)
            continue
        key = str(key).strip()
        try:
            payload = account_health_payload(row)
            state = change_state(row)
            as_of = _day(row.get("as_of_date"))
        except (ValueError, TypeError) as exc:
            summary.fail(key, "INVALID_INPUT", str(exc))
            continue
        if key in rows:
            log.warning("account %s appears twice in the health frame; the last row wins", key)
        rows[key] = HealthRow(key, account, payload, state, as_of)
    return rows


def account_health_updates(frame: pd.DataFrame, summary: PushSummary) -> dict[str, dict[str, Any]]:
    """crm_account_id -> Account field values; rows that cannot be converted are reported as failed."""
    return {key: row.payload for key, row in account_health_rows(frame, summary).items()}


def is_unchanged(entry: LedgerEntry | None, row: HealthRow, min_change: float, min_trend: float = 3.0) -> bool:
    """Does the CRM already hold this account's health, as far as a CSM can tell? (Confirmed by
    the ledger; the rule itself is :func:`crm_sync.fields.material_change`.)"""
    if entry is None or entry.status != "sent" or not entry.crm_id:
        return False
    if entry.sent_state is not None:
        return not material_change(entry.sent_state, row.state, min_change, min_trend)
    return entry.sent_hash == payload_hash(row.payload)  # a ledger row from before change states


def is_older(entry: LedgerEntry | None, row: HealthRow) -> bool:
    """Is this score older than what the CRM holds or a run already found unchanged?"""
    return entry is not None and row.as_of is not None and entry.seen_as_of is not None and row.as_of < entry.seen_as_of


class AccountResolver:
    """crm_account_id -> Salesforce Account Id, for one run.

    With ``match_field="Id"`` the crm id is the Id (normalised to 18 characters, no call).
    With an external-id field, one SOQL query per batch of ids resolves them, and the
    answers are cached for the run, so the health push and the task push (WhatId must be an
    Id) share them. The query also reads the Account's score as-of date, which the push
    needs anyway to refuse older scores.
    """

    def __init__(self, sf: Salesforce, match_field: str = "Id", policy: RetryPolicy = DEFAULT_RETRY) -> None:
        if match_field.lower() != "id" and not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", match_field):
            raise ValueError(f"match_field {match_field!r} is not a Salesforce field name")
        self.sf = sf
        self.match_field = "Id" if match_field.lower() == "id" else match_field
        self.policy = policy
        self.ids: dict[str, str | None] = {}
        self.errors: dict[str, tuple[str, str]] = {}
        self.crm_as_of: dict[str, date | None] = {}  # Account Id -> its Churnflow_Score_As_Of__c
        self.queries = 0

    def resolve(self, keys: list[str], stats: PushSummary | None = None) -> dict[str, str | None]:
        """Account Id per key (None: not found / malformed; the reason is in ``errors``)."""
        todo = [k for k in dict.fromkeys(keys) if k not in self.ids]
        if self.match_field == "Id":
            for key in todo:
                rid = to_id18(key)
                if rid is None or not rid.startswith("001"):
                    self.ids[key] = None
                    self.errors[key] = ("MALFORMED_ID", f"Account ID: id value of incorrect type: {key}")
                else:
                    self.ids[key] = rid
        elif todo:
            found: dict[str, list[str]] = {}
            for soql in in_clause_queries(self.sf, f"SELECT Id, {self.match_field}, {AS_OF_FIELD} FROM Account", self.match_field, todo):
                self.queries += 1
                for rec in query_all(self.sf, soql, self.policy, stats):
                    found.setdefault(str(rec[self.match_field]).lower(), []).append(rec["Id"])
                    self.crm_as_of[rec["Id"]] = _day(rec.get(AS_OF_FIELD))
            for key in todo:
                matches = found.get(key.lower(), [])
                self.ids[key] = matches[0] if len(matches) == 1 else None
                if not matches:
                    self.errors[key] = ("NOT_FOUND", f"no Account with {self.match_field} = {key}")
                elif len(matches) > 1:
                    self.errors[key] = ("DUPLICATE_EXTERNAL_ID", f"{len(matches)} Accounts have {self.match_field} = {key}: {matches}")
        return {k: self.ids[k] for k in keys}

    def score_as_of(self, account_ids: list[str], stats: PushSummary | None = None) -> dict[str, date | None]:
        """The CRM's score as-of date of these Accounts (read once per run, batched)."""
        todo = [rid for rid in dict.fromkeys(account_ids) if rid not in self.crm_as_of]
        for soql in in_clause_queries(self.sf, f"SELECT Id, {AS_OF_FIELD} FROM Account", "Id", todo):
            self.queries += 1
            for rec in query_all(self.sf, soql, self.policy, stats):
                self.crm_as_of[rec["Id"]] = _day(rec.get(AS_OF_FIELD))
        return {rid: self.crm_as_of.get(rid) for rid in account_ids}


def push_account_health(sf: Salesforce, frame: pd.DataFrame, *, match_field: str = "Id",
                        bulk_threshold: int = BULK_THRESHOLD, retry: RetryPolicy | None = None,
                        poll_interval: float = 0.25, ledger: Ledger | None = None,
                        resolver: AccountResolver | None = None, min_change: float = 1.0, min_trend: float = 3.0) -> PushSummary:
    """Write churnflow's health fields onto the Accounts in ``frame`` (matched by ``crm_account_id``).

    ``match_field`` is the Account field ``crm_account_id`` holds: ``Id`` or an external
    id field (resolved to Ids with SOQL first, see :class:`AccountResolver`). Rows without
    a crm_account_id are skipped and named; empty values (NaN) clear the field in
    Salesforce. Accounts not found are reported as failed.

    The CRM only moves forward: an account whose ledger (or, when the ledger does not know
    it, whose CRM record) holds a score as of a later day is skipped as "older score". With
    a ``ledger``, an account whose values did not change materially since the last
    confirmed write (:func:`crm_sync.fields.material_change` with ``min_change`` health
    points and ``min_trend`` trend points) costs no call; intents and outcomes are recorded (see :mod:`crm_sync.ledger`).
    """
    policy = retry or DEFAULT_RETRY
    summary = PushSummary(kind="account_health")
    with count_requests(sf.session) as calls, _ledgered(ledger, summary) as intend:
        rows = account_health_rows(frame, summary)
        entries = ledger.entries(summary.kind, rows) if ledger is not None and rows else {}
        unchanged_by_day: dict[date, list[str]] = {}
        for key, row in list(rows.items()):
            entry = entries.get(key)
            if is_older(entry, row):
                summary.skip(key, "older score", f"score as of {row.as_of}; churnflow already wrote or confirmed the score as of {entry.seen_as_of}",  # type: ignore[union-attr]
                             row.account)
                del rows[key]
            elif is_unchanged(entry, row, min_change, min_trend):
                summary.unchanged += 1
                summary.ids[key] = entry.crm_id or ""  # type: ignore[union-attr]
                if row.as_of is not None:
                    unchanged_by_day.setdefault(row.as_of, []).append(key)
                del rows[key]
        if ledger is not None:
            for day, keys in unchanged_by_day.items():
                ledger.mark_seen(summary.kind, keys, day)
        resolver = resolver or AccountResolver(sf, match_field, policy)
        by_id: dict[str, str] = {}  # Salesforce Id -> caller key
        for key, rid in resolver.resolve(list(rows), summary).items():
            if rid is None:
                summary.fail(key, *resolver.errors[key])
            else:
                by_id[rid] = key
        # Accounts the ledger has never confirmed: the CRM itself says how new its score is.
        unknown = [rid for rid, key in by_id.items() if entries.get(key) is None or entries[key].sent_as_of is None]
        if unknown:
            for rid, crm_day in resolver.score_as_of(unknown, summary).items():
                row = rows[by_id[rid]]
                if crm_day is not None and row.as_of is not None and row.as_of < crm_day:
                    summary.skip(row.key, "older score", f"score as of {row.as_of}; the CRM holds the score as of {crm_day}", row.account)
                    del by_id[rid]
        if ledger is not None:
            sending = [by_id[rid] for rid in by_id]
            intend({k: payload_hash(rows[k].payload) for k in sending}, {k: rows[k].state for k in sending},
                   {k: rows[k].as_of for k in sending if rows[k].as_of is not None})
        payloads = {rid: rows[key].payload for rid, key in by_id.items()}
        summary.sent = len(payloads)
        if payloads and len(payloads) >= bulk_threshold:
            summary.mode = "bulk"
            _bulk_update(sf, "Account", payloads, by_id, policy, summary, poll_interval)
        elif payloads:
            summary.mode = "composite"
            outcome = composite_update(sf, "Account", payloads, policy, summary)
            for rid, error in outcome.items():
                if error is None:
                    summary.updated += 1
                    summary.ids[by_id[rid]] = rid
                else:
                    summary.fail(by_id[rid], *error)
    summary.api_calls = calls[0]
    log.info("%s", summary.describe())
    return summary


def _bulk_update(sf: Salesforce, sobject: str, payloads: dict[str, dict[str, Any]], keys: dict[str, str],
                 policy: RetryPolicy, summary: PushSummary, poll_interval: float) -> None:
    """Bulk 2.0 update by Id; transiently failing rows go round again in a new job."""
    columns = ["Id", *sorted({c for p in payloads.values() for c in p})]
    pending = dict(payloads)
    for round_no in range(policy.attempts):
        rows = [{"Id": rid, **values} for rid, values in pending.items()]
        result = run_bulk_ingest(sf, sobject, "update", rows, columns, policy, summary, poll_interval=poll_interval)
        retry_next: dict[str, dict[str, Any]] = {}
        for row in result.successes:
            rid = row.get("sf__Id") or row.get("Id", "")
            summary.updated += 1
            summary.ids[keys.get(rid, rid)] = rid
        last_round = round_no + 1 >= policy.attempts
        for row in [*result.failures, *result.unprocessed]:
            rid = row.get("Id", "")
            code, message = _bulk_error(row) if "sf__Error" in row else ("UNPROCESSED", "record was not processed")
            if not last_round and (code in TRANSIENT_ROW_ERRORS or code == "UNPROCESSED") and rid in pending:
                retry_next[rid] = pending[rid]
            else:
                summary.fail(keys.get(rid, rid), code, message)
        if not retry_next:
            return
        log.warning("%d %s rows failed transiently in bulk job %s; retrying them", len(retry_next), sobject, result.job_id)
        time.sleep(policy.delay(round_no))
        pending = retry_next


# --------------------------------------------------------------------------------------
# Tasks
# --------------------------------------------------------------------------------------
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
    with count_requests(sf.session) as calls, _ledgered(ledger, summary) as intend:
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
        key_len = next(f.length for f in fields_for("Task") if f.api_name == "Churnflow_Key__c") or 80
        what_ids: dict[str, str | None] = {}
        if resolver.match_field != "Id":
            crm_ids = [str(r["crm_account_id"]).strip() for r in rows.values() if not is_missing(r.get("crm_account_id"))]
            what_ids = resolver.resolve(crm_ids, summary)
        for key, row in rows.items():
            try:
                if len(key) > key_len:
                    raise ValueError(f"task_key longer than {key_len} characters")
                if is_missing(row.get("crm_account_id")) or not str(row["crm_account_id"]).strip():
                    # Like its account's health: not a rejection, named in the summary every run.
                    summary.skip(key, "no crm id", "the task's account has no crm_account_id: no Account to attach it to",
                                 None if is_missing(row.get("account_id")) else str(row.get("account_id")))
                    continue
                priority = "Normal" if is_missing(row.get("priority")) else str(row["priority"])
                status = NEW_TASK_STATUS if is_missing(row.get("status")) else str(row["status"])
                if priority not in TASK_PRIORITIES:
                    raise ValueError(f"priority {priority!r} is not one of {TASK_PRIORITIES}")
                if status not in TASK_STATUSES:
                    raise ValueError(f"status {status!r} is not one of {TASK_STATUSES}")
                crm_id = str(row["crm_account_id"]).strip()
                if resolver.match_field == "Id":
                    what_id = to_id18(crm_id) or crm_id  # a malformed id is Salesforce's to reject
                else:
                    what_id = what_ids.get(crm_id)
                    if what_id is None:
                        code, message = resolver.errors.get(crm_id, ("NOT_FOUND", f"no Account with {resolver.match_field} = {crm_id}"))
                        summary.fail(key, code, f"task's Account: {message}")
                        continue
                values: dict[str, Any] = {
                    "Churnflow_Key__c": key,
                    "WhatId": what_id,
                    "Subject": _task_text(row.get("subject"), TASK_TEXT_FIELDS["Subject"]),
                    "Description": _task_text(row.get("description"), TASK_TEXT_FIELDS["Description"]),
                    "Priority": priority,
                    "Status": status,
                    "ActivityDate": _due(row.get("due_date")),
                }
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
                _bulk_update(sf, "Task", to_update, keys_by_id, policy, summary, poll_interval)
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
        for chunk in _chunks(pending, COMPOSITE_BATCH):
            lost: dict[str, float] = {}  # when a send of this chunk ended ambiguously

            def send(attempt: int, chunk: list[str] = chunk, lost: dict[str, float] = lost) -> list[tuple[str, dict[str, Any]]]:
                todo = chunk
                done: list[tuple[str, dict[str, Any]]] = []
                if attempt > 0:  # the previous try may have been applied: never create twice
                    # One try only: the enclosing call_with_retry already retries this whole step.
                    found = find_tasks(sf, chunk, _ONCE, summary)
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
                        lost.update(at=time.monotonic(), why=_describe_exc(exc))
                    raise
                return done + list(zip(todo, results, strict=True))

            for key, result in call_with_retry(sf, send, f"composite create of {len(chunk)} Task", policy, summary):
                if result.get("in_doubt"):
                    summary.in_doubt[key] = result["in_doubt"]
                elif result.get("success"):
                    summary.created += 1
                    summary.ids[key] = result["id"]
                else:
                    code, message = _first_error(result)
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
    columns = sorted({c for p in payloads.values() for c in p})
    pending = dict(payloads)
    for round_no in range(policy.attempts):
        if round_no:
            # A failed row may still have been written by an earlier job's retry: check first.
            found = find_tasks(sf, list(pending), policy, summary)
            for key in list(pending):
                if key in found:
                    summary.created += 1
                    summary.ids[key] = found[key]["Id"]
                    del pending[key]
            if not pending:
                return
        result = run_bulk_ingest(sf, "Task", "insert", list(pending.values()), columns, policy, summary, poll_interval=poll_interval)
        for row in result.successes:
            summary.created += 1
            summary.ids[row["Churnflow_Key__c"]] = row["sf__Id"]
        retry_next: dict[str, dict[str, Any]] = {}
        last_round = round_no + 1 >= policy.attempts
        for row in [*result.failures, *result.unprocessed]:
            key = row.get("Churnflow_Key__c", "")
            code, message = _bulk_error(row) if "sf__Error" in row else ("UNPROCESSED", "record was not processed")
            if not last_round and (code in TRANSIENT_ROW_ERRORS or code == "UNPROCESSED") and key in pending:
                retry_next[key] = pending[key]
            else:
                summary.fail(key, code, message)
        if not retry_next:
            return
        log.warning("%d task rows failed transiently in bulk job %s; retrying them", len(retry_next), result.job_id)
        time.sleep(policy.delay(round_no))
        pending = retry_next
