"""Two dailies for the same day at once converge to one copy of every row (issue #13, item 1).

On PostgreSQL both runs work at the same time: the declared keys are primary keys and writers
of a table are serialized (advisory lock), so the second run replaces the first one's rows. On
DuckDB one process holds the file: the second run waits for the first, then replaces its rows.
Either way, a run seven days later reads one previous health per account.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.demo_data import write_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]


def _daily(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "churnflow.cli", "daily", "--dry-run", *args], cwd=home, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_two_dailies_then_one_later(home: Path, env: dict[str, str], engine: sa.Engine) -> None:
    first, second = _daily(home, env), _daily(home, env)
    for proc in (first, second):
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, out + err
        assert "Traceback" not in err, err
    engine.dispose()
    scores = read_sql(engine, "SELECT as_of_date, account_id FROM account_scores")
    assert len(scores) > 100
    assert not scores.duplicated().any(), "a second copy of the day's scores"
    tasks = read_sql(engine, "SELECT task_key FROM outreach_tasks")
    assert not tasks["task_key"].duplicated().any()
    day = pd.Timestamp(scores["as_of_date"].max()).date()
    engine.dispose()
    later = subprocess.run([sys.executable, "-m", "churnflow.cli", "score", "--as-of", str(day + timedelta(days=7))], cwd=home, env=env,
                           capture_output=True, text=True, timeout=600)
    assert later.returncode == 0, later.stdout + later.stderr
    engine.dispose()
    counts = read_sql(engine, "SELECT as_of_date, COUNT(*) AS n, COUNT(DISTINCT account_id) AS k FROM account_scores GROUP BY as_of_date")
    assert (counts["n"] == counts["k"]).all() and len(counts) == 2


def _env(home: Path, **extra: str) -> dict[str, str]:
    from prefect.settings import PREFECT_API_URL

    env = {**os.environ, "CHURNFLOW_HOME": str(home), "PREFECT_API_URL": str(PREFECT_API_URL.value()), **extra}
    env.pop("CHURNFLOW_WAREHOUSE_URL", None) if "CHURNFLOW_WAREHOUSE_URL" not in extra else None
    return env


def test_two_dailies_at_once_on_duckdb(prefect_server: None, trained_copy: Settings) -> None:
    home = trained_copy.home_dir  # a private copy of the trained home: its book, model and store
    engine = get_engine(trained_copy.warehouse)
    engine.dispose()
    _run_two_dailies_then_one_later(home, _env(home), engine)


@pytest.mark.postgres
def test_two_dailies_at_once_on_postgres(prefect_server: None, trained_copy: Settings, small_book: dict, pg_url: str) -> None:
    engine = sa.create_engine(pg_url)
    try:
        write_book(engine, small_book)  # the book the copied home's model was trained on
        home = trained_copy.home_dir
        _run_two_dailies_then_one_later(home, _env(home, CHURNFLOW_WAREHOUSE_URL=pg_url), engine)
    finally:
        engine.dispose()
