"""The honest gate on small data: refuse before fitting, intervals on the holdout, the
lower bound decides, champions compared on the same rows, bands from the base rate."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import numpy as np
import pytest
from mlflow import MlflowClient
from pydantic import ValidationError
from typer.testing import CliRunner

from churnflow.cli import app
from churnflow.settings import Settings
from churnflow.warehouse import get_engine
from features.labels import data_window, labels_for_dates
from models.evaluate import bootstrap_intervals, classification_metrics, paired_auc_gain
from models.registry import CHAMPION, NoChampionError, configure_mlflow, last_training, load_model
from models.score import band, band_thresholds
from models.train import (
    SLICES,
    InsufficientDataError,
    TrainingSet,
    build_training_set,
    churner_shortfalls,
    evaluate_and_register,
    fit_model,
    holdout_metrics,
    holdout_rows,
    plan_split,
    slice_churners,
    train,
)
from tests.helpers import copy_duckdb_warehouse

# The production gate, explicit: tests/conftest.py lowers it for the other tests' small books.
PRODUCTION_GATE = {"min_churners_fit": 50, "min_churners_calibration": 20, "min_churners_holdout": 30, "gate_min_auc": 0.6}
SMALL_BOOK_GATE = {"min_churners_fit": 5, "min_churners_calibration": 3, "min_churners_holdout": 5, "gate_min_auc": 0.5}
THIN_BOOK = {"accounts": 150, "days": 540, "seed": 1}

runner = CliRunner()


def _independent_churners(engine, settings: Settings, ts_or_plan) -> dict[str, int]:
    """Distinct churned accounts per slice, straight from the labels of each slice's dates."""
    _, observed_until = data_window(engine)
    out = {}
    for name, dates in (("fit", ts_or_plan.fit_dates), ("calibration", [ts_or_plan.calibration_date]), ("holdout", ts_or_plan.holdout_dates)):
        labels = labels_for_dates(engine, dates, horizon_days=settings.horizon_days, grace_days=settings.churn_grace_days,
                                  observed_until=observed_until, lead_days=settings.label_lead_days)
        out[name] = int(labels.loc[labels["churned"] == 1, "account_id"].nunique())
    return out


# ---------------------------------------------------------------------------- refusal before fitting


