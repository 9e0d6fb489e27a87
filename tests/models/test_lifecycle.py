"""Model lifecycle: tracked runs, the champion / challenger gate, overrides, sub-scores, monitoring."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from features.catalogue import FAMILIES, family_of
from models.explain import contributions
from models.monitor import monitor_champion
from models.registry import CHAMPION, configure_mlflow, load_model, promote
from models.score import score_accounts, set_override
from models.train import build_training_set, evaluate_and_register, fit_model, train
from tests.helpers import copy_home

AS_OF = date(2026, 11, 1)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, trained_store: Path) -> Settings:
    """A private copy of the small book trained once (the tests below train and score in it)."""
    settings = Settings(home=copy_home(trained_store, tmp_path_factory.mktemp("lifecycle-home")))
    configure_mlflow(settings)
    first = MlflowClient().get_model_version(settings.model_name, "1")
    assert CHAMPION in first.aliases and first.tags["gate_reason"].startswith("first model")
    return settings


def champion_version(settings: Settings) -> str:
    return load_model(settings, CHAMPION).version


def test_run_is_tracked_with_metrics_params_and_figures(home: Settings) -> None:
    client = MlflowClient()
    version = client.get_model_version_by_alias(home.model_name, CHAMPION)
    run = client.get_run(version.run_id)
    for metric in ("roc_auc", "pr_auc", "log_loss", "brier", "ece", "top_decile_lift", "recall_top_10pct", "oracle_roc_auc"):
        assert f"holdout_{metric}" in run.data.metrics
    for param in ("data_start", "observed_until", "fit_dates", "holdout_dates", "feature_set_version", "fit_rows", "holdout_churn_rate"):
        assert param in run.data.params
    assert run.data.tags["git_commit"]
    figures = {Path(a.path).name for a in client.list_artifacts(run.info.run_id, "figures")}
    assert figures == {"calibration_curve.png", "lift_by_decile.png", "shap_summary.png"}
    assert client.get_model_version(home.model_name, version.version).tags["gate_decision"] == "promoted"
    # The model declares what it needs to load (pinned), LightGBM included.
    from mlflow.pyfunc import get_model_dependencies

    requirements = Path(get_model_dependencies(f"models:/{home.model_name}/{version.version}")).read_text().split()
    assert {r.split("==")[0] for r in requirements} >= {"mlflow", "churnflow", "lightgbm", "pandas", "scikit-learn"}
    assert all("==" in r for r in requirements if not r.startswith("churnflow")), requirements


def test_gate_refuses_a_model_trained_on_shuffled_labels(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    before = champion_version(home)
    ts = build_training_set(engine, home)
    rng = np.random.default_rng(0)
    training = ~ts.frame["as_of_date"].dt.date.isin(ts.holdout_dates)
    ts.frame.loc[training, "churned"] = rng.permutation(ts.frame.loc[training, "churned"].to_numpy())
    result = evaluate_and_register(engine, home, ts, fit_model(ts, home), run_name="negative-control")
    assert not result.promoted
    assert "refused" in result.reason and "AUC" in result.reason
    assert champion_version(home) == before
    run = MlflowClient().get_run(result.run_id)
    assert run.data.tags["gate_decision"] == "refused" and run.data.tags["gate_reason"] == result.reason
    tags = MlflowClient().get_model_version(home.model_name, result.model_version).tags
    assert tags["gate_reason"] == result.reason
    assert str(MlflowClient().get_model_version_by_alias(home.model_name, "challenger").version) == result.model_version


def test_a_worse_config_leaves_the_champion_with_the_reason_recorded(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    before = champion_version(home)
    worse = home.model_copy(update={"num_leaves": 2, "num_boost_round": 10, "learning_rate": 0.01})
    result = train(engine, worse)
    assert not result.promoted and f"champion v{before} kept" in result.reason
    assert champion_version(home) == before


def test_promote_override_records_who_and_why(home: Settings) -> None:
    client = MlflowClient()
    versions = sorted(int(v.version) for v in client.search_model_versions(f"name='{home.model_name}'"))
    target = str(versions[-1])
    message = promote(home, target, by="dana", reason="holdout too small this week; reviewed by hand")
    assert f"v{target} is champion" in message
    tags = client.get_model_version(home.model_name, target).tags
    assert tags["promoted_by"] == "dana" and "reviewed by hand" in tags["promoted_reason"]
    # Restore the original champion for the tests that follow.
    promote(home, str(versions[0]), by="dana", reason="restore")
    with pytest.raises(LookupError):
        promote(home, "999", by="dana", reason="nope")


def test_sub_scores_are_consistent_with_the_whole(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    scores = score_accounts(engine, home, AS_OF)
    model = load_model(home).model
    from models.score import load_features

    features = load_features(engine, AS_OF)
    shap_values = contributions(model, features)
    np.testing.assert_allclose(model.calibrator(shap_values.sum(axis=1)), scores["p_churn"], rtol=1e-9)
    sub = scores[[f"{f}_score" for f in FAMILIES]]
    assert ((sub >= 0) & (sub <= 100)).all().all()
    # The family that pulls risk up the most has the lowest sub-score.
    risky = scores.sort_values("p_churn").tail(20)
    families = np.array([family_of(n) for n in model.feature_names])
    for idx in risky.index:
        totals = {f: shap_values[idx, :-1][families == f].sum() for f in FAMILIES}
        worst = max(totals, key=totals.get)
        assert scores.loc[idx, f"{worst}_score"] == sub.loc[idx].min()
    protective = json.loads(scores.dropna(subset=["protective_driver"]).iloc[0]["protective_driver"])
    assert protective["contribution"] < 0 and protective["sentence"]


def test_a_pinned_band_is_respected_until_it_expires(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    first = score_accounts(engine, home, AS_OF)
    account = first.sort_values("p_churn").iloc[-1]["account_id"]
    set_override(engine, account, "green", reason="signed a 3-year renewal yesterday", set_by="csm", expires_on=date(2026, 11, 15))
    scored = score_accounts(engine, home, AS_OF).set_index("account_id")
    assert scored.loc[account, "band"] == "green" and scored.loc[account, "model_band"] != "green"
    assert "3-year renewal" in scored.loc[account, "band_override_reason"]
    from models.score import active_overrides

    assert len(active_overrides(engine, date(2026, 11, 14))) == 1
    assert active_overrides(engine, date(2026, 11, 15)).empty  # expired
    with pytest.raises(LookupError, match="accounts"):
        set_override(engine, "no-such-account", "red", reason="x", set_by="csm", expires_on=date(2026, 12, 1))


def test_monitoring_flags_drift_and_measures_matured_scores(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    # A score day whose labels have matured by the end of the data.
    score_accounts(engine, home, date(2026, 6, 1))
    report = monitor_champion(engine, home, AS_OF)
    rows = report.rows.set_index("metric")
    assert "psi_score" in rows.index and "realized_auc" in rows.index
    assert rows.loc["realized_auc", "value"] > 0.55
    stored = read_sql(engine, "SELECT metric, value, breached FROM model_monitoring")
    assert len(stored) == len(report.rows)
    # Same day again replaces, never duplicates.
    monitor_champion(engine, home, AS_OF)
    assert len(read_sql(engine, "SELECT metric FROM model_monitoring")) == len(report.rows)


def test_psi_catches_a_shifted_population(home: Settings) -> None:
    from models.monitor import drift
    from models.score import load_features

    engine = get_engine(home.warehouse)
    model = load_model(home).model
    features = load_features(engine, AS_OF)
    calm = drift(model, features).set_index("metric")["value"]
    shifted = features.assign(events_30d=features["events_30d"] * 0.1, seat_utilisation_30d=features["seat_utilisation_30d"] * 0.2)
    moved = drift(model, shifted).set_index("metric")["value"]
    assert moved["psi:events_30d"] > 0.25 > calm["psi:events_30d"]
    assert moved["psi:seat_utilisation_30d"] > 0.25
