"""An ingest loads every table or none: killed mid-write (SIGKILL, no cleanup code runs), the
warehouse still holds the previous load whole, and the next run loads the new one completely."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

from ingest.load import ingest
from churnflow.manifest import read_manifest
from churnflow.warehouse import get_engine, read_sql

ROOT = Path(__file__).resolve().parents[2]
RUN_DATE = date(2026, 11, 1)
USAGE_ROWS = 200_000

RUNNER = """
import logging, sys
from datetime import date
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
from ingest.load import ingest
from churnflow.warehouse import get_engine
ingest(get_engine(sys.argv[1]), sys.argv[2], date(2026, 11, 1))
print("committed", flush=True)
"""


def _export(folder: Path, version: int) -> Path:
    """50 accounts and USAGE_ROWS usage rows over 200 days; each version differs on every day."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(version)
    ids = [f"A{i:03d}" for i in range(50)]
    pd.DataFrame({"id": ids, "company": [f"Company {i} v{version}" for i in range(50)], "tier": "smb", "since": "2024-01-01"}).to_csv(
        folder / "accounts.csv", index=False)
    start = pd.Timestamp("2026-03-01").value // 10**9
    pd.DataFrame({
        "acct": rng.choice(ids, USAGE_ROWS),
        "at": pd.to_datetime(start + rng.integers(0, 200 * 86400, USAGE_ROWS), unit="s").strftime("%Y-%m-%d %H:%M:%S"),
        "what": rng.choice(["report", "export", "login"], USAGE_ROWS),
        "n": rng.integers(1, 10, USAGE_ROWS) * version,
    }).to_csv(folder / "usage.csv", index=False)
    mapping = {"tables": {
        "accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}},
        "usage": {"file": "usage.csv", "columns": {"account_id": "acct", "occurred_at": "at", "feature": "what", "quantity": "n"}},
    }}
    path = folder / "sources.yaml"
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return path


def _state(engine: sa.Engine) -> tuple[list[str], int, float]:
    names = sorted(read_sql(engine, "SELECT name FROM accounts")["name"])
    usage = read_sql(engine, "SELECT COUNT(*) AS n, SUM(quantity) AS q FROM usage").iloc[0]
    return names, int(usage["n"]), float(usage["q"])


def _expected(folder: Path) -> tuple[list[str], int, float]:
    usage = pd.read_csv(folder / "usage.csv")
    return sorted(pd.read_csv(folder / "accounts.csv")["company"]), len(usage), float(usage["n"].sum())


def _kill_mid_write(url: str, mapping: Path, tmp_path: Path) -> str:
    """Run an ingest in a child process and SIGKILL it once a table is written inside the load's
    transaction (the log line), while the big usage table is still being written."""
    script = tmp_path / "run_ingest.py"
    script.write_text(RUNNER, encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), url, str(mapping)], stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)
    seen = []
    deadline = time.monotonic() + 300
    try:
        assert proc.stderr is not None
        for line in proc.stderr:
            seen.append(line)
            if "accounts written" in line and "not committed yet" in line:
                proc.send_signal(signal.SIGKILL)
                break
            assert time.monotonic() < deadline, "".join(seen)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, "".join(seen)  # it was killed, it did not finish
    run_id = next(line.split("ingest ", 1)[1].split(":", 1)[0] for line in seen if "accounts written" in line)
    return run_id


def _atomic_load(engine: sa.Engine, url: str, tmp_path: Path) -> None:
    old, new = _export(tmp_path / "v1", 1), _export(tmp_path / "v2", 2)
    first = ingest(engine, old, RUN_DATE)
    assert _state(engine) == _expected(tmp_path / "v1")
    engine.dispose()  # DuckDB: one process holds the file at a time

    killed = _kill_mid_write(url, new, tmp_path)

    assert _state(engine) == _expected(tmp_path / "v1")  # entirely the old load
    assert read_manifest(engine).run_id == first.run_id
    runs = read_sql(engine, "SELECT run_id, finished_at FROM ingest_manifest").set_index("run_id")["finished_at"]
    assert set(runs.index) == {first.run_id, killed} and pd.isna(runs[killed])  # the dead run is visible, unfinished

    again = ingest(engine, new, RUN_DATE)  # a re-run loads the new one completely
    assert _state(engine) == _expected(tmp_path / "v2")
    assert read_manifest(engine).run_id == again.run_id
    days = read_sql(engine, "SELECT COUNT(*) AS n FROM usage_ingest_days")["n"].iloc[0]
    assert days == 200


@pytest.mark.slow
def test_a_killed_ingest_leaves_the_previous_load_whole_on_duckdb(tmp_path: Path) -> None:
    url = f"duckdb:///{tmp_path}/w.duckdb"
    _atomic_load(get_engine(url), url, tmp_path)


@pytest.mark.slow
@pytest.mark.postgres
def test_a_killed_ingest_leaves_the_previous_load_whole_on_postgresql(pg_engine: sa.Engine, tmp_path: Path) -> None:
    with pg_engine.connect() as conn:
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar_one()
    url = pg_engine.url.set(query={"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    _atomic_load(pg_engine, url, tmp_path)
