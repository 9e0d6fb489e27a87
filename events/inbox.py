"""The durable inbox: an accepted event is committed here before it is acknowledged, and
applied to its canonical table, exactly once, by the reaction it triggers.

Applying and marking applied happen in one transaction, so a reaction that dies half-way
leaves its events pending for the next one (never applied twice: usage rows have no key).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta

import pandas as pd
import sqlalchemy as sa

from churnflow.history import VERSIONED
from churnflow.schema import CANONICAL, EVENT_INBOX
from churnflow.warehouse import ensure_table, replace_rows, table_exists
from events.shapes import MappedEvent, row_to_json, rows_from_json
from ingest.contracts import QUARANTINE_TABLE, quarantine_frame

log = logging.getLogger(__name__)

INBOX = EVENT_INBOX.name
RECEIVED, APPLIED = "received", "applied"
#: Rejected events are quarantined under this table name, so an ingest (which replaces a
#: canonical table's quarantine rows) does not erase them.
QUARANTINE_NAME = INBOX


def ensure_inbox(engine: sa.Engine) -> None:
    ensure_table(engine, INBOX, pd.DataFrame(columns=EVENT_INBOX.column_names))


def _is_duplicate_key(exc: Exception) -> bool:
    text = str(getattr(exc, "orig", exc)).lower()
    return "duplicate key" in text or "unique" in text or "primary key" in text


def commit_event(engine: sa.Engine, event: MappedEvent, received_at: datetime) -> bool:
    """Commit ``event`` to the inbox (one transaction); False when its id is already there."""
    params = {
        "event_id": event.event_id, "source": event.shape, "kind": event.kind, "table_name": event.table,
        "account_id": event.account_id, "occurred_at": event.occurred_at, "received_at": received_at,
        "row_json": row_to_json(event.row), "status": RECEIVED,
    }
    columns = ", ".join(params)
    values = ", ".join(f":{k}" for k in params)
    try:
        with engine.begin() as conn:
            if conn.execute(sa.text(f"SELECT 1 FROM {INBOX} WHERE event_id = :e"), {"e": event.event_id}).first():
                return False
            conn.execute(sa.text(f"INSERT INTO {INBOX} ({columns}) VALUES ({values})"), params)
    except sa.exc.DBAPIError as exc:  # a concurrent delivery of the same id won the race
        if _is_duplicate_key(exc):
            return False
        raise
    return True


def is_known(engine: sa.Engine, event_id: str) -> bool:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT 1 FROM {INBOX} WHERE event_id = :e"), {"e": event_id}).first() is not None


def quarantine_event(engine: sa.Engine, shape: str, event_id: str | None, field_name: str, value: object, reason: str,
                     now: datetime) -> None:
    """One quarantine record for a refused event (appended; the source is the shape's webhook)."""
    text = None if value is None else str(value)[:500]
    replace_rows(engine, QUARANTINE_TABLE, quarantine_frame(pd.DataFrame([{
        "table_name": QUARANTINE_NAME, "source": f"{shape} webhook", "source_row": None, "source_key": event_id,
        "field": field_name, "value": text, "reason": reason[:2000], "run_id": f"event:{event_id or 'unknown'}", "quarantined_at": now,
    }])))


@dataclass
class Applied:
    """What one apply did for an account: the events, their newest time, the rows per table."""

    event_ids: list[str] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    newest_occurred: datetime | None = None
    rows: dict[str, int] = field(default_factory=dict)


def _loaded_at(conn: sa.Connection, table: str, received: datetime) -> datetime | None:
    """The version time of an event's state change: when it was received, unless a load
    newer than that exists (then it corrects that load: an older time would void it)."""
    history = VERSIONED[table]
    if not table_exists(conn, history):
        return received
    latest = conn.execute(sa.text(f'SELECT MAX(valid_from) FROM "{history}"')).scalar()
    return None if latest is not None and pd.Timestamp(latest) >= pd.Timestamp(received) else received


def apply_pending(engine: sa.Engine, account_id: str, reaction_run: str, now: datetime | None = None) -> Applied:
    """Apply the account's received events to the canonical tables and mark them applied,
    in ONE transaction. Survey and ticket rows replace the row with the same key (a ticket
    event carries the ticket's whole current state; the last one by event time wins); a
    failure event adds a usage row."""
    ensure_inbox(engine)
    now = now or datetime.now()
    done = Applied()
    with engine.begin() as conn:
        pending = pd.DataFrame(conn.execute(sa.text(
            f"SELECT event_id, kind, table_name, occurred_at, received_at, row_json FROM {INBOX} "
            "WHERE account_id = :a AND status = :s ORDER BY occurred_at, received_at, event_id"
        ), {"a": account_id, "s": RECEIVED}).mappings().all())
        if pending.empty:
            return done
        for table, group in pending.groupby("table_name", sort=False):
            frame = rows_from_json(str(table), group["row_json"].tolist())
            spec = CANONICAL[str(table)]
            if spec.key:  # last event per key wins, replacing the stored row
                frame = frame.drop_duplicates(list(spec.key), keep="last").reset_index(drop=True)
                received = pd.Timestamp(group["received_at"].max()).to_pydatetime()
                loaded_at = _loaded_at(conn, str(table), received) if str(table) in VERSIONED else None
                key = spec.key[0]
                for value, one in frame.groupby(key, sort=False):
                    replace_rows(conn, str(table), one.reset_index(drop=True), where={key: value}, loaded_at=loaded_at)
            else:
                replace_rows(conn, str(table), frame)
            done.rows[str(table)] = len(frame)
        conn.execute(sa.text(f"UPDATE {INBOX} SET status = :applied, applied_at = :now, reaction_run = :run "
                             "WHERE account_id = :a AND status = :s AND event_id IN :ids").bindparams(sa.bindparam("ids", expanding=True)),
                     {"applied": APPLIED, "now": now, "run": reaction_run, "a": account_id, "s": RECEIVED,
                      "ids": pending["event_id"].tolist()})
    done.event_ids = pending["event_id"].tolist()
    done.kinds = pending["kind"].tolist()
    done.newest_occurred = pd.Timestamp(pending["occurred_at"].max()).to_pydatetime()
    log.info("applied %d event(s) of account %s: %s", len(done.event_ids), account_id, done.rows)
    return done


def pending_count(engine: sa.Engine, account_id: str | None = None) -> int:
    if not table_exists(engine, INBOX):
        return 0
    sql = f"SELECT COUNT(*) FROM {INBOX} WHERE status = :s" + (" AND account_id = :a" if account_id else "")
    with engine.connect() as conn:
        return int(conn.execute(sa.text(sql), {"s": RECEIVED, "a": account_id}).scalar() or 0)


def stale_pending(engine: sa.Engine, older_than: timedelta, now: datetime | None = None) -> pd.DataFrame:
    """Events received more than ``older_than`` ago and still not applied: their reaction
    was never triggered (the intake died between commit and publish) or failed."""
    if not table_exists(engine, INBOX):
        return pd.DataFrame(columns=["event_id", "account_id", "kind", "source"])
    cutoff = (now or datetime.now()) - older_than
    with engine.connect() as conn:
        return pd.DataFrame(conn.execute(sa.text(
            f"SELECT event_id, account_id, kind, source FROM {INBOX} WHERE status = :s AND received_at < :c ORDER BY received_at"
        ), {"s": RECEIVED, "c": cutoff}).mappings().all(), columns=["event_id", "account_id", "kind", "source"])


def event_ids_json(ids: list[str]) -> str:
    return json.dumps(ids)
