"""The reaction: an accepted webhook event re-scores its account and reaches its owner.

Started by the deployment trigger of ``react`` (prefect.yaml) on the Prefect event the
intake publishes, one run per account per debounce window. It composes the daily stages'
own tasks (flows/tasks.py), restricted to the account:

1. apply the account's inbox events to the canonical tables (events.inbox, one transaction);
2. features as of the day after the newest event's day: the partition the next daily run
   writes, so the daily batch and the reaction agree (docs/events.md, "Point in time");
3. score and explain with the champion, store the account's row of that day;
4. playbooks: the event playbooks (events/playbooks.yaml) first, then the daily ones;
5. push the account's health fields and pending tasks to the CRM.

Then, if the debounce window is still open, it waits for it to close and applies what
arrived meanwhile (the trigger ignores events inside the window), so no event waits for a
later reaction.
"""

from __future__ import annotations

import json
import time
from datetime import date, datetime, timedelta
from pathlib import Path

import pandas as pd
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from churnflow.schema import EVENT_REACTIONS
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, replace_rows, table_exists
from events import inbox
from flows import tasks
from flows.notify import FAILURE_HOOKS
from flows.pipeline import score_in_partitions
from outreach import decisions, playbooks as outreach

EVENT_PLAYBOOKS = Path(__file__).resolve().parents[1] / "events" / "playbooks.yaml"
MAX_ROUNDS = 5


def reaction_as_of(newest_event: datetime) -> date:
    """The scoring day of a reaction: the day after the newest applied event's day.

    Features as of D read rows strictly before D 00:00, so this day includes the event and
    everything known before it; it is the partition the next daily run recomputes, from
    the same rows, to the same score.
    """
    return newest_event.date() + timedelta(days=1)


@task(name="apply-events", cache_policy=NO_CACHE, **tasks.WAREHOUSE_RETRIES)
def apply_events(settings: Settings, account_id: str, reaction_run: str) -> inbox.Applied:
    applied = inbox.apply_pending(get_engine(settings.warehouse), account_id, reaction_run)
    get_run_logger().info("account %s: applied %d event(s) %s", account_id, len(applied.event_ids), applied.rows)
    return applied


@task(name="health-before", cache_policy=NO_CACHE, **tasks.WAREHOUSE_RETRIES)
def health_before(settings: Settings, account_id: str, as_of: date) -> dict[str, object] | None:
    """The account's newest stored score up to ``as_of`` (what the CRM showed before)."""
    engine = get_engine(settings.warehouse)
    if not table_exists(engine, "account_scores"):
        return None
    found = read_sql(engine,
                     "SELECT as_of_date, health_score, band FROM account_scores WHERE account_id = :a AND as_of_date <= :d "
                     "ORDER BY as_of_date DESC LIMIT 1", {"a": account_id, "d": pd.Timestamp(as_of).to_pydatetime()})
    return None if found.empty else found.iloc[0].to_dict()


def reaction_playbooks(settings: Settings) -> outreach.PlaybookBook:
    """The event playbooks, then the daily ones: one book, so an account gets one decision."""
    events_book = outreach.load_playbooks(EVENT_PLAYBOOKS)
    daily_book = outreach.load_playbooks(settings.playbooks_file)
    return outreach.PlaybookBook(teams={**daily_book.teams, **events_book.teams}, playbooks=[*events_book.playbooks, *daily_book.playbooks])


@task(name="decide-reaction-outreach", cache_policy=NO_CACHE, **tasks.WAREHOUSE_RETRIES)
def decide_reaction_outreach(settings: Settings, as_of: date, scores: pd.DataFrame, features: pd.DataFrame) -> pd.DataFrame:
    new = decisions.run_outreach(get_engine(settings.warehouse), scores, features, as_of, reaction_playbooks(settings), seed=settings.seed)
    get_run_logger().info("outreach: %d task(s) decided: %s", len(new), ", ".join(new["playbook"]) if len(new) else "none")
    return new


@task(name="record-reaction", cache_policy=NO_CACHE, **tasks.WAREHOUSE_RETRIES)
def record_reaction(settings: Settings, row: dict[str, object]) -> None:
    frame = pd.DataFrame([row], columns=EVENT_REACTIONS.column_names)
    replace_rows(get_engine(settings.warehouse), EVENT_REACTIONS.name, frame,
                 where={"reaction_run": row["reaction_run"], "account_id": row["account_id"]})


