"""The whole pipeline, end to end, as Prefect flows on a real (test-harness) Prefect server,
with a real MLflow store, a DuckDB warehouse and the local Salesforce-compatible server
spoken to by simple-salesforce over HTTPS."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from simple_salesforce import Salesforce

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from crm_sync.client import connect, local_crm
from features.build import build_features
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]




def _task_states(flow_run_id: object, prefix: str) -> dict[str, str]:
    """Task run name -> state name, for a flow run's task runs whose name starts with ``prefix``."""
    import asyncio

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def read() -> dict[str, str]:
        async with get_client() as client:
            runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        return {r.name.rsplit("-", 1)[0]: r.state.name for r in runs if r.name.startswith(prefix) and r.state is not None}

    return asyncio.run(read())


def test_demo_flow_runs_the_whole_pipeline(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import daily_flow, demo_flow

    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHURNFLOW_LOCAL_CRM_PORT", str(free_port()))
    settings = Settings()
    settings.ensure_home()

    with local_crm(settings) as server:
        result = demo_flow(accounts=500, days=540, seed=11)
        engine = get_engine(settings.warehouse)
        as_of = pd.Timestamp(result["daily"]["as_of"]).date()

        # Every active account has a score for the day.
        scores = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp(as_of).to_pydatetime()})
        active = build_features(engine, as_of)["account_id"]
        assert set(scores["account_id"]) == set(active) and len(scores) > 300
        assert scores["top_drivers_text"].str.len().gt(0).mean() > 0.95

        # Holdout AUC clears a floor set relative to the oracle from the truth table.
        trained = result["train"]
        assert trained["roc_auc"] >= max(0.6, trained["oracle_roc_auc"] - 0.12)

        # Red accounts got tasks (or were recorded as held out) and the tasks are in the CRM.
        tasks = read_sql(engine, "SELECT * FROM outreach_tasks WHERE as_of_date = :d", {"d": pd.Timestamp(as_of).to_pydatetime()})
        red = set(scores.loc[scores["band"] == "red", "account_id"])
        assert red and red <= set(tasks["account_id"])
        sent = tasks[~tasks["held_out"].astype(bool)]
        assert len(sent) > 0 and sent["crm_task_id"].notna().all()

        sf: Salesforce = connect(settings)
        crm_tasks = sf.query_all("SELECT Id, WhatId, Churnflow_Key__c, Subject FROM Task")["records"]
        by_key = {t["Churnflow_Key__c"]: t for t in crm_tasks}
        assert set(sent["task_key"]) <= set(by_key)
        accounts = read_sql(engine, "SELECT account_id, crm_account_id FROM accounts").set_index("account_id")["crm_account_id"]
        for row in sent.itertuples():
            assert by_key[row.task_key]["WhatId"] == accounts[row.account_id]
            assert by_key[row.task_key]["Id"] == row.crm_task_id

        # The CRM holds the pushed health fields.
        crm_accounts = {r["Id"]: r for r in sf.query_all("SELECT Id, Churnflow_Health_Score__c, Churnflow_Health_Band__c FROM Account")["records"]}
        sample = scores.sample(50, random_state=0)
        for row in sample.itertuples():
            record = crm_accounts[accounts[row.account_id]]
            assert record["Churnflow_Health_Score__c"] == row.health_score
            assert record["Churnflow_Health_Band__c"].lower() == row.band

        # A second daily run the same day creates no second task and sends no duplicate.
        assert server is not None
        built = read_sql(engine, "SELECT built_at FROM feature_builds WHERE as_of_date = :d", {"d": as_of})
        state = daily_flow(as_of=as_of, return_state=True)
        assert state.is_completed()
        # ...and its expensive work was served by input: features reused, no scoring partition ran.
        assert read_sql(engine, "SELECT built_at FROM feature_builds WHERE as_of_date = :d", {"d": as_of}).equals(built)
        ran = _task_states(state.state_details.flow_run_id, "")
        assert "find-stored-scores" in ran and not any(name.startswith("score-partition") for name in ran), ran
        rescored = read_sql(engine, "SELECT account_id, p_churn, band FROM account_scores WHERE as_of_date = :d ORDER BY account_id",
                            {"d": pd.Timestamp(as_of).to_pydatetime()})
        assert rescored.equals(scores[["account_id", "p_churn", "band"]].sort_values("account_id").reset_index(drop=True))
        again = read_sql(engine, "SELECT task_key FROM outreach_tasks")
        assert again["task_key"].is_unique
        crm_tasks_after = sf.query_all("SELECT Id FROM Task")["records"]
        assert len(crm_tasks_after) == len(crm_tasks)

    # The digest was written as a self-contained HTML file.
    digest = Path(result["digest"])
    text = digest.read_text(encoding="utf-8")
    assert "ARR" in text
    # Drivers are attributed to the catalogue's families (the flow passes the same options as the CLI).
    assert "signals drive most risk" in text and "Other signals drive most risk" not in text
    # The demo monitors the champion, including the realized AUC of a matured score day.
    assert "model monitoring has not run yet" not in text and "no monitoring results" not in text
    assert "Realized AUC" in text or "realized AUC" in text
    assert result["monitor"]
