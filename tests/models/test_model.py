"""Model behaviour on a generated book: quality vs the oracle, planted drivers, explanations."""

from __future__ import annotations

import json
from datetime import date

import numpy as np
import pandas as pd
import pytest
import shap

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from models.evaluate import classification_metrics
from models.explain import contributions
from models.registry import load_model
from models.score import band_thresholds, score_accounts
from models.train import TrainingSet, build_training_set, fit_model, holdout_rows


@pytest.fixture(scope="module")
def training_set(trained_home: Settings) -> TrainingSet:
    return build_training_set(get_engine(trained_home.warehouse), trained_home)


@pytest.fixture(scope="module")
def champion(trained_home: Settings):
    return load_model(trained_home)


def test_split_is_temporal_with_a_gap(training_set: TrainingSet, trained_home: Settings) -> None:
    first_holdout = min(training_set.holdout_dates)
    assert all(d < training_set.calibration_date for d in training_set.fit_dates)
    assert (first_holdout - training_set.calibration_date).days >= trained_home.horizon_days


def test_holdout_auc_clears_a_floor_set_by_the_oracle(trained_home: Settings) -> None:
    engine = get_engine(trained_home.warehouse)
    from mlflow import MlflowClient

    load_model(trained_home)  # configures MLflow for this home
    version = MlflowClient().get_model_version_by_alias(trained_home.model_name, "champion")
    metrics = MlflowClient().get_run(version.run_id).data.metrics
    assert metrics["holdout_roc_auc"] >= 0.6
    assert metrics["holdout_roc_auc"] >= metrics["holdout_oracle_roc_auc"] - 0.12
    assert read_sql(engine, "SELECT COUNT(*) AS n FROM truth").loc[0, "n"] > 0


def test_a_planted_drop_in_usage_raises_risk(training_set: TrainingSet, champion) -> None:
    hold = holdout_rows(training_set)
    healthy = hold[(hold["usage_trend_30d"] > -0.1) & (hold["events_30d"] > 0)].copy()
    dropped = healthy.copy()
    dropped["events_7d"] *= 0.1
    dropped["events_30d"] *= 0.3
    dropped["active_users_7d"] = (dropped["active_users_7d"] * 0.2).round()
    dropped["active_users_30d"] = (dropped["active_users_30d"] * 0.4).round()
    dropped["usage_trend_30d"] = -0.7
    dropped["active_users_trend_30d"] = -0.6
    dropped["seat_utilisation_30d"] *= 0.4
    dropped["days_since_last_activity"] = 12.0
    before, after = champion.model.predict_proba(healthy), champion.model.predict_proba(dropped)
    assert after.mean() > before.mean() * 1.2
    assert (after > before).mean() > 0.7


def test_better_nps_lowers_risk(training_set: TrainingSet, champion) -> None:
    hold = holdout_rows(training_set)
    detractors = hold[hold["nps_category"] == "detractor"].copy()
    assert len(detractors) >= 5
    promoters = detractors.assign(nps_latest=10.0, nps_category="promoter", nps_trend=4.0)
    assert champion.model.predict_proba(promoters).mean() < champion.model.predict_proba(detractors).mean()


def test_shuffling_an_important_feature_lowers_auc(training_set: TrainingSet, champion) -> None:
    hold = holdout_rows(training_set).reset_index(drop=True)
    y = hold["churned"].to_numpy()
    base = classification_metrics(y, champion.model.predict_proba(hold))["roc_auc"]
    gains = champion.model.booster.feature_importance("gain")
    top = champion.model.feature_names[int(np.argmax(gains))]
    shuffled = hold.copy()
    shuffled[top] = np.random.default_rng(0).permutation(shuffled[top].to_numpy())
    assert classification_metrics(y, champion.model.predict_proba(shuffled))["roc_auc"] < base


def test_training_is_deterministic_for_a_seed(training_set: TrainingSet, trained_home: Settings) -> None:
    hold = holdout_rows(training_set)
    a = fit_model(training_set, trained_home).predict_proba(hold)
    b = fit_model(training_set, trained_home).predict_proba(hold)
    np.testing.assert_array_equal(a, b)


def test_explanations_equal_shap_tree_explainer(training_set: TrainingSet, champion) -> None:
    rows = holdout_rows(training_set).head(300)
    ours = contributions(champion.model, rows, chunk_rows=64)
    X = champion.model.matrix(rows)
    reference = shap.TreeExplainer(champion.model.booster).shap_values(X)
    reference = reference[1] if isinstance(reference, list) else reference
    np.testing.assert_allclose(ours[:, :-1], reference, atol=1e-9)
    # Contributions add up to the raw margin.
    np.testing.assert_allclose(ours.sum(axis=1), champion.model.margin(rows), atol=1e-9)


def test_scoring_writes_history_and_replaces_the_same_day(trained_copy: Settings) -> None:
    settings = trained_copy  # scores are written: a private copy, never the shared trained_home
    engine = get_engine(settings.warehouse)
    day = date(2026, 10, 1)
    first = score_accounts(engine, settings, day)
    again = score_accounts(engine, settings, day)
    stored = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp(day).to_pydatetime()})
    assert len(stored) == len(first) == len(again)
    assert stored["account_id"].is_unique
    assert ((stored["health_score"] >= 0) & (stored["health_score"] <= 100)).all()
    red_at, _ = band_thresholds(settings, load_model(settings).base_rate)
    red = stored["p_churn"] >= red_at
    assert (stored.loc[red, "band"] == "red").all() and (stored.loc[~red, "band"] != "red").all()
    np.testing.assert_allclose(stored["arr_at_risk"], stored["p_churn"] * stored["arr"])
    drivers = json.loads(stored.sort_values("p_churn").iloc[-1]["top_drivers"])
    model = load_model(settings).model
    assert drivers and all(d["feature"] in model.feature_names and d["contribution"] > 0 and d["sentence"] for d in drivers)
    # A week later the trend is filled from the history.
    later = score_accounts(engine, settings, date(2026, 10, 8))
    assert later["health_change_7d"].notna().mean() > 0.9
    # Weekly scoring: 30 days before 2026-11-02 (2026-10-03) was not scored; the latest scored
    # day up to six days earlier (2026-10-01) stands in; nothing older than that does.
    november = score_accounts(engine, settings, date(2026, 11, 2)).set_index("account_id")
    assert november["health_change_30d"].notna().mean() > 0.9
    stored_oct1 = read_sql(engine, "SELECT account_id, health_score FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp("2026-10-01").to_pydatetime()}).set_index("account_id")["health_score"]
    common = november.index.intersection(stored_oct1.index)
    np.testing.assert_array_equal(november.loc[common, "health_change_30d"], november.loc[common, "health_score"] - stored_oct1[common])
    assert score_accounts(engine, settings, date(2026, 11, 20))["health_change_30d"].isna().all()  # 10-21..10-15: none scored
