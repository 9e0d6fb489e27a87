"""The reaction flow on the session's Prefect test server: an inbox event is applied, the
account re-scored with the champion, the event playbook decides a task that reaches the
local CRM, and the daily batch afterwards gives the account the same score."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from crm_sync.client import connect, local_crm
from events.intake import Intake
from events.shapes import SHAPES
from flows.events_bench import event_day, reachable_accounts
from tests.events.conftest import SECRET, signed, typeform_response
from tests.helpers import copy_duckdb_warehouse, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]


def private_trained_home(trained_home: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[Settings, str]:
    """A home of the test's own on a copy of the session's trained warehouse (the champion
    shared, read-only), set in the environment so flow runs in other processes find it too."""
    url = copy_duckdb_warehouse(trained_home.warehouse, tmp_path / "warehouse.duckdb")
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHURNFLOW_WAREHOUSE_URL", url)
    monkeypatch.setenv("CHURNFLOW_MLFLOW_TRACKING_URI", trained_home.tracking_uri)
    monkeypatch.setenv("CHURNFLOW_LOCAL_CRM_PORT", str(free_port()))
    settings = Settings()
    settings.ensure_home()
    return settings, url


def test_detractor_event_rescored_tasked_and_agrees_with_daily(prefect_server: None, trained_home: Settings, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from flows.pipeline import daily_flow
    from flows.react import react_flow, reaction_as_of

    settings, url = private_trained_home(trained_home, tmp_path, monkeypatch)
    engine = get_engine(url)
    last_day = event_day(engine)
    account = reachable_accounts(engine, last_day)[0]

    intake = Intake(settings, {name: SECRET for name in SHAPES}, publish_events=False)
    body, headers = signed("typeform", typeform_response("tf-react-1", account, score=1, at=f"{last_day}T11:00:00Z"))
    assert intake.handle("typeform", body, headers)[0] == 202

    with local_crm(settings):
        result = react_flow(account_id=account, event_id="tf-react-1", debounce_seconds=0)
        assert result["reactions"] == 1 and result["events"] == 1
        as_of = reaction_as_of(pd.Timestamp(f"{last_day} 11:00").to_pydatetime())
        day = {"d": pd.Timestamp(as_of).to_pydatetime(), "a": account}
        assert read_sql(engine, "SELECT status FROM event_inbox WHERE event_id = 'tf-react-1'")["status"].tolist() == ["applied"]
        assert read_sql(engine, "SELECT score FROM surveys WHERE response_id = 'tok-tf-react-1'")["score"].tolist() == [1.0]
        reacted = read_sql(engine, "SELECT p_churn, health_score FROM account_scores WHERE as_of_date = :d AND account_id = :a", day)
        assert len(reacted) == 1
        task = read_sql(engine, "SELECT * FROM outreach_tasks WHERE account_id = :a AND playbook = 'detractor_call'", day)
        assert len(task) == 1 and task["crm_task_id"].notna().all()
        crm_tasks = connect(settings).query_all("SELECT Id, Subject FROM Task")["records"]
        assert task["crm_task_id"].iloc[0] in {t["Id"] for t in crm_tasks}
        reaction = read_sql(engine, "SELECT * FROM event_reactions WHERE account_id = :a", day)
        assert reaction["outcome"].tolist() == ["task"] and reaction["health_after"].tolist() == reacted["health_score"].tolist()

        # The same event again changes nothing.
        assert intake.handle("typeform", body, headers)[0] == 200
        assert react_flow(account_id=account, event_id="tf-react-1", debounce_seconds=0)["reactions"] == 0

        daily_flow(as_of=as_of, dry_run=True)
    batch = read_sql(engine, "SELECT p_churn, health_score FROM account_scores WHERE as_of_date = :d AND account_id = :a", day)
    assert batch["p_churn"].iloc[0] == pytest.approx(reacted["p_churn"].iloc[0], abs=1e-12)
    assert batch["health_score"].iloc[0] == reacted["health_score"].iloc[0]
