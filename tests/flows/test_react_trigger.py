"""The reaction path end to end, on the session's Prefect server, as an operator runs it:
webhooks POSTed over HTTP to ``churnflow serve-events`` -> Prefect events -> the ``react``
deployment's trigger from prefect.yaml, served by ``python -m flows.serve --only react`` ->
a react run -> a Task and the health fields in the local CRM (read back by simple-salesforce).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import pytest
import requests

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from crm_sync.client import connect
from flows.events_bench import debounce_seconds, event_day, event_stack, max_runs_per_window, post, reachable_accounts, wait_reactions
from events.samples import signed, typeform_response, zendesk_ticket
from flows.react import reaction_as_of
from tests.flows.test_react import private_trained_home

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]


def _delete_react_deployment() -> None:
    """The session server outlives this test: leave no trigger behind for other tests' events."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.delete_deployment(client.read_deployment_by_name("react/react").id)
        except ObjectNotFound:
            pass


def test_burst_over_http_reaches_the_crm_through_the_trigger_once(prefect_server: None, trained_home: Settings, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import get_current_settings

    settings, url = private_trained_home(trained_home, tmp_path, monkeypatch)
    engine = get_engine(url)
    day = event_day(engine)
    account = reachable_accounts(engine, day)[0]
    crm_id = str(read_sql(engine, "SELECT crm_account_id FROM accounts WHERE account_id = :a", {"a": account}).iloc[0, 0])
    engine.dispose()  # DuckDB: the intake and the react run are other processes
    burst = [("typeform", typeform_response("e2e-nps", account, score=1, at=f"{day}T09:00:00Z")),
             ("zendesk", zendesk_ticket("e2e-ticket", account, ticket="E2E-1", at=f"{day}T09:05:00Z", opened_at=f"{day}T09:04:00Z")),
             ("zendesk", zendesk_ticket("e2e-ticket-2", account, ticket="E2E-1", kind="priority_changed", at=f"{day}T09:10:00Z",
                                        opened_at=f"{day}T09:04:00Z"))]
    # (no failure event here: on DuckDB a usage row cannot be applied yet, tests/events/test_inbox.py)

    try:
        with event_stack(settings, tmp_path / "stack", api_url=get_current_settings().api.url, serve_limit=2) as stack:
            # A bad signature is refused before anything is read or stored.
            body, headers = signed("typeform", typeform_response("e2e-forged", account, score=0, at=f"{day}T08:00:00Z"), b"not-the-secret")
            refused = requests.post(f"{stack.intake_url}/events/typeform", data=body, headers=headers, timeout=60)
            assert refused.status_code == 401, refused.text

            since = datetime.utcnow() - timedelta(seconds=5)
            for shape, payload in burst:
                status, answer, _ = post(stack, shape, payload)
                assert (status, answer["status"]) == (202, "accepted"), answer
            status, answer, _ = post(stack, "typeform", burst[0][1])  # the same event id again
            assert (status, answer["status"]) == (200, "duplicate"), answer

            runs = wait_reactions(stack, since, {account}, timeout=240)
            assert runs and all(r["state"] == "COMPLETED" for r in runs), f"{runs}\n{stack.tail()}"
            assert max_runs_per_window(runs, debounce_seconds()) == 1, runs  # the burst started one run

            sf = connect(settings)
            tasks = sf.query_all(f"SELECT Id, Subject FROM Task WHERE WhatId = '{crm_id}'")["records"]
            crm_account = sf.query(f"SELECT Churnflow_Score_As_Of__c, Churnflow_Health_Score__c FROM Account WHERE Id = '{crm_id}'")["records"]
    finally:
        _delete_react_deployment()

    assert [t["Subject"].split(":")[0] for t in tasks] == ["Detractor"], tasks
    as_of = reaction_as_of(pd.Timestamp(f"{day} 09:10").to_pydatetime())
    assert str(crm_account[0]["Churnflow_Score_As_Of__c"])[:10] == as_of.isoformat()

    engine = get_engine(url)
    inbox = read_sql(engine, "SELECT event_id, status, reaction_run FROM event_inbox ORDER BY event_id")
    assert inbox["event_id"].tolist() == ["e2e-nps", "e2e-ticket", "e2e-ticket-2"]  # the forged one never got in, the duplicate once
    assert set(inbox["status"]) == {"applied"} and inbox["reaction_run"].nunique() == 1
    reactions = read_sql(engine, "SELECT event_ids, health_after, outcome FROM event_reactions WHERE account_id = :a", {"a": account})
    assert len(reactions) == 1 and sorted(json.loads(reactions["event_ids"].iloc[0])) == inbox["event_id"].tolist()
    assert reactions["outcome"].tolist() == ["task"]
    assert int(crm_account[0]["Churnflow_Health_Score__c"]) == int(reactions["health_after"].iloc[0])
    engine.dispose()
