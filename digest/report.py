"""What the digest says, as data: every section a frozen dataclass, so renderers only format.

A section that cannot be computed carries a ``reason`` instead of disappearing, so a reader
can tell "nothing happened" from "not measured".
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import date, datetime
from typing import Literal

from digest.formatting import Unit, fmt_delta, fmt_money, sparkline
from outreach.lift import LiftRow


@dataclass(frozen=True)
class Metric:
    """A number this week with last week's value, so every figure carries its change."""

    label: str
    current: float | None
    previous: float | None
    unit: Unit = "count"
    higher_is_better: bool | None = None

    @property
    def change(self) -> float | None:
        if self.current is None or self.previous is None:
            return None
        return self.current - self.previous

    @property
    def direction(self) -> Literal["better", "worse", "flat", "unknown"]:
        """Whether the change is good news, so renderers can colour it without knowing the metric."""
        delta = self.change
        if delta is None or self.higher_is_better is None:
            return "unknown"
        if abs(delta) < 1e-9:
            return "flat"
        return "better" if (delta > 0) == self.higher_is_better else "worse"


@dataclass(frozen=True)
class Headline:
    metrics: list[Metric]
    total_arr: float
    churned_accounts: list[str]
    note: str | None = None  # e.g. "no scores a week earlier"


@dataclass(frozen=True)
class AccountRow:
    account_id: str
    name: str
    owner: str
    band: str
    previous_band: str | None
    health: int
    previous_health: int | None
    p_churn: float
    arr: float
    arr_at_risk: float
    trend: list[int]  # weekly health scores, oldest first
    drivers: list[str]

    @property
    def health_change(self) -> int | None:
        return None if self.previous_health is None else self.health - self.previous_health

    @property
    def sparkline(self) -> str:
        return sparkline(self.trend)


@dataclass(frozen=True)
class AccountsSection:
    rows: list[AccountRow]
    reason: str | None = None


@dataclass(frozen=True)
class MoversSection:
    movers: list[AccountRow]
    new_reds: list[AccountRow]
    movers_reason: str | None = None
    new_reds_reason: str | None = None


@dataclass(frozen=True)
class DriverShare:
    name: str  # family name or feature name
    label: str  # plain words
    family: str
    share: float  # of the total positive contribution this week, 0-1
    previous_share: float | None
    accounts: int  # at-risk accounts where it is a top driver

    @property
    def change(self) -> float | None:
        return None if self.previous_share is None else self.share - self.previous_share


@dataclass(frozen=True)
class DriversSection:
    families: list[DriverShare]
    features: list[DriverShare]
    at_risk_accounts: int
    reason: str | None = None
    previous_reason: str | None = None


@dataclass(frozen=True)
class PlaybookRow:
    playbook: str
    created: int  # sent tasks created this week
    held_out: int  # held-out matches this week
    previous_created: int
    sent_to_date: int
    completed_to_date: int

    @property
    def completion_rate(self) -> float | None:
        return None if not self.sent_to_date else self.completed_to_date / self.sent_to_date


@dataclass(frozen=True)
class OutreachSection:
    playbooks: list[PlaybookRow]
    lift: list[LiftRow]
    reason: str | None = None
    lift_reason: str | None = None


@dataclass(frozen=True)
class Verbatim:
    account: str
    kind: str
    score: float
    comment: str
    submitted_at: datetime


@dataclass(frozen=True)
class SurveySection:
    metrics: list[Metric]
    responses: int
    previous_responses: int
    verbatims: list[Verbatim]
    comments_withheld: int
    reason: str | None = None


@dataclass(frozen=True)
class DriftFlag:
    metric: str
    value: float
    detail: str


@dataclass(frozen=True)
class ModelHealth:
    champion: str | None
    model_name: str | None
    scored_at: datetime | None
    realized_auc: float | None
    previous_auc: float | None
    psi_score: float | None
    checked_at: datetime | None
    drift: list[DriftFlag]
    reason: str | None = None  # why there is no monitoring information


@dataclass(frozen=True)
class Chart:
    key: str
    title: str
    alt: str
    png: bytes | None
    reason: str | None = None

    @property
    def cid(self) -> str:
        return f"chart-{self.key}@churnflow"

    def data_uri(self) -> str:
        return "data:image/png;base64," + base64.b64encode(self.png or b"").decode("ascii")


@dataclass(frozen=True)
class Digest:
    """Everything the digest says, as data; renderers only format it."""

    week_ending: date
    this_date: date | None
    last_date: date | None
    generated_at: datetime
    currency: str
    highlights: list[str]
    headline: Headline
    top_accounts: AccountsSection
    movers: MoversSection
    drivers: DriversSection
    outreach: OutreachSection
    surveys: SurveySection
    model: ModelHealth
    charts: list[Chart]
    include_verbatims: bool = False
    include_contacts: bool = False
    reason: str | None = None  # set when there are no scores at all

    @property
    def title(self) -> str:
        return f"Customer health digest — week ending {self.week_ending.isoformat()}"

    @property
    def subject(self) -> str:
        """A mail subject that already says the one number that matters."""
        at_risk = next((m for m in self.headline.metrics if m.label == "ARR at risk"), None)
        if at_risk is None or at_risk.current is None:
            return self.title
        text = f"{self.title}: {fmt_money(at_risk.current, self.currency)} ARR at risk"
        if at_risk.change is not None:
            text += f" ({fmt_delta(at_risk.change, 'money', self.currency)} wow)"
        return text
