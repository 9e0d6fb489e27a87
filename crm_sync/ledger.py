"""The CRM intent ledger: what churnflow meant to write, and what Salesforce confirmed.

Before a push sends anything it records each record's *intent* (a hash of the values it
is about to write); after the push it records the *outcome* per record (sent with the
Salesforce Id, or failed with the error), also when the push dies half way. That gives:

* delta pushes: a record whose values hash the same as the last confirmed write is not
  sent again (most accounts' health fields do not change every day);
* safe resumption: a record left at ``intended`` (the process died between sending and
  recording) is simply sent again on the next run: account updates are idempotent, and
  tasks are looked up by their Churnflow_Key__c before any create, so nothing duplicates;
* an audit trail of the last write per record, in the warehouse next to the scores;
* the CRM only moves forward: per account, the as-of date of the score last confirmed in
  the CRM (``sent_as_of``) and the newest as-of date any run has pushed or found unchanged
  (``seen_as_of``); a run for an older day is refused for those accounts;
* what "changed" is measured against: ``sent_state``, the values that decide a change
  (see :func:`crm_sync.fields.material_change`) as last confirmed in the CRM.

Repairs of duplicate tasks are recorded under kind ``task_repairs`` (key: the closed
record's Id).

The ledger lives in the warehouse (DuckDB or PostgreSQL) through SQLAlchemy.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any

import pandas as pd
import sqlalchemy as sa

from churnflow.schema import CRM_SYNC_LEDGER
from churnflow.warehouse import read_sql

log = logging.getLogger(__name__)

LEDGER_TABLE = CRM_SYNC_LEDGER.name
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
    status: str  # intended | sent | failed | in_doubt (tasks: a create whose outcome is unknown)
    sent_hash: str | None
    intended_hash: str | None
    crm_id: str | None
    sent_state: dict[str, Any] | None = None
    sent_as_of: date | None = None
    seen_as_of: date | None = None
    updated_at: datetime | None = None
    error: str | None = None


def _table(metadata: sa.MetaData, name: str) -> sa.Table:
    """The ledger table as declared (churnflow.schema.CRM_SYNC_LEDGER), under ``name``."""
    return CRM_SYNC_LEDGER.sa_table(metadata, name=name)


def _migrate(engine: sa.Engine, table: sa.Table) -> None:
    """Add the declared columns a ledger written by an older churnflow lacks (nothing is rewritten)."""
    have = {c["name"] for c in sa.inspect(engine).get_columns(table.name)}
    missing = [c for c in table.columns if c.name not in have]
    if not missing:
        return
    preparer = engine.dialect.identifier_preparer
    with engine.begin() as conn:
        for column in missing:
            kind = column.type.compile(dialect=engine.dialect)
            conn.execute(sa.text(f"ALTER TABLE {preparer.quote(table.name)} ADD COLUMN {preparer.quote(column.name)} {kind}"))
    log.info("ledger %s: added columns %s", table.name, [c.name for c in missing])


def _state_json(state: Mapping[str, Any] | None) -> str | None:
    return None if state is None else json.dumps(dict(state), sort_keys=True, default=str)


def _as_date(value: Any) -> date | None:
    value = _none(value)
    if value is None:
        return None
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    return pd.Timestamp(value).date()


class Ledger:
    """One row per (kind, record_key): the last intent and the last confirmed write."""

    def __init__(self, engine: sa.Engine, table: str = LEDGER_TABLE, *, create: bool = True) -> None:
        self.engine = engine
        self.table = _table(sa.MetaData(), table)
        if create:
            self.table.create(engine, checkfirst=True)
        if sa.inspect(engine).has_table(table):
            _migrate(engine, self.table)
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
                state = _none(row.sent_state)
                out[row.record_key] = LedgerEntry(
                    row.record_key, row.status, _none(row.sent_hash), _none(row.intended_hash), _none(row.crm_id),
                    json.loads(state) if state else None, _as_date(row.sent_as_of), _as_date(row.seen_as_of),
                    _none(row.updated_at), _none(row.error))
        return out

    def unchanged(self, kind: str, hashes: Mapping[str, str]) -> dict[str, LedgerEntry]:
        """Records whose last confirmed write had exactly these values (safe to skip)."""
        return {k: e for k, e in self.entries(kind, hashes).items()
                if e.status == "sent" and e.sent_hash == hashes[k] and e.crm_id}

    def _rows(self, kind: str, keys: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The raw ledger rows of these keys (every column), to carry values over unchanged."""
        t = self.table
        wanted = list(dict.fromkeys(keys))
        out: dict[str, dict[str, Any]] = {}
        for start in range(0, len(wanted), _BATCH):
            frame = read_sql(self.engine, sa.select(t).where(t.c.kind == kind, t.c.record_key.in_(wanted[start:start + _BATCH])))
            for row in frame.to_dict("records"):
                out[row["record_key"]] = {k: _none(v) for k, v in row.items()}
        return out

    def record_intents(self, kind: str, hashes: Mapping[str, str], *, states: Mapping[str, Mapping[str, Any]] | None = None,
                       as_of: Mapping[str, date] | None = None) -> None:
        """Before sending: mark these records as about to be written with these values
        (and, for accounts, the change state and the as-of date of the score)."""
        existing = self._rows(kind, hashes)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = []
        for k, h in hashes.items():
            prior = existing.get(k, {})
            rows.append({**{c.name: prior.get(c.name) for c in self.table.columns}, "kind": kind, "record_key": k,
                         "status": "intended", "intended_hash": h,
                         "intended_state": _state_json(states.get(k)) if states else None,
                         "intended_as_of": as_of.get(k) if as_of else None,
                         "error": None, "run_id": self.run_id, "updated_at": now})
        self._replace(kind, rows)

    def record_outcomes(self, kind: str, sent: Mapping[str, str], failed: Mapping[str, str],
                        in_doubt: Mapping[str, str] | None = None) -> None:
        """After sending: ``sent`` maps key -> Salesforce Id, ``failed`` maps key -> error text,
        ``in_doubt`` maps key -> why (a create whose outcome is unknown: checked again later)."""
        in_doubt = in_doubt or {}
        keys = [*sent, *failed, *in_doubt]
        if not keys:
            return
        existing = self._rows(kind, keys)
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = []
        for key, crm_id in sent.items():
            prior = existing.get(key, {})
            intended_as_of, seen = _as_date(prior.get("intended_as_of")), _as_date(prior.get("seen_as_of"))
            rows.append({**prior, "kind": kind, "record_key": key, "status": "sent",
                         "sent_hash": prior.get("intended_hash"), "sent_state": prior.get("intended_state"),
                         "sent_as_of": intended_as_of, "seen_as_of": max(d for d in (intended_as_of, seen) if d) if (intended_as_of or seen) else None,
                         "crm_id": crm_id, "error": None, "run_id": self.run_id, "updated_at": now})
        for status, errors in (("failed", failed), ("in_doubt", in_doubt)):
            for key, error in errors.items():
                prior = existing.get(key, {})
                rows.append({**prior, "kind": kind, "record_key": key, "status": status,
                             "error": error[:1000], "run_id": self.run_id, "updated_at": now})
        self._replace(kind, rows)

    def mark_seen(self, kind: str, keys: Iterable[str], as_of: date) -> None:
        """Unchanged records a run for ``as_of`` looked at: a later run for an older day must not
        overwrite them (the CRM already holds what ``as_of`` would show)."""
        t = self.table
        wanted = list(dict.fromkeys(keys))
        with self.engine.begin() as conn:
            for start in range(0, len(wanted), _BATCH):
                conn.execute(t.update().where(t.c.kind == kind, t.c.record_key.in_(wanted[start:start + _BATCH]),
                                              sa.or_(t.c.seen_as_of.is_(None), t.c.seen_as_of < as_of)).values(seen_as_of=as_of))

    def record_repairs(self, repairs: Mapping[str, str], note: Mapping[str, str]) -> None:
        """Duplicate task records closed by ``sync --repair``: closed Id -> kept Id, with the note written."""
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        rows = [{"kind": "task_repairs", "record_key": rid, "status": "closed", "intended_hash": None, "sent_hash": None,
                 "crm_id": rid, "error": note.get(rid, f"duplicate of {kept}")[:1000], "run_id": self.run_id, "updated_at": now}
                for rid, kept in repairs.items()]
        if rows:
            self._replace("task_repairs", rows)

    def _replace(self, kind: str, rows: list[dict[str, Any]]) -> None:
        t = self.table
        dates = {c.name for c in t.columns if isinstance(c.type, sa.Date) and not isinstance(c.type, sa.DateTime)}
        rows = [{c.name: (_as_date(r.get(c.name)) if c.name in dates else _plain(r.get(c.name))) for c in t.columns} for r in rows]
        with self.engine.begin() as conn:
            for start in range(0, len(rows), _BATCH):
                chunk = rows[start:start + _BATCH]
                conn.execute(t.delete().where(t.c.kind == kind, t.c.record_key.in_([r["record_key"] for r in chunk])))
                conn.execute(t.insert(), chunk)
        log.debug("ledger: %d %s rows written", len(rows), kind)


def _plain(value: Any) -> Any:
    """Database-friendly scalars (pandas Timestamps and numpy values read back from the ledger)."""
    value = _none(value)
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if hasattr(value, "item"):
        return value.item()
    return value


def _none(value: Any) -> Any:
    try:
        return None if value is None or pd.isna(value) else value
    except (TypeError, ValueError):
        return value
