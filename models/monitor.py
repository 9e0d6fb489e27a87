"""Monitoring: drift against the training window and realized performance once labels mature.

- **PSI** (population stability index) per feature and for the score, today's active
  accounts vs the model's fit slice. Bins are the training deciles (plus a bin for missing
  values); PSI = sum((a - e) * ln(a / e)). Rule of thumb: < 0.1 stable, 0.1-0.25 moving,
  > ``psi_threshold`` (0.25) a breach.
- **Realized performance**: for every stored score day whose labels have matured (day +
  horizon + grace has passed), the AUC and calibration (ECE) of the p_churn that was
  actually pushed, against what happened. A realized AUC below ``gate_min_auc`` or more
  than ``auc_drop_threshold`` under the model's holdout AUC is a breach.

Rows go to the ``model_monitoring`` table (read by the digest) and to an MLflow run; any
breach tags the model version ``needs_retraining=true``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import sqlalchemy as sa
from mlflow import MlflowClient

from churnflow.schema import MODEL_MONITORING
from churnflow.settings import Settings
from churnflow.warehouse import read_sql, replace_rows, table_exists
from features.build import OTHER_CATEGORY, features_for
from features.labels import is_matured, labels_for_dates
from models.churn_model import ChurnModel
from models.evaluate import classification_metrics

log = logging.getLogger(__name__)

MONITOR_TABLE = MODEL_MONITORING.name
EPS = 1e-4


def _numeric_profile(values: pd.Series) -> dict[str, object]:
    clean = values.dropna().to_numpy(dtype=float)
    edges = np.unique(np.quantile(clean, np.linspace(0, 1, 11)[1:-1])) if len(clean) else np.array([])
    return {"kind": "numeric", "edges": edges.tolist(), "shares": numeric_shares(values, edges.tolist()).tolist()}


def numeric_shares(values: pd.Series, edges: list[float]) -> np.ndarray:
    """Share of values per bin: (-inf, e0], (e0, e1], ..., (ek, inf), then missing."""
    v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=float)
    missing = np.isnan(v)
    bins = np.searchsorted(np.asarray(edges, dtype=float), v[~missing], side="left")
    counts = np.bincount(bins, minlength=len(edges) + 1).astype(float)
    counts = np.append(counts, missing.sum())
    return counts / max(len(v), 1)


def categorical_shares(values: pd.Series, categories: list[str]) -> np.ndarray:
    """Share of rows per category; a value outside the model's categories counts as "other"."""
    text = values.astype(str)
    if OTHER_CATEGORY in categories:
        text = text.where(text.isin(categories), OTHER_CATEGORY)
    counts = text.value_counts().reindex(categories).fillna(0).to_numpy(dtype=float)
    return counts / max(len(values), 1)


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    e = np.clip(np.asarray(expected, dtype=float), EPS, None)
    a = np.clip(np.asarray(actual, dtype=float), EPS, None)
    return float(np.sum((a - e) * np.log(a / e)))


def reference_profile(fit: pd.DataFrame, model: ChurnModel) -> dict[str, object]:
    """Distributions of the fit slice: each feature and the score."""
    features: dict[str, object] = {}
    learned = model._categories()
    for name in model.feature_names:
        if name in learned:
            cats = list(learned[name])
            features[name] = {"kind": "categorical", "categories": cats, "shares": categorical_shares(fit[name], cats).tolist()}
        else:
            features[name] = _numeric_profile(fit[name])
    return {"features": features, "score": _numeric_profile(pd.Series(model.predict_proba(fit)))}


def drift(model: ChurnModel, features: pd.DataFrame) -> pd.DataFrame:
    """PSI per feature and for the score: metric, value."""
    profile = model.reference
    if not profile:
        raise ValueError("the model carries no training reference profile (trained before monitoring existed): retrain it")
    rows = []
    for name, ref in profile["features"].items():  # type: ignore[union-attr]
        if ref["kind"] == "categorical":
            actual = categorical_shares(features[name], ref["categories"])
        else:
            actual = numeric_shares(features[name], ref["edges"])
        rows.append({"metric": f"psi:{name}", "value": psi(np.asarray(ref["shares"]), actual)})
    score_ref = profile["score"]  # type: ignore[index]
    actual_score = numeric_shares(pd.Series(model.predict_proba(features)), score_ref["edges"])
    rows.append({"metric": "psi_score", "value": psi(np.asarray(score_ref["shares"]), actual_score)})
    return pd.DataFrame(rows)


