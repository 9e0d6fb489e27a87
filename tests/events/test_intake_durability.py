"""A killed intake loses no acknowledged event: the inbox commit happens before the 2xx."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import requests
import sqlalchemy as sa

from tests.events.conftest import SECRET, load_accounts, signed, zendesk_ticket
from tests.helpers import free_port


def test_sigkill_right_after_the_ack_loses_nothing(pg_url: str, tmp_path: Path, few_accounts: pd.DataFrame) -> None:
    load_accounts(pg_url, few_accounts)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_API", "CHURNFLOW_"))}
    env.update(CHURNFLOW_HOME=str(tmp_path / "home"), CHURNFLOW_WAREHOUSE_URL=pg_url, CHURNFLOW_EVENTS_SECRET=SECRET.decode(),
               PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    proc = subprocess.Popen([sys.executable, "-m", "churnflow.cli", "serve-events", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                requests.get(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except requests.ConnectionError:
                assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.poll() is not None else "no start"
                time.sleep(0.3)
        acked = []
        for i in range(5):
            body, headers = signed("zendesk", zendesk_ticket(f"kill-{i}", str(few_accounts["account_id"].iloc[i]), ticket=f"T{i}"))
            answer = requests.post(f"http://127.0.0.1:{port}/events/zendesk", data=body, headers=headers, timeout=30)
            assert answer.status_code == 202, answer.text
            acked.append(answer.json()["event_id"])
        os.killpg(proc.pid, signal.SIGKILL)  # no shutdown, no flush: only what was committed survives
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
    engine = sa.create_engine(pg_url)
    try:
        with engine.connect() as conn:
            stored = {r[0] for r in conn.execute(sa.text("SELECT event_id FROM event_inbox WHERE status = 'received'"))}
    finally:
        engine.dispose()
    assert set(acked) <= stored and len(acked) == 5
