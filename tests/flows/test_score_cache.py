"""The scoring partition's cache key: equal for equal inputs, different when any input differs."""

from __future__ import annotations

from datetime import date

import pandas as pd

from churnflow.settings import Settings
from churnflow.warehouse import get_engine
from features.build import build_features
from flows.tasks import ScoringInputs, score_partition_cache_key
from models.registry import load_model
from models.score import active_overrides, previous_health


def test_the_key_names_every_input_of_the_scores(trained_home: Settings) -> None:
    engine = get_engine(trained_home.warehouse)
    as_of = date(2026, 10, 1)
    features = build_features(engine, as_of).head(200)
    loaded = load_model(trained_home)
    assert loaded.run_id
    health = previous_health(engine, as_of)
    if all(series.empty for series in health.values()):  # nothing scored in this home yet: some history
        ids = features["account_id"].head(50)
        health = {days: pd.Series(80.0, index=ids.to_numpy(), name="health_score") for days in health}
    inputs = ScoringInputs(loaded, health, active_overrides(engine, as_of), pd.Timestamp("2026-10-01 06:00"))

    def key(**changes: object) -> str:
        params = {"settings": trained_home, "as_of": as_of, "features": features, "inputs": inputs} | changes
        return score_partition_cache_key(None, params)

    base = key()
    assert key() == base
    later = ScoringInputs(loaded, inputs.previous_health, inputs.overrides, pd.Timestamp("2026-10-02 09:00"))
    assert key(inputs=later) == base  # when it ran is not an input

    changed_value = features.copy()
    changed_value.loc[changed_value.index[0], "events_30d"] += 1
    override = pd.DataFrame({"account_id": [features["account_id"].iloc[0]], "band": ["red"], "reason": ["exec escalation"]})
    other_model = type(loaded)(loaded.model, loaded.name, loaded.version, "another-run")
    health = {days: series + 1 for days, series in inputs.previous_health.items()}
    variants = {
        "a feature value": key(features=changed_value),
        "fewer accounts": key(features=features.head(199)),
        "another day": key(as_of=date(2026, 10, 2)),
        "an override": key(inputs=ScoringInputs(loaded, inputs.previous_health, override, inputs.scored_at)),
        "the model's run": key(inputs=ScoringInputs(other_model, inputs.previous_health, inputs.overrides, inputs.scored_at)),
        "previous health": key(inputs=ScoringInputs(loaded, health, inputs.overrides, inputs.scored_at)),
        "a setting": key(settings=trained_home.model_copy(update={"red_threshold": 0.2})),
    }
    assert base not in variants.values(), [name for name, k in variants.items() if k == base]
    assert len(set(variants.values())) == len(variants)
