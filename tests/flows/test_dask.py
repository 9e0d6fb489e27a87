"""Scale-out: the daily flow scores stable-hash partitions as concurrent tasks, on Prefect's
thread pool or on a Dask cluster, with the same rows as a sequential run; and it can score
and act on a subset of accounts."""

from __future__ import annotations

from datetime import date, datetime

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]

DAY = date(2026, 9, 17)


@pytest.fixture
def home(trained_copy: Settings, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """A private copy of the trained home (the flows write scores and digests), as the flows' environment."""
    monkeypatch.setenv("CHURNFLOW_HOME", str(trained_copy.home))
    monkeypatch.delenv("CHURNFLOW_WAREHOUSE_URL", raising=False)
    return Settings()


def _day_rows(engine: sa.Engine) -> pd.DataFrame:
    rows = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": datetime(DAY.year, DAY.month, DAY.day)})
    return rows.sort_values("account_id").reset_index(drop=True)


def test_dask_partitions_score_like_the_sequential_run(prefect_server: None, home: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import daily_flow
    from flows.tasks import task_runner
    from models.score import score_accounts
    from prefect_dask import DaskTaskRunner

    monkeypatch.setenv("CHURNFLOW_TASK_RUNNER", "dask")
    monkeypatch.setenv("CHURNFLOW_DASK_WORKERS", "2")
    monkeypatch.setenv("CHURNFLOW_SCORE_PARTITIONS", "4")
    assert isinstance(task_runner(Settings()), DaskTaskRunner)
    summary = daily_flow(as_of=DAY, dry_run=True)
    engine = get_engine(home.warehouse)
    distributed = _day_rows(engine)
    assert summary["accounts_scored"] == len(distributed) > 300

    sequential = score_accounts(engine, home, DAY)
    assert len(sequential) == len(distributed)
    pd.testing.assert_frame_equal(distributed.drop(columns="scored_at"), _day_rows(engine).drop(columns="scored_at"), check_exact=True)


def test_threads_score_like_the_sequential_run_and_a_subset_of_accounts(prefect_server: None, home: Settings) -> None:
    from flows.pipeline import daily_flow

    from models.score import score_accounts

    assert home.task_runner == "thread" and home.score_partitions == 4
    daily_flow(as_of=DAY, dry_run=True)  # 4 partitions in concurrent threads
    engine = get_engine(home.warehouse)
    threaded = _day_rows(engine)
    score_accounts(engine, home, DAY)
    before = _day_rows(engine)
    pd.testing.assert_frame_equal(threaded.drop(columns="scored_at"), before.drop(columns="scored_at"), check_exact=True)
    tasks_before = read_sql(engine, "SELECT task_key, account_id FROM outreach_tasks")
    subset = before.sort_values("p_churn", ascending=False)["account_id"].head(5).tolist()
    with engine.begin() as conn:  # make a rewrite visible; the next run must touch only the subset
        conn.execute(sa.text("UPDATE account_scores SET health_score = -1, scored_at = :t WHERE as_of_date = :d"),
                     {"d": datetime(DAY.year, DAY.month, DAY.day), "t": datetime(2000, 1, 1)})
        conn.execute(sa.text("DELETE FROM outreach_tasks"))
    summary = daily_flow(as_of=DAY, dry_run=True, accounts=subset)
    after = _day_rows(engine)
    assert summary["accounts_scored"] == 5 and summary["accounts_requested"] == 5
    assert "would write health fields on 5 accounts" in summary["crm"]  # the CRM push is limited too
    assert len(after) == len(before)
    mine = after["account_id"].isin(subset)
    assert (after.loc[mine, "health_score"] >= 0).all() and (after.loc[mine, "scored_at"] > pd.Timestamp(2000, 1, 1)).all()
    assert (after.loc[~mine, "health_score"] == -1).all() and (after.loc[~mine, "scored_at"] == pd.Timestamp(2000, 1, 1)).all()
    pd.testing.assert_frame_equal(
        after.loc[mine].drop(columns="scored_at").reset_index(drop=True),
        before.loc[before["account_id"].isin(subset)].drop(columns="scored_at").reset_index(drop=True),
    )
    # Outreach decided only for the subset (the riskiest accounts: at least one task or hold-out).
    new_tasks = read_sql(engine, "SELECT account_id FROM outreach_tasks")
    assert len(new_tasks) and set(new_tasks["account_id"]) <= set(subset)
    assert len(tasks_before)
