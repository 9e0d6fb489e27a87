"""churnflow's two PostgreSQL back ends as operations run them (docs/operations.md sections
7 and 8), not mocked:

- a real ``prefect server start`` whose own database is PostgreSQL
  (``PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...``): it migrates its tables
  into a fresh database, takes ``prefect deploy --all`` from prefect.yaml and its scheduler
  writes the cron schedules' runs there;
- MLflow tracking and model registry on PostgreSQL
  (``CHURNFLOW_MLFLOW_TRACKING_URI=postgresql+psycopg://...``): a ``prefect worker`` runs the
  ``train`` deployment, whose run, metrics and registered model version land in a second
  fresh database, and a second ``train`` run reads them back (and skips the retrain).

Each back end gets a database of its own (``cf_prefect_<hex>`` / ``cf_mlflow_<hex>``),
dropped at teardown after every process is stopped.
"""

from __future__ import annotations

import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from tests.conftest import POSTGRES_URL, postgres_available
from tests.flows.test_real_server import BIN, POOL, PROJECT_DIR, RealPrefect, _client, clean_env, run, start_real_prefect, wait_for_release

pytestmark = [pytest.mark.slow, pytest.mark.postgres, pytest.mark.xdist_group("prefect-real")]

_PREFECT_YAML = yaml.safe_load((PROJECT_DIR / "prefect.yaml").read_text())["deployments"]
DEPLOYMENTS = [d["name"] for d in _PREFECT_YAML]
SCHEDULED = [d["name"] for d in _PREFECT_YAML if d.get("schedules")]


@dataclass
class PgBackends:
    prefect: RealPrefect
    prefect_db: sa.Engine  # the Prefect server's database, for looking at its tables directly
    mlflow_db: sa.Engine
    mlflow_uri: str  # postgresql+psycopg://... as CHURNFLOW_MLFLOW_TRACKING_URI takes it


def _drop_database(admin: sa.Engine, name: str) -> None:
    with admin.connect() as conn:
        conn.execute(sa.text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = :d AND pid <> pg_backend_pid()"), {"d": name})
        conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}"'))


@pytest.fixture(scope="module")
def pg_backends(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBackends]:
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    base = sa.make_url(POSTGRES_URL)
    suffix = uuid.uuid4().hex[:10]
    names = {"prefect": f"cf_prefect_{suffix}", "mlflow": f"cf_mlflow_{suffix}"}
    admin = sa.create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    created: list[str] = []
    engines: list[sa.Engine] = []
    try:
        with admin.connect() as conn:
            for name in names.values():
                conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
                created.append(name)
        prefect_url = base.set(drivername="postgresql+asyncpg", database=names["prefect"]).render_as_string(hide_password=False)
        mlflow_uri = base.set(drivername="postgresql+psycopg", database=names["mlflow"]).render_as_string(hide_password=False)
        prefect_db = sa.create_engine(base.set(drivername="postgresql+psycopg", database=names["prefect"]), poolclass=sa.NullPool)
        mlflow_db = sa.create_engine(mlflow_uri, poolclass=sa.NullPool)
        engines += [prefect_db, mlflow_db]
        with start_real_prefect(tmp_path_factory.mktemp("pg-prefect"), {"PREFECT_API_DATABASE_CONNECTION_URL": prefect_url}) as rp:
            yield PgBackends(rp, prefect_db, mlflow_db, mlflow_uri)
    finally:
        for engine in engines:
            engine.dispose()
        for name in created:
            _drop_database(admin, name)
        with admin.connect() as conn:
            left = conn.execute(sa.text("SELECT datname FROM pg_database WHERE datname = ANY(:n)"), {"n": created}).scalars().all()
        admin.dispose()
        assert not left, f"databases left behind: {left}"