def realized_performance(engine: sa.Engine, settings: Settings, as_of: date, model_version: str | None = None) -> pd.DataFrame:
    """AUC and ECE of stored scores whose labels have matured by ``as_of``: one row per score day."""
    if not table_exists(engine, "account_scores"):
        return pd.DataFrame(columns=["as_of_date", "rows", "roc_auc", "ece", "churn_rate"])
    sql = "SELECT DISTINCT as_of_date FROM account_scores"
    params: dict[str, object] = {}
    if model_version is not None:
        sql += " WHERE model_version = :v"
        params["v"] = model_version
    days = sorted(pd.to_datetime(read_sql(engine, sql, params)["as_of_date"]).dt.date)
    matured = [d for d in days if is_matured(d, horizon_days=settings.horizon_days, grace_days=settings.churn_grace_days, observed_until=as_of, lead_days=settings.label_lead_days)]
    rows = []
    for day in matured:
        scores = read_sql(engine, "SELECT account_id, p_churn FROM account_scores WHERE as_of_date = :d", {"d": datetime(day.year, day.month, day.day)})
        labels = labels_for_dates(engine, [day], horizon_days=settings.horizon_days, grace_days=settings.churn_grace_days,
                                  observed_until=as_of, lead_days=settings.label_lead_days)
        joined = scores.merge(labels, on="account_id")
        if joined.empty:
            continue
        m = classification_metrics(joined["churned"].to_numpy(), joined["p_churn"].to_numpy())
        rows.append({"as_of_date": day, "rows": len(joined), "roc_auc": m["roc_auc"], "ece": m["ece"], "churn_rate": m["churn_rate"]})
    return pd.DataFrame(rows, columns=["as_of_date", "rows", "roc_auc", "ece", "churn_rate"])


@dataclass
class MonitorReport:
    as_of: date
    model_version: str
    rows: pd.DataFrame  # checked_at, as_of_date, model_version, metric, value, breached, detail
    breaches: list[str] = field(default_factory=list)

    @property
    def needs_retraining(self) -> bool:
        return bool(self.breaches)


def monitor(engine: sa.Engine, settings: Settings, as_of: date, *, model: ChurnModel, model_version: str, holdout_auc: float | None, features: pd.DataFrame) -> MonitorReport:
    """Run the drift and realized-performance checks, store and log them."""
    checked_at = pd.Timestamp(datetime.now().replace(microsecond=0))
    psi_rows = drift(model, features)
    psi_rows["breached"] = psi_rows["value"] > settings.psi_threshold
    psi_rows["detail"] = psi_rows.apply(lambda r: f"PSI {r['value']:.3f} vs training window (threshold {settings.psi_threshold})", axis=1)
    realized = realized_performance(engine, settings, as_of, model_version)
    perf_rows = []
    if len(realized):
        latest = realized.iloc[-1]
        floor = settings.gate_min_auc if holdout_auc is None else max(settings.gate_min_auc, holdout_auc - settings.auc_drop_threshold)
        auc = float(latest["roc_auc"])
        perf_rows += [
            {"metric": "realized_auc", "value": auc, "breached": bool(np.isfinite(auc) and auc < floor),
             "detail": f"scores of {latest['as_of_date']} vs outcomes ({int(latest['rows'])} accounts); floor {floor:.3f}"},
            {"metric": "realized_ece", "value": float(latest["ece"]), "breached": bool(latest["ece"] > settings.gate_max_ece),
             "detail": f"calibration error of scores of {latest['as_of_date']}; bound {settings.gate_max_ece}"},
        ]
    rows = pd.concat([psi_rows, pd.DataFrame(perf_rows, columns=psi_rows.columns)], ignore_index=True)
    rows.insert(0, "model_version", str(model_version))
    rows.insert(0, "as_of_date", pd.Timestamp(as_of))
    rows.insert(0, "checked_at", checked_at)
    rows["breached"] = rows["breached"].astype(bool)
    replace_rows(engine, MONITOR_TABLE, rows, where={"as_of_date": datetime(as_of.year, as_of.month, as_of.day), "model_version": str(model_version)})
    breaches = [f"{r.metric} = {r.value:.3f}" for r in rows.itertuples() if r.breached]
    with mlflow.start_run(run_name=f"monitor-{as_of}"):
        mlflow.set_tags({"kind": "monitor", "model_version": str(model_version), "as_of": str(as_of)})
        mlflow.log_metrics({r.metric.replace(":", "__"): float(r.value) for r in rows.itertuples() if np.isfinite(r.value)})
        mlflow.log_text(rows.to_csv(index=False), "monitoring.csv")
    client = MlflowClient()
    client.set_model_version_tag(settings.model_name, str(model_version), "needs_retraining", "true" if breaches else "false")
    if breaches:
        log.warning("model v%s needs retraining: %s", model_version, "; ".join(breaches[:10]))
    return MonitorReport(as_of, str(model_version), rows, breaches)


def monitor_champion(engine: sa.Engine, settings: Settings, as_of: date) -> MonitorReport:
    """Monitor the current champion as of a day: the one entry point for CLI and flows."""
    from models.registry import CHAMPION, load_model
    from models.score import load_features

    loaded = load_model(settings, CHAMPION)
    client = MlflowClient()
    run_id = client.get_model_version(settings.model_name, loaded.version).run_id
    holdout_auc = client.get_run(run_id).data.metrics.get("holdout_roc_auc") if run_id else None
    return monitor(
        engine, settings, as_of, model=loaded.model, model_version=loaded.version, holdout_auc=holdout_auc,
        features=features_for(engine, as_of, load_features(engine, as_of, settings.usage_event_types_top), loaded.model.catalogue, loaded.model.feature_names),
    )
