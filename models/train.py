"""Training: multi-snapshot training set, temporal split, LightGBM, calibration, MLflow.

Split (all by as-of date, never by row): the newest ``holdout_snapshots`` matured
snapshots are the *holdout* (reported); the newest earlier snapshot whose horizon ends
before the first holdout date is the *calibration* slice (early stopping and Platt
scaling); older snapshots are *fit*. Snapshots whose label horizon overlaps the holdout
are dropped (the gap), so no outcome seen in training happens after the holdout begins.
"""

from __future__ import annotations

import logging
import subprocess
from dataclasses import dataclass, field
from datetime import date, timedelta

import lightgbm as lgb
import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from sklearn.linear_model import LogisticRegression

from churnflow.settings import Settings
from churnflow.warehouse import read_sql, table_exists
from features.build import as_model_frame, book_catalogue, build_features, learn_categories, refresh_derived
from features.catalogue import CATALOGUE, FEATURE_SET_VERSION, Feature
from features.labels import data_window, label_snapshots, load_subscriptions, training_dates
from models.churn_model import ChurnModel, PlattCalibrator
from models.monitor import reference_profile
from models.evaluate import classification_metrics, oracle_probability
from models.registry import configure_mlflow, gate_and_alias

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # as_of_date, account_id, features..., churned
    fit_dates: list[date]
    calibration_date: date
    holdout_dates: list[date]
    observed_until: date
    # The book's catalogue every snapshot was built with (event types learned once, at the
    # newest snapshot); empty for a frame built elsewhere: the static features it holds.
    catalogue: tuple[Feature, ...] = ()


@dataclass
class TrainResult:
    run_id: str
    model_version: str
    metrics: dict[str, float]
    promoted: bool
    reason: str
    training_set: TrainingSet = field(repr=False)


def build_training_set(engine: sa.Engine, settings: Settings, observed_until: date | None = None) -> TrainingSet:
    """Features joined with matured labels over monthly as-of dates."""
    first, last = data_window(engine)
    observed_until = observed_until or last
    dates = training_dates(
        data_start=first,
        observed_until=observed_until,
        horizon_days=settings.horizon_days,
        grace_days=settings.churn_grace_days,
        snapshots=settings.training_snapshots,
        lead_days=settings.label_lead_days,
    )
    holdout = dates[-settings.holdout_snapshots :]
    gap = timedelta(days=settings.label_lead_days + settings.horizon_days)
    earlier = [d for d in dates[: -settings.holdout_snapshots] if d + gap <= holdout[0]]
    if len(earlier) < 2:
        raise ValueError(
            f"only {len(dates)} matured monthly snapshots between {first} and {observed_until}: not enough for "
            f"{settings.holdout_snapshots} holdout + calibration + fit once the {settings.horizon_days}-day gap is applied "
            f"(history must span 90 + {settings.horizon_days} + {settings.churn_grace_days} days and several months more)"
        )
    calibration, fit = earlier[-1], earlier[:-1]
    used = [*fit, calibration, *holdout]
    subs = load_subscriptions(engine)
    labels = label_snapshots(
        subs, used, horizon_days=settings.horizon_days, grace_days=settings.churn_grace_days, observed_until=observed_until,
        lead_days=settings.label_lead_days,
    )
    refresh_derived(engine, min(used))  # once: every snapshot below reads the same rollups
    # One catalogue for every snapshot: the event types known at the newest one (a frequency
    # count of usage, no labels), so all snapshots have the same columns.
    catalogue = book_catalogue(engine, max(used), settings.usage_event_types_top)
    features = pd.concat([build_features(engine, d, refresh=False, catalogue=catalogue) for d in used], ignore_index=True)
    frame = features.merge(labels[["as_of_date", "account_id", "churned"]], on=["as_of_date", "account_id"], how="inner")
    log.info("training set: %d rows over %d snapshots, churn rate %.3f", len(frame), len(used), frame["churned"].mean())
    return TrainingSet(frame, fit, calibration, holdout, observed_until, catalogue)


def holdout_rows(ts: TrainingSet) -> pd.DataFrame:
    return ts.frame[ts.frame["as_of_date"].dt.date.isin(ts.holdout_dates)]


def lgb_params(settings: Settings) -> dict[str, object]:
    return {
        "objective": "binary",
        "learning_rate": settings.learning_rate,
        "num_leaves": settings.num_leaves,
        "min_data_in_leaf": settings.min_data_in_leaf,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "seed": settings.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 2,
        "verbose": -1,
    }


