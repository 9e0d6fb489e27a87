"""The playbook language: YAML rules that turn scores into tasks for the people who can act.

Playbooks are YAML, validated at load against the feature catalogue and the score fields
(an unknown field, operator or mistyped value fails with the playbook's name and the
offending key). Conditions are data (field / operator / value), never evaluated code.
Which accounts a loaded book gives which task is :mod:`outreach.decisions`; whether the
tasks helped is :mod:`outreach.lift`.
"""

from __future__ import annotations

import string
from importlib import resources
from pathlib import Path
from typing import Any

import pandas as pd
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from churnflow.errors import ChurnflowError
from churnflow.vocabulary import BANDS, DEFAULT_TASK_PRIORITY, TASK_PRIORITIES
from features.catalogue import BY_NAME

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
            bad = [v for v in values if v not in BANDS]
            if bad:
                raise ValueError(f"field 'band' has no value(s) {bad}; allowed {', '.join(BANDS)}")
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
    priority: str = DEFAULT_TASK_PRIORITY
    due_in_days: int = Field(5, ge=0, le=365)

    @field_validator("priority")
    @classmethod
    def _priority(cls, value: str) -> str:
        if value not in TASK_PRIORITIES:
            raise ValueError(f"unknown priority {value!r}; use one of {', '.join(TASK_PRIORITIES)}")
        return value

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
