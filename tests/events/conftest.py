"""Intake fixtures: a warehouse holding a few accounts (from the demo generator) and signed posts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from churnflow.demo_data import generate_book
from churnflow.schema import ACCOUNTS, coerce
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, replace_rows
from events.samples import failure_event, signed as sign_post, typeform_response, zendesk_ticket  # noqa: F401 - re-exported to the tests

SECRET = b"test-webhook-secret-7d2a"


@pytest.fixture(scope="session")
def few_accounts() -> pd.DataFrame:
    return generate_book(accounts=20, days=60, seed=5)["accounts"]


def load_accounts(url: str, accounts: pd.DataFrame) -> None:
    replace_rows(get_engine(url), "accounts", coerce(accounts, ACCOUNTS), replace_all=True)


@pytest.fixture
def intake_settings(tmp_path: Path, few_accounts: pd.DataFrame) -> Settings:
    settings = Settings(home=tmp_path / "home")  # type: ignore[arg-type]
    settings.ensure_home()
    load_accounts(settings.warehouse, few_accounts)
    return settings


def signed(scheme: str, payload: dict[str, Any] | bytes, secret: bytes = SECRET) -> tuple[bytes, dict[str, str]]:
    return sign_post(scheme, payload, secret)
