"""The CRM intent ledger: what churnflow meant to write, and what Salesforce confirmed.

Before a push sends anything it records each record's *intent* (a hash of the values it
is about to write); after the push it records the *outcome* per record (sent with the
Salesforce Id, or failed with the error), also when the push dies half way. That gives:

* delta pushes: a record whose values hash the same as the last confirmed write is not
  sent again (most accounts' health fields do not change every day);
* safe resumption: a record left at ``intended`` (the process died between sending and
  recording) is simply sent again on the next run: account updates are idempotent, and
  tasks are looked up by their Churnflow_Key__c before any create, so nothing duplicates;
* an audit trail of the last write per record, in the warehouse next to the scores.

The ledger lives in the warehouse (DuckDB or PostgreSQL) through SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import pandas as pd
import sqlalchemy as sa

from churnflow.warehouse import read_sql

log = logging.getLogger(__name__)

LEDGER_TABLE = "crm_sync_ledger"
_BATCH = 500


def payload_hash(values: Mapping[str, Any]) -> str:
    """A stable hash of the values a record is written with (key order and types normalised)."""
    def norm(value: Any) -> Any:
        if value is None:
            return None
        try:
            if pd.isna(value):
                return None
        except (TypeError, ValueError):
            pass
        if hasattr(value, "isoformat"):
            return value.isoformat()
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if hasattr(value, "item"):  # numpy scalars
            return norm(value.item())
        return value

    text = json.dumps({k: norm(v) for k, v in sorted(values.items())}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class LedgerEntry:
    record_key: str
    status: str  # intended | sent | failed
    sent_hash: str | None
    intended_hash: str | None
    crm_id: str | None


def _table(metadata: sa.MetaData, name: str) -> sa.Table:
    return sa.Table(
        name, metadata,
        sa.Column("kind", sa.String(), primary_key=True),
        sa.Column("record_key", sa.String(), primary_key=True),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("intended_hash", sa.String()),
        sa.Column("sent_hash", sa.String()),
        sa.Column("crm_id", sa.String()),
        sa.Column("error", sa.String()),
        sa.Column("run_id", sa.String()),
        sa.Column("updated_at", sa.DateTime()),
    )


class Ledger:
    """One row per (kind, record_key): the last intent and the last confirmed write."""

    def __init__(self, engine: sa.Engine, table: str = LEDGER_TABLE, *, create: bool = True) -> None:
        self.engine = engine
        self.table = _table(sa.MetaData(), table)
        if create:
            self.table.create(engine, checkfirst=True)
        self.run_id = uuid.uuid4().hex

    @classmethod
    def existing(cls, engine: sa.Engine, table: str = LEDGER_TABLE) -> "Ledger | None":
        """The ledger if its table exists, without creating anything (for dry runs)."""
        return cls(engine, table, create=False) if sa.inspect(engine).has_table(table) else None

    def entries(self, kind: str, keys: Iterable[str] | None = None) -> dict[str, LedgerEntry]:
        """Current ledger rows of ``kind`` (all, or only ``keys``)."""
        t = self.table
        frames = []
        if keys is None:
            frames.append(read_sql(self.engine, sa.select(t).where(t.c.kind == kind)))
        else:
            wanted = list(dict.fromkeys(keys))
            for start in range(0, len(wanted), _BATCH):
                frames.append(read_sql(self.engine, sa.select(t).where(t.c.kind == kind, t.c.record_key.in_(wanted[start:start + _BATCH]))))
        out: dict[str, LedgerEntry] = {}
        for frame in frames:
            for row in frame.itertuples():
                out[row.record_key] = LedgerEntry(row.record_key, row.status, _none(row.sent_hash), _none(row.intended_hash), _none(row.crm_id))
        return out

    def unchanged(self, kind: str, hashes: Mapping[str, str]) -> dict[str, LedgerEntry]:
        """Records whose last confirmed write had exactly these values (safe to skip)."""
        return {k: e for k, e in self.entries(kind, hashes).items()
                if e.status == "sent" and e.sent_hash == hashes[k] and e.crm_id}

    def record_intents(self, kind: str, hashes: Mapping[str, str]) -> None:
        """Before sending: mark these records as about to be written with these values."""
        existing = self.entries(kind, hashes)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = [{"kind": kind, "record_key": k, "status": "intended", "intended_hash": h,
                 "sent_hash": existing[k].sent_hash if k in existing else None,
                 "crm_id": existing[k].crm_id if k in existing else None,
                 "error": None, "run_id": self.run_id, "updated_at": now} for k, h in hashes.items()]
        self._replace(kind, rows)

    def record_outcomes(self, kind: str, sent: Mapping[str, str], failed: Mapping[str, str]) -> None:
        """After sending: ``sent`` maps key -> Salesforce Id, ``failed`` maps key -> error text."""
        keys = [*sent, *failed]
        if not keys:
            return
        existing = self.entries(kind, keys)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = []
        for key, crm_id in sent.items():
            prior = existing.get(key)
            rows.append({"kind": kind, "record_key": key, "status": "sent",
                         "intended_hash": prior.intended_hash if prior else None,
                         "sent_hash": prior.intended_hash if prior else None, "crm_id": crm_id,
                         "error": None, "run_id": self.run_id, "updated_at": now})
        for key, error in failed.items():
            prior = existing.get(key)
            rows.append({"kind": kind, "record_key": key, "status": "failed",
                         "intended_hash": prior.intended_hash if prior else None,
                         "sent_hash": prior.sent_hash if prior else None,
                         "crm_id": prior.crm_id if prior else None,
                         "error": error[:1000], "run_id": self.run_id, "updated_at": now})
        self._replace(kind, rows)

    def _replace(self, kind: str, rows: list[dict[str, Any]]) -> None:
        t = self.table
        with self.engine.begin() as conn:
            for start in range(0, len(rows), _BATCH):
                chunk = rows[start:start + _BATCH]
                conn.execute(t.delete().where(t.c.kind == kind, t.c.record_key.in_([r["record_key"] for r in chunk])))
                conn.execute(t.insert(), chunk)
        log.debug("ledger: %d %s rows written", len(rows), kind)


def _none(value: Any) -> Any:
    try:
        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value
