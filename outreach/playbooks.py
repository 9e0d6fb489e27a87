"""Outreach: playbooks turn scores into tasks for the people who can act.

Playbooks are YAML, validated at load against the feature catalogue and the score fields
(an unknown field, operator or mistyped value fails with the playbook's name and the
offending key). Conditions are data (field / operator / value), never evaluated code.
A task's key is deterministic per (account, playbook, ISO week), so a re-run the same week
finds the task it already decided; cooldowns, a cap on open tasks and a stable holdout
are honoured. Playbooks are in priority order: an account gets at most one decision per
run (a task, or being held out), from the first playbook that matches it — so a CSM gets
one task with all the drivers rather than three on the same morning, and an account held
out of one playbook is not treated by a lower one (which would spoil the lift measurement).
"""

from __future__ import annotations

import hashlib
import logging
import string
from datetime import date, datetime, timedelta
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import sqlalchemy as sa
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnflow.vocabulary import CLOSED_TASK_STATUSES, NEW_TASK_STATUS
from churnflow.errors import ChurnflowError
from churnflow.schema import OUTREACH_TASKS
from churnflow.warehouse import read_sql, replace_rows, table_exists
from features.catalogue import BY_NAME

log = logging.getLogger(__name__)

TASKS_TABLE = OUTREACH_TASKS.name
SCORE_FIELDS: dict[str, str] = {
    "p_churn": "number", "health_score": "number", "band": "text", "health_change_7d": "number",
    "health_change_30d": "number", "arr": "number", "arr_at_risk": "number",
}
OPS: dict[str, str] = {
    "eq": "any", "ne": "any", "lt": "number", "le": "number", "gt": "number", "ge": "number",
    "in": "list", "not_in": "list", "is_null": "none", "not_null": "none",
}
PLACEHOLDERS = {"account_name", "health_score", "band", "p_churn_pct", "arr", "arr_at_risk", "top_drivers_text", "days_to_renewal", "playbook"}


def field_kind(name: str) -> str | None:
    if name in SCORE_FIELDS:
        return SCORE_FIELDS[name]
    if name in BY_NAME:
        return "text" if BY_NAME[name].is_categorical else "number"
    return None


class Condition(BaseModel):
    model_config = ConfigDict(extra="forbid")
    field: str
    op: str
    value: Any = None

    @model_validator(mode="after")
    def _check(self) -> "Condition":
        kind = field_kind(self.field)
        if kind is None:
            raise ValueError(f"unknown field '{self.field}' (not a score field nor in the feature catalogue)")
        if self.op not in OPS:
            raise ValueError(f"unknown op '{self.op}' for field '{self.field}'; use one of {sorted(OPS)}")
        need = OPS[self.op]
        if need == "number" and (kind != "number" or not isinstance(self.value, (int, float)) or isinstance(self.value, bool)):
            raise ValueError(f"op '{self.op}' on field '{self.field}' needs a numeric field and value, got {self.value!r}")
        if need == "list" and not isinstance(self.value, list):
            raise ValueError(f"op '{self.op}' on field '{self.field}' needs a list value, got {self.value!r}")
        if need == "any" and kind == "number" and not isinstance(self.value, (int, float)):
            raise ValueError(f"field '{self.field}' is numeric; value {self.value!r} is not a number")
        if kind == "text" and self.field in BY_NAME and BY_NAME[self.field].categories and need in ("any", "list"):
            allowed = BY_NAME[self.field].categories
            values = self.value if isinstance(self.value, list) else [self.value]
            bad = [v for v in values if v not in allowed]
            if bad:
                raise ValueError(f"field '{self.field}' has no value(s) {bad}; allowed {list(allowed)}")
        if self.field == "band" and need in ("any", "list"):
            values = self.value if isinstance(self.value, list) else [self.value]
            bad = [v for v in values if v not in ("green", "yellow", "red")]
            if bad:
                raise ValueError(f"field 'band' has no value(s) {bad}; allowed green, yellow, red")
        return self

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        col = frame[self.field]
        match self.op:
            case "eq": return col == self.value
            case "ne": return col != self.value
            case "lt": return col < self.value
            case "le": return col <= self.value
            case "gt": return col > self.value
            case "ge": return col >= self.value
            case "in": return col.isin(self.value)
            case "not_in": return ~col.isin(self.value)
            case "is_null": return col.isna()
            case _: return col.notna()


class When(BaseModel):
    model_config = ConfigDict(extra="forbid")
    all: list[Condition] = Field(default_factory=list)
    any: list[Condition] = Field(default_factory=list)

    @model_validator(mode="after")
    def _not_empty(self) -> "When":
        if not self.all and not self.any:
            raise ValueError("'when' needs at least one condition under 'all' or 'any'")
        return self

    def mask(self, frame: pd.DataFrame) -> pd.Series:
        result = pd.Series(True, index=frame.index)
        for c in self.all:
            result &= c.mask(frame).fillna(False).astype(bool)
        if self.any:
            hit = pd.Series(False, index=frame.index)
            for c in self.any:
                hit |= c.mask(frame).fillna(False).astype(bool)
            result &= hit
        return result


