"""What a push did, record by record, and the ledger entries that say so.

:class:`PushSummary` is filled by every writer (composite, bulk, retries) of one push;
:func:`ledgered` records each intended record's outcome in the intent ledger when the push
ends, also when it ends with an exception, so a crashed run resumes without duplicates.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from crm_sync.ledger import Ledger

log = logging.getLogger(__name__)


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



@contextmanager
def ledgered(ledger: Ledger | None, summary: PushSummary) -> Iterator[Callable[[dict[str, str]], None]]:
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
