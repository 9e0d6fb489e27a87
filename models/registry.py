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

from churnflow.errors import ChurnflowError
from churnflow.settings import Settings
from models.churn_model import ChurnModel
from models.evaluate import classification_metrics, paired_auc_gain

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
    base_rate: float | None = None  # churn rate of the fit slice at the horizon: bands are multiples of it


class NoChampionError(ChurnflowError, LookupError):
    """No model may serve: never trained, or the last training was refused (the message says why)."""


@dataclass
class TrainingRecord:
    run_id: str
    started: datetime
    decision: str  # promoted / refused
    reason: str


def last_training(settings: Settings) -> TrainingRecord | None:
    """The newest training run of the experiment with a gate decision (fitted or refused before fitting)."""
    client = configure_mlflow(settings)
    experiment = client.get_experiment_by_name(settings.mlflow_experiment)
    if experiment is None:
        return None
    runs = client.search_runs(
        [experiment.experiment_id], filter_string="tags.gate_decision != ''", order_by=["attributes.start_time DESC"], max_results=1
    )
    if not runs:
        return None
    run = runs[0]
    started = datetime.fromtimestamp(run.info.start_time / 1000, tz=timezone.utc)
    return TrainingRecord(run.info.run_id, started, run.data.tags.get("gate_decision", ""), run.data.tags.get("gate_reason", ""))


def no_champion_message(settings: Settings) -> str:
    """Why nothing can score: the last training's refusal when there was one, else 'train first'."""
    record = last_training(settings)
    if record is not None and record.decision == "refused":
        return (f"no champion model '{settings.model_name}' to score with: the last training on {record.started:%Y-%m-%d %H:%M} UTC "
                f"was refused: {record.reason}")
    return f"no model '{settings.model_name}@{CHAMPION}' in {settings.tracking_uri}: run `churnflow train` first"


def record_refusal(settings: Settings, reason: str, *, params: dict[str, object], metrics: dict[str, float]) -> str:
    """An MLflow run for a training refused before fitting (no model, no registered version),
    tagged like a gate decision, so the refusal is visible in MLflow and to ``score``."""
    configure_mlflow(settings)
    with mlflow.start_run(run_name=f"train-refused-{datetime.now(timezone.utc):%Y-%m-%d}") as run:
        mlflow.log_params(params)
        if metrics:
            mlflow.log_metrics(metrics)
        mlflow.set_tags({"gate_decision": "refused", "gate_stage": "data", "gate_reason": reason[:5000]})
    log.warning("training refused: %s", reason)
    return run.info.run_id


def load_model(settings: Settings, alias: str = CHAMPION) -> LoadedModel:
    client = configure_mlflow(settings)
    try:
        found = client.get_model_version_by_alias(settings.model_name, alias)
    except MlflowException as exc:
        if alias == CHAMPION:
            raise NoChampionError(no_champion_message(settings)) from exc
        raise LookupError(f"no model '{settings.model_name}@{alias}' in {settings.tracking_uri}: run `churnflow train` first") from exc
    loaded = mlflow.pyfunc.load_model(f"models:/{settings.model_name}/{found.version}")
    model = loaded.unwrap_python_model()
    return LoadedModel(model, settings.model_name, str(found.version), str(found.run_id or ""), _base_rate(client, model, found))


def version_base_rate(settings: Settings, name: str, version: str) -> float | None:
    """The training base rate of a registered model version (from its tags or run), without
    loading the model; None when the version or its rate is gone."""
    client = configure_mlflow(settings)
    try:
        found = client.get_model_version(name, version)
    except MlflowException:
        return None
    return _base_rate(client, None, found)


def _base_rate(client: MlflowClient, model: ChurnModel | None, version: object) -> float | None:
    """The model's training base rate: on the model, else the version tag, else the run's
    fit_churn_rate parameter (models trained before the rate travelled with them)."""
    rate = getattr(model, "base_rate", None)
    if rate is None:
        rate = (getattr(version, "tags", None) or {}).get("base_rate")
    if rate is None and getattr(version, "run_id", None):
        try:
            rate = client.get_run(version.run_id).data.params.get("fit_churn_rate")
        except MlflowException:
            rate = None
    try:
        value = float(rate) if rate is not None else None
    except (TypeError, ValueError):
        return None
    return value if value is not None and 0 < value < 1 else None


def sanity_problems(model: ChurnModel, metrics: dict[str, float], settings: Settings) -> list[str]:
    """Why a model must not serve, whatever the champion: too weak (judged on the lower
    bound of the AUC's bootstrap interval: a good point estimate on a thin holdout is not
    evidence), miscalibrated, or leaning on one feature so hard that it smells of leakage."""
    problems = []
    auc = metrics.get("roc_auc", float("nan"))
    low = metrics.get("roc_auc_ci_low", auc)
    if not np.isfinite(auc) or not np.isfinite(low):
        problems.append(f"holdout AUC {auc:.4f} cannot be judged (one class in the holdout)")
    elif low < settings.gate_min_auc:
        high = metrics.get("roc_auc_ci_high", auc)
        problems.append(
            f"holdout AUC {auc:.4f} [95% interval {low:.4f}, {high:.4f}]: the lower bound is below the floor {settings.gate_min_auc}"
            + (f" on {int(metrics['churned_accounts'])} churned accounts" if "churned_accounts" in metrics else "")
        )
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
    # Paired bootstrap on the same holdout rows: both models see the same account resamples,
    # so the noise they share cancels and the interval is about the gain itself.
    y = holdout["churned"].to_numpy()
    gain, low, high = paired_auc_gain(
        y, model.predict_proba(holdout), champion.model.predict_proba(holdout), holdout["account_id"].to_numpy(),
        resamples=settings.bootstrap_resamples, seed=settings.seed,
    )
    new_auc = metrics["roc_auc"]
    champ_auc = classification_metrics(y, champion.model.predict_proba(holdout))["roc_auc"]
    versus = f"holdout AUC {new_auc:.4f} vs champion v{champion.version} {champ_auc:.4f} on the same rows: gain {gain:+.4f} [95% {low:+.4f}, {high:+.4f}]"
    if gain >= settings.promotion_margin and low > 0:
        return True, f"promoted: {versus}"
    why = f"gain below the margin {settings.promotion_margin}" if gain < settings.promotion_margin else "the gain's lower bound is not above 0"
    return False, f"refused ({keep}): {versus}; {why}"


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
