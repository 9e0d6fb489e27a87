"""churnflow as operations run it: a real ``prefect server start`` process, a process work
pool, ``prefect deploy --all`` from prefect.yaml, a ``prefect worker start`` process, and a
run triggered through the API with custom parameters (what the UI's "Custom run" does).

Also proves what a mocked harness cannot: the server's scheduler turns the cron schedules
into scheduled runs (SQLAlchemy 2.1 silently breaks that), the deploy step talks to the
server API (fastapi >= 0.151 breaks it with 422) and the deployed parameter schema carries
the docstring descriptions the UI shows.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import pandas as pd
import psutil
import pytest
import requests

from tests.flows.conftest import Receiver
from tests.helpers import copy_home, free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect-real")]

PROJECT_DIR = Path(__file__).resolve().parents[2]
POOL = "churnflow-pool"
BIN = Path(sys.executable).parent


@dataclass
class RealPrefect:
    api_url: str
    env: dict[str, str]  # environment for prefect CLI processes talking to this server
    tmp: Path
    procs: list[subprocess.Popen]
    log_files: list[Path]

    def cli(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        done = subprocess.run(
            [str(BIN / "prefect"), "--no-prompt", *args], cwd=PROJECT_DIR, env=self.env,
            capture_output=True, text=True, timeout=timeout,
        )
        assert done.returncode == 0, f"prefect {' '.join(args)} failed:\n{done.stdout}\n{done.stderr}"
        return done

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        log = self.tmp / f"{name}.log"
        self.log_files.append(log)
        proc = subprocess.Popen(
            args, cwd=PROJECT_DIR, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: teardown kills the whole tree
        )
        self.procs.append(proc)
        return proc

    def logs(self) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-6000:]}" for p in self.log_files if p.exists())


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "CHURNFLOW_"))
           or k.startswith(("CHURNFLOW_MIN_CHURNERS_", "CHURNFLOW_GATE_"))}  # the small test books' gate (tests/conftest.py)
    env.update(PREFECT_SERVER_ANALYTICS_ENABLED="false", MPLBACKEND="Agg", PYTHONUNBUFFERED="1")
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def stop_tree(procs: list[subprocess.Popen]) -> list[int]:
    """SIGTERM then SIGKILL every process group and every descendant; return survivors."""
    tree: set[int] = set()
    for proc in procs:
        tree.add(proc.pid)
        try:
            tree.update(child.pid for child in psutil.Process(proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            pass
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                pass
        for pid in tree:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline and any(_alive(pid) for pid in tree):
            for proc in procs:
                proc.poll()  # reap our direct children
            time.sleep(0.2)
    for proc in procs:
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
    return [pid for pid in tree if _alive(pid)]


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def wait_for_release(root: subprocess.Popen, path: Path, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        holders = []
        try:
            for proc in psutil.Process(root.pid).children(recursive=True):
                try:
                    if any(Path(f.path) == path for f in proc.open_files()):
                        holders.append(proc.pid)
                except psutil.Error:
                    pass
        except psutil.NoSuchProcess:
            return
        if not holders:
            return
        time.sleep(0.3)
    raise AssertionError(f"{path} still open in {holders} after {timeout} s")


@contextmanager
def start_real_prefect(tmp: Path, extra_server_env: dict[str, str] | None = None) -> Iterator[RealPrefect]:
    """``prefect server start`` on a free port with its own PREFECT_HOME (plus
    ``extra_server_env``, e.g. a PostgreSQL database URL), the process work pool and
    ``prefect deploy --all``; on exit every spawned process tree is stopped."""
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    rp = RealPrefect(api_url, clean_env(PREFECT_HOME=str(tmp / "cli-home"), PREFECT_API_URL=api_url), tmp, [], [])
    server_env = clean_env(
        PREFECT_HOME=str(tmp / "server-home"),
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_API_HOST="127.0.0.1",
        PREFECT_SERVER_API_PORT=str(port),
        PREFECT_UI_ENABLED="false",
        # Keep the scheduler quick: it still has to do its real work, just sooner.
        PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS="5",
        PREFECT_SERVER_SERVICES_SCHEDULER_RECENT_DEPLOYMENTS_LOOP_SECONDS="2",
    )
    server_env.update(extra_server_env or {})
    rp.spawn("server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)], server_env)
    try:
        deadline = time.monotonic() + 90
        while True:
            assert rp.procs[0].poll() is None, f"prefect server exited:\n{rp.logs()}"
            try:
                if requests.get(f"{api_url}/health", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, f"prefect server did not come up in 90 s:\n{rp.logs()}"
            time.sleep(0.5)
        rp.cli("work-pool", "create", POOL, "--type", "process")
        rp.cli("deploy", "--all", timeout=180)
        yield rp
    finally:
        survivors = stop_tree(rp.procs)
        assert not survivors, f"processes left behind: {survivors}"


@pytest.fixture(scope="module")
def real_prefect(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealPrefect]:
    with start_real_prefect(tmp_path_factory.mktemp("real-prefect")) as rp:
        yield rp


def _client(api_url: str):  # noqa: ANN202 - context manager from prefect
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    class _Ctx:
        async def __aenter__(self):  # noqa: ANN204
            self._settings = temporary_settings({PREFECT_API_URL: api_url})
            self._settings.__enter__()
            self._client = get_client()
            return await self._client.__aenter__()

        async def __aexit__(self, *exc: object) -> None:
            await self._client.__aexit__(*exc)
            self._settings.__exit__(*exc)

    return _Ctx()


def run(coro):  # noqa: ANN001, ANN201
    import asyncio

    return asyncio.run(coro)


def test_deployments_have_schedules_schema_and_limits(real_prefect: RealPrefect) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    expected = {"daily/daily": "0 6 * * *", "train/train": "0 2 * * 0", "monitor/monitor": "30 6 * * *", "digest/digest": "0 7 * * 1",
                "backfill/backfill": None}

    async def check() -> dict[str, list]:
        async with _client(real_prefect.api_url) as client:
            deployments = {name: await client.read_deployment_by_name(name) for name in expected}
            for name, cron in expected.items():
                dep = deployments[name]
                assert dep.work_pool_name == POOL
                assert dep.concurrency_limit == 1 or (dep.global_concurrency_limit and dep.global_concurrency_limit.limit == 1)
                crons = [(s.schedule.cron, s.schedule.timezone, s.active) for s in dep.schedules]
                assert crons == ([(cron, "UTC", True)] if cron else []), (name, crons)  # the schedule_timezone anchor
                # The UI's parameter form shows these descriptions (from the flow docstring's Args:).
                props = dep.parameter_openapi_schema.get("properties", {})
                assert props, name
                for param, spec in props.items():
                    assert spec.get("description"), f"{name}: parameter {param} has no description"
            params = {name: set(dep.parameter_openapi_schema["properties"]) for name, dep in deployments.items()}
            assert params == {
                "daily/daily": {"as_of", "dry_run", "accounts"}, "train/train": {"force"}, "monitor/monitor": {"as_of"},
                "digest/digest": {"week_ending"}, "backfill/backfill": {"start", "end", "every_days", "score"},
            }
            assert set(deployments["backfill/backfill"].parameter_openapi_schema.get("required", [])) == {"start", "end"}
            # Bounded poll: the scheduler loop creates runs for the cron schedules.
            scheduled: dict[str, list] = {}
            deadline = time.monotonic() + 60
            while True:
                for name, cron in expected.items():
                    if cron:
                        scheduled[name] = await client.read_flow_runs(
                            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments[name].id])),
                            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))),
                        )
                if all(scheduled.values()) or time.monotonic() > deadline:
                    break
                time.sleep(1)
            backfill_runs = await client.read_flow_runs(deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployments["backfill/backfill"].id])))
            assert backfill_runs == []  # on demand only
            return scheduled

    scheduled = run(check())
    assert all(scheduled.values()), f"the scheduler created no runs: { {k: len(v) for k, v in scheduled.items()} }\n{real_prefect.logs()}"
    for run_ in scheduled["daily/daily"]:
        assert run_.expected_start_time.astimezone(__import__("datetime").timezone.utc).hour == 6
    for run_ in scheduled["train/train"]:
        when = run_.expected_start_time.astimezone(__import__("datetime").timezone.utc)
        assert (when.isoweekday(), when.hour) == (7, 2)


@dataclass
class LoadedHome:
    settings: object
    home: Path
    crm_port: int
    last: date  # the default as-of date (day after the newest data)


@pytest.fixture(scope="module")
def loaded_home(tmp_path_factory: pytest.TempPathFactory, trained_store: Path) -> LoadedHome:
    """A churnflow home with a small book and a trained champion (a private copy of the trained
    book: the runs below write scores and digests into it), used by the runs below."""
    from churnflow.settings import Settings
    from churnflow.warehouse import get_engine
    from features.build import default_as_of

    home = copy_home(trained_store, tmp_path_factory.mktemp("real-home") / "home")
    crm_port = free_port()
    settings = Settings(home=home, local_crm_port=crm_port)  # type: ignore[arg-type]
    engine = get_engine(settings.warehouse)
    last = default_as_of(engine)
    engine.dispose()  # DuckDB: one writer process per file, and the flow runs are other processes
    return LoadedHome(settings, home, crm_port, last)


def test_worker_runs_a_custom_daily_run(real_prefect: RealPrefect, loaded_home: LoadedHome) -> None:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment

    from churnflow.warehouse import get_engine, read_sql
    from crm_sync.client import local_crm

    settings, home, crm_port = loaded_home.settings, loaded_home.home, loaded_home.crm_port
    as_of = loaded_home.last - pd.Timedelta(days=3).to_pytimedelta()  # not the default: proves the parameter arrives

    async def pause_schedules() -> None:
        # Nothing scheduled may race the run under test.
        async with _client(real_prefect.api_url) as client:
            for name in ("daily/daily", "train/train", "monitor/monitor", "digest/digest"):
                await client.pause_deployment((await client.read_deployment_by_name(name)).id)

    run(pause_schedules())

    with local_crm(settings) as crm:
        assert crm is not None
        worker_env = clean_env(
            PREFECT_HOME=str(real_prefect.tmp / "worker-home"),
            PREFECT_API_URL=real_prefect.api_url,
            PREFECT_WORKER_QUERY_SECONDS="2",
            PREFECT_WORKER_PREFETCH_SECONDS="5",
            CHURNFLOW_HOME=str(home),
            CHURNFLOW_LOCAL_CRM_PORT=str(crm_port),
            CHURNFLOW_PROJECT_DIR=str(PROJECT_DIR),
        )
        worker = real_prefect.spawn(
            "worker", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", "test-worker"], worker_env
        )

        async def trigger() -> tuple[object, list]:
            from prefect.settings import PREFECT_API_URL, temporary_settings

            with temporary_settings({PREFECT_API_URL: real_prefect.api_url}):
                flow_run = await run_deployment("daily/daily", parameters={"as_of": as_of, "dry_run": False}, timeout=200, poll_interval=2)
                async with _client(real_prefect.api_url) as client:
                    artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
            return flow_run, artifacts

        flow_run, artifacts = run(trigger())
        assert worker.poll() is None, f"worker died:\n{real_prefect.logs()}"
        assert flow_run.state.is_completed(), f"daily run ended {flow_run.state}:\n{real_prefect.logs()}"
        assert flow_run.parameters["as_of"] in (as_of, str(as_of))

        # The flow-run process reports Completed a moment before it exits and lets go of the
        # DuckDB file (one writer process per file).
        wait_for_release(worker, home / "warehouse.duckdb")
        engine = get_engine(settings.warehouse)
        scores = read_sql(engine, "SELECT account_id, band FROM account_scores WHERE as_of_date = :d", {"d": pd.Timestamp(as_of).to_pydatetime()})
        assert len(scores) > 100
        other_days = read_sql(engine, "SELECT COUNT(*) AS n FROM account_scores WHERE as_of_date <> :d", {"d": pd.Timestamp(as_of).to_pydatetime()})
        assert int(other_days["n"].iloc[0]) == 0
        engine.dispose()
        by_key = {a.key: a for a in artifacts if a.key}
        assert by_key["top-at-risk-accounts"].type == "table"
        assert by_key["daily-summary"].type == "markdown"
        assert str(as_of) in by_key["daily-summary"].data
        assert isinstance(as_of, date)


def test_killed_flow_run_is_crashed_and_notified(real_prefect: RealPrefect, loaded_home: LoadedHome, receivers: Receiver) -> None:
    """SIGKILL the flow-run process: the worker marks the run Crashed and runs the on_crashed hook."""
    # A worker whose environment carries the notification settings (the hook runs in the worker).
    assert not stop_tree([p for p in real_prefect.procs if "worker" in " ".join(map(str, p.args))])
    worker = real_prefect.spawn(
        "worker-notify", [str(BIN / "prefect"), "worker", "start", "--pool", POOL, "--type", "process", "--name", "notify-worker"],
        clean_env(
            PREFECT_HOME=str(real_prefect.tmp / "worker-home"), PREFECT_API_URL=real_prefect.api_url,
            PREFECT_WORKER_QUERY_SECONDS="2", PREFECT_WORKER_PREFETCH_SECONDS="5",
            CHURNFLOW_HOME=str(loaded_home.home), CHURNFLOW_LOCAL_CRM_PORT=str(loaded_home.crm_port), CHURNFLOW_PROJECT_DIR=str(PROJECT_DIR),
            **{k: v for k, v in os.environ.items() if k.startswith(("CHURNFLOW_NOTIFY_", "CHURNFLOW_SMTP_"))},
        ),
    )

    # Started the way the runbook says (docs/operations.md): the CLI with --param.
    started = real_prefect.cli("deployment", "run", "daily/daily", "--param", f"as_of={loaded_home.last}", "--param", "dry_run=true")
    run_id = re.search(r"UUID:\s*([0-9a-f-]{36})", started.stdout)
    assert run_id, started.stdout

    async def kill_a_run() -> object:
        deadline = time.monotonic() + 120
        async with _client(real_prefect.api_url) as client:  # kill it mid-run, as the OOM killer would
            flow_run = await client.read_flow_run(run_id.group(1))
            assert flow_run.parameters == {"as_of": str(loaded_home.last), "dry_run": True}
            while not ((await client.read_flow_run(flow_run.id)).state or flow_run.state).is_running():
                assert worker.poll() is None and time.monotonic() < deadline, f"the run never started:\n{real_prefect.logs()}"
                await asyncio.sleep(0.2)
        carriers = []
        for child in psutil.Process(worker.pid).children(recursive=True):
            try:
                if child.environ().get("PREFECT__FLOW_RUN_ID") == str(flow_run.id):
                    carriers.append(child)
            except psutil.Error:
                pass
        # The process that executes the flow: the innermost one carrying the run id.
        victim = next(p for p in carriers if not any(c in carriers for c in p.children(recursive=True)))
        victim.kill()
        async with _client(real_prefect.api_url) as client:
            while True:
                current = await client.read_flow_run(flow_run.id)
                if current.state and current.state.is_final():
                    return current
                assert time.monotonic() < deadline, f"run never ended after the kill:\n{real_prefect.logs()}"
                await asyncio.sleep(0.5)

    killed = run(kill_a_run())
    assert killed.state.is_crashed(), killed.state
    deadline = time.monotonic() + 60
    while not receivers.posts and time.monotonic() < deadline:
        time.sleep(0.5)
    assert receivers.posts, f"no crash notification:\n{real_prefect.logs()}"
    text = receivers.posts[0]["json"]["text"]
    assert "Crashed" in text and killed.name in text and "daily" in text


def test_serve_runs_a_deployment_without_a_worker(real_prefect: RealPrefect, loaded_home: LoadedHome) -> None:
    """``python -m flows.serve`` registers the deployments and executes a custom run itself."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # No worker from here on: whatever runs the digest below is the serve process.
    workers = [p for p in real_prefect.procs if "worker" in " ".join(map(str, p.args))]
    assert not stop_tree(workers)
    # Over a `prefect deploy` deployment of the same name, serve refuses without --replace.
    refused = subprocess.run([sys.executable, "-m", "flows.serve", "--only", "digest"], cwd=PROJECT_DIR, capture_output=True, text=True, timeout=120,
                             env=clean_env(PREFECT_HOME=str(real_prefect.tmp / "serve-home"), PREFECT_API_URL=real_prefect.api_url))
    assert refused.returncode != 0 and "--replace" in refused.stderr, refused.stderr[-2000:]
    served = real_prefect.spawn(
        "serve", [sys.executable, "-m", "flows.serve", "--only", "digest", "--replace"],
        clean_env(PREFECT_HOME=str(real_prefect.tmp / "serve-home"), PREFECT_API_URL=real_prefect.api_url,
                  PREFECT_RUNNER_POLL_FREQUENCY="2", CHURNFLOW_HOME=str(loaded_home.home)),
    )
    serve_log = real_prefect.log_files[-1]
    week_ending = loaded_home.last - pd.Timedelta(days=3).to_pytimedelta()  # the day the worker test scored

    async def trigger() -> tuple[object, list]:
        deadline = time.monotonic() + 90
        while "being served" not in (serve_log.read_text(errors="replace") if serve_log.exists() else ""):
            assert served.poll() is None, f"serve exited:\n{real_prefect.logs()}"
            assert time.monotonic() < deadline, f"serve did not register the deployment:\n{real_prefect.logs()}"
            await asyncio.sleep(0.5)
        with temporary_settings({PREFECT_API_URL: real_prefect.api_url}):
            flow_run = await run_deployment("digest/digest", parameters={"week_ending": week_ending}, timeout=150, poll_interval=2)
        async with _client(real_prefect.api_url) as client:
            artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
        return flow_run, artifacts

    flow_run, artifacts = run(trigger())
    assert flow_run.state.is_completed(), f"digest run ended {flow_run.state}:\n{real_prefect.logs()}"
    assert "weekly-digest" in {a.key for a in artifacts}
    assert f"Beginning flow run '{flow_run.name}'" in serve_log.read_text(errors="replace")
    assert list((loaded_home.home / "digests").glob("*.html")), "no digest file written"
