"""The CLI flags: sync --dry-run / --retry-failed / --reconcile, and bench crm."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import pytest
import sqlalchemy as sa
from typer.testing import CliRunner

from churnflow.cli import app
from churnflow.settings import Settings
from crm_sync.client import connect, local_crm

from .test_crm_ledger_sync import _warehouse

runner = CliRunner()
AS_OF = date(2026, 11, 20)


def invoke(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == code, result.output
    return result.output


def test_sync_flags(cli_home: sa.Engine) -> None:
    engine = cli_home
    accounts, _ = _warehouse(engine, AS_OF)
    engine.dispose()
    settings = Settings()
    with local_crm(settings):
        dry = invoke("sync", "--as-of", "2026-11-20", "--dry-run")
        assert "dry run" in dry and "API calls" in dry and "Churnflow_Health_Score__c" in dry
        invoke("sync", "--as-of", "2026-11-20")
        assert "0 difference(s)" in invoke("sync", "--as-of", "2026-11-20", "--reconcile")
        connect(settings).Account.update(accounts["crm_account_id"][1], {"Churnflow_Health_Band__c": "Red"})
        out = invoke("sync", "--as-of", "2026-11-20", "--reconcile", code=1)  # differences exit non-zero
        assert "1 difference(s)" in out and "Churnflow_Health_Band__c: 'Green' → 'Red'" in out
        assert "no failed records" in invoke("sync", "--as-of", "2026-11-20", "--retry-failed")
        assert "no task key exists more than once" in invoke("sync", "--repair")
    result = runner.invoke(app, ["sync", "--as-of", "2026-11-20", "--dry-run", "--reconcile"])
    assert result.exit_code != 0
    assert runner.invoke(app, ["sync", "--repair", "--reconcile"]).exit_code != 0


def test_bench_crm_small(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    out = json.loads(invoke("bench", "crm", "--accounts", "300", "--tasks", "30"))
    first, second, nxt = out["first_push"], out["same_day_again"], out["next_day"]
    assert first["accounts"]["updated"] == 300 and first["tasks"]["created"] == 30
    assert first["api_calls_total"] == sum(first["api_calls_by_endpoint"].values()) > 0
    assert second["data_calls"] == 0 and second["record_writes"] == 0 and second["accounts"]["unchanged"] == 300
    # the next day only what changed is written: less than every account, more than none (the scores drift)
    assert 0 < nxt["accounts"]["updated"] < 300 and nxt["accounts"]["updated"] + nxt["accounts"]["unchanged"] == 300
    assert nxt["tasks"]["created"] == 1 and nxt["record_writes"] == nxt["accounts"]["updated"] + 1
