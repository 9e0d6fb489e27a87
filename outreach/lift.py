"""Did outreach help? Churn of accounts that got a playbook's task against its held-out matches.

The outcome is the churn label of :mod:`features.labels` for the task's scoring day (the
account churns within the horizon after the lead, with no renewal inside the grace period),
and only labels that have matured (:func:`features.labels.is_matured`: lead + horizon + grace
passed) are counted: an unmatured outcome would count a customer who is about to leave as
retained. Until both groups of a playbook have matured outcomes there is no number, only the
reason why.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pandas as pd
import sqlalchemy as sa

from churnflow.manifest import ChurnSource
from features.labels import is_matured, label_wait_days, labels_for_dates

#: Below this many accounts in either group a lift is directional only.
SMALL_SAMPLE = 30


@dataclass(frozen=True)
class LiftRow:
    """One playbook's matured outcomes: sent tasks against held-out matches."""

    playbook: str
    treated: int
    treated_churned: int
    holdout: int
    holdout_churned: int

    @property
    def treated_rate(self) -> float:
        return self.treated_churned / self.treated if self.treated else float("nan")

    @property
    def holdout_rate(self) -> float:
        return self.holdout_churned / self.holdout if self.holdout else float("nan")

    @property
    def lift(self) -> float:
        """Churn-rate reduction in absolute points (holdout minus treated); positive is good."""
        return self.holdout_rate - self.treated_rate

    @property
    def small_sample(self) -> bool:
        return min(self.treated, self.holdout) < SMALL_SAMPLE


@dataclass(frozen=True)
class PlaybookLift:
    """The lift rows, or (when there are none) the reason why."""

    rows: list[LiftRow]
    reason: str | None = None


def matured_decisions(
    tasks: pd.DataFrame, observed_until: date, *, horizon_days: int, grace_days: int, lead_days: int = 0,
) -> pd.DataFrame:
    """The decisions (tasks and held-out matches) whose scoring day's label has matured."""
    days = pd.to_datetime(tasks["as_of_date"]).dt.date
    known = days.map(lambda d: is_matured(d, horizon_days=horizon_days, grace_days=grace_days,
                                          observed_until=observed_until, lead_days=lead_days))
    return tasks[known.astype(bool)]


def playbook_lift(
    engine: sa.Engine, tasks: pd.DataFrame, observed_until: date, *, horizon_days: int, grace_days: int,
    lead_days: int = 0, churn_source: ChurnSource | None = None,
) -> PlaybookLift:
    """Churn with outreach vs held out, per playbook, over the decisions matured by ``observed_until``.

    ``tasks`` has account_id, playbook, as_of_date and held_out (the task table). An account
    no longer active on its task's day has no label and drops out.
    """
    if tasks.empty:
        return PlaybookLift([], "no outreach tasks yet")
    matured = matured_decisions(tasks, observed_until, horizon_days=horizon_days, grace_days=grace_days, lead_days=lead_days)
    if matured.empty:
        wait = label_wait_days(horizon_days=horizon_days, grace_days=grace_days, lead_days=lead_days)
        parts = "lead + horizon + grace" if lead_days else "horizon + grace"
        return PlaybookLift([], f"no outcomes matured yet: an outcome is known {wait} days after the task ({parts})")
    held_out = matured["held_out"].astype(bool)
    if not held_out.any():
        return PlaybookLift([], "no held-out matches with matured outcomes yet, so there is nothing to compare against")
    if held_out.all():
        return PlaybookLift([], "no sent tasks with matured outcomes yet")
    matured = matured.assign(as_of_date=pd.to_datetime(matured["as_of_date"]).dt.normalize(), held_out=held_out)
    days = sorted(matured["as_of_date"].dt.date.unique())
    outcomes = labels_for_dates(engine, days, horizon_days=horizon_days, grace_days=grace_days, observed_until=observed_until,
                                lead_days=lead_days, churn_source=churn_source)
    matured = matured.merge(outcomes[["account_id", "as_of_date", "churned"]], on=["account_id", "as_of_date"], how="inner")
    rows: list[LiftRow] = []
    for playbook, g in sorted(matured.groupby("playbook"), key=lambda kv: str(kv[0])):
        sent, held = g[~g["held_out"]], g[g["held_out"]]
        if len(sent) and len(held):
            rows.append(LiftRow(str(playbook), len(sent), int(sent["churned"].sum()), len(held), int(held["churned"].sum())))
    if not rows:
        return PlaybookLift([], "no playbook has matured outcomes in both the sent and the held-out group yet")
    return PlaybookLift(rows)
