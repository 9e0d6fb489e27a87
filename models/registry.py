"""MLflow wiring: tracking store, experiment, registry aliases and the promotion gate."""

from __future__ import annotations

import logging
from dataclasses import dataclass

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


def load_model(settings: Settings, alias: str = CHAMPION) -> LoadedModel:
    client = configure_mlflow(settings)
    try:
        version = client.get_model_version_by_alias(settings.model_name, alias).version
    except MlflowException as exc:
        raise LookupError(f"no model '{settings.model_name}@{alias}' in {settings.tracking_uri}: run `churnflow train` first") from exc
    loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}@{alias}")
    return LoadedModel(loaded.unwrap_python_model(), settings.model_name, str(version))


def gate_and_alias(settings: Settings, version: str, model: ChurnModel, holdout: pd.DataFrame, metrics: dict[str, float]) -> tuple[bool, str]:
    """Alias a new version 'challenger' and promote it to 'champion' if it earns it.

    The first model becomes champion. Later ones must beat the champion's AUC on the same
    holdout rows by ``promotion_margin``.
    """
    client = MlflowClient()
    client.set_registered_model_alias(settings.model_name, CHALLENGER, version)
    try:
        champion = load_model(settings, CHAMPION)
    except LookupError:
        client.set_registered_model_alias(settings.model_name, CHAMPION, version)
        return True, "first model: promoted to champion"
    y = holdout["churned"].to_numpy()
    champ_auc = classification_metrics(y, champion.model.predict_proba(holdout))["roc_auc"]
    new_auc = metrics["roc_auc"]
    if not np.isfinite(new_auc):
        return False, "holdout has a single class: AUC undefined, champion kept"
    if new_auc >= champ_auc + settings.promotion_margin:
        client.set_registered_model_alias(settings.model_name, CHAMPION, version)
        return True, f"promoted: holdout AUC {new_auc:.4f} beats champion v{champion.version} {champ_auc:.4f} by >= {settings.promotion_margin}"
    return False, f"champion v{champion.version} kept: holdout AUC {new_auc:.4f} vs {champ_auc:.4f} (margin {settings.promotion_margin})"