def unusable_features(fit: pd.DataFrame, names: list[str]) -> dict[str, str]:
    """Features the fit slice cannot teach anything: all missing, or one value on every row
    (a missing value counts as a value: "present vs missing" is a signal). Name -> reason."""
    out: dict[str, str] = {}
    for name in names:
        values = fit[name]
        if values.isna().all():
            out[name] = "all missing on the fit slice"
        elif values.nunique(dropna=False) <= 1:
            out[name] = f"constant on the fit slice (always {values.iloc[0]!r})"
    return out


def fit_model(ts: TrainingSet, settings: Settings, feature_names: list[str] | None = None) -> ChurnModel:
    """LightGBM on the fit slice, early-stopped and Platt-calibrated on the calibration slice.

    ``feature_names`` defaults to the training set's catalogue (the book's features); a data
    scientist can pass another list (e.g. the catalogue plus a candidate feature present in
    ``ts.frame``).

    Categorical features get the categories seen on the fit slice on at least max(20, 1% of
    its rows) rows, plus "other" for rarer and unseen values; the model stores them. Features
    that are all missing or constant on the fit slice are dropped and reported on the model
    (``dropped_features``): they can only add noise, and a family the book lacks never reaches
    the model as zeros.

    Class imbalance is left to the loss (no reweighting), so raw probabilities stay
    honest; calibration only corrects the shape.
    """
    frame = ts.frame
    fit = frame[frame["as_of_date"].dt.date.isin(ts.fit_dates)]
    cal = frame[frame["as_of_date"].dt.date == ts.calibration_date]
    catalogue = ts.catalogue or tuple(f for f in CATALOGUE if f.name in frame.columns)
    candidates = list(feature_names or [f.name for f in catalogue])
    by_name = {f.name: f for f in catalogue}
    categorical = [name for name in candidates if name in by_name and by_name[name].is_categorical]  # others: numeric
    categories = {name: learn_categories(fit[name]) for name in categorical}
    # Categories first: a value seen on too few rows is "other", which may leave one value.
    dropped = unusable_features(as_model_frame(fit, candidates, categories), candidates)
    names = [name for name in candidates if name not in dropped]
    if not names:
        raise ValueError(f"no usable feature on the fit slice ({len(fit)} rows): every candidate is constant or missing")
    if dropped:
        log.info("dropped %d feature(s) the fit slice cannot teach: %s", len(dropped), ", ".join(sorted(dropped)))
    categories = {name: cats for name, cats in categories.items() if name in names}
    train_data = lgb.Dataset(as_model_frame(fit, names, categories), label=fit["churned"], free_raw_data=False)
    valid_data = lgb.Dataset(as_model_frame(cal, names, categories), label=cal["churned"], reference=train_data)
    booster = lgb.train(
        lgb_params(settings),
        train_data,
        num_boost_round=settings.num_boost_round,
        valid_sets=[valid_data],
        callbacks=[lgb.early_stopping(30, verbose=False)],
    )
    version = FEATURE_SET_VERSION if feature_names is None else f"{FEATURE_SET_VERSION}+custom"
    model = ChurnModel(booster, PlattCalibrator(), names, version, catalogue=catalogue, categories=categories, dropped_features=dropped)
    margin = model.margin(cal)
    if cal["churned"].nunique() == 2:
        lr = LogisticRegression(C=1e6).fit(margin.reshape(-1, 1), cal["churned"])
        model.calibrator = PlattCalibrator(float(lr.coef_[0][0]), float(lr.intercept_[0]))
    return model


def holdout_metrics(model: ChurnModel, ts: TrainingSet, engine: sa.Engine, settings: Settings) -> dict[str, float]:
    """Metrics on the holdout snapshots; with a demo book, also the oracle's AUC on the same rows."""
    hold = holdout_rows(ts)
    metrics = classification_metrics(hold["churned"].to_numpy(), model.predict_proba(hold))
    if table_exists(engine, "truth"):
        truth = read_sql(engine, "SELECT account_id, period_start, hazard FROM truth")
        oracle = pd.concat(
            [
                hold[hold["as_of_date"].dt.date == d]["account_id"].map(
                    oracle_probability(truth, d + timedelta(days=settings.label_lead_days), settings.horizon_days)
                ).fillna(0)
                for d in ts.holdout_dates
            ]
        ).reindex(hold.index)
        metrics["oracle_roc_auc"] = classification_metrics(hold["churned"].to_numpy(), oracle.to_numpy())["roc_auc"]
    return metrics


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train(engine: sa.Engine, settings: Settings, observed_until: date | None = None) -> TrainResult:
    """Build the training set, fit, then evaluate, log, register and gate."""
    configure_mlflow(settings)
    ts = build_training_set(engine, settings, observed_until)
    model = fit_model(ts, settings)
    return evaluate_and_register(engine, settings, ts, model)


