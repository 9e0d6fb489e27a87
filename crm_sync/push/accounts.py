"""Push churnflow's health fields onto Salesforce Accounts: forward only, and only what changed.

Accounts whose score is older than what the CRM holds are skipped, and accounts that did
not change by the rule in :func:`crm_sync.fields.material_change` cost no call (see
:func:`push_account_health`). Accounts are matched by ``crm_account_id``: an Id, or an
external-id field resolved once per run by :class:`AccountResolver` (the task push shares it).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import pandas as pd
from simple_salesforce import Salesforce

from churnflow.salesforce_ids import to_id18
from crm_sync.fields import account_health_payload, change_state, fields_for, is_missing, material_change
from crm_sync.ledger import Ledger, LedgerEntry, payload_hash
from crm_sync.push.bulk import BULK_THRESHOLD, bulk_update
from crm_sync.push.composite import composite_update
from crm_sync.push.results import PushSummary, ledgered
from crm_sync.query import in_clause_queries, query_all
from crm_sync.retry import DEFAULT_RETRY, RetryPolicy, count_requests

log = logging.getLogger(__name__)

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
    with count_requests(sf.session) as calls, ledgered(ledger, summary) as intend:
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
            bulk_update(sf, "Account", payloads, by_id, policy, summary, poll_interval)
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
