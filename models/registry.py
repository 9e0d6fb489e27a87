"""MLflow wiring: tracking store, experiment, registry aliases and the promotion gate."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timezone

import mlflow
import numpy as np
import pandas as pd
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from churnflow.settings import Settings
from models.churn_model import ChurnModel
from models.evaluate import classification_metrics

log = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"


def configure_mlflow(settings: Settings) -> MlflowClient:
    """Point MLflow at the configured store and make sure the experiment exists.

    Artifacts go under the churnflow home (not the current directory), so runs started
    from anywhere land in one place.
    """
    settings.ensure_home()
    mlflow.set_tracking_uri(settings.tracking_uri)
    mlflow.set_registry_uri(settings.tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(settings.mlflow_experiment) is None:
        artifacts = settings.home_dir / "mlartifacts"
        artifacts.mkdir(parents=True, exist_ok=True)
        client.create_experiment(settings.mlflow_experiment, artifact_location=artifacts.as_uri())
    mlflow.set_experiment(settings.mlflow_experiment)
    return client


@dataclass
class LoadedModel:
    model: ChurnModel
    name: str
    version: str
    run_id: str = ""  # the MLflow run that trained it: unique across registries, unlike the version number


def load_model(settings: Settings, alias: str = CHAMPION) -> LoadedModel:
    client = configure_mlflow(settings)
    try:
        found = client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as exc:
        raise LookupError(f"no model '{settings.model_name}@{alias}' in {settings.tracking_uri}: run `churnflow train` first") from exc
    loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{found.version}")
    return LoadedModel(loaded.unwrap_python_model(), settings.model_name, str(found.version), str(found.run_id or ""))


def sanity_problems(model: ChurnModel, metrics: dict[str, float], settings: Settings) -> list[str]:
    """Why a model must not serve, whatever the champion: too weak, miscalibrated, or leaning
    on one feature so hard that it smells of leakage."""
    problems = []
    auc = metrics.get("roc_auc", float("nan"))
    if not np.isfinite(auc) or auc < settings.gate_min_auc:
        problems.append(f"holdout AUC {auc:.4f} below the floor {settings.gate_min_auc}")
    if metrics.get("ece", 1.0) > settings.gate_max_ece:
        problems.append(f"calibration error {metrics['ece']:.4f} above {settings.gate_max_ece}")
    gains = model.booster.feature_importance("gain")
    if gains.sum() > 0:
        share = float(gains.max() / gains.sum())
        if share > settings.gate_max_feature_share:
            top = model.feature_names[int(np.argmax(gains))]
            problems.append(f"feature '{top}' carries {share:.0%} of total gain (> {settings.gate_max_feature_share:.0%}): a leakage smell")
    return problems


def gate_and_alias(settings: Settings, version: str, model: ChurnModel, holdout: pd.DataFrame, metrics: dict[str, float]) -> tuple[bool, str]:
    """Alias a new version 'challenger' and promote it to 'champion' if it earns it.

    A version with sanity problems is never promoted. The first sane model becomes
    champion; later ones must beat the champion's AUC on the same holdout rows by
    ``promotion_margin``. The decision and its reason are tagged on the model version.
    """
    client = MlflowClient()
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    promoted, reason = _decide(settings, version, model, holdout, metrics)
    if promoted:
        client.set_registered_model_alias(settings.model_name, CHAMPION, version)
    client.set_model_version_tag(settings.model_name, version, "gate_decision", "promoted" if promoted else "refused")
    client.set_model_version_tag(settings.model_name, version, "gate_reason", reason)
    return promoted, reason


def _decide(settings: Settings, version: str, model: ChurnModel, holdout: pd.DataFrame, metrics: dict[str, float]) -> tuple[bool, str]:
    problems = sanity_problems(model, metrics, settings)
    try:
        champion: LoadedModel | None = load_model(settings, CHAMPION)
    except LookupError:
        champion = None
    keep = f"champion v{champion.version} kept" if champion else "no champion yet"
    if problems:
        return False, f"refused ({keep}): " + "; ".join(problems)
    if champion is None:
        return True, "first model: promoted to champion"
    y = holdout["churned"].to_numpy()
    champ_auc = classification_metrics(y, champion.model.predict_proba(holdout))["roc_auc"]
    new_auc = metrics["roc_auc"]
    if new_auc >= champ_auc + settings.promotion_margin:
        return True, f"promoted: holdout AUC {new_auc:.4f} beats champion v{champion.version} {champ_auc:.4f} by >= {settings.promotion_margin}"
    return False, f"refused ({keep}): holdout AUC {new_auc:.4f} vs champion {champ_auc:.4f} on the same rows (margin {settings.promotion_margin})"


def promote(settings: Settings, version: str, *, by: str, reason: str) -> str:
    """A data scientist's override: make ``version`` champion, recording who and why."""
    client = configure_mlflow(settings)
    try:
        client.get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        raise LookupError(f"model '{settings.model_name}' has no version {version}") from exc
    previous = None
    try:
        previous = client.get_model_version_by_alias(settings.model_name, CHAMPION).version
    except MlflowException:
        pass
    client.set_registered_model_alias(settings.model_name, CHAMPION, str(version))
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    for key, value in {"promoted_by": by, "promoted_reason": reason, "promoted_at": stamp, "replaced_version": str(previous)}.items():
        client.set_model_version_tag(settings.model_name, str(version), key, value)
    log.info("v%s promoted to champion by %s (was v%s): %s", version, by, previous, reason)
    return f"v{version} is champion (was v{previous}); recorded: by {by}, {reason}"
