"""churnflow's Prefect flows. They only compose stage tasks; the logic lives in the stages.

- ``daily``: features -> score -> outreach -> CRM sync, for an as-of date (default today,
  or the day after the newest data when the data stops earlier).
- ``train``: retrain on matured snapshots and run the champion/challenger gate.
- ``monitor``: drift and realized performance of the champion; alerts on a breach.
- ``digest``: the weekly executive risk digest.
- ``backfill``: features (and optionally scores) over a date range.
- ``demo``: generate a demo book, then train, daily and digest once, end to end.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from prefect import flow, get_run_logger
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from churnflow.errors import UnknownAccountError
from churnflow.settings import Settings
from flows import tasks
from flows.notify import FAILURE_HOOKS
from models import score as score_stage
from models.explain import peer_baselines


def _top_risk_table(scores: pd.DataFrame, rows: int = 15) -> list[dict[str, object]]:
    top = scores.sort_values("arr_at_risk", ascending=False).head(rows)
    return [
        {
            "account_id": r.account_id, "health_score": int(r.health_score), "band": r.band,
            "p_churn": round(float(r.p_churn), 3), "arr_at_risk": round(float(r.arr_at_risk), 0),
            "drivers": str(r.top_drivers_text).replace("\n", "; "),
        }
        for r in top.itertuples()
    ]


def score_in_partitions(settings: Settings, day: date, features: pd.DataFrame, accounts: list[str] | None = None) -> pd.DataFrame:
    """Score ``features`` in ``settings.score_partitions`` stable-hash partitions as concurrent
    tasks on the configured task runner (threads, or Dask), then store them once.

    The partition tasks only compute; the model, previous health and overrides are read
    once before and the rows are written once after, by the flow's process. When the day's
    stored scores were computed from exactly these inputs, they are returned and nothing
    is computed. Returns the scores in the features' order (the same rows a sequential
    ``score_accounts`` gives).

    ``features`` are the day's features of every active account, also when ``accounts`` asks
    for a few: the peer baselines the reasons compare with are the whole book's, so an
    account scored alone (a subset run, a reaction) reads exactly as in the daily batch.
    """
    inputs = tasks.prepare_scoring(settings, day)
    features = tasks.features_for_model(settings, day, features, inputs)
    fingerprint = None
    if accounts is None:  # a subset run always computes (it replaces only some rows of the day)
        fingerprint, stored = tasks.find_stored_scores(settings, day, features, inputs)
        if stored is not None:
            return stored
    baselines = peer_baselines(inputs.loaded.model, features)  # the day's, shared by every partition
    if accounts is not None:
        features = features[features["account_id"].astype(str).isin({str(a) for a in accounts})].reset_index(drop=True)
    parts = score_stage.split_partitions(features, settings.score_partitions)
    with tasks.task_runner(settings) as runner:
        futures = [
            runner.submit(tasks.score_partition, parameters={"settings": settings, "as_of": day, "features": part, "inputs": inputs,
                                                             "baselines": baselines})
            for part in parts
        ]
        results = [future.result() for future in futures]
    scores = score_stage.merge_partitions(results, features["account_id"])
    tasks.store_scores(settings, day, scores, accounts, fingerprint)
    return scores


@flow(name="daily", log_prints=False, **FAILURE_HOOKS)
def daily_flow(as_of: date | None = None, dry_run: bool = False, accounts: list[str] | None = None) -> dict[str, object]:
    """Score the active accounts as of a date and act on it.

    Args:
        as_of: Day to score (features use only data before it). Empty: today, or the day after the newest data.
        dry_run: Show what the CRM push would change without writing to the CRM.
        accounts: Score and act on only these account ids (e.g. ["A00042"]); their rows of the day are replaced, other accounts' rows are left as they were. Unset: every active account.
    """
    settings = Settings()
    day = tasks.resolve_as_of(settings, as_of)
    day_features = features = tasks.build_features(settings, day)
    if accounts is not None:
        wanted = {str(a) for a in accounts}
        active = set(features["account_id"].astype(str))
        unknown = sorted(wanted - active)
        if unknown:
            get_run_logger().warning("%d requested account(s) are unknown or not active as of %s, skipped: %s",
                                     len(unknown), day, ", ".join(unknown[:50]))
        if not wanted & active:
            raise UnknownAccountError(f"none of the requested accounts is active as of {day}: {', '.join(unknown[:50])}")
        features = features[features["account_id"].astype(str).isin(wanted)].reset_index(drop=True)
    scores = score_in_partitions(settings, day, day_features, accounts)  # the whole day's features: peer baselines
    new_tasks = tasks.decide_outreach(settings, day, scores, features)
    sync = tasks.sync_crm(settings, day, dry_run, accounts)
    bands = scores["band"].value_counts().to_dict()
    summary = {
        "as_of": str(day), "accounts_scored": len(scores), "bands": bands,
        "accounts_requested": "all" if accounts is None else len(accounts),
        "arr_at_risk": round(float(scores["arr_at_risk"].sum()), 2),
        "tasks_created": int((~new_tasks["held_out"]).sum()) if len(new_tasks) else 0,
        "tasks_held_out": int(new_tasks["held_out"].sum()) if len(new_tasks) else 0,
        "crm": sync.describe(),
    }
    create_table_artifact(key="top-at-risk-accounts", table=_top_risk_table(scores), description=f"Top accounts by ARR at risk as of {day}")
    create_markdown_artifact(
        key="daily-summary",
        markdown="\n".join([f"# churnflow daily run, as of {day}", ""] + [f"- **{k}**: {v}" for k, v in summary.items()]),
        description="Numbers of the daily run",
    )
    get_run_logger().info(
        "daily %s: %d accounts scored %s, ARR at risk %.0f, %d tasks created, %d held out",
        day, summary["accounts_scored"], bands, summary["arr_at_risk"], summary["tasks_created"], summary["tasks_held_out"],
    )
    return summary


@flow(name="train", **FAILURE_HOOKS)
def train_flow(force: bool = False) -> dict[str, object]:
    """Retrain the churn model on matured snapshots and gate it against the champion.

    Args:
        force: Retrain even if the newest model version was trained on exactly the data and settings there are now (e.g. after a code change).
    """
    settings = Settings()
    logger = get_run_logger()
    due, why, champion = tasks.training_due(settings)
    if not due and not force and champion is not None:
        logger.info("%s", why)
        create_markdown_artifact(key="train-summary", markdown=f"# Training skipped\n\n{why}", description="Champion kept, nothing retrained")
        return champion
    logger.info("training: %s", "forced" if force and not due else why)
    result = tasks.train_model(settings)
    link = tasks.mlflow_run_link(settings, result.run_id)
    create_link_artifact(key="train-mlflow-run", link=link, link_text=f"MLflow run {result.run_id} (model v{result.model_version})",
                         description="The training run in the MLflow UI")
    create_markdown_artifact(
        key="train-summary",
        markdown="\n".join(
            [f"# Training run {result.run_id}", "", f"- model version: {result.model_version}", f"- promoted: {result.promoted}", f"- gate: {result.reason}"]
            + [f"- holdout {k}: {v:.4f}" for k, v in result.metrics.items()]
            + ["", f"MLflow: [run `{result.run_id}`]({link}) in experiment `{settings.mlflow_experiment}` ({settings.tracking_uri})"]
        ),
        description=f"Model v{result.model_version}: {result.reason}",
    )
    logger.info("model v%s: holdout AUC %.4f, promoted %s (%s)", result.model_version, result.metrics["roc_auc"], result.promoted, result.reason)
    return {"run_id": result.run_id, "model_version": result.model_version, "promoted": result.promoted, "reason": result.reason, **result.metrics}


@flow(name="monitor", **FAILURE_HOOKS)
def monitor_flow(as_of: date | None = None) -> dict[str, object]:
    """Check the champion for drift (PSI vs its training window) and realized performance of matured scores.

    A breach tags the model version needs_retraining in MLflow and sends an alert over the
    failure-notification channels; the run itself still completes.

    Args:
        as_of: Day to check (that day's features; scores whose labels have matured by then). Empty: today, or the day after the newest data.
    """
    settings = Settings()
    day = tasks.resolve_as_of(settings, as_of)
    report = tasks.monitor_model(settings, day)
    rows = report.rows.sort_values(["breached", "value"], ascending=[False, False]).head(25)
    create_table_artifact(
        key="model-monitoring",
        table=[{"metric": r.metric, "value": round(float(r.value), 4), "breached": bool(r.breached), "detail": r.detail} for r in rows.itertuples()],
        description=f"Model v{report.model_version} as of {day}: breaches first, then the largest values",
    )
    verdict = f"model v{report.model_version} needs retraining" if report.needs_retraining else f"model v{report.model_version}: no breach"
    create_markdown_artifact(
        key="monitor-summary",
        markdown="\n".join([f"# Model monitoring, as of {day}", "", f"- **verdict**: {verdict}", f"- **checks**: {len(report.rows)}",
                            f"- **breaches**: {len(report.breaches)}"] + [f"  - {b}" for b in report.breaches[:20]]),
        description=verdict,
    )
    if report.breaches:
        tasks.alert(settings, f"[churnflow] {verdict} (as of {day})", "Breaches:\n" + "\n".join(report.breaches)
                    + "\n\nRetrain: prefect deployment run 'train/train' (add --param force=true if no new data arrived since the champion)")
    get_run_logger().info("monitor %s: %s (%d checks, %d breaches)", day, verdict, len(report.rows), len(report.breaches))
    return {"as_of": str(day), "model_version": report.model_version, "needs_retraining": report.needs_retraining, "breaches": report.breaches}


@flow(name="digest", **FAILURE_HOOKS)
def digest_flow(week_ending: date | None = None) -> str:
    """Write the weekly executive risk digest (HTML file and a Markdown artifact).

    Args:
        week_ending: Last day of the week to report. Empty: the latest scored day.
    """
    settings = Settings()
    path, markdown = tasks.write_digest(settings, week_ending)
    create_markdown_artifact(key="weekly-digest", markdown=markdown, description=f"Weekly risk digest ({path})")
    return path


@flow(name="backfill", **FAILURE_HOOKS)
def backfill_flow(start: date, end: date, every_days: int = 7, score: bool = True) -> dict[str, object]:
    """Build features (and optionally scores) for as-of dates from start to end.

    Args:
        start: First as-of date.
        end: Last as-of date (inclusive).
        every_days: Step between as-of dates (1 = every day, 7 = weekly).
        score: Also score each date with the champion model (no outreach, no CRM push).
    """
    settings = Settings()
    days = [d.date() for d in pd.date_range(start, end, freq=f"{every_days}D")]
    scored = 0
    if days:
        tasks.refresh_rollups(settings, days[0])  # once: every date below reads the same rollups
    for day in days:
        features = tasks.build_features(settings, day, refresh=False)
        if score:
            scored += len(tasks.score_accounts(settings, day, features))
    result = {"dates": [str(d) for d in days], "rows_scored": scored}
    create_markdown_artifact(
        key="backfill-summary",
        markdown=f"# Backfill {start} to {end}\n\n- as-of dates: {len(days)} (every {every_days} days)\n- rows scored: {scored}\n- dates: {', '.join(result['dates'])}",
        description=f"Backfill of {len(days)} as-of dates",
    )
    get_run_logger().info("backfill: %d as-of dates from %s to %s, %d rows scored", len(days), start, end, scored)
    return result


@flow(name="demo", **FAILURE_HOOKS)
def demo_flow(accounts: int = 1500, days: int = 540, seed: int = 42) -> dict[str, object]:
    """Generate a demo book and run train, backfill, daily, monitor and digest once, end to end.

    Args:
        accounts: Number of demo accounts to generate.
        days: Days of history to generate.
        seed: Random seed of the demo book.
    """
    settings = Settings()
    counts = tasks.generate_demo_book(settings, accounts, days, seed)
    trained = train_flow(force=True)  # a new book: always retrain
    as_of = tasks.resolve_as_of(settings, None)
    # Twelve weeks of score history first, so trends, movers and the digest have a past, and
    # one day old enough for its outcomes to be known, so monitoring can measure realized AUC.
    matured = as_of - timedelta(days=settings.horizon_days + settings.churn_grace_days + settings.label_lead_days)
    backfill_flow(matured, matured, every_days=1, score=True)
    backfill = backfill_flow(as_of - timedelta(days=84), as_of - timedelta(days=7), every_days=7, score=True)
    daily = daily_flow(as_of)
    monitored = monitor_flow(as_of)
    digest_path = digest_flow()
    return {"book": counts, "train": trained, "backfill": backfill, "daily": daily, "monitor": monitored, "digest": digest_path}
