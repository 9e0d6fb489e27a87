"""Decisions: matching, one decision per account, dedupe, cooldown, cap and a stable holdout."""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd

from churnflow.schema import OUTREACH_TASKS
from churnflow.vocabulary import CLOSED_TASK_STATUSES, NEW_TASK_STATUS
from outreach.decisions import decide_tasks, in_holdout, task_key
from outreach.playbooks import load_playbooks

AS_OF = date(2026, 11, 2)


def frames(n: int = 200) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    ids = [f"A{i:04d}" for i in range(n)]
    p = [0.6 if i % 2 == 0 else 0.05 for i in range(n)]
    scores = pd.DataFrame({
        "as_of_date": pd.Timestamp(AS_OF), "account_id": ids, "p_churn": p, "health_score": [round(100 * (1 - x)) for x in p],
        "band": ["red" if x >= 0.35 else "green" for x in p], "arr": 10000.0, "arr_at_risk": [x * 10000 for x in p],
        "top_drivers_text": "Product usage fell 40% over the last 30 days\n2 support tickets still open",
        "health_change_7d": -3.0, "health_change_30d": -8.0,
    })
    features = pd.DataFrame({"account_id": ids, "days_to_renewal": [60.0] * n, "usage_trend_30d": -0.1, "nps_category": "passive",
                             "reopen_rate_90d": 0.0, "median_first_response_minutes_90d": 30.0, "complaints_wait_time_90d": 0.0})
    accounts = pd.DataFrame({"account_id": ids, "name": [f"Acme {i}" for i in range(n)], "owner_email": "csm@example.com", "crm_account_id": [f"001{i:015d}" for i in range(n)]})
    return scores, features, accounts


def no_tasks() -> pd.DataFrame:
    return pd.DataFrame(columns=OUTREACH_TASKS.column_names)


def test_red_accounts_near_renewal_get_tasks_with_drivers() -> None:
    scores, features, accounts = frames()
    new = decide_tasks(scores, features, accounts, load_playbooks(), AS_OF, no_tasks())
    renewal = new[new["playbook"] == "renewal_at_risk"]
    red = set(scores.loc[scores["band"] == "red", "account_id"])
    assert set(renewal["account_id"]) == red  # sent + held out = every match
    sent = renewal[~renewal["held_out"]]
    assert 0.8 * len(red) <= len(sent) < len(red)  # ~10% holdout
    row = sent.iloc[0]
    assert "Product usage fell 40%" in row["description"] and row["priority"] == "High"
    assert row["owner_email"] == "csm@example.com" and row["due_date"] == pd.Timestamp(AS_OF + timedelta(days=3))


def test_one_decision_per_account_per_run_in_playbook_order() -> None:
    scores, features, accounts = frames()
    features["usage_trend_30d"] = -0.8  # red accounts also match usage_collapse and the check-in
    new = decide_tasks(scores, features, accounts, load_playbooks(), AS_OF, no_tasks())
    assert new["account_id"].is_unique
    assert set(new["playbook"]) == {"renewal_at_risk"}  # the first matching playbook wins
    held = new[new["held_out"]]
    assert len(held) > 0  # held-out accounts get nothing from a lower playbook either


def test_rerun_the_same_week_creates_nothing_new() -> None:
    scores, features, accounts = frames()
    book = load_playbooks()
    first = decide_tasks(scores, features, accounts, book, AS_OF, no_tasks())
    again = decide_tasks(scores, features, accounts, book, AS_OF + timedelta(days=1), first)
    assert again.empty
    assert first["task_key"].is_unique


def test_cooldown_and_cap() -> None:
    scores, features, accounts = frames()
    book = load_playbooks()
    first = decide_tasks(scores, features, accounts, book, AS_OF, no_tasks())
    # Two weeks later: new ISO week, but inside the 30-day cooldown.
    assert decide_tasks(scores, features, accounts, book, AS_OF + timedelta(days=14), first).empty
    # After the cooldown, completed tasks free the cap and the playbook fires again.
    done = first.assign(status=CLOSED_TASK_STATUSES[0])
    later = decide_tasks(scores, features, accounts, book, AS_OF + timedelta(days=35), done)
    assert set(later["playbook"]) == {"renewal_at_risk"}  # one decision per account per run
    # Open tasks at the cap block new ones.
    capped = first.assign(status=NEW_TASK_STATUS)
    many = pd.concat([capped.assign(task_key=capped["task_key"] + f"-{i}", playbook=f"other{i}") for i in range(3)])
    blocked = decide_tasks(scores, features, accounts, book, AS_OF + timedelta(days=35), many)
    assert (blocked["held_out"]).all()


def test_holdout_is_stable_and_roughly_the_configured_share() -> None:
    ids = pd.Series([f"A{i}" for i in range(4000)])
    a = in_holdout(ids, "renewal_at_risk", 10, seed=7)
    assert a.equals(in_holdout(ids, "renewal_at_risk", 10, seed=7))
    assert 0.08 < a.mean() < 0.12
    assert not a.equals(in_holdout(ids, "usage_collapse", 10, seed=7))


def test_task_key_is_deterministic_per_week_and_fits_salesforce() -> None:
    assert task_key("A1", "p", AS_OF) == task_key("A1", "p", AS_OF + timedelta(days=1))  # same ISO week
    assert task_key("A1", "p", AS_OF) != task_key("A1", "p", AS_OF + timedelta(days=7))
    assert len(task_key("A" * 200, "p", AS_OF)) <= 80
