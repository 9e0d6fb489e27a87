"""The monitor flow: drift and realized performance of the champion land in
model_monitoring, as artifacts, and a breach alerts over the notification channels."""

from __future__ import annotations

from datetime import timedelta

import pandas as pd
import pytest

from churnflow.settings import Settings
from tests.flows.conftest import Receiver

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]


def test_monitor_flow_stores_checks_and_alerts_on_breach(prefect_server: None, receivers: Receiver, trained_copy: Settings,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    from churnflow.warehouse import get_engine, read_sql
    from features.build import default_as_of
    from flows.pipeline import monitor_flow
    from models.score import score_accounts

    monkeypatch.setenv("CHURNFLOW_HOME", str(trained_copy.home))  # a private copy of the trained book and champion
    monkeypatch.setenv("CHURNFLOW_PSI_THRESHOLD", "0.0001")  # every feature "drifts": forces breaches
    settings = Settings()
    engine = get_engine(settings.warehouse)
    last = default_as_of(engine)
    score_accounts(engine, settings, last - timedelta(days=150))  # labels matured by `last`: realized performance

    state = monitor_flow(as_of=last, return_state=True)
    result = state.result()
    assert result["as_of"] == str(last) and result["needs_retraining"] and result["breaches"]

    rows = read_sql(engine, "SELECT * FROM model_monitoring WHERE as_of_date = :d", {"d": pd.Timestamp(last).to_pydatetime()})
    assert {"realized_auc"} <= set(rows["metric"]) and rows["breached"].astype(bool).any()

    with get_client(sync_client=True) as client:
        arts = {a.key: a for a in client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))) if a.key}
    assert arts["model-monitoring"].type == "table" and "needs retraining" in arts["monitor-summary"].data

    assert len(receivers.posts) == 1 and "needs retraining" in receivers.posts[0]["json"]["text"]
    assert len(receivers.mails) == 1