def _tables(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return set(conn.execute(sa.text("SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'")).scalars())


def test_prefect_server_keeps_its_state_in_postgres(pg_backends: PgBackends) -> None:
    """Section 7: the server migrated its schema into PostgreSQL, and the deployments from
    prefect.yaml and the runs its scheduler creates are rows there (no SQLite anywhere)."""
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    rp, db = pg_backends.prefect, pg_backends.prefect_db
    tables = _tables(db)
    assert {"alembic_version", "flow", "deployment", "deployment_schedule", "flow_run", "work_pool", "artifact", "log"} <= tables, sorted(tables)
    assert not list((rp.tmp / "server-home").rglob("*.db")), "the server wrote an SQLite database"
    with db.connect() as conn:
        deployments = dict(conn.execute(sa.text("SELECT d.name, d.id FROM deployment d JOIN flow f ON f.id = d.flow_id WHERE f.name = d.name")).all())
        pools = conn.execute(sa.text("SELECT name, type FROM work_pool WHERE name = :p"), {"p": POOL}).all()
        schedules = dict(conn.execute(sa.text(
            "SELECT d.name, s.schedule::text FROM deployment_schedule s JOIN deployment d ON d.id = s.deployment_id")).all())
    assert sorted(deployments) == sorted(DEPLOYMENTS)
    assert [tuple(p) for p in pools] == [(POOL, "process")]
    assert sorted(schedules) == sorted(SCHEDULED)
    assert '"0 6 * * *"' in schedules["daily"], schedules["daily"]

    # The scheduler (a server service talking to PostgreSQL) turns the crons into runs.
    deadline = time.monotonic() + 60
    while True:
        with db.connect() as conn:
            per_deployment = dict(conn.execute(sa.text(
                "SELECT d.name, COUNT(r.id) FROM deployment d LEFT JOIN flow_run r ON r.deployment_id = d.id"
                " AND r.state_type::text = 'SCHEDULED' GROUP BY d.name")).all())
        if all(per_deployment.get(name) for name in SCHEDULED) or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert all(per_deployment.get(name) for name in SCHEDULED), f"no scheduled runs in PostgreSQL: {per_deployment}\n{rp.logs()}"
    assert per_deployment["backfill"] == 0  # on demand only

    # ... and the API serves exactly those rows.
    async def api_scheduled() -> dict[str, set[str]]:
        async with _client(rp.api_url) as client:
            out = {}
            for name in SCHEDULED:
                runs = await client.read_flow_runs(
                    deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments[name]])),
                    flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                )
                out[name] = {str(r.id) for r in runs}
            return out

    from_api = run(api_scheduled())
    with db.connect() as conn:
        for name in SCHEDULED:
            in_db = {str(i) for i in conn.execute(sa.text(
                "SELECT id FROM flow_run WHERE deployment_id = :d AND state_type::text = 'SCHEDULED'"), {"d": deployments[name]}).scalars()}
            assert from_api[name] and from_api[name] <= in_db, (name, from_api[name], in_db)


def _trigger_train(rp: RealPrefect, force: bool) -> tuple[object, dict[str, object]]:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    async def go() -> tuple[object, dict[str, object]]:
        with temporary_settings({PREFECT_API_URL: rp.api_url}):
            flow_run = await run_deployment("train/train", parameters={"force": force}, timeout=240, poll_interval=2)
        async with _client(rp.api_url) as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        return flow_run, {a.key: a for a in artifacts if a.key}

    return run(go())


