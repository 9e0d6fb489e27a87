"""Scoring split into compute and store: subsets, stable partitions, partitioned = sequential."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from models.explain import peer_baselines
from models.registry import load_model
from models.score import (
    active_overrides, compute_scores, load_features, merge_partitions, partition_of, previous_health, score_accounts,
    set_override, split_partitions, store_scores,
)

DAY = date(2026, 9, 10)
PINNED = [0, 0, 1, 2]  # partition_of(id, 4) of A00001, A00002, A00003, acct-42: must never change


@pytest.fixture
def home(trained_copy: Settings) -> Settings:
    """A private copy of the trained home (these tests write scores)."""
    return trained_copy


def _day_rows(engine: sa.Engine, day: date = DAY) -> pd.DataFrame:
    rows = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": datetime(day.year, day.month, day.day)})
    return rows.sort_values("account_id").reset_index(drop=True)


def test_partitions_are_a_stable_cover_of_the_accounts(home: Settings) -> None:
    features = load_features(get_engine(home.warehouse), DAY)
    parts = split_partitions(features, 4)
    ids = pd.concat([p["account_id"] for p in parts])
    assert ids.is_unique and set(ids) == set(features["account_id"]) and len(parts) == 4
    for part in parts:
        assert part["account_id"].map(lambda a: partition_of(a, 4)).nunique() == 1
    # sha256, not Python's salted hash(): the same value on every run and machine.
    assert [partition_of(a, 4) for a in ("A00001", "A00002", "A00003", "acct-42")] == PINNED
    assert split_partitions(features, 4)[0]["account_id"].tolist() == parts[0]["account_id"].tolist()
    assert all(partition_of(a, 1) == 0 for a in features["account_id"])
    with pytest.raises(ValueError):
        partition_of("A00001", 0)



def test_scoring_a_subset_leaves_the_other_accounts_rows(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    score_accounts(engine, home, DAY)
    before = _day_rows(engine)
    subset = before["account_id"].iloc[:7].tolist()
    other = before["account_id"].iloc[10]
    with engine.begin() as conn:  # mark rows so a rewrite is visible
        conn.execute(sa.text("UPDATE account_scores SET health_score = -1 WHERE as_of_date = :d"), {"d": datetime(DAY.year, DAY.month, DAY.day)})
    scored = score_accounts(engine, home, DAY, accounts=subset + ["NO-SUCH-ACCOUNT"])
    after = _day_rows(engine)
    assert sorted(scored["account_id"]) == sorted(subset)
    assert len(after) == len(before) and after["account_id"].is_unique
    mine = after["account_id"].isin(subset)
    pd.testing.assert_frame_equal(
        after.loc[mine].drop(columns="scored_at").reset_index(drop=True), before.loc[before["account_id"].isin(subset)].drop(columns="scored_at").reset_index(drop=True)
    )
    assert (after.loc[~mine, "health_score"] == -1).all()
    assert after.loc[after["account_id"] == other, "health_score"].item() == -1
    pd.testing.assert_frame_equal(after.loc[~mine].drop(columns="health_score"), before.loc[~before["account_id"].isin(subset)].drop(columns="health_score"))
    # An empty subset scores and deletes nothing.
    assert len(score_accounts(engine, home, DAY, accounts=[])) == 0
    assert len(_day_rows(engine)) == len(before)


def test_store_scores_deletes_in_batches(home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    import models.score as score_module

    engine = get_engine(home.warehouse)
    scores = score_accounts(engine, home, DAY)
    monkeypatch.setattr(score_module, "DELETE_BATCH", 3)
    subset = scores["account_id"].iloc[:10].tolist()  # 4 batches
    assert store_scores(engine, scores[scores["account_id"].isin(subset)], DAY, accounts=subset) == 10
    assert len(_day_rows(engine)) == len(scores) and _day_rows(engine)["account_id"].is_unique


def test_partitioned_scoring_equals_the_sequential_run(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    loaded = load_model(home)
    score_accounts(engine, home, DAY - timedelta(days=7), loaded=loaded)  # a history for the 7-day trend
    features = load_features(engine, DAY)
    pinned = features["account_id"].iloc[3]
    set_override(engine, pinned, "red", reason="exec escalation", set_by="csm@example.com", expires_on=DAY + timedelta(days=30))
    sequential = score_accounts(engine, home, DAY, features=features, loaded=loaded)
    stored_sequential = _day_rows(engine)
    assert sequential["health_change_7d"].notna().mean() > 0.9
    assert sequential.loc[sequential["account_id"] == pinned, "band_override_reason"].item() == "exec escalation"

    health, overrides = previous_health(engine, DAY), active_overrides(engine, DAY)
    stamp = sequential["scored_at"].iloc[0]
    baselines = peer_baselines(loaded.model, features)  # the day's, from every account
    parts = [
        compute_scores(None, home, DAY, part, loaded, health, overrides=overrides, scored_at=stamp, baselines=baselines)
        for part in split_partitions(features, 3)
    ]
    merged = merge_partitions(parts, features["account_id"])
    pd.testing.assert_frame_equal(merged, sequential, check_exact=True)

    with engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM account_scores WHERE as_of_date = :d"), {"d": datetime(DAY.year, DAY.month, DAY.day)})
    store_scores(engine, merged, DAY)
    pd.testing.assert_frame_equal(_day_rows(engine), stored_sequential, check_exact=True)
