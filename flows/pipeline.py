"""churnflow's Prefect flows. They only compose stage tasks; the logic lives in the stages.

- ``daily``: features -> score -> outreach -> CRM sync, for an as-of date (default today,
  or the day after the newest data when the data stops earlier).
- ``train``: retrain on matured snapshots and run the champion/challenger gate.
- ``digest``: the weekly executive risk digest.
- ``backfill``: features (and optionally scores) over a date range.
- ``demo``: generate a demo book, then train, daily and digest once, end to end.
"""

from __future__ import annotations

from datetime import date, timedelta

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact, create_table_artifact

from churnflow.settings import Settings
from flows import tasks


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


@flow(name="daily", log_prints=False)
def daily_flow(as_of: date | None = None, dry_run: bool = False) -> dict[str, object]:
    """Score every active account as of a date and act on it.

    Args:
        as_of: Day to score (features use only data before it). Empty: today, or the day after the newest data.
        dry_run: Show what the CRM push would change without writing to the CRM.
    """
    settings = Settings()
    day = tasks.resolve_as_of(settings, as_of)
    features = tasks.build_features(settings, day)
    scores = tasks.score_accounts(settings, day, features)
    new_tasks = tasks.decide_outreach(settings, day, scores, features)
    sync = tasks.sync_crm(settings, day, dry_run)
    bands = scores["band"].value_counts().to_dict()
    summary = {
        "as_of": str(day), "accounts_scored": len(scores), "bands": bands,
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
    return summary


@flow(name="train")
def train_flow() -> dict[str, object]:
    """Retrain the churn model on matured snapshots and gate it against the champion."""
    settings = Settings()
    result = tasks.train_model(settings)
    create_markdown_artifact(
        key="train-summary",
        markdown="\n".join(
            [f"# Training run {result.run_id}", "", f"- model version: {result.model_version}", f"- gate: {result.reason}"]
            + [f"- holdout {k}: {v:.4f}" for k, v in result.metrics.items()]
            + ["", f"MLflow: run `{result.run_id}` in experiment `{settings.mlflow_experiment}` ({settings.tracking_uri})"]
        ),
    )
    return {"run_id": result.run_id, "model_version": result.model_version, "promoted": result.promoted, "reason": result.reason, **result.metrics}


@flow(name="digest")
def digest_flow(week_ending: date | None = None) -> str:
    """Write the weekly executive risk digest (HTML file and a Markdown artifact).

    Args:
        week_ending: Last day of the week to report. Empty: the latest scored day.
    """
    settings = Settings()
    path, markdown = tasks.write_digest(settings, week_ending)
    create_markdown_artifact(key="weekly-digest", markdown=markdown, description=f"Weekly risk digest ({path})")
    return path


@flow(name="backfill")
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
    for day in days:
        features = tasks.build_features(settings, day)
        if score:
            scored += len(tasks.score_accounts(settings, day, features))
    return {"dates": [str(d) for d in days], "rows_scored": scored}


@flow(name="demo")
def demo_flow(accounts: int = 1500, days: int = 540, seed: int = 42) -> dict[str, object]:
    """Generate a demo book and run train, daily and digest once, end to end."""
    settings = Settings()
    counts = tasks.generate_demo_book(settings, accounts, days, seed)
    trained = train_flow()
    as_of = tasks.resolve_as_of(settings, None)
    # Twelve weeks of score history first, so trends, movers and the digest have a past.
    backfill = backfill_flow(as_of - timedelta(days=84), as_of - timedelta(days=7), every_days=7, score=True)
    daily = daily_flow(as_of)
    digest_path = digest_flow()
    return {"book": counts, "train": trained, "backfill": backfill, "daily": daily, "digest": digest_path}