def test_worker_trains_into_mlflow_on_postgres(pg_backends: PgBackends, tmp_path: Path) -> None:
    """Section 8: the ``train`` deployment, run by a worker whose churnflow settings point
    MLflow at PostgreSQL, records its run and registers a model version there; a second run
    reads the registry back and skips the retrain. The flow runs themselves are rows in the
    Prefect server's PostgreSQL database."""
    from mlflow import MlflowClient

    from churnflow.demo_data import generate_book, write_book
    from churnflow.settings import Settings
    from churnflow.warehouse import get_engine

    rp, uri = pg_backends.prefect, pg_backends.mlflow_uri
    assert uri.startswith("postgresql+psycopg://")

    async def pause_schedules() -> None:
        # Nothing scheduled may race the runs under test (DuckDB: one writer process per file).
        async with _client(rp.api_url) as client:
            for name in SCHEDULED:
                await client.pause_deployment((await client.read_deployment_by_name(f"{name}/{name}")).id)

    run(pause_schedules())

    home = tmp_path / "home"
    settings = Settings(home=home, mlflow_tracking_uri=uri)  # type: ignore[arg-type]
    settings.ensure_home()
    engine = get_engine(settings.warehouse)
    write_book(engine, generate_book(accounts=300, days=540, seed=3))
    engine.dispose()  # the flow run is another process

    worker = rp.spawn(
        "worker-pg", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", "pg-worker"],
        clean_env(
            PREFECT_HOME=str(rp.tmp / "worker-home"), PREFECT_API_URL=rp.api_url,
            PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
            CHURNFLOW_HOME=str(home), CHURNFLOW_MLFLOW_TRACKING_URI=uri, CHURNFLOW_PROJECT_DIR=str(PROJECT_DIR),
        ),
    )

    flow_run, artifacts = _trigger_train(rp, force=False)
    assert worker.poll() is None, f"worker died:\n{rp.logs()}"
    assert flow_run.state.is_completed(), f"train run ended {flow_run.state}:\n{rp.logs()}"
    run_id = re.search(r"/runs/([0-9a-f]{32})\b", artifacts["train-mlflow-run"].data)
    assert run_id, artifacts["train-mlflow-run"].data
    run_id = run_id.group(1)
    summary = artifacts["train-summary"].data
    version = re.search(r"- model version: (\d+)", summary).group(1)
    promoted = re.search(r"- promoted: (True|False)", summary).group(1) == "True"
    reported_auc = float(re.search(r"- holdout roc_auc: ([0-9.]+)", summary).group(1))

    # Nothing fell back to the embedded SQLite store.
    assert not (home / "mlflow.db").exists()
    # MLflow's schema lives in its own PostgreSQL database, with this run in it.
    tables = _tables(pg_backends.mlflow_db)
    assert {"alembic_version", "experiments", "runs", "metrics", "params", "registered_models", "model_versions", "registered_model_aliases"} <= tables
    with pg_backends.mlflow_db.connect() as conn:
        experiment = conn.execute(sa.text("SELECT e.name FROM runs r JOIN experiments e ON e.experiment_id = r.experiment_id WHERE r.run_uuid = :r"),
                                  {"r": run_id}).scalar_one()
        sql_auc = conn.execute(sa.text("SELECT value FROM latest_metrics WHERE run_uuid = :r AND key = 'holdout_roc_auc'"), {"r": run_id}).scalar_one()
        sql_versions = conn.execute(sa.text("SELECT version, run_id FROM model_versions WHERE name = :n"), {"n": settings.model_name}).all()
    assert experiment == settings.mlflow_experiment
    assert sql_auc == pytest.approx(reported_auc, abs=1e-4)
    assert [(str(v), r) for v, r in sql_versions] == [(version, run_id)]

    # The MLflow client, pointed at the same URI, sees the run, its metrics and the registry.
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mlrun = client.get_run(run_id)
    assert mlrun.info.status == "FINISHED"
    assert 0.5 < mlrun.data.metrics["holdout_roc_auc"] <= 1 and mlrun.data.metrics["holdout_roc_auc"] == pytest.approx(sql_auc)
    assert {"holdout_pr_auc", "holdout_ece", "holdout_brier"} <= set(mlrun.data.metrics)
    mv = client.get_model_version(settings.model_name, version)
    assert mv.run_id == run_id
    assert mv.tags["gate_decision"] == ("promoted" if promoted else "refused")
    assert str(client.get_model_version_by_alias(settings.model_name, "challenger").version) == version
    if promoted:
        assert str(client.get_model_version_by_alias(settings.model_name, "champion").version) == version
    # The model's files go to the home's artifact store (the experiment's artifact location).
    assert any((home / "mlartifacts").rglob("MLmodel")), "no model artifacts under <home>/mlartifacts"

    # A second run on unchanged data reads that version back from PostgreSQL and skips.
    wait_for_release(worker, home / "warehouse.duckdb")
    again, again_artifacts = _trigger_train(rp, force=False)
    assert again.state.is_completed(), f"second train run ended {again.state}:\n{rp.logs()}"
    assert again_artifacts["train-summary"].data.startswith("# Training skipped"), again_artifacts["train-summary"].data
    assert "train-mlflow-run" not in again_artifacts
    assert len(client.search_model_versions(f"name = '{settings.model_name}'")) == 1

    # Both flow runs (and their artifacts) are rows in the Prefect server's PostgreSQL database.
    with pg_backends.prefect_db.connect() as conn:
        rows = dict(conn.execute(sa.text("SELECT id::text, state_type::text FROM flow_run WHERE id = ANY(CAST(:ids AS uuid[]))"),
                                 {"ids": [str(flow_run.id), str(again.id)]}).all())
        keys = set(conn.execute(sa.text("SELECT key FROM artifact WHERE flow_run_id = CAST(:r AS uuid)"), {"r": str(flow_run.id)}).scalars())
    assert rows == {str(flow_run.id): "COMPLETED", str(again.id): "COMPLETED"}
    assert {"train-mlflow-run", "train-summary"} <= keys
