"""``churnflow bench events``: latency and load of the event reaction path on a running stack.

The stack is what an operator runs (docs/events.md): a Prefect server, the ``react``
deployment served by ``python -m flows.serve --only react``, the local CRM and
``churnflow serve-events``. :func:`event_stack` starts the parts it is not given (each a
process of its own, stopped afterwards) or uses running ones; the end-to-end test
(tests/flows/test_react_trigger.py) starts its stack the same way.

Figures:

* **latency**: N detractor surveys (Typeform shape), one per account, posted ``interval``
  seconds apart; for each, the seconds from the HTTP acknowledgement to the moment the
  account's detractor Task and its health fields (``Churnflow_Score_As_Of__c`` = the
  reaction's day) are both visible in the CRM, read back through simple-salesforce (polled
  every :data:`POLL_SECONDS`, so figures are up to that much late). p50, p95, max.
* **burst**: ``burst_events`` events (surveys, Zendesk tickets, failures) over
  ``burst_accounts`` accounts, posted at once by a few threads: acknowledged, in the inbox,
  lost (acknowledged but not in the inbox: must be 0), applied, reactions run (flow runs of
  ``react``), and reactions per account per debounce window (the trigger allows one).
"""

from __future__ import annotations

import logging
import os
import random
import secrets as secrets_module
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import requests
import sqlalchemy as sa

from churnflow.errors import ChurnflowError
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, table_exists
from events.auth import SECRET_ENV
from events.samples import failure_event, signed, typeform_response, zendesk_ticket

log = logging.getLogger(__name__)

PROJECT_DIR = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
POLL_SECONDS = 0.5


class BenchError(ChurnflowError):
    """A part of the stack did not start, or the benchmark could not finish; the message has the logs' tail."""


