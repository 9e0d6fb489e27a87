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
from tests.helpers import build_once, copy_duckdb_warehouse, copy_home, source_digest, worker_shared_dir


ROOT = Path(__file__).resolve().parents[1]
POSTGRES_URL = os.environ.get("CHURNFLOW_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")

# A small book that still has enough history for monthly training snapshots.
SMALL_BOOK = {"accounts": 500, "days": 540, "seed": 11}


def book_digest(book: dict[str, pd.DataFrame]) -> dict[str, tuple]:
    """Each frame's columns, dtypes and an order-sensitive hash of its rows and index."""
    return {name: (tuple(frame.columns), tuple(map(str, frame.dtypes)), int(pd.util.hash_pandas_object(frame, index=True).sum()))
            for name, frame in book.items()}


@pytest.fixture(scope="session")
def small_book() -> Iterator[dict[str, pd.DataFrame]]:
    """The small book's frames, shared by this worker's tests: READ-ONLY (take ``.copy()`` to
    change one). Checked at the end of the session: a test that changed a frame in place fails
    the run here, since every later test would have read its change."""
    book = generate_book(**SMALL_BOOK)
    before = book_digest(book)
    yield book
    changed = sorted(name for name, digest in book_digest(book).items() if before.get(name) != digest)
    assert not changed and set(book) == set(before), f"a test changed the shared small_book in place: {changed or sorted(set(book) ^ set(before))}"


def make_settings(home: Path, **overrides: object) -> Settings:
    """Settings for an isolated home (own warehouse, MLflow store, CRM state)."""
    return Settings(home=home, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def duck_engine(tmp_path: Path) -> sa.Engine:
    return get_engine(f"duckdb:///{tmp_path / 'warehouse.duckdb'}")


@pytest.fixture
def book_engine(duck_engine: sa.Engine, small_book_store: Path) -> sa.Engine:
    """A fresh DuckDB warehouse holding the small book (tests may mutate it): a copy of the
    file ``write_book`` made from the small book once per run, not a rewrite per test."""
    copy_duckdb_warehouse(f"duckdb:///{small_book_store / 'warehouse.duckdb'}", Path(str(duck_engine.url.database)))
    return duck_engine


# -- built once per run, for every xdist worker -------------------------------------------------
#
# Each store is built by the first worker that asks (under a file lock in the directory all
# workers of the run share) and reused by the others. Its name carries the book, the gate
# settings and a digest of the code that builds it, so a store made by other code is never
# reused. No test opens a store: tests get copies (``book_engine``, ``trained_home``, ``trained_copy``).

CODE = [ROOT / name for name in ("churnflow", "ingest", "features", "models")]


def _store_key() -> str:
    gate = "-".join(os.environ[f"CHURNFLOW_{n}"] for n in ("MIN_CHURNERS_FIT", "MIN_CHURNERS_CALIBRATION", "MIN_CHURNERS_HOLDOUT", "GATE_MIN_AUC"))
    return f"{SMALL_BOOK['accounts']}x{SMALL_BOOK['days']}-s{SMALL_BOOK['seed']}-g{gate}-{source_digest(*CODE)}"


def _write_small_book(store: Path) -> None:
    engine = get_engine(f"duckdb:///{store / 'warehouse.duckdb'}")
    write_book(engine, generate_book(**SMALL_BOOK))
    engine.dispose()  # DuckDB: checkpoint and release the file before others copy it


@pytest.fixture(scope="session")
def small_book_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory whose ``warehouse.duckdb`` holds exactly what ``write_book(small_book)`` writes."""
    return build_once(worker_shared_dir(tmp_path_factory.getbasetemp()), f"small-book-{_store_key()}", _write_small_book)


@pytest.fixture(scope="session")
def trained_store(tmp_path_factory: pytest.TempPathFactory, small_book_store: Path) -> Path:
    """A home with the small book and one model trained on it (warehouse, MLflow store, artifacts)."""
    from models.train import train

    def build(home: Path) -> None:
        copy_duckdb_warehouse(f"duckdb:///{small_book_store / 'warehouse.duckdb'}", home / "warehouse.duckdb")
        settings = make_settings(home)
        engine = get_engine(settings.warehouse)
        train(engine, settings)
        engine.dispose()

    return build_once(worker_shared_dir(tmp_path_factory.getbasetemp()), f"trained-book-{_store_key()}", build)


# Tables a test that only reads may still fill: caches keyed by their inputs, written by any
# read of features (rollups, survey text, stored features). Everything else in a shared home is
# what the tests read, and must be the same at the end of the session as at its start.
READ_CACHES = frozenset({"usage_daily", "usage_account_daily", "usage_rollup_days", "usage_ingest_days", "survey_text",
                         "account_features", "feature_builds"})


def home_digest(settings: Settings) -> dict[str, object]:
    """What a shared home holds, order-independently: rows of every warehouse table (bar the
    read caches) and the MLflow store's runs, versions and aliases."""
    import sqlite3

    engine = get_engine(settings.warehouse)
    try:
        with engine.connect() as conn:
            tables = sorted(set(sa.inspect(conn).get_table_names()) - READ_CACHES)
            found: dict[str, object] = {t: tuple(conn.execute(sa.text(f'SELECT COUNT(*), SUM(hash(t)) FROM "{t}" AS t')).one()) for t in tables}
    finally:
        engine.dispose()
    with sqlite3.connect(settings.home_dir / "mlflow.db") as store:
        for table in ("runs", "model_versions", "registered_model_aliases", "metrics", "params"):
            found[f"mlflow.{table}"] = sorted(map(repr, store.execute(f"SELECT * FROM {table}").fetchall()))
    store.close()
    return found


@pytest.fixture(scope="session")
def trained_home(tmp_path_factory: pytest.TempPathFactory, trained_store: Path) -> Iterator[Settings]:
    """A home with the small book loaded and one model trained, shared by this worker's tests:
    READ-ONLY (a test that writes scores, trains or changes the book takes ``trained_copy``).
    Checked at the end of the session: a test that wrote to it fails the run here."""
    settings = make_settings(copy_home(trained_store, tmp_path_factory.mktemp("trained-home")))
    before = home_digest(settings)
    yield settings
    after = home_digest(settings)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test wrote to the shared read-only trained_home (use trained_copy): changed {changed}"


@pytest.fixture
def trained_copy(tmp_path: Path, trained_store: Path) -> Settings:
    """A private, writable copy of the trained home (warehouse, MLflow store and artifacts),
    for tests that score, train or change the book; costs a file copy, not a training."""
    return make_settings(copy_home(trained_store, tmp_path / "trained-home"))


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
