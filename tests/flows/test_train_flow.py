"""The train flow: a link artifact to the MLflow run, a skip when the data has not moved
since the champion was trained (no duplicate model versions from reruns), and ``force``."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]


def _artifacts(flow_run_id: object) -> dict[str, object]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        found = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


def test_train_links_mlflow_skips_unchanged_data_and_forces(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from churnflow.demo_data import generate_book, write_book
    from churnflow.settings import Settings
    from churnflow.warehouse import get_engine
    from flows.pipeline import train_flow
    from models.registry import configure_mlflow

    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    settings = Settings()
    settings.ensure_home()
    write_book(get_engine(settings.warehouse), generate_book(accounts=300, days=540, seed=3))

    state = train_flow(return_state=True)
    first = state.result()
    assert first["model_version"] == "1" and first["promoted"] and first["roc_auc"] > 0.5
    arts = _artifacts(state.state_details.flow_run_id)
    experiment_id = configure_mlflow(settings).get_run(first["run_id"]).info.experiment_id
    assert f"{settings.mlflow_ui_url}/#/experiments/{experiment_id}/runs/{first['run_id']}" in arts["train-mlflow-run"].data
    assert "holdout roc_auc" in arts["train-summary"].data

    again = train_flow()
    assert again["reason"].startswith("skipped") and again["model_version"] == "1" and again["run_id"] == first["run_id"]
    assert again["roc_auc"] == pytest.approx(first["roc_auc"])
    assert len(MlflowClient().search_model_versions(f"name = '{settings.model_name}'")) == 1

    forced = train_flow(force=True)
    assert forced["model_version"] == "2" and not forced["reason"].startswith("skipped")
    # Same data, same settings: a rerun skips against the newest version, promoted or not.
    rerun = train_flow()
    assert rerun["reason"].startswith("skipped") and rerun["model_version"] == "2"

    # A changed training setting makes a retrain due without force.
    monkeypatch.setenv("CHURNFLOW_LEARNING_RATE", "0.07")
    changed = train_flow()
    assert changed["model_version"] == "3"
