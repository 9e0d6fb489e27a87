"""Scores are reused only when every input they are a function of is unchanged."""

from __future__ import annotations

from datetime import date

import pandas as pd

from churnflow.settings import Settings
from churnflow.warehouse import read_sql
from models.registry import load_model
from models.score import active_overrides, previous_health, score_accounts, scoring_fingerprint, set_override
from tests.helpers import copy_duckdb_warehouse

AS_OF = date(2026, 10, 1)


def test_the_fingerprint_names_every_input_of_the_scores(trained_home: Settings) -> None:
    from churnflow.warehouse import get_engine
    from features.build import build_features

    engine = get_engine(trained_home.warehouse)
    features = build_features(engine, AS_OF).head(200)
    loaded = load_model(trained_home)
    assert loaded.run_id
    health = previous_health(engine, AS_OF)
    if all(series.empty for series in health.values()):  # nothing scored in this home yet: some history
        health = {days: pd.Series(80.0, index=features["account_id"].head(50).to_numpy(), name="health_score") for days in health}
    overrides = active_overrides(engine, AS_OF)

    def key(**changes: object) -> str:
        args = {"settings": trained_home, "as_of": AS_OF, "features": features, "loaded": loaded,
                "previous_health": health, "overrides": overrides} | changes
        return scoring_fingerprint(**args)

    base = key()
    assert key() == base
    changed_value = features.copy()
    changed_value.loc[changed_value.index[0], "events_30d"] += 1
    override = pd.DataFrame({"account_id": [features["account_id"].iloc[0]], "band": ["red"], "reason": ["exec escalation"]})
    variants = {
        "a feature value": key(features=changed_value),
        "fewer accounts": key(features=features.head(199)),
        "another day": key(as_of=date(2026, 10, 2)),
        "an override": key(overrides=override),
        "the model's training run": key(loaded=type(loaded)(loaded.model, loaded.name, loaded.version, "another-run")),
        "previous health": key(previous_health={days: series + 1 for days, series in health.items()}),
        "a setting": key(settings=trained_home.model_copy(update={"red_threshold": 0.2})),
    }
    assert base not in variants.values(), [name for name, k in variants.items() if k == base]
    assert len(set(variants.values())) == len(variants)


def test_a_rescore_reuses_until_an_input_changes(trained_home: Settings, tmp_path) -> None:
    import sqlalchemy as sa

    from churnflow.warehouse import get_engine

    engine = get_engine(copy_duckdb_warehouse(trained_home.warehouse, tmp_path / "w.duckdb"))
    first = score_accounts(engine, trained_home, AS_OF)
    marked = first["account_id"].iloc[0]
    day = pd.Timestamp(AS_OF).to_pydatetime()
    with engine.begin() as conn:  # a marker only a read-back (not a recomputation) can return
        conn.execute(sa.text("UPDATE account_scores SET p_churn = 0.123456 WHERE as_of_date = :d AND account_id = :a"), {"d": day, "a": marked})
    again = score_accounts(engine, trained_home, AS_OF)
    assert list(again["account_id"]) == list(first["account_id"])
    assert again.set_index("account_id").loc[marked, "p_churn"] == 0.123456
    others = again["account_id"] != marked
    pd.testing.assert_frame_equal(first.loc[others, ["account_id", "p_churn", "band", "top_drivers_text"]].reset_index(drop=True),
                                  again.loc[others, ["account_id", "p_churn", "band", "top_drivers_text"]].reset_index(drop=True), check_dtype=False)

    account = first.loc[first["band"] != "red", "account_id"].iloc[1]
    set_override(engine, account, "red", reason="exec escalation", set_by="test", expires_on=date(2026, 12, 31))
    rescored = score_accounts(engine, trained_home, AS_OF).set_index("account_id")
    assert rescored.loc[account, "band"] == "red"
    assert rescored.loc[marked, "p_churn"] == first.set_index("account_id").loc[marked, "p_churn"]  # recomputed