@dataclass
class Stack:
    """The running stack: where to post events and where the Prefect API is."""

    api_url: str
    intake_url: str
    secret: bytes
    workdir: Path
    procs: list[subprocess.Popen] = field(default_factory=list)
    log_files: list[Path] = field(default_factory=list)
    started: list[str] = field(default_factory=list)

    def tail(self, chars: int = 3000) -> str:
        return "\n".join(f"--- {p.name} ---\n{p.read_text(errors='replace')[-chars:]}" for p in self.log_files if p.exists())

    def spawn(self, name: str, args: list[str], env: dict[str, str]) -> subprocess.Popen:
        path = self.workdir / f"{name}.log"
        self.log_files.append(path)
        with path.open("wb") as out:  # the child keeps its own handle
            proc = subprocess.Popen(args, cwd=PROJECT_DIR, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append(proc)
        self.started.append(name)
        return proc

    def wait(self, ready: Callable[[], bool], what: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not ready():
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise BenchError(f"{what}: a stack process exited (code {dead[0].returncode})\n{self.tail()}")
            if time.monotonic() > deadline:
                raise BenchError(f"{what}: not ready after {timeout:.0f} s\n{self.tail()}")
            time.sleep(0.3)


def stop_processes(procs: list[subprocess.Popen], grace: float = 15.0) -> None:
    """SIGTERM each process group, then SIGKILL what is left after ``grace`` seconds."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for proc in procs:
            if proc.poll() is None:
                try:
                    os.killpg(proc.pid, sig)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(p.poll() is None for p in procs):
            time.sleep(0.2)


def _http_ok(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).ok
    except requests.RequestException:
        return False


def stack_env(settings: Settings, **extra: str) -> dict[str, str]:
    """The environment of the stack's processes: this one's, with the churnflow settings
    spelled out (a picked CRM port or a computed default reaches the children too)."""
    env = dict(os.environ)
    env.update(
        CHURNFLOW_HOME=str(settings.home_dir), CHURNFLOW_WAREHOUSE_URL=settings.warehouse,
        CHURNFLOW_MLFLOW_TRACKING_URI=settings.tracking_uri, CHURNFLOW_LOCAL_CRM_PORT=str(settings.local_crm_port),
        PYTHONPATH=os.pathsep.join(p for p in (str(PROJECT_DIR), env.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1", PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    env.update(extra)
    return env


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def event_stack(settings: Settings, workdir: Path, *, api_url: str | None = None, intake_url: str | None = None,
                serve: bool = True, serve_limit: int = 4, startup_timeout: float = 180) -> Iterator[Stack]:
    """The stack for ``settings``' home, running for the duration.

    ``api_url``: a running Prefect server (else one is started, its database in ``workdir``);
    ``serve``: start ``python -m flows.serve --only react`` against it (False: a worker or
    serve process of yours runs the deployment); ``intake_url``: a running intake (else
    ``churnflow serve-events`` is started; a running one must share ``CHURNFLOW_EVENTS_SECRET``).
    The local CRM is started in-process unless one listens on ``local_crm_port``.
    """
    from crm_sync.client import local_crm

    workdir.mkdir(parents=True, exist_ok=True)
    secret = os.environ.get(SECRET_ENV, "").encode() if intake_url else secrets_module.token_hex(24).encode()
    if intake_url and not secret:
        raise BenchError(f"posting to a running intake needs its secret in {SECRET_ENV}")
    stack = Stack(api_url or "", intake_url or "", secret, workdir)
    with ExitStack() as cleanup:
        cleanup.callback(lambda: stop_processes(stack.procs))
        if not api_url:
            port = _free_port()
            stack.api_url = f"http://127.0.0.1:{port}/api"
            stack.spawn("prefect-server", [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
                        stack_env(settings, PREFECT_HOME=str(workdir / "prefect-server"), PREFECT_API_URL=stack.api_url,
                                  PREFECT_UI_ENABLED="false"))
            stack.wait(lambda: _http_ok(f"{stack.api_url}/health"), "prefect server", startup_timeout)
        cleanup.enter_context(local_crm(settings))
        env = stack_env(settings, PREFECT_API_URL=stack.api_url)
        waits: list[tuple[Callable[[], bool], str]] = []
        if serve:  # started side by side with the intake: both take a while to import
            stack.spawn("serve-react", [sys.executable, "-m", "flows.serve", "--only", "react", "--limit", str(serve_limit)],
                        {**env, "PREFECT_HOME": str(workdir / "prefect-serve"), "PREFECT_RUNNER_POLL_FREQUENCY": "1"})
            serve_log = stack.log_files[-1]
            waits.append((lambda: "being served" in serve_log.read_text(errors="replace"), "react deployment (flows.serve)"))
        if not intake_url:
            port = _free_port()
            stack.intake_url = f"http://127.0.0.1:{port}"
            stack.spawn("intake", [sys.executable, "-m", "churnflow.cli", "serve-events", "--port", str(port)],
                        {**env, "PREFECT_HOME": str(workdir / "prefect-intake"), SECRET_ENV: secret.decode()})
            waits.append((lambda: _http_ok(f"{stack.intake_url}/health"), "event intake"))
        for ready, what in waits:
            stack.wait(ready, what, startup_timeout)
        yield stack


def post(stack: Stack, shape: str, payload: dict[str, Any], session: requests.Session | None = None) -> tuple[int, dict[str, Any], float]:
    """POST one signed event; (status, answer, monotonic time of the acknowledgement)."""
    scheme = shape if shape in ("zendesk", "typeform") else "churnflow"
    body, headers = signed(scheme, payload, stack.secret)
    answer = (session or requests).post(f"{stack.intake_url}/events/{shape}", data=body, headers=headers, timeout=120)
    acked = time.monotonic()
    try:
        parsed = answer.json()
    except ValueError:
        parsed = {"status": "error", "reason": answer.text[:200]}
    return answer.status_code, parsed, acked


def event_day(engine: sa.Engine) -> date:
    """The last day of data (the day before the default as-of): the day benchmark events happen on."""
    from features.build import default_as_of

    return default_as_of(engine) - timedelta(days=1)


def reachable_accounts(engine: sa.Engine, day: date) -> list[str]:
    """Accounts with an owner and a CRM id, active in the 30 days before ``day``, that no
    event or detractor task has touched yet (so their reaction decides a detractor task)."""
    accounts = read_sql(engine, "SELECT account_id FROM accounts WHERE owner_email IS NOT NULL AND crm_account_id IS NOT NULL ORDER BY account_id")
    active = set(read_sql(engine, "SELECT DISTINCT account_id FROM usage WHERE occurred_at >= :d",
                          {"d": pd.Timestamp(day - timedelta(days=30)).to_pydatetime()})["account_id"].astype(str))
    used: set[str] = set()
    if table_exists(engine, "event_inbox"):
        used |= set(read_sql(engine, "SELECT DISTINCT account_id FROM event_inbox")["account_id"].astype(str))
    if table_exists(engine, "outreach_tasks"):
        used |= set(read_sql(engine, "SELECT DISTINCT account_id FROM outreach_tasks WHERE playbook = 'detractor_call'")["account_id"].astype(str))
    return [a for a in accounts["account_id"].astype(str) if a in active and a not in used]


def _percentile(values: list[float], q: float) -> float | None:
    return None if not values else round(float(pd.Series(values).quantile(q)), 2)


def measure_latency(stack: Stack, settings: Settings, accounts: list[str], crm_ids: dict[str, str], day: date, *,
                    interval: float, timeout: float, run_tag: str) -> dict[str, Any]:
    """Post one detractor survey per account, ``interval`` s apart, and time each to its Task and health fields in the CRM."""
    from crm_sync.client import connect
    from flows.react import reaction_as_of

    sf = connect(settings)
    as_of = reaction_as_of(datetime.combine(day, datetime.min.time()))
    acked: dict[str, float] = {}
    seen: dict[str, float] = {}
    refused: list[dict[str, Any]] = []
    next_post = time.monotonic()
    pending = list(accounts)

    def poll() -> None:
        waiting = [a for a in acked if a not in seen]
        if not waiting:
            return
        ids = ", ".join(f"'{crm_ids[a]}'" for a in waiting)  # Salesforce ids from our own warehouse (checked 15/18 chars)
        tasks = {r["WhatId"] for r in sf.query_all(f"SELECT WhatId FROM Task WHERE WhatId IN ({ids}) AND Subject LIKE 'Detractor%'")["records"]}
        fresh = {r["Id"] for r in sf.query_all(f"SELECT Id, Churnflow_Score_As_Of__c FROM Account WHERE Id IN ({ids})")["records"]
                 if str(r.get("Churnflow_Score_As_Of__c") or "")[:10] == as_of.isoformat()}
        now = time.monotonic()
        for account in waiting:
            if crm_ids[account] in tasks and crm_ids[account] in fresh:
                seen[account] = now

    def waiting() -> bool:
        return any(a not in seen and time.monotonic() - acked[a] <= timeout for a in acked)

    while pending or waiting():
        if pending and time.monotonic() >= next_post:
            account = pending.pop(0)
            status, answer, at = post(stack, "typeform", typeform_response(f"{run_tag}-lat-{account}", account, score=1,
                                                                          at=f"{day}T{10 + len(acked) % 8:02d}:00:00Z"))
            if status == 202:
                acked[account] = at
            else:
                refused.append({"account": account, "status": status, **answer})
            next_post = time.monotonic() + interval
        poll()
        time.sleep(POLL_SECONDS)
    latencies = [seen[a] - acked[a] for a in seen]
    return {"events": len(accounts), "acknowledged": len(acked), "refused": refused, "visible": len(seen),
            "timed_out": sorted(a for a in acked if a not in seen), "interval_s": interval, "poll_s": POLL_SECONDS,
            "p50_s": _percentile(latencies, 0.5), "p95_s": _percentile(latencies, 0.95),
            "max_s": None if not latencies else round(max(latencies), 2)}


def burst_payloads(accounts: list[str], events: int, day: date, run_tag: str, seed: int = 7) -> list[tuple[str, dict[str, Any]]]:
    """``events`` events spread evenly over ``accounts``, each account's events one after the
    other (as a help desk sends a ticket's updates): NPS answers, Zendesk ticket events, product failures."""
    rng = random.Random(seed)
    out = []
    per_account = -(-events // len(accounts))
    for i in range(events):
        account = accounts[i // per_account]
        event_id = f"{run_tag}-burst-{i}"
        at = f"{day}T{8 + i % 12:02d}:{i % 60:02d}:00Z"
        kind = i % 3
        if kind == 0:
            out.append(("typeform", typeform_response(event_id, account, score=rng.randint(0, 10), at=at)))
        elif kind == 1:
            out.append(("zendesk", zendesk_ticket(event_id, account, ticket=f"{run_tag}-{account}-{i % 4}", opened_at=at, priority=rng.choice(["URGENT", "HIGH", "NORMAL", None]),
                                                  at=at)))
        else:
            out.append(("failure", failure_event(event_id, account, at)))
    return out


def _react_runs(api_url: str, since: datetime) -> list[dict[str, Any]]:
    """The react flow runs created since ``since``: account, state, trigger time."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName, FlowRunFilter, FlowRunFilterExpectedStartTime
    from prefect.settings import PREFECT_API_URL, temporary_settings

    runs: list[Any] = []
    with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
        while True:  # the API pages by 200 at most
            page = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["react"])),
                flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=pd.Timestamp(since, tz="UTC").to_pydatetime())),
                limit=200, offset=len(runs),
            )
            runs += page
            if len(page) < 200:
                break
    unique = {r.id: r for r in runs}  # pages of a growing list can overlap
    return [{"id": str(r.id), "account_id": r.parameters.get("account_id"), "state": r.state.type.value if r.state else None,
             "triggered_at": r.parameters.get("triggered_at"), "created": r.created} for r in unique.values()]


def wait_reactions(stack: Stack, since: datetime, accounts: set[str], timeout: float) -> list[dict[str, Any]]:
    """Poll Prefect until every react run for ``accounts`` since ``since`` is final (or timeout)."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [r for r in _react_runs(stack.api_url, since) if r["account_id"] in accounts]
        if runs and all(r["state"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED") for r in runs) or time.monotonic() > deadline:
            return runs
        time.sleep(2)


def max_runs_per_window(runs: list[dict[str, Any]], window_seconds: float) -> int:
    """Most react runs of one account whose trigger times fall within one debounce window."""
    worst = 0
    frame = pd.DataFrame(runs)
    if frame.empty:
        return 0
    frame["t"] = pd.to_datetime(frame["triggered_at"].fillna(frame["created"].astype(str)), utc=True, format="ISO8601")
    for _, one in frame.groupby("account_id"):
        times = one["t"].sort_values().tolist()
        for i, start in enumerate(times):
            worst = max(worst, sum(1 for t in times[i:] if (t - start).total_seconds() < window_seconds))
    return worst


def measure_burst(stack: Stack, engine: sa.Engine, accounts: list[str], events: int, day: date, *, window_seconds: float,
                  timeout: float, run_tag: str, threads: int = 8) -> dict[str, Any]:
    """Post the burst at once, then count what the inbox and Prefect made of it."""
    payloads = burst_payloads(accounts, events, day, run_tag)
    since = datetime.utcnow() - timedelta(seconds=5)
    started = time.monotonic()
    with ThreadPoolExecutor(threads) as pool, requests.Session() as session:
        answers = list(pool.map(lambda item: post(stack, item[0], item[1], session)[:2], payloads))
    post_seconds = time.monotonic() - started
    acked = [payload_id for (status, answer), payload_id in zip(answers, (p[1].get("event_id") or p[1].get("id") for p in payloads))
             if status == 202]
    statuses = pd.Series([status for status, _ in answers]).value_counts().to_dict()
    # Pending events drain into the reactions; wait for the runs, then for the inbox.
    deadline = time.monotonic() + timeout
    runs = wait_reactions(stack, since, set(accounts), timeout)
    while True:
        inbox = read_sql(engine, "SELECT event_id, status FROM event_inbox WHERE event_id LIKE :p", {"p": f"{run_tag}-burst-%"})
        engine.dispose()  # DuckDB: let the reactions have the file
        if (inbox["status"] == "applied").all() or time.monotonic() > deadline:
            break
        time.sleep(2)
        runs = _react_runs(stack.api_url, since)
    runs = [r for r in runs if r["account_id"] in set(accounts)]
    stored = set(inbox["event_id"])
    per_account = pd.Series([r["account_id"] for r in runs]).value_counts() if runs else pd.Series(dtype=int)
    return {"events": events, "accounts": len(accounts), "post_s": round(post_seconds, 1), "http_status": {str(k): int(v) for k, v in statuses.items()},
            "acknowledged": len(acked), "in_inbox": int(len(stored)), "lost": len(set(acked) - stored),
            "applied": int((inbox["status"] == "applied").sum()), "pending": int((inbox["status"] != "applied").sum()),
            "reactions_triggered": len(runs), "reactions_by_state": pd.Series([r["state"] for r in runs], dtype=object).value_counts().to_dict(),
            "reactions_per_account": {"min": int(per_account.min()) if len(per_account) else 0, "max": int(per_account.max()) if len(per_account) else 0},
            "max_reactions_per_account_per_window": max_runs_per_window(runs, window_seconds), "window_s": window_seconds}


def debounce_seconds() -> float:
    """The react trigger's window, read from prefect.yaml (declared there once)."""
    import yaml

    from flows.serve import PREFECT_YAML

    spec = next(d for d in yaml.safe_load(PREFECT_YAML.read_text(encoding="utf-8"))["deployments"] if d["name"] == "react")
    return float(spec["triggers"][0]["within"])


def bench_events(settings: Settings, workdir: Path, *, events: int = 20, interval: float = 3.0, burst_events: int = 1000,
                 burst_accounts: int = 100, api_url: str | None = None, intake_url: str | None = None, serve: bool = True,
                 serve_limit: int = 4, timeout: float = 600) -> dict[str, Any]:
    """Latency and burst figures on a stack for ``settings``' home (a loaded book and a champion)."""
    engine = get_engine(settings.warehouse)
    day = event_day(engine)
    candidates = reachable_accounts(engine, day)
    need = events + burst_accounts
    if len(candidates) < need:
        raise BenchError(f"the book has {len(candidates)} untouched active accounts with an owner and a CRM id; "
                         f"{need} needed (--events {events} + --burst-accounts {burst_accounts})")
    crm_ids = dict(read_sql(engine, "SELECT account_id, crm_account_id FROM accounts").astype(str).itertuples(index=False, name=None))
    engine.dispose()
    run_tag = f"bench{datetime.now():%H%M%S}"
    window = debounce_seconds()
    started = time.monotonic()
    with event_stack(settings, workdir, api_url=api_url, intake_url=intake_url, serve=serve, serve_limit=serve_limit) as stack:
        stack_seconds = round(time.monotonic() - started, 1)
        latency = measure_latency(stack, settings, candidates[:events], crm_ids, day, interval=interval, timeout=min(timeout, 300),
                                  run_tag=run_tag) if events else None
        burst = measure_burst(stack, engine, candidates[events:need], burst_events, day, window_seconds=window, timeout=timeout,
                              run_tag=run_tag) if burst_events else None
    load = os.getloadavg()
    return {"stack": {"started": stack.started, "startup_s": stack_seconds, "serve_limit": serve_limit if serve else None,
                      "warehouse": engine.dialect.name},
            "machine": {"cpus": os.cpu_count(), "load_avg_1_5_15": [round(x, 1) for x in load]},
            "latency": latency, "burst": burst, "seconds": round(time.monotonic() - started, 1)}
