"""Training: multi-snapshot training set, temporal split, LightGBM, calibration, MLflow.

Split (all by as-of date, never by row): the newest ``holdout_snapshots`` matured
snapshots are the *holdout* (reported); the newest earlier snapshot whose horizon ends
before the first holdout date is the *calibration* slice (early stopping and Platt
scaling); older snapshots are *fit*. Snapshots whose label horizon overlaps the holdout
are dropped (the gap), so no outcome seen in training happens after the holdout begins.
Snapshots are monthly (first of the month) or weekly (Mondays, ``snapshot_cadence``); the
snapshot settings count months either way.

The gate on small data: before any feature is built, the labels' distinct churned accounts
per slice are counted and training refuses (InsufficientDataError, recorded in MLflow) below
``min_churners_fit`` / ``_calibration`` / ``_holdout``. After fitting, the holdout AUC gets a
bootstrap interval and the gate judges its lower bound (models.registry).
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
from mlflow import MlflowClient
from sklearn.linear_model import LogisticRegression

from churnflow.settings import Settings
from churnflow.warehouse import read_sql, table_exists
from features.build import as_model_frame, book_catalogue, build_features, learn_categories, refresh_derived
from features.catalogue import CATALOGUE, FEATURE_SET_VERSION, Feature
from features.labels import data_window, labels_for_dates, observation_end
from models.churn_model import ChurnModel, PlattCalibrator
from models.split import SLICES, InsufficientDataError, churner_shortfalls, plan_split, slice_churners
from models.monitor import reference_profile
from models.evaluate import bootstrap_intervals, classification_metrics, oracle_probability
from models.registry import configure_mlflow, gate_and_alias, record_refusal

log = logging.getLogger(__name__)


@dataclass
class TrainingSet:
    frame: pd.DataFrame  # as_of_date, account_id, features..., churned
    fit_dates: list[date]
    calibration_date: date
    holdout_dates: list[date]
    observed_until: date
    cadence: str = "monthly"
    churners: dict[str, int] = field(default_factory=dict)  # distinct churned accounts per slice
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


def refusal_fix(engine: sa.Engine, settings: Settings, data_start: date, observed_until: date) -> str:
    """The fix for a refusal, computed from the data: the first alternative setting that
    passes, else what is missing."""
    from models.readiness import suggest_settings

    suggestion = suggest_settings(engine, settings, data_start, observed_until)
    if suggestion is None:
        return ("more history or more accounts: no snapshot cadence (monthly, weekly) or horizon (30-180 days) gives enough "
                "churned accounts on this history; `churnflow profile` shows the counts for each")
    changes = ", ".join(f"{k} = {v!r}" for k, v in suggestion.changes.items())
    return (f"set {changes}: that gives {suggestion.describe_counts()} churned accounts in fit / calibration / holdout "
            "(or add history); `churnflow profile` shows the counts for each option")


def build_training_set(engine: sa.Engine, settings: Settings, observed_until: date | None = None) -> TrainingSet:
    """Features joined with matured labels over the cadence's as-of dates.

    Counts distinct churned accounts per slice from the labels first and raises
    InsufficientDataError before any feature is built when a slice is below its minimum:
    a model judged on four churners looks great and is worth nothing."""
    first, _ = data_window(engine, settings)
    observed_until = observed_until or observation_end(engine, settings)
    plan = plan_split(first, observed_until, settings)
    labels = labels_for_dates(
        engine, plan.used, horizon_days=settings.horizon_days, grace_days=settings.churn_grace_days, observed_until=observed_until,
        lead_days=settings.label_lead_days,
    )
    counts = slice_churners(labels, plan)
    short = churner_shortfalls(counts, settings)
    churners = {name: counts[name]["churners"] for name in SLICES}
    if short:
        raise InsufficientDataError(
            f"{'; '.join(short)} at a {settings.horizon_days}-day horizon with {plan.cadence} snapshots "
            f"({plan.used[0]} to {plan.used[-1]}, observed until {observed_until})",
            refusal_fix(engine, settings, first, observed_until),
            churners,
        )
    used = plan.used
    refresh_derived(engine, min(used))  # once: every snapshot below reads the same rollups
    # One catalogue for every snapshot: the event types known at the newest one (a frequency
    # count of usage, no labels), so all snapshots have the same columns.
    catalogue = book_catalogue(engine, max(used), settings.usage_event_types_top)
    features = pd.concat([build_features(engine, d, refresh=False, catalogue=catalogue) for d in used], ignore_index=True)
    frame = features.merge(labels[["as_of_date", "account_id", "churned"]], on=["as_of_date", "account_id"], how="inner")
    log.info("training set: %d rows over %d %s snapshots, churn rate %.3f, churned accounts %s", len(frame), len(used), plan.cadence,
             frame["churned"].mean(), churners)
    return TrainingSet(frame, plan.fit_dates, plan.calibration_date, plan.holdout_dates, observed_until, plan.cadence, churners, catalogue)


def holdout_rows(ts: TrainingSet) -> pd.DataFrame:
    return ts.frame[ts.frame["as_of_date"].dt.date.isin(ts.holdout_dates)]


def training_settings(settings: Settings) -> dict[str, str]:
    """Every setting that shapes what training fits, as the MLflow params it logs (text).

    The one list: training logs it with each run and the retrain check
    (``flows.tasks.training_due``) compares it with the newest version's run, so a setting
    that training records cannot be forgotten by the check (``label_lead_days`` once was).
    Settings that only gate or report (the churner minimums, the bootstrap) are not here:
    they do not change the model.
    """
    values: dict[str, object] = {k: v for k, v in lgb_params(settings).items() if k != "verbose"}
    values.update(
        num_boost_round=settings.num_boost_round,
        horizon_days=settings.horizon_days,
        label_lead_days=settings.label_lead_days,
        churn_grace_days=settings.churn_grace_days,
        snapshot_cadence=settings.snapshot_cadence,
        training_snapshots=settings.training_snapshots,
        holdout_snapshots=settings.holdout_snapshots,
        usage_event_types_top=settings.usage_event_types_top,
    )
    return {k: str(v) for k, v in values.items()}


def changed_training_settings(recorded: dict[str, str], settings: Settings) -> list[str]:
    """The names of :func:`training_settings` whose value differs from ``recorded`` (a run's
    params); a setting the run did not record (an older churnflow) counts as changed."""
    return sorted(k for k, v in training_settings(settings).items() if recorded.get(k) != v)


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
    """Metrics on the holdout snapshots, with bootstrap 95% intervals of AUC and top-decile
    lift (accounts resampled, stratified); with a demo book, also the oracle's AUC on the same rows."""
    hold = holdout_rows(ts)
    y, p = hold["churned"].to_numpy(), model.predict_proba(hold)
    metrics = classification_metrics(y, p)
    metrics.update(bootstrap_intervals(y, p, hold["account_id"].to_numpy(), resamples=settings.bootstrap_resamples, seed=settings.seed))
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