class TaskTemplate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subject: str
    description: str
    priority: Literal["High", "Normal", "Low"] = "Normal"
    due_in_days: int = Field(5, ge=0, le=365)

    @field_validator("subject", "description")
    @classmethod
    def _placeholders(cls, text: str) -> str:
        used = {name for _, name, _, _ in string.Formatter().parse(text) if name}
        unknown = used - PLACEHOLDERS
        if unknown:
            raise ValueError(f"unknown placeholder(s) {sorted(unknown)}; allowed {sorted(PLACEHOLDERS)}")
        return text


class Playbook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{1,40}$")
    description: str = ""
    when: When
    task: TaskTemplate
    owner: str = "account_owner"
    cooldown_days: int = Field(30, ge=0)
    max_open_tasks: int = Field(3, ge=1)
    holdout_pct: float = Field(10, ge=0, lt=100)


class PlaybookBook(BaseModel):
    model_config = ConfigDict(extra="forbid")
    teams: dict[str, str] = Field(default_factory=dict)
    playbooks: list[Playbook]

    @model_validator(mode="after")
    def _owners(self) -> "PlaybookBook":
        for pb in self.playbooks:
            if pb.owner.startswith("team:") and pb.owner[5:] not in self.teams:
                raise ValueError(f"playbook '{pb.name}': owner '{pb.owner}' is not in teams {sorted(self.teams)}")
            if pb.owner != "account_owner" and not pb.owner.startswith("team:") and "@" not in pb.owner:
                raise ValueError(f"playbook '{pb.name}': owner '{pb.owner}' must be account_owner, an email or team:<name>")
        names = [pb.name for pb in self.playbooks]
        if len(set(names)) != len(names):
            raise ValueError(f"playbook names must be unique: {names}")
        return self


class PlaybookError(ChurnflowError, ValueError):
    """A playbooks file that cannot be used; the message names the file, playbook and key."""


def load_playbooks(path: Path | None = None) -> PlaybookBook:
    """Parse and validate a playbooks file (YAML, safe loader); errors name the playbook and key."""
    source = str(path) if path else "outreach/playbooks.yaml (default)"
    try:
        text = path.read_text(encoding="utf-8") if path else resources.files("outreach").joinpath("playbooks.yaml").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(f"{source}: cannot read the playbooks file: {exc}") from None
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise PlaybookError(f"{source}: not valid YAML{where}: {getattr(exc, 'problem', None) or exc}") from None
    if not isinstance(data, dict):
        raise PlaybookError(f"{source}: expected a mapping with a 'playbooks:' list, got {type(data).__name__}")
    try:
        return PlaybookBook.model_validate(data)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = list(err["loc"])
            where = ""
            if len(loc) >= 2 and loc[0] == "playbooks" and isinstance(loc[1], int) and loc[1] < len(data.get("playbooks", [])):
                where = f"playbook '{data['playbooks'][loc[1]].get('name', loc[1])}' "
            problems.append(f"{where}at {'.'.join(str(p) for p in loc)}: {err['msg']}")
        raise PlaybookError(f"{source}: invalid playbooks:\n  " + "\n  ".join(problems)) from None


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


def existing_tasks(engine: sa.Engine) -> pd.DataFrame:
    if not table_exists(engine, TASKS_TABLE):
        return pd.DataFrame(columns=OUTREACH_TASKS.column_names)
    return read_sql(engine, f"SELECT * FROM {TASKS_TABLE}")


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
            owner = row.get("owner_email") if pb.owner == "account_owner" else book.teams[pb.owner[5:]] if pb.owner.startswith("team:") else pb.owner
            new_rows.append(
                {
                    "task_key": key, "as_of_date": as_of_ts, "account_id": row["account_id"],
                    "crm_account_id": row.get("crm_account_id"), "playbook": pb.name,
                    "subject": pb.task.subject.format_map(ctx)[:255], "description": pb.task.description.format_map(ctx),
                    "priority": pb.task.priority, "due_date": as_of_ts + timedelta(days=pb.task.due_in_days),
                    "owner_email": owner, "status": NEW_TASK_STATUS, "held_out": bool(is_held), "crm_task_id": None,
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


def pending_tasks(engine: sa.Engine) -> pd.DataFrame:
    """Tasks decided but not yet confirmed in the CRM (no Task Id): what the next push sends."""
    tasks = existing_tasks(engine)
    return tasks[~tasks["held_out"].astype(bool) & tasks["crm_task_id"].isna()].reset_index(drop=True)


def record_task_ids(engine: sa.Engine, ids: dict[str, str]) -> None:
    """Store Salesforce Task Ids by task key (bound parameters, one transaction)."""
    if not ids:
        return
    with engine.begin() as conn:
        conn.execute(
            sa.text(f"UPDATE {TASKS_TABLE} SET crm_task_id = :task_id WHERE task_key = :key"),
            [{"task_id": v, "key": k} for k, v in ids.items()],
        )
