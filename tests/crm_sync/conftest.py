"""Shared fixtures: one local Salesforce-compatible server per test session, real HTTPS.

Tests create their own records (unique names and keys), so they can share the server;
faults are cleared after every test so one test's fault never leaks into the next.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from simple_salesforce import Salesforce

from churnflow.warehouse import get_engine

from crm_sync.client import connect_local
from crm_sync.local.server import LocalSalesforce
from crm_sync.push.tasks import clear_owner_cache
from crm_sync.retry import RetryPolicy
from tests.helpers import free_port

FAST_RETRY = RetryPolicy(attempts=5, base_delay=0.01, max_delay=0.05)
_counter = itertools.count(1)


@pytest.fixture(scope="session")
def crm_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("crm")


@pytest.fixture(scope="session")
def server(crm_dir: Path) -> Iterator[LocalSalesforce]:
    srv = LocalSalesforce(cert_dir=crm_dir, page_size=50)
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def sf(server: LocalSalesforce) -> Salesforce:
    return connect_local(server, timeout=(5, 10))


@pytest.fixture(autouse=True)
def _clean_faults(request: pytest.FixtureRequest) -> Iterator[None]:
    yield
    if "server" in request.fixturenames:
        request.getfixturevalue("server").faults.clear()
    clear_owner_cache()


@pytest.fixture
def uid() -> str:
    """A short unique tag for names and keys of this test."""
    return f"t{next(_counter):04d}"


@pytest.fixture
def retry() -> RetryPolicy:
    return FAST_RETRY


@pytest.fixture
def cli_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> sa.Engine:
    """A fresh CHURNFLOW_HOME whose CRM is a local server on a free port, as the CLI sees it;
    returns an engine on its (empty) warehouse for the test to fill, then dispose."""
    home = tmp_path / "home"
    monkeypatch.setenv("CHURNFLOW_HOME", str(home))
    monkeypatch.setenv("CHURNFLOW_CRM", "local")
    monkeypatch.setenv("CHURNFLOW_LOCAL_CRM_PORT", str(free_port()))
    home.mkdir()
    return get_engine(f"duckdb:///{home / 'warehouse.duckdb'}")