def test_thin_book_refuses_with_counts_cause_and_fix_and_score_says_why(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("CHURNFLOW_HOME", str(home))
    for key, value in PRODUCTION_GATE.items():
        monkeypatch.setenv(f"CHURNFLOW_{key.upper()}", str(value))
    assert runner.invoke(app, ["demo-data", *[f"--{k}={v}" for k, v in THIN_BOOK.items()]]).exit_code == 0

    trained = runner.invoke(app, ["train"])
    assert trained.exit_code == 1, trained.output
    assert "training refused" in trained.output and "churned accounts (needs 30)" in trained.output
    assert "fix:" in trained.output and "history" in trained.output
    assert "Traceback" not in trained.output

    settings = Settings()
    engine = get_engine(settings.warehouse)
    with pytest.raises(InsufficientDataError) as refused:
        train(engine, settings)
    # The counts named are the labels' own, slice by slice.
    first, observed_until = data_window(engine)
    plan = plan_split(first, observed_until, settings)
    assert refused.value.counts == _independent_churners(engine, settings, plan)
    assert refused.value.counts["holdout"] < 30
    assert f"holdout has {refused.value.counts['holdout']} churned accounts (needs 30)" in str(refused.value)

    # Nothing was registered, no champion exists, the refusal is an MLflow run.
    client = configure_mlflow(settings)
    assert client.search_model_versions(f"name = '{settings.model_name}'") == []
    with pytest.raises(NoChampionError, match="was refused: not enough data to train"):
        load_model(settings, CHAMPION)
    record = last_training(settings)
    assert record is not None and record.decision == "refused" and "needs 30" in record.reason
    run = client.get_run(record.run_id)
    assert run.data.tags["gate_stage"] == "data" and run.data.metrics["churners_holdout"] == refused.value.counts["holdout"]

    scored = runner.invoke(app, ["score", "--as-of", "2026-11-01"])
    assert scored.exit_code == 1
    assert f"the last training on {record.started:%Y-%m-%d}" in scored.output and "was refused" in scored.output
    assert "run `churnflow train` first" not in scored.output and "Traceback" not in scored.output


def test_calibration_needs_both_classes_before_fit_model_runs(book_engine) -> None:
    settings = Settings(home=Path(str(book_engine.url.database)).parent, **SMALL_BOOK_GATE)
    first, observed_until = data_window(book_engine)
    plan = plan_split(first, observed_until, settings)
    labels = labels_for_dates(book_engine, plan.used, horizon_days=90, grace_days=30, observed_until=observed_until)
    counts = slice_churners(labels, plan)
    assert churner_shortfalls(counts, settings) == []
    no_positives = labels.assign(churned=np.where(labels["as_of_date"].dt.date == plan.calibration_date, 0, labels["churned"]))
    assert churner_shortfalls(slice_churners(no_positives, plan), settings) == ["calibration has 0 churned accounts (needs 3)"]
    all_positive = labels.assign(churned=np.where(labels["as_of_date"].dt.date == plan.calibration_date, 1, labels["churned"]))
    assert churner_shortfalls(slice_churners(all_positive, plan), settings) == ["calibration has no retained accounts (one class)"]
    with pytest.raises(ValidationError):
        Settings(min_churners_calibration=0)  # no setting lets an empty calibration slice through


def test_weekly_cadence_gives_more_snapshots_and_holdout_churners(book_engine) -> None:
    first, observed_until = data_window(book_engine)
    monthly_settings = Settings(**SMALL_BOOK_GATE)
    weekly_settings = Settings(snapshot_cadence="weekly", **SMALL_BOOK_GATE)
    monthly = plan_split(first, observed_until, monthly_settings)
    weekly = plan_split(first, observed_until, weekly_settings)
    assert weekly.matured > 3 * monthly.matured
    assert len(weekly.used) > 3 * len(monthly.used)
    assert all(d.weekday() == 0 for d in weekly.used) and all(d.day == 1 for d in monthly.used)
    for plan in (monthly, weekly):  # the gap: no calibration or fit outcome after the holdout starts
        assert max(plan.fit_dates) < plan.calibration_date
        assert (plan.holdout_dates[0] - plan.calibration_date).days >= 90
    m, w = _independent_churners(book_engine, monthly_settings, monthly), _independent_churners(book_engine, weekly_settings, weekly)
    assert w["holdout"] > m["holdout"]


# ---------------------------------------------------------------------------- intervals and the lower bound


@pytest.fixture(scope="module")
def fitted(tmp_path_factory: pytest.TempPathFactory, trained_store: Path) -> tuple[Settings, TrainingSet, object, dict]:
    # The trained small book's warehouse, without its registry (no champion yet): its stored
    # features are reused, keyed by their inputs.
    settings = Settings(home=tmp_path_factory.mktemp("gate-home"), **SMALL_BOOK_GATE)
    engine = get_engine(copy_duckdb_warehouse(f"duckdb:///{trained_store / 'warehouse.duckdb'}", settings.home_dir / "warehouse.duckdb"))
    ts = build_training_set(engine, settings)
    model = fit_model(ts, settings)
    return settings, ts, model, holdout_metrics(model, ts, engine, settings)


def test_holdout_interval_brackets_the_auc_and_narrows_with_more_accounts(fitted) -> None:
    settings, ts, model, metrics = fitted
    assert metrics["roc_auc_ci_low"] < metrics["roc_auc"] < metrics["roc_auc_ci_high"]
    assert metrics["top_decile_lift_ci_low"] < metrics["top_decile_lift"] < metrics["top_decile_lift_ci_high"]
    hold = holdout_rows(ts)
    assert metrics["positives"] == hold["churned"].sum() and metrics["negatives"] == (hold["churned"] == 0).sum()
    assert metrics["churned_accounts"] == ts.churners["holdout"]
    # Half of the holdout's accounts: a wider interval than all of them.
    accounts = hold["account_id"].unique()
    half = hold[hold["account_id"].isin(np.random.default_rng(0).choice(accounts, len(accounts) // 2, replace=False))]
    y, p = hold["churned"].to_numpy(), model.predict_proba(hold)
    full_ci = bootstrap_intervals(y, p, hold["account_id"].to_numpy(), resamples=500, seed=1)
    half_ci = bootstrap_intervals(half["churned"].to_numpy(), model.predict_proba(half), half["account_id"].to_numpy(), resamples=500, seed=1)
    assert half_ci["roc_auc_ci_high"] - half_ci["roc_auc_ci_low"] > 1.2 * (full_ci["roc_auc_ci_high"] - full_ci["roc_auc_ci_low"])
    # Same seed, same interval; every resample keeps the churners count (stratified).
    assert bootstrap_intervals(y, p, hold["account_id"].to_numpy(), resamples=500, seed=1) == full_ci


def test_interval_width_shrinks_with_more_rows() -> None:
    rng = np.random.default_rng(3)
    widths = []
    for n in (400, 4000, 40000):
        y = (rng.random(n) < 0.05).astype(int)
        p = rng.normal(loc=y * 1.0, scale=1.0)
        ci = bootstrap_intervals(y, p, np.arange(n), resamples=300, seed=0)
        assert ci["roc_auc_ci_low"] < classification_metrics(y, 1 / (1 + np.exp(-p)))["roc_auc"] < ci["roc_auc_ci_high"]
        widths.append(ci["roc_auc_ci_high"] - ci["roc_auc_ci_low"])
    assert widths[0] > 2 * widths[1] > 4 * widths[2]


def test_gate_refuses_when_the_point_passes_but_the_lower_bound_does_not(fitted) -> None:
    settings, ts, model, metrics = fitted
    floor = round((metrics["roc_auc_ci_low"] + metrics["roc_auc"]) / 2, 4)
    assert metrics["roc_auc_ci_low"] < floor < metrics["roc_auc"]
    strict = settings.model_copy(update={"gate_min_auc": floor, "gate_max_ece": 1.0, "gate_max_feature_share": 1.0})
    engine = get_engine(settings.warehouse)
    result = evaluate_and_register(engine, strict, ts, model, run_name="lower-bound-below-floor")
    assert not result.promoted and "lower bound is below the floor" in result.reason
    run = MlflowClient().get_run(result.run_id)
    for key in ("holdout_roc_auc_ci_low", "holdout_roc_auc_ci_high", "holdout_top_decile_lift_ci_low", "holdout_positives", "holdout_negatives"):
        assert key in run.data.metrics
    assert run.data.tags["gate_decision"] == "refused"
    with pytest.raises(NoChampionError, match=f"was refused: refused \\(no champion yet\\): holdout AUC {metrics['roc_auc']:.4f}"):
        load_model(strict)
    # The same model with a floor under its lower bound is promoted, and its base rate travels with it.
    lenient = settings.model_copy(update={"gate_min_auc": 0.5, "gate_max_ece": 1.0, "gate_max_feature_share": 1.0})
    promoted = evaluate_and_register(engine, lenient, ts, model, run_name="lower-bound-above-floor")
    assert promoted.promoted
    fit_rate = ts.frame[ts.frame["as_of_date"].dt.date.isin(ts.fit_dates)]["churned"].mean()
    loaded = load_model(lenient)
    assert loaded.base_rate == pytest.approx(fit_rate)
    assert float(MlflowClient().get_model_version(settings.model_name, promoted.model_version).tags["base_rate"]) == pytest.approx(fit_rate)


def test_paired_gain_is_zero_for_the_same_model_and_positive_for_a_better_one() -> None:
    rng = np.random.default_rng(5)
    n = 3000
    y = (rng.random(n) < 0.06).astype(int)
    good = rng.normal(loc=y * 1.2, scale=1.0)
    noise = good + rng.normal(scale=2.0, size=n)
    groups = np.arange(n) // 2
    assert paired_auc_gain(y, good, good, groups, resamples=200, seed=0) == (0.0, 0.0, 0.0)
    gain, low, high = paired_auc_gain(y, good, noise, groups, resamples=200, seed=0)
    assert 0 < low < gain < high
    gain, low, high = paired_auc_gain(y, noise, good, groups, resamples=200, seed=0)
    assert low < high < 0


# ---------------------------------------------------------------------------- bands from the base rate


def test_bands_scale_with_a_low_base_rate(fitted) -> None:
    settings, ts, model, _ = fitted
    p = model.predict_proba(holdout_rows(ts))
    # The same ranking on a book churning 1% per horizon: shift the log-odds until the mean is 1%.
    logit = np.log(p / (1 - p))
    shift = 0.0
    for _ in range(60):
        shift -= (np.mean(1 / (1 + np.exp(-(logit + shift)))) - 0.01) * 20
    low = 1 / (1 + np.exp(-(logit + shift)))
    assert abs(low.mean() - 0.01) < 0.001
    absolute = settings.model_copy(update={"red_threshold": 0.15, "yellow_threshold": 0.05})
    assert (band(low, absolute, 0.01) == "green").mean() > 0.95  # the issue: almost all green
    bands = band(low, settings, 0.01)
    red, yellow = (bands == "red").mean(), (bands == "yellow").mean()
    assert 0.01 < red < 0.2 and 0.05 < yellow < 0.5
    assert band_thresholds(settings, 0.01) == pytest.approx((0.03, 0.01))
    # Same bands whatever the base rate when the ranking is the same: scale-free.
    assert abs((band(p, settings, p.mean()) == "red").mean() - red) < 0.1
    with pytest.raises(ValueError, match="base rate"):
        band(p, settings, None)
    with pytest.raises(ValidationError, match="red_threshold"):
        Settings(red_threshold=0.2)


def test_scores_band_by_the_champions_base_rate(trained_home: Settings) -> None:
    from models.score import compute_scores, load_features

    engine = get_engine(trained_home.warehouse)
    loaded = load_model(trained_home)
    assert loaded.base_rate is not None and 0 < loaded.base_rate < 0.2
    day = date(2026, 9, 1)  # computed, not stored: the home is shared read-only
    stored = compute_scores(engine, trained_home, day, load_features(engine, day), loaded)
    red = stored["p_churn"] >= 3 * loaded.base_rate
    yellow = ~red & (stored["p_churn"] >= loaded.base_rate)
    assert (stored.loc[red, "model_band"] == "red").all() and (stored.loc[yellow, "model_band"] == "yellow").all()
    assert (stored.loc[~red & ~yellow, "model_band"] == "green").all()
    assert set(SLICES) == {"fit", "calibration", "holdout"}


def test_a_refused_retraining_keeps_the_champion_and_score_says_so(fitted, monkeypatch: pytest.MonkeyPatch) -> None:
    settings, ts, model, _ = fitted
    engine = get_engine(settings.warehouse)
    lenient = settings.model_copy(update={"gate_min_auc": 0.5, "gate_max_ece": 1.0, "gate_max_feature_share": 1.0})
    try:
        load_model(settings)
    except NoChampionError:
        assert evaluate_and_register(engine, lenient, ts, model, run_name="champion-for-refusal").promoted
    champion = load_model(settings).version
    production = settings.model_copy(update=PRODUCTION_GATE)
    with pytest.raises(InsufficientDataError):
        train(engine, production)
    assert load_model(settings).version == champion  # it passed its own gate; it keeps serving
    monkeypatch.setenv("CHURNFLOW_HOME", str(settings.home))
    scored = runner.invoke(app, ["score", "--as-of", "2026-10-01"])
    assert scored.exit_code == 0, scored.output
    assert "note: the last training on" in scored.output and "was refused" in scored.output and "earlier champion" in scored.output


def test_too_short_a_history_is_refused_with_the_days_it_needs() -> None:
    settings = Settings(**PRODUCTION_GATE)
    with pytest.raises(InsufficientDataError) as short:
        plan_split(date(2026, 1, 1), date(2026, 9, 1), settings)
    assert "matured monthly snapshots between 2026-01-01 and 2026-09-01" in short.value.cause
    assert "more history" in short.value.fix and "the data spans 243" in short.value.fix
    # Weekly snapshots reach further into the same history, but not past the maturity wait.
    with pytest.raises(InsufficientDataError, match="weekly"):
        plan_split(date(2026, 1, 1), date(2026, 9, 1), settings.model_copy(update={"snapshot_cadence": "weekly"}))
    assert plan_split(date(2025, 1, 1), date(2026, 9, 1), settings).holdout_dates == [date(2026, 4, 1), date(2026, 5, 1)]


def test_weekly_training_set_joins_features_and_labels_on_mondays(book_engine, tmp_path: Path) -> None:
    settings = Settings(home=tmp_path, snapshot_cadence="weekly", training_snapshots=6, holdout_snapshots=1,
                        min_churners_fit=1, min_churners_calibration=1, min_churners_holdout=1)
    ts = build_training_set(book_engine, settings)
    dates = sorted(ts.frame["as_of_date"].dt.date.unique())
    assert ts.cadence == "weekly" and all(d.weekday() == 0 for d in dates)
    assert dates == sorted([*ts.fit_dates, ts.calibration_date, *ts.holdout_dates])
    assert len(ts.holdout_dates) == 4 and len(dates) > 6  # 1 month = 4 weekly holdout snapshots
    assert ts.churners == _independent_churners(book_engine, settings, ts)
