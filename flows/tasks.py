"""Prefect tasks: each wraps one stage function with retries and logging, nothing more.

Tasks take the Settings object (not engines or clients) so every run is reproducible from
its parameters; the engine is opened inside from the settings.

Caching by inputs, where the work is expensive and its inputs can be named exactly. The
stages keep it in the warehouse (so the CLI, every worker and every Dask node share it),
not in Prefect's result storage:

* build-features reuses a day's stored features when the fingerprint of every input row
  known that day is unchanged (``features.build.input_fingerprint``);
* find-stored-scores returns the day's stored scores when they were computed from the same
  model, features, previous health, overrides, settings and code
  (``models.score.scoring_fingerprint``): then no scoring partition runs.

Prefect's task cache is off (``NO_CACHE``) everywhere. See docs/operations.md, "Retries and
caching".
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from datetime import date, datetime

import pandas as pd
from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import TaskRunner, ThreadPoolTaskRunner

from churnflow import demo_data
from digest import publish as digest_stage
from outreach import decisions as outreach_decisions, playbooks as outreach
from churnflow.settings import Settings
from churnflow.warehouse import get_engine
from crm_sync import sync as crm_stage
from features import build as feature_stage
from models import monitor as monitor_stage, score as score_stage, train as train_stage
from models.explain import PeerBaselines
from models.registry import LoadedModel, load_model

WAREHOUSE_RETRIES = {"retries": 2, "retry_delay_seconds": [5, 30]}
CRM_RETRIES = {"retries": 3, "retry_delay_seconds": [10, 60, 300]}


@task(name="generate-demo-book", cache_policy=NO_CACHE)
def generate_demo_book(settings: Settings, accounts: int, days: int, seed: int) -> dict[str, int]:
    book = demo_data.generate_book(accounts=accounts, days=days, seed=seed)
    counts = demo_data.write_book(get_engine(settings.warehouse), book)
    get_run_logger().info("demo book written: %s", counts)
    return counts


@task(name="resolve-as-of", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def resolve_as_of(settings: Settings, as_of: date | None) -> date:
    return as_of or feature_stage.default_as_of(get_engine(settings.warehouse))


@task(name="refresh-rollups", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def refresh_rollups(settings: Settings, since: date) -> str:
    report = feature_stage.refresh_derived(get_engine(settings.warehouse), since, recheck_days=settings.rollup_recheck_days)
    get_run_logger().info(report.describe())
    return report.describe()


@task(name="build-features", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def build_features(settings: Settings, as_of: date, refresh: bool = True) -> pd.DataFrame:
    """Features as of one day; ``refresh=False`` when the flow already refreshed the rollups."""
    frame = feature_stage.materialize_features(
        get_engine(settings.warehouse), [as_of], recheck_days=settings.rollup_recheck_days, refresh=refresh, reuse=settings.feature_reuse,
        event_types_top=settings.usage_event_types_top,
    )
    get_run_logger().info("features as of %s: %d active accounts, %d features", as_of, len(frame), frame.shape[1] - 2)
    return frame


@task(name="check-training-due", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def training_due(settings: Settings) -> tuple[bool, str, dict[str, object] | None]:
    """Is a retrain worth it? (due, why, the latest version's summary when it is not).

    Not due only when the newest registered version (champion or a refused challenger) was
    trained on exactly the data the warehouse holds now (same ``observed_until``), with the
    current feature set and the same training settings (``models.train.training_settings``:
    the very list training logs): retraining would reproduce it, and reruns would pile up
    identical versions. Anything else that changed (code, label logic) is not detected: use ``force``.
    """
    from features.catalogue import FEATURE_SET_VERSION
    from features.labels import data_window
    from models.registry import configure_mlflow

    client = configure_mlflow(settings)
    observed_until = str(data_window(get_engine(settings.warehouse), settings)[1])
    versions = client.search_model_versions(f"name = '{settings.model_name}'")
    if not versions:
        return True, "no model trained yet", None
    version = max(versions, key=lambda v: int(v.version))
    run = client.get_run(version.run_id)
    params = run.data.params
    if params.get("observed_until") != observed_until:
        return True, f"new data: v{version.version} observed until {params.get('observed_until')}, warehouse until {observed_until}", None
    if params.get("feature_set_version") != FEATURE_SET_VERSION:
        return True, f"feature set changed: v{version.version} has {params.get('feature_set_version')}, code has {FEATURE_SET_VERSION}", None
    changed = train_stage.changed_training_settings(params, settings)
    if changed:
        return True, f"training settings changed since v{version.version}: {', '.join(changed)}", None
    metrics = {k.removeprefix("holdout_"): v for k, v in run.data.metrics.items() if k.startswith("holdout_")}
    aliases = ", ".join(version.aliases) if getattr(version, "aliases", None) else "no alias"
    reason = f"skipped: v{version.version} ({aliases}) was trained on the same data (observed until {observed_until}) and settings; pass force=true to retrain"
    return False, reason, {"run_id": version.run_id, "model_version": str(version.version), "promoted": False, "reason": reason, **metrics}


@task(name="mlflow-run-link", cache_policy=NO_CACHE)
def mlflow_run_link(settings: Settings, run_id: str) -> str:
    from models.registry import configure_mlflow

    experiment_id = configure_mlflow(settings).get_run(run_id).info.experiment_id
    return f"{settings.mlflow_ui_url.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


@task(name="train-model", cache_policy=NO_CACHE)
def train_model(settings: Settings) -> train_stage.TrainResult:
    result = train_stage.train(get_engine(settings.warehouse), settings)
    get_run_logger().info(
        "model v%s: holdout AUC %.3f, oracle AUC %s; %s",
        result.model_version, result.metrics["roc_auc"], f"{result.metrics.get('oracle_roc_auc', float('nan')):.3f}", result.reason,
    )
    return result


@task(name="score-accounts", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def score_accounts(settings: Settings, as_of: date, features: pd.DataFrame, accounts: list[str] | None = None) -> pd.DataFrame:
    scores = score_stage.score_accounts(get_engine(settings.warehouse), settings, as_of, features=features, accounts=accounts)
    get_run_logger().info("scored %d accounts: %s", len(scores), scores["band"].value_counts().to_dict())
    return scores


@dataclass
class ScoringInputs:
    """What every scoring partition shares: one model version, the stored health 7 and 30
    days back, the active band overrides and one scored_at stamp. Read once by the flow so
    partition tasks are pure (they need no warehouse access, e.g. on remote Dask workers)."""

    loaded: LoadedModel
    previous_health: dict[int, pd.Series]
    overrides: pd.DataFrame
    scored_at: pd.Timestamp


@task(name="prepare-scoring", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def prepare_scoring(settings: Settings, as_of: date) -> ScoringInputs:
    engine = get_engine(settings.warehouse)
    loaded = load_model(settings)
    get_run_logger().info("scoring with %s v%s", loaded.name, loaded.version)
    score_stage.reexpress_old_scores(engine, settings, loaded)  # trends compare like with like
    return ScoringInputs(
        loaded=loaded, previous_health=score_stage.previous_health(engine, as_of), overrides=score_stage.active_overrides(engine, as_of),
        scored_at=pd.Timestamp(datetime.now().replace(microsecond=0)),
    )


@task(name="features-for-model", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def features_for_model(settings: Settings, as_of: date, features: pd.DataFrame, inputs: ScoringInputs) -> pd.DataFrame:
    """The day's features with every column the model reads: rebuilt with the model's own
    catalogue when the book's catalogue of the day differs (e.g. other top event types)."""
    model = inputs.loaded.model
    return feature_stage.features_for(get_engine(settings.warehouse), as_of, features, model.catalogue, model.feature_names)


@task(name="find-stored-scores", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def find_stored_scores(settings: Settings, as_of: date, features: pd.DataFrame, inputs: ScoringInputs) -> tuple[str, pd.DataFrame | None]:
    """The fingerprint of the day's scoring inputs, and the stored scores if they were
    computed from exactly those inputs (then no partition needs to run)."""
    fingerprint = score_stage.scoring_fingerprint(settings, as_of, features, inputs.loaded, inputs.previous_health, inputs.overrides)
    stored = score_stage.stored_scores_if_current(get_engine(settings.warehouse), as_of, fingerprint, features["account_id"])
    if stored is not None:
        get_run_logger().info("scores as of %s: %d accounts reused, computed earlier from the same inputs", as_of, len(stored))
    return fingerprint, stored


@task(name="score-partition", cache_policy=NO_CACHE)
def score_partition(settings: Settings, as_of: date, features: pd.DataFrame, inputs: ScoringInputs,
                    baselines: PeerBaselines | None = None) -> pd.DataFrame:
    """Compute (not store) the scores of one partition of the accounts: pure, no warehouse access.
    ``baselines``: the day's peer baselines, of every account (not of this partition).

    Each partition works on its own copy of the model: a LightGBM Booster is not safe for
    concurrent predictions with different iteration ranges (TreeSHAP predicts tree by
    tree), so partitions sharing one Booster in threads would corrupt each other's values.
    """
    loaded = copy.deepcopy(inputs.loaded)
    scores = score_stage.compute_scores(
        None, settings, as_of, features, loaded, inputs.previous_health, overrides=inputs.overrides, scored_at=inputs.scored_at,
        baselines=baselines,
    )
    get_run_logger().info("partition scored: %d accounts", len(scores))
    return scores


@task(name="store-scores", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def store_scores(settings: Settings, as_of: date, scores: pd.DataFrame, accounts: list[str] | None = None,
                 fingerprint: str | None = None) -> int:
    stored = score_stage.store_scores(get_engine(settings.warehouse), scores, as_of, accounts=accounts, fingerprint=fingerprint)
    score_stage.log_scores(scores, as_of)
    get_run_logger().info("stored %d scores as of %s (%s)", stored, as_of, "every account" if accounts is None else f"{len(accounts)} requested accounts")
    return stored


def task_runner(settings: Settings) -> TaskRunner:
    """The task runner for scoring partitions, from the settings (a fresh, unstarted one).

    ``thread``: Prefect's ThreadPoolTaskRunner with one thread per partition. ``dask``:
    prefect-dask's DaskTaskRunner on the cluster at ``dask_address`` or, unset, on a
    temporary local cluster of ``dask_workers`` worker processes.
    """
    if settings.task_runner == "dask":
        from prefect_dask import DaskTaskRunner

        if settings.dask_address:
            return DaskTaskRunner(address=settings.dask_address)
        return DaskTaskRunner(cluster_kwargs={"n_workers": settings.dask_workers, "threads_per_worker": 1, "dashboard_address": None})
    return ThreadPoolTaskRunner(max_workers=settings.score_partitions)


@task(name="decide-outreach", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def decide_outreach(settings: Settings, as_of: date, scores: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    book = outreach.load_playbooks(settings.playbooks_file)
    new = outreach_decisions.run_outreach(get_engine(settings.warehouse), scores, features, as_of, book, seed=settings.seed)
    get_run_logger().info("outreach: %d new tasks, %d held out", int((~new["held_out"]).sum()) if len(new) else 0, int(new["held_out"].sum()) if len(new) else 0)
    return new


def retry_crm_unless_rejected(task: object, task_run: object, state: object) -> bool:
    """Retry the CRM task on anything transient, never on rejected records: Salesforce gave
    its answer, a retry minutes later repeats it and only delays the failure notification."""
    return not isinstance(getattr(state, "data", None), crm_stage.CrmSyncFailed)


def _crm_skips_artifact(summary: crm_stage.SyncSummary) -> None:
    """Name every account and task the sync did not write, and why, on the run's page."""
    lines = summary.skipped_lines()
    if lines:
        shown = lines[:1000]
        more = [f"- ... and {len(lines) - len(shown)} more (see the run log)"] if len(lines) > len(shown) else []
        create_markdown_artifact(key="crm-sync-skipped", description=f"CRM sync as of {summary.as_of}: records not written",
                                 markdown="\n".join([f"# CRM sync as of {summary.as_of}: {len(lines)} record(s) not written", "",
                                                      *[f"- {line}" for line in shown], *more]))


@task(name="sync-crm", cache_policy=NO_CACHE, retry_condition_fn=retry_crm_unless_rejected, **CRM_RETRIES)
def sync_crm(settings: Settings, as_of: date, dry_run: bool, accounts: list[str] | None = None) -> crm_stage.SyncSummary:
    """Push the day to the CRM. Rejected records fail the task (and so the flow, which notifies),
    after everything else was written; skipped accounts are named in an artifact either way."""
    try:
        summary = crm_stage.sync_crm(get_engine(settings.warehouse), settings, as_of, dry_run=dry_run, accounts=accounts)
    except crm_stage.CrmSyncFailed as failed:
        _crm_skips_artifact(failed.summary)
        get_run_logger().error("%s", failed)
        raise
    _crm_skips_artifact(summary)
    get_run_logger().info("crm sync: %s", summary.describe())
    return summary


@task(name="monitor-model", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def monitor_model(settings: Settings, as_of: date) -> monitor_stage.MonitorReport:
    report = monitor_stage.monitor_champion(get_engine(settings.warehouse), settings, as_of)
    get_run_logger().info(
        "monitoring model v%s as of %s: %d checks, %d breaches%s", report.model_version, as_of, len(report.rows), len(report.breaches),
        f": {'; '.join(report.breaches[:5])}" if report.breaches else "",
    )
    return report


@task(name="alert", cache_policy=NO_CACHE)
def alert(settings: Settings, subject: str, body: str) -> list[str]:
    from flows.notify import send_all

    sent = send_all(settings, subject, body)
    get_run_logger().info("alert %r sent via %s", subject, ", ".join(sent) or "nothing (no channel configured)")
    return sent


@task(name="write-digest", cache_policy=NO_CACHE, **WAREHOUSE_RETRIES)
def write_digest(settings: Settings, week_ending: date | None) -> tuple[str, str]:
    engine = get_engine(settings.warehouse)
    week_ending = week_ending or feature_stage.default_as_of(engine)
    published = digest_stage.publish_digest(engine, settings, week_ending)
    mailed = f", e-mailed to {len(published.emailed_to)} recipient(s)" if published.emailed_to else ""
    get_run_logger().info("digest for week ending %s written to %s%s", week_ending, published.path, mailed)
    return str(published.path), published.markdown