def describe_auc(metrics: dict[str, float]) -> str:
    """'AUC 0.74 [0.69, 0.79] on 2,406 rows / 101 churners': the point, its interval and what it rests on."""
    rows = int(metrics.get("rows", 0))
    churners = int(metrics.get("churned_accounts", metrics.get("positives", 0)))
    low, high = metrics.get("roc_auc_ci_low", float("nan")), metrics.get("roc_auc_ci_high", float("nan"))
    return f"AUC {metrics.get('roc_auc', float('nan')):.2f} [{low:.2f}, {high:.2f}] on {rows:,} rows / {churners:,} churners"


# What the logged model needs to load and predict (the pickled ChurnModel imports churnflow's
# packages, LightGBM and the scientific stack). Declared, not inferred: MLflow infers them by
# loading the model in a fresh Python process, which costs more than the fit on a small book.
MODEL_REQUIREMENTS = ("churnflow", "cloudpickle", "lightgbm", "numpy", "pandas", "scikit-learn", "scipy", "sqlalchemy")


def model_requirements() -> list[str]:
    """MODEL_REQUIREMENTS pinned to the versions installed here (MLflow adds itself)."""
    from importlib.metadata import PackageNotFoundError, version

    pinned = []
    for name in MODEL_REQUIREMENTS:
        try:
            pinned.append(f"{name}=={version(name)}")
        except PackageNotFoundError:  # e.g. churnflow run from a source tree without installing it
            pinned.append(name)
    return pinned


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def train(engine: sa.Engine, settings: Settings, observed_until: date | None = None) -> TrainResult:
    """Build the training set, fit, then evaluate, log, register and gate.

    When the data cannot support a model (InsufficientDataError) nothing is fitted or
    registered; the refusal is recorded as an MLflow run (gate_decision=refused) so
    ``score`` can say why there is no champion, and the error is raised again."""
    configure_mlflow(settings)
    try:
        ts = build_training_set(engine, settings, observed_until)
    except InsufficientDataError as exc:
        record_refusal(
            settings, str(exc),
            params={"horizon_days": settings.horizon_days, "label_lead_days": settings.label_lead_days,
                    "snapshot_cadence": settings.snapshot_cadence, "observed_until": str(observed_until or "")},
            metrics={f"churners_{k}": float(v) for k, v in exc.counts.items()},
        )
        raise
    model = fit_model(ts, settings)
    return evaluate_and_register(engine, settings, ts, model)


def split_summary(ts: TrainingSet) -> dict[str, object]:
    """Rows and churn rate per split, for the run's parameters."""
    frame = ts.frame
    dates = frame["as_of_date"].dt.date
    out: dict[str, object] = {f"{name}_churners": n for name, n in ts.churners.items()}
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
    # Bands are multiples of this rate: it travels with the model (pickled and tagged).
    model.base_rate = float(fit["churned"].mean())
    first, _ = data_window(engine, settings)
    with mlflow.start_run(run_name=run_name or f"train-{ts.observed_until}") as run:
        mlflow.log_params({**training_settings(settings), "snapshot_cadence": ts.cadence})
        mlflow.log_params(
            {
                "base_rate": round(model.base_rate, 6),
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
            pip_requirements=model_requirements(),
        )
        version = str(info.registered_model_version)
        MlflowClient().set_model_version_tag(settings.model_name, version, "base_rate", repr(model.base_rate))
        promoted, reason = gate_and_alias(settings, version, model, hold, metrics)
        mlflow.set_tag("gate_decision", "promoted" if promoted else "refused")
        mlflow.set_tag("gate_reason", reason)
    log.info("trained version %s: holdout %s (oracle %.3f); %s", version, describe_auc(metrics), metrics.get("oracle_roc_auc", float("nan")), reason)
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
