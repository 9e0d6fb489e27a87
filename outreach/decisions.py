"""Which accounts get which task today, and which are held out to measure whether acting helps.

Playbooks are in priority order: an account gets at most one decision per run (a task, or
being held out), from the first playbook that matches it, so a CSM gets one task with all
the drivers rather than three on the same morning, and an account held out of one playbook
is not treated by a lower one (which would spoil the lift measurement, :mod:`outreach.lift`).
A task's key is deterministic per (account, playbook, ISO week), so a re-run the same week
finds the task it already decided; cooldowns, a cap on open tasks and a stable holdout are
honoured.
"""

from __future__ import annotations

import hashlib
import logging
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

import pandas as pd
import sqlalchemy as sa

from churnflow.schema import OUTREACH_TASKS
from churnflow.vocabulary import CLOSED_TASK_STATUSES, NEW_TASK_STATUS
from churnflow.warehouse import read_sql, replace_rows
from outreach.task_table import TASKS_TABLE, existing_tasks

if TYPE_CHECKING:  # only the types: outreach.playbooks re-exports this module's names
    from outreach.playbooks import Playbook, PlaybookBook

log = logging.getLogger(__name__)


def task_key(account_id: str, playbook: str, as_of: date) -> str:
    """Deterministic per (account, playbook, ISO week): fits Salesforce's 80-char text field."""
    year, week, _ = as_of.isocalendar()
    digest = hashlib.sha256(f"{account_id}|{playbook}|{year}-W{week:02d}".encode()).hexdigest()[:32]
    return f"cf-{digest}"


def in_holdout(account_id: pd.Series, playbook: str, pct: float, seed: int) -> pd.Series:
    """Stable random assignment: the same account stays in (or out of) a playbook's holdout."""
    def bucket(value: str) -> float:
        return int(hashlib.sha256(f"{seed}|{playbook}|{value}".encode()).hexdigest()[:8], 16) % 10000 / 100

    return account_id.map(bucket) < pct


def _context(row: pd.Series, playbook: str) -> dict[str, str]:
    """The values a task template's placeholders (``PLACEHOLDERS``) are filled with."""
    days = row.get("days_to_renewal")
    return {
        "account_name": str(row.get("name") or row["account_id"]),
        "health_score": f"{int(row['health_score'])}",
        "band": str(row["band"]),
        "p_churn_pct": f"{row['p_churn']:.0%}",
        "arr": f"{row['arr']:,.0f}",
        "arr_at_risk": f"{row['arr_at_risk']:,.0f}",
        "top_drivers_text": "\n".join(f"- {s}" for s in str(row.get("top_drivers_text") or "").splitlines() if s),
        "days_to_renewal": "unknown" if days is None or pd.isna(days) else f"{int(days)}",
        "playbook": playbook,
    }


def _owner(row: pd.Series, pb: Playbook, book: PlaybookBook) -> str | None:
    if pb.owner == "account_owner":
        return row.get("owner_email")
    if pb.owner.startswith("team:"):
        return book.teams[pb.owner[5:]]
    return pb.owner


def decide_tasks(
    scores: pd.DataFrame, features: pd.DataFrame, accounts: pd.DataFrame, book: PlaybookBook, as_of: date,
    existing: pd.DataFrame, *, seed: int = 7,
) -> pd.DataFrame:
    """New tasks (and held-out records) for ``as_of``: pure, no I/O.

    ``scores`` are account_scores rows, ``features`` the feature rows for the same day,
    ``accounts`` gives name, owner_email and crm_account_id; ``existing`` is the task table.
    """
    frame = scores.merge(features.drop(columns=["as_of_date"], errors="ignore"), on="account_id", how="left", suffixes=("", "_feature"))
    frame = frame.merge(accounts[["account_id", "name", "owner_email", "crm_account_id"]], on="account_id", how="left")
    as_of_ts = pd.Timestamp(as_of)
    existing = existing.copy()
    existing["as_of_date"] = pd.to_datetime(existing["as_of_date"])
    known_keys = set(existing["task_key"])
    sent = existing[~existing["held_out"].astype(bool)]
    open_counts = sent[~sent["status"].isin(CLOSED_TASK_STATUSES)].groupby("account_id").size()
    new_rows: list[dict[str, Any]] = []
    decided: set[str] = set()  # one decision (task or holdout) per account per run
    for pb in book.playbooks:
        matched = frame[pb.when.mask(frame) & ~frame["account_id"].isin(decided)]
        if matched.empty:
            continue
        # Matching a higher playbook settles the account for this run, whatever the outcome
        # (task, holdout, cooldown, already decided this week, or capped).
        decided.update(matched["account_id"])
        recent = existing[(existing["playbook"] == pb.name) & (existing["as_of_date"] > as_of_ts - timedelta(days=pb.cooldown_days)) & (existing["as_of_date"] < as_of_ts)]
        matched = matched[~matched["account_id"].isin(recent["account_id"])]
        held = in_holdout(matched["account_id"], pb.name, pb.holdout_pct, seed)
        for (_, row), is_held in zip(matched.iterrows(), held, strict=True):
            key = task_key(row["account_id"], pb.name, as_of)
            if key in known_keys:
                continue
            if not is_held and open_counts.get(row["account_id"], 0) >= pb.max_open_tasks:
                continue
            ctx = _context(row, pb.name)
            new_rows.append(
                {
                    "task_key": key, "as_of_date": as_of_ts, "account_id": row["account_id"],
                    "crm_account_id": row.get("crm_account_id"), "playbook": pb.name,
                    "subject": pb.task.subject.format_map(ctx)[:255], "description": pb.task.description.format_map(ctx),
                    "priority": pb.task.priority, "due_date": as_of_ts + timedelta(days=pb.task.due_in_days),
                    "owner_email": _owner(row, pb, book), "status": NEW_TASK_STATUS, "held_out": bool(is_held), "crm_task_id": None,
                    "created_at": pd.Timestamp(datetime.now().replace(microsecond=0)),
                }
            )
            known_keys.add(key)
            if not is_held:
                open_counts[row["account_id"]] = open_counts.get(row["account_id"], 0) + 1
    return pd.DataFrame(new_rows, columns=OUTREACH_TASKS.column_names)


def run_outreach(engine: sa.Engine, scores: pd.DataFrame, features: pd.DataFrame, as_of: date, book: PlaybookBook, seed: int = 7) -> pd.DataFrame:
    """Decide today's tasks and append them to the task table; returns the new rows."""
    accounts = read_sql(engine, "SELECT account_id, name, owner_email, crm_account_id FROM accounts")
    new = decide_tasks(scores, features, accounts, book, as_of, existing_tasks(engine), seed=seed)
    if len(new):
        replace_rows(engine, TASKS_TABLE, new)
    log.info("outreach as of %s: %d tasks decided (%d held out)", as_of, int((~new["held_out"]).sum()) if len(new) else 0, int(new["held_out"].sum()) if len(new) else 0)
    return new
