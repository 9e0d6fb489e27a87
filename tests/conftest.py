"""Shared fixtures: small realistic books from churnflow's own generator, real warehouses.

Warehouses are real: a DuckDB file per test (or per session for read-only use) and, when
reachable, PostgreSQL in a schema of its own that is dropped afterwards.
"""

from __future__ import annotations

import os
import tempfile
import uuid

# Prefect keeps its database and task caches under PREFECT_HOME: one throwaway home per
# test process, set before anything imports prefect.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="churnflow-prefect-home-")
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
os.environ.setdefault("MPLBACKEND", "Agg")
# The test books are small on purpose (300-500 accounts: 10-40 churned accounts per slice),
# below the production gate (50 / 20 / 30 churned accounts, AUC lower bound >= 0.6). Tests
# that are not about the gate train on them with these test settings; tests of the gate
# (tests/models/test_gate.py) pass their own values explicitly. The defaults are untouched.
for _name, _value in {"MIN_CHURNERS_FIT": "5", "MIN_CHURNERS_CALIBRATION": "3", "MIN_CHURNERS_HOLDOUT": "5", "GATE_MIN_AUC": "0.5"}.items():
    os.environ.setdefault(f"CHURNFLOW_{_name}", _value)
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.demo_data import generate_book, write_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine

POSTGRES_URL = os.environ.get("CHURNFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# A small book that still has enough history for monthly training snapshots.
SMALL_BOOK = {"accounts": 500, "days": 540, "seed": 11}


@pytest.fixture(scope="session")
def small_book() -> dict[str, pd.DataFrame]:
    return generate_book(**SMALL_BOOK)


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings for an isolated home (own warehouse, MLflow store, CRM state)."""
    return Settings(home=home, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def duck_engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


@pytest.fixture
def book_engine(duck_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> sa.Engine:
    """A fresh DuckDB warehouse holding the small book (tests may mutate it)."""
    write_book(duck_engine, small_book)
    return duck_engine


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, small_book: dict[str, pd.DataFrame]) -> Settings:
    """A home with the small book loaded and one model trained (read-only for tests)."""
    from models.train import train

    home = tmp_path_factory.mktemp("trained-home")
    settings = make_settings(home)
    engine = get_engine(settings.warehouse)
    write_book(engine, small_book)
    train(engine, settings)
    return settings


def postgres_available() -> str | None:
    try:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:  # noqa: BLE001 - any failure means "not reachable"
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {type(exc).__name__}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL of PostgreSQL bound to a fresh schema (dropped afterwards), for engines and for
    subprocesses (the schema travels in the URL's search_path option)."""
    reason = postgres_available()
    if reason:
        pytest.skip(reason)
    schema = f"cf_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(POSTGRES_URL)
    with admin.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    """A PostgreSQL engine bound to a fresh schema (dropped afterwards)."""
    engine = sa.create_engine(pg_url)
    try:
        yield engine
    finally:
        engine.dispose()
