"""Lift vs holdout: only decisions whose label has matured (lead + horizon + grace) are compared."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from features.labels import is_matured
from outreach.lift import LiftRow, matured_decisions, playbook_lift

OBSERVED_UNTIL = date(2026, 11, 22)


def decisions(days: list[date], held_out: list[bool] | None = None) -> pd.DataFrame:
    return pd.DataFrame({
        "account_id": [f"A{i}" for i in range(len(days))], "playbook": "renewal_at_risk",
        "as_of_date": pd.to_datetime(days), "held_out": held_out if held_out is not None else [False] * len(days),
    })


@pytest.mark.parametrize("lead", [0, 14, 45])
def test_matured_decisions_follow_the_labels_maturity_rule(lead: int) -> None:
    days = [OBSERVED_UNTIL - timedelta(days=k) for k in range(0, 200, 3)]
    got = set(matured_decisions(decisions(days), OBSERVED_UNTIL, horizon_days=90, grace_days=30, lead_days=lead).as_of_date.dt.date)
    expected = {d for d in days if is_matured(d, horizon_days=90, grace_days=30, observed_until=OBSERVED_UNTIL, lead_days=lead)}
    assert got == expected and got  # and a lead holds a day back that the horizon alone would let through
    if lead:
        assert got < set(matured_decisions(decisions(days), OBSERVED_UNTIL, horizon_days=90, grace_days=30).as_of_date.dt.date)


def test_without_both_groups_the_lift_says_why() -> None:
    engine = sa.create_engine("duckdb:///:memory:")  # no label is read before both groups exist
    old = OBSERVED_UNTIL - timedelta(days=200)
    assert "no outreach tasks yet" in playbook_lift(engine, decisions([]), OBSERVED_UNTIL, horizon_days=90, grace_days=30).reason
    recent = playbook_lift(engine, decisions([OBSERVED_UNTIL]), OBSERVED_UNTIL, horizon_days=90, grace_days=30, lead_days=7)
    assert recent.rows == [] and "known 127 days after the task (lead + horizon + grace)" in recent.reason
    sent_only = playbook_lift(engine, decisions([old, old]), OBSERVED_UNTIL, horizon_days=90, grace_days=30)
    assert "no held-out matches" in sent_only.reason
    held_only = playbook_lift(engine, decisions([old], [True]), OBSERVED_UNTIL, horizon_days=90, grace_days=30)
    assert "no sent tasks" in held_only.reason


def test_lift_row_rates() -> None:
    row = LiftRow("p", treated=40, treated_churned=4, holdout=10, holdout_churned=3)
    assert row.treated_rate == pytest.approx(0.1) and row.holdout_rate == pytest.approx(0.3)
    assert row.lift == pytest.approx(0.2) and row.small_sample
