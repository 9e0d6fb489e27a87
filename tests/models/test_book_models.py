"""A model fits the book it is trained on: only the families the book has, categories it
learned, constant features dropped and reported, and its own columns at scoring."""

from __future__ import annotations

import json
import pickle
from datetime import date
from functools import partial

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient

from churnflow.demo_data import generate_book, write_book
from churnflow.settings import Settings
from churnflow.warehouse import drop_tables, get_engine, read_sql, replace_rows
from features.build import build_features, features_for
from features.catalogue import CATALOGUE, feature_catalogue
from models.churn_model import ChurnModel
from models.explain import contributions, drivers, family_scores
from models.registry import CHALLENGER, LoadedModel, load_model
from models.score import health_score, score_accounts
from models.train import TrainResult, fit_model, holdout_rows, train

DAY = date(2026, 10, 1)
PERCEPTION = {f.name for f in CATALOGUE if f.family == "perception"}


def challenger(settings: Settings) -> LoadedModel:
    """The trained version (a 300-account book may not pass the champion gate; this is not about the gate)."""
    return load_model(settings, CHALLENGER)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, TrainResult]:
    """A book without surveys whose main mid-tier plan has a name no demo list knows."""
    settings = Settings(home=tmp_path_factory.mktemp("book-models"))
    engine = get_engine(settings.warehouse)
    book = generate_book(accounts=300, days=540, seed=1)
    write_book(engine, book)
    drop_tables(engine, ["surveys"])
    subs = book["subscriptions"].copy()
    subs.loc[subs["plan"] == "growth", "plan"] = "Platinum Plus"
    replace_rows(engine, "subscriptions", subs, replace_all=True)
    return settings, train(engine, settings)


def test_a_book_without_surveys_trains_a_model_without_perception(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    model = challenger(settings).model
    assert PERCEPTION.isdisjoint(model.feature_names) and PERCEPTION.isdisjoint(result.training_set.frame.columns)
    assert model.families == ("usage", "support", "commercial", "lifecycle")
    assert any(name.startswith("events_") and name.endswith("_trend_30d") for name in model.feature_names)  # per event type
    params = MlflowClient().get_run(result.run_id).data.params
    assert params["families"] == "usage,support,commercial,lifecycle"
    logged = mlflow.artifacts.load_dict(f"runs:/{result.run_id}/features.json")
    assert logged["families"] == list(model.families) and logged["dropped_features"] == model.dropped_features
    assert "Platinum Plus" in logged["categories"]["plan"]


def test_no_driver_or_sub_score_cites_a_family_the_model_lacks(trained: tuple[Settings, TrainResult]) -> None:
    settings, _ = trained
    engine = get_engine(settings.warehouse)
    model = challenger(settings).model
    scores = score_accounts(engine, settings, DAY, loaded=challenger(settings))
    assert len(scores) > 100
    cited = []
    for column in ("top_drivers", "protective_driver"):
        for raw in scores[column].dropna():
            parsed = json.loads(raw)
            cited += parsed if isinstance(parsed, list) else [parsed]
    assert cited and {d["feature"] for d in cited} <= set(model.feature_names)
    assert not [d for d in cited if d["family"] == "perception" or d["feature"] in PERCEPTION]
    assert all(d["family"] == model.feature(d["feature"]).family and "{" not in d["sentence"] for d in cited)
    stored = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp(DAY).to_pydatetime()})
    assert stored["perception_score"].isna().all()
    assert stored[["usage_score", "support_score", "commercial_score", "lifecycle_score"]].notna().all().all()


def test_the_digest_says_surveys_are_not_configured(trained: tuple[Settings, TrainResult]) -> None:
    from digest import build as digest

    settings, _ = trained
    built = digest.build_digest(get_engine(settings.warehouse), DAY, charts=False)
    assert built.surveys.reason == "no surveys are configured for this book"


def test_categories_are_learned_from_the_fit_slice(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    model = challenger(settings).model
    assert "Platinum Plus" in model.categories["plan"] and model.categories["plan"][-1] == "other"
    assert set(model.categories["segment"]) == {"smb", "mid_market", "enterprise", "other"}
    hold = holdout_rows(result.training_set).head(50)
    unseen = hold.assign(plan="Diamond")  # never seen at training: scored as "other", no failure
    assert list(model.matrix(unseen)["plan"].astype(str).unique()) == ["other"]
    assert np.isfinite(model.predict_proba(unseen)).all()
    # "other" stands for the same thing as any unseen value.
    np.testing.assert_allclose(model.predict_proba(unseen), model.predict_proba(hold.assign(plan="other")))


def test_constant_and_missing_features_are_dropped_and_reported(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    ts = result.training_set
    frame = ts.frame.copy()
    frame["error_rate_30d"] = 0.0
    frame["days_to_first_value"] = np.nan
    frame["segment"] = "smb"
    model = fit_model(type(ts)(**{**ts.__dict__, "frame": frame}), settings)
    assert set(model.dropped_features) >= {"error_rate_30d", "days_to_first_value", "segment"}
    assert model.dropped_features["days_to_first_value"] == "all missing on the fit slice"
    assert model.dropped_features["error_rate_30d"].startswith("constant on the fit slice")
    assert not set(model.dropped_features) & set(model.feature_names)
    assert "segment" not in model.categories
    # A column with values and missing values is a signal, not constant: it stays.
    assert "nps_latest" not in model.dropped_features
    assert set(model.feature_names) | set(model.dropped_features) == {f.name for f in ts.catalogue}


def test_scoring_builds_the_columns_of_the_model(trained: tuple[Settings, TrainResult]) -> None:
    settings, _ = trained
    engine = get_engine(settings.warehouse)
    model = challenger(settings).model
    event_types = list(dict.fromkeys(f.key for f in model.catalogue if f.origin == "event_type"))
    assert len(event_types) == settings.usage_event_types_top
    narrower = build_features(engine, DAY, catalogue=feature_catalogue(engine, event_types[:2]))
    with pytest.raises(KeyError, match="lack .* of the model's features"):
        model.predict_proba(narrower)
    completed = features_for(engine, DAY, narrower, model.catalogue, model.feature_names)
    reference = build_features(engine, DAY, catalogue=model.catalogue)
    assert list(completed["account_id"]) == list(reference["account_id"])
    np.testing.assert_allclose(model.predict_proba(completed), model.predict_proba(reference))
    assert features_for(engine, DAY, reference, model.catalogue, model.feature_names) is reference


def test_a_model_pickled_before_catalogues_still_scores(trained: tuple[Settings, TrainResult]) -> None:
    settings, result = trained
    model = challenger(settings).model
    hold = holdout_rows(result.training_set).head(200)
    again = pickle.loads(pickle.dumps(model))
    assert again.catalogue == model.catalogue and again.categories == model.categories
    # An older pickle has none of the new attributes: static entries and the booster's categories.
    old = ChurnModel.__new__(ChurnModel)
    state = {k: v for k, v in model.__dict__.items() if k not in ("catalogue", "categories", "dropped_features")}
    old.__setstate__(state)
    assert old.dropped_features == {} and old.categories is None
    assert {f.name for f in old.catalogue} <= {f.name for f in CATALOGUE}
    np.testing.assert_allclose(old.predict_proba(hold), model.predict_proba(hold))
    shap_values = contributions(model, hold)
    explained = drivers(model, hold, shap_values)
    to_health = partial(health_score, red=0.12, yellow=0.04)
    assert len(explained) == len(hold) and family_scores(model, shap_values, to_health)["perception_score"].isna().all()