def split_summary(ts: TrainingSet) -> dict[str, object]:
    """Rows and churn rate per split, for the run's parameters."""
    frame = ts.frame
    dates = frame["as_of_date"].dt.date
    out: dict[str, object] = {}
    for name, mask in (("fit", dates.isin(ts.fit_dates)), ("calibration", dates == ts.calibration_date), ("holdout", dates.isin(ts.holdout_dates))):
        out[f"{name}_rows"] = int(mask.sum())
        out[f"{name}_churn_rate"] = round(float(frame.loc[mask, "churned"].mean()), 5)
    return out


def evaluate_and_register(
    engine: sa.Engine, settings: Settings, ts: TrainingSet, model: ChurnModel, *, run_name: str | None = None, tags: dict[str, str] | None = None
) -> TrainResult:
    """Holdout metrics, an MLflow run with params, metrics, figures and the model, registration,
    and the champion / challenger gate. Any fitted model goes through the same path."""
    configure_mlflow(settings)
    metrics = holdout_metrics(model, ts, engine, settings)
    hold = holdout_rows(ts)
    fit = ts.frame[ts.frame["as_of_date"].dt.date.isin(ts.fit_dates)]
    model.reference = reference_profile(fit, model)
    first, _ = data_window(engine)
    with mlflow.start_run(run_name=run_name or f"train-{ts.observed_until}") as run:
        mlflow.log_params({k: v for k, v in lgb_params(settings).items() if k != "verbose"})
        mlflow.log_params(
            {
                "horizon_days": settings.horizon_days,
                "label_lead_days": settings.label_lead_days,
                "churn_grace_days": settings.churn_grace_days,
                "data_start": str(first),
                "observed_until": str(ts.observed_until),
                "fit_dates": ",".join(str(d) for d in ts.fit_dates),
                "calibration_date": str(ts.calibration_date),
                "holdout_dates": ",".join(str(d) for d in ts.holdout_dates),
                "feature_set_version": FEATURE_SET_VERSION,
                "features": len(model.feature_names),
                "families": ",".join(model.families),
                "dropped_features": len(model.dropped_features),
                "best_iteration": model.booster.best_iteration,
                "calibration": f"platt a={model.calibrator.a:.4f} b={model.calibrator.b:.4f}",
                **split_summary(ts),
            }
        )
        mlflow.set_tags({"git_commit": _git_commit(), **(tags or {})})
        mlflow.log_dict({"families": list(model.families), "dropped_features": model.dropped_features,
                         "categories": model.categories or {}}, "features.json")  # what the fit slice allowed
        mlflow.log_metrics({f"holdout_{k}": v for k, v in metrics.items() if np.isfinite(v)})
        log_figures(model, hold)
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=model,
            input_example=hold[model.feature_names].head(5),
            registered_model_name=settings.model_name,
        )
        version = str(info.registered_model_version)
        promoted, reason = gate_and_alias(settings, version, model, hold, metrics)
        mlflow.set_tag("gate_decision", "promoted" if promoted else "refused")
        mlflow.set_tag("gate_reason", reason)
    log.info("trained version %s: holdout AUC %.3f (oracle %.3f); %s", version, metrics["roc_auc"], metrics.get("oracle_roc_auc", float("nan")), reason)
    return TrainResult(run.info.run_id, version, metrics, promoted, reason, ts)


def log_figures(model: ChurnModel, holdout: pd.DataFrame) -> None:
    """Calibration curve, lift by decile and SHAP summary of the holdout, as run artifacts."""
    from models.figures import calibration_figure, lift_figure, shap_summary_figure

    y = holdout["churned"].to_numpy()
    p = model.predict_proba(holdout)
    for name, fig in (
        ("calibration_curve.png", calibration_figure(y, p)),
        ("lift_by_decile.png", lift_figure(y, p)),
        ("shap_summary.png", shap_summary_figure(model, holdout)),
    ):
        mlflow.log_figure(fig, f"figures/{name}")  # a bare Figure: no pyplot state, no backend switch