def _tag_run(account_id: str, event_id: str) -> None:
    """Tags the run with the account and the event, so the UI can filter reactions by either."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id)
            client.update_flow_run(flow_run.id, tags=sorted({*(current.tags or []), "churnflow", "reaction",
                                                               f"account:{account_id}", f"event:{event_id}"}))
    except Exception as exc:  # noqa: BLE001 - tags are for browsing; the reaction goes on
        get_run_logger().warning("could not tag the run (%s)", type(exc).__name__)


def _react_once(settings: Settings, account_id: str, applied: inbox.Applied, run_id: str) -> dict[str, object]:
    started = datetime.now().replace(microsecond=0)
    as_of = reaction_as_of(applied.newest_occurred)
    before = health_before(settings, account_id, as_of)
    features = tasks.build_features(settings, as_of)
    mine = features[features["account_id"].astype(str) == account_id].reset_index(drop=True)
    row: dict[str, object] = {
        "reaction_run": run_id, "account_id": account_id, "event_ids": json.dumps(applied.event_ids), "as_of_date": pd.Timestamp(as_of),
        "health_before": None if before is None else int(before["health_score"]), "band_before": None if before is None else before["band"],
        "health_after": None, "band_after": None, "task_keys": "[]", "outcome": "no_score", "started_at": started,
    }
    if mine.empty:
        get_run_logger().warning("account %s is not active as of %s: nothing to score", account_id, as_of)
    else:
        scores = score_in_partitions(settings, as_of, features, [account_id])  # the whole day's: peer baselines
        new_tasks = decide_reaction_outreach(settings, as_of, scores, mine)
        tasks.sync_crm(settings, as_of, False, [account_id])
        sent = new_tasks[~new_tasks["held_out"].astype(bool)] if len(new_tasks) else new_tasks
        row.update(health_after=int(scores["health_score"].iloc[0]), band_after=str(scores["band"].iloc[0]),
                   task_keys=json.dumps(new_tasks["task_key"].tolist() if len(new_tasks) else []),
                   outcome="task" if len(sent) else "held_out" if len(new_tasks) else "no_task")
        row["tasks"] = new_tasks
    row["finished_at"] = datetime.now().replace(microsecond=0)
    record_reaction(settings, {k: v for k, v in row.items() if k != "tasks"})
    return row


def _artifact(account_id: str, rounds: list[dict[str, object]], engine_url: str) -> None:
    engine = get_engine(engine_url)
    lines = [f"# Reaction for account {account_id}", ""]
    for r in rounds:
        change = "not scored" if r["health_after"] is None else f"{r['health_before'] if r['health_before'] is not None else '-'} -> {r['health_after']} " \
                 f"({r['band_before'] or '-'} -> {r['band_after']})"
        lines += [f"- **events**: {', '.join(json.loads(str(r['event_ids'])))}", f"- **as of**: {pd.Timestamp(r['as_of_date']).date()}",
                  f"- **health**: {change}", f"- **outcome**: {r['outcome']}"]
        keys = json.loads(str(r["task_keys"]))
        if keys:
            found = read_sql(engine, "SELECT task_key, playbook, subject, crm_task_id, held_out FROM outreach_tasks WHERE account_id = :a",
                             {"a": account_id})
            for t in found[found["task_key"].isin(keys)].itertuples():
                lines.append(f"  - task `{t.playbook}`: {t.subject} (CRM Task {t.crm_task_id or 'not pushed'}{', held out' if t.held_out else ''})")
        lines.append("")
    create_markdown_artifact(key=f"reaction-{_artifact_key(account_id)}", markdown="\n".join(lines),
                             description=f"Events, score change and task of the reaction for {account_id}")


def _utc_naive(stamp: str | None) -> pd.Timestamp:
    """``stamp`` (now when empty) as a naive UTC timestamp."""
    value = pd.Timestamp(stamp) if stamp else pd.Timestamp.now(tz="UTC")
    return value.tz_convert("UTC").tz_localize(None) if value.tzinfo is not None else value


def _artifact_key(account_id: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in account_id.lower())[:60]


@flow(name="react", flow_run_name="react-{account_id}-{event_id}", **FAILURE_HOOKS)
def react_flow(account_id: str, event_id: str = "", debounce_seconds: float = 10.0, triggered_at: str | None = None) -> dict[str, object]:
    """Apply an account's new events, re-score it, run the playbooks and push to the CRM.

    Args:
        account_id: The account the events are about.
        event_id: The event that triggered the run (shown in the run's name and tags).
        debounce_seconds: The trigger's window: events inside it start no run of their own, so this run waits for it to close and applies them too.
        triggered_at: When the triggering Prefect event occurred (ISO); the window is counted from it. Empty: from the run's start.
    """
    from prefect.runtime import flow_run

    settings = Settings()
    engine = get_engine(settings.warehouse)
    run_id = str(flow_run.id or f"local-{datetime.now():%Y%m%dT%H%M%S%f}")
    _tag_run(account_id, event_id)
    window_ends = _utc_naive(triggered_at) + pd.Timedelta(seconds=debounce_seconds)
    rounds: list[dict[str, object]] = []
    for _ in range(MAX_ROUNDS):
        applied = apply_events(settings, account_id, run_id)
        if not applied.event_ids:
            wait = (window_ends - _utc_naive(None)).total_seconds()
            if wait <= 0:
                break
            time.sleep(wait + 0.5)  # events inside the window started no run: take them now
            if not inbox.pending_count(engine, account_id):
                break
            continue
        rounds.append(_react_once(settings, account_id, applied, run_id))
    if rounds:
        _artifact(account_id, rounds, settings.warehouse)
    summary = {"account_id": account_id, "event_id": event_id, "reactions": len(rounds),
               "events": sum(len(json.loads(str(r["event_ids"]))) for r in rounds),
               "health": [r["health_after"] for r in rounds], "outcomes": [r["outcome"] for r in rounds]}
    get_run_logger().info("reaction for %s: %s", account_id, summary)
    return summary
