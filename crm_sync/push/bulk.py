"""Bulk API 2.0 ingest: one job instead of hundreds of calls, above ``BULK_THRESHOLD`` records.

simple-salesforce's one-call helpers retry nothing, cannot re-login and do not raise on
row failures. :func:`run_bulk_ingest` runs a job step by step, each step retried safely;
:func:`bulk_write` is the one loop that reads the rows back and sends transiently failed
(or unprocessed) rows again in a new job, for account updates and task inserts alike.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import requests
from simple_salesforce import Salesforce
from simple_salesforce.bulk2 import _Bulk2Client, Operation  # pinned 1.12.10: the step-level client
from simple_salesforce.exceptions import SalesforceError

from crm_sync.push.composite import TRANSIENT_ROW_ERRORS
from crm_sync.push.results import PushSummary
from crm_sync.retry import RetryPolicy, call_with_retry, is_retryable

log = logging.getLogger(__name__)

BULK_THRESHOLD = 2000


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


def bulk_write(sf: Salesforce, sobject: str, operation: str, rows: dict[str, dict[str, Any]], columns: list[str],
               key_field: str, policy: RetryPolicy, summary: PushSummary, *, poll_interval: float = 0.25,
               names: dict[str, str] | None = None,
               recheck: Callable[[dict[str, dict[str, Any]]], dict[str, dict[str, Any]]] | None = None) -> None:
    """Write ``rows`` (keyed by their ``key_field`` value) in Bulk 2.0 jobs until none is left to retry.

    Rows back as failed with a transient code, or not processed, go round again in a new
    job (at most ``policy.attempts`` jobs); any other failure, and any failure of the last
    round, is recorded in ``summary`` under the caller's name for the row (``names``, by
    default the key itself). Successes count as created (insert) or updated and their Ids
    land in ``summary.ids``. Before every round after the first, ``recheck`` may take out
    rows an earlier job wrote after all (a create must never be sent twice): it gets the
    pending rows and returns those still to send.
    """
    names = names or {}
    pending = dict(rows)
    for round_no in range(policy.attempts):
        if round_no and recheck is not None:
            pending = recheck(pending)
            if not pending:
                return
        result = run_bulk_ingest(sf, sobject, operation, list(pending.values()), columns, policy, summary, poll_interval=poll_interval)
        for row in result.successes:
            key = row.get(key_field, "")
            rid = row.get("sf__Id") or key
            if operation == "insert":
                summary.created += 1
            else:
                summary.updated += 1
            summary.ids[names.get(key, key)] = rid
        retry_next: dict[str, dict[str, Any]] = {}
        last_round = round_no + 1 >= policy.attempts
        for row in [*result.failures, *result.unprocessed]:
            key = row.get(key_field, "")
            code, message = _bulk_error(row) if "sf__Error" in row else ("UNPROCESSED", "record was not processed")
            if not last_round and (code in TRANSIENT_ROW_ERRORS or code == "UNPROCESSED") and key in pending:
                retry_next[key] = pending[key]
            else:
                summary.fail(names.get(key, key), code, message)
        if not retry_next:
            return
        log.warning("%d %s rows failed transiently in bulk job %s; retrying them", len(retry_next), sobject, result.job_id)
        time.sleep(policy.delay(round_no))
        pending = retry_next


def bulk_update(sf: Salesforce, sobject: str, payloads: dict[str, dict[str, Any]], names: dict[str, str],
                policy: RetryPolicy, summary: PushSummary, poll_interval: float) -> None:
    """Bulk 2.0 update by Id (``payloads``: Id -> fields; ``names``: Id -> the caller's key), see :func:`bulk_write`."""
    columns = ["Id", *sorted({c for p in payloads.values() for c in p})]
    bulk_write(sf, sobject, "update", {rid: {"Id": rid, **values} for rid, values in payloads.items()}, columns, "Id",
               policy, summary, poll_interval=poll_interval, names=names)
