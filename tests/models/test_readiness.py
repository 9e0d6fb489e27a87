"""`churnflow profile`: readiness of a warehouse, counted independently of the profile's code."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from churnflow.cli import app
from churnflow.demo_data import generate_book, write_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine
from features.labels import data_window, label_snapshots, load_subscriptions, month_starts
from models.readiness import profile_readiness

PRODUCTION_GATE = {"min_churners_fit": 50, "min_churners_calibration": 20, "min_churners_holdout": 30}
runner = CliRunner()


def _expected_split(first, observed_until, cadence: str, horizon: int = 90, grace: int = 30, months: int = 12, hold_months: int = 2):
    """The split written out by hand from the documented rule (not through models.train)."""
    start, last = first + timedelta(days=90), observed_until - timedelta(days=horizon + grace)
    if cadence == "monthly":
        dates, n, n_hold = month_starts(start, last), months, hold_months
    else:
        dates, n, n_hold = [d.date() for d in pd.date_range(start, last, freq="W-MON")], round(months * 52 / 12), round(hold_months * 52 / 12)
    dates = dates[-n:]
    holdout = dates[-n_hold:]
    earlier = [d for d in dates[:-n_hold] if d + timedelta(days=horizon) <= holdout[0]]
    return {"fit": earlier[:-1], "calibration": [earlier[-1]], "holdout": holdout}


def _churned_accounts(subs: pd.DataFrame, dates, observed_until) -> tuple[int, int]:
    labels = label_snapshots(subs, dates, horizon_days=90, grace_days=30, observed_until=observed_until)
    return int(labels.loc[labels["churned"] == 1, "account_id"].nunique()), int(labels["churned"].sum())


@pytest.mark.parametrize("backend", ["duckdb", "postgresql"])
def test_profile_counts_equal_the_labels_and_say_not_ready(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    engine = request.getfixturevalue("duck_engine" if backend == "duckdb" else "pg_engine")
    book = generate_book(accounts=150, days=540, seed=1)
    write_book(engine, book)
    settings = Settings(home=tmp_path, **PRODUCTION_GATE)
    report = profile_readiness(engine, settings)

    first, observed_until = data_window(engine)
    assert (report.observed_from, report.observed_until) == (str(first), str(observed_until))
    assert report.accounts == 150
    subs = load_subscriptions(engine)
    for split in report.splits:
        expected = _expected_split(first, observed_until, split.cadence)
        for name, dates in expected.items():
            churners, positive_rows = _churned_accounts(subs, dates, observed_until)
            assert split.slices[name]["churners"] == churners, (split.cadence, name)
            assert split.slices[name]["positive_rows"] == positive_rows
            assert split.slices[name]["snapshots"] == len(dates)
        assert sum(s["churned"] for s in split.per_snapshot) == sum(v["positive_rows"] for v in split.slices.values())
    weekly = next(s for s in report.splits if s.cadence == "weekly")
    monthly = next(s for s in report.splits if s.cadence == "monthly")
    assert weekly.matured_snapshots > 3 * monthly.matured_snapshots

    # Sources: spans and coverage, as SQL aggregates.
    usage = next(s for s in report.sources if s.table == "usage")
    assert usage.first == str(book["usage"]["occurred_at"].min().date()) and usage.rows == len(book["usage"])
    assert usage.accounts == book["usage"]["account_id"].nunique()
    tickets = next(s for s in report.sources if s.table == "tickets")
    assert tickets.account_share == pytest.approx(book["tickets"]["account_id"].nunique() / 150)
    # Billing cadence from term lengths.
    days = (pd.to_datetime(book["subscriptions"]["end_date"]) - pd.to_datetime(book["subscriptions"]["start_date"])).dt.days
    shares = report.subscription_cadence["shares"]
    assert shares["monthly"] == pytest.approx(days.between(25, 35).mean())
    assert shares["annual"] == pytest.approx(days.between(350, 380).mean())
    assert sum(shares.values()) == pytest.approx(1.0)
    # Churn events per month: distinct (account, churn date) pairs.
    assert sum(report.churn_events_per_month.values()) > 0

    assert report.verdict.startswith("not ready: ") and "(needs 30)" in report.verdict
    assert "history" in report.verdict or "set " in report.verdict
    assert not report.ready


def test_profile_suggests_a_setting_that_passes_and_train_agrees(book_engine, tmp_path: Path) -> None:
    """On the 500-account book a smaller gate is met by the current settings: 'ready'; with a
    gate just above the monthly holdout, the suggestion is one that passes, and its counts
    are what the profile reports for it."""
    settings = Settings(home=tmp_path, min_churners_fit=5, min_churners_calibration=3, min_churners_holdout=5)
    report = profile_readiness(book_engine, settings)
    assert report.verdict == "ready" and report.ready
    assert report.suggested_settings == {"snapshot_cadence": "monthly", "horizon_days": 90, "label_lead_days": 0}

    monthly = next(s for s in report.splits if s.cadence == "monthly")
    weekly = next(s for s in report.splits if s.cadence == "weekly")
    assert weekly.slices["holdout"]["churners"] > monthly.slices["holdout"]["churners"]
    tighter = settings.model_copy(update={"min_churners_holdout": monthly.slices["holdout"]["churners"] + 1})
    second = profile_readiness(book_engine, tighter)
    assert second.verdict.startswith("not ready: holdout has")
    assert second.suggestion is not None and second.suggestion.split.ok
    assert second.suggestion.split.slices["holdout"]["churners"] >= tighter.min_churners_holdout
    assert "set " in second.verdict and second.suggested_settings != report.suggested_settings


def test_profile_command_prints_text_and_json(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    for key, value in PRODUCTION_GATE.items():
        monkeypatch.setenv(f"CHURNFLOW_{key.upper()}", str(value))
    settings = Settings()
    settings.ensure_home()
    write_book(get_engine(settings.warehouse), generate_book(accounts=150, days=540, seed=1))
    text = runner.invoke(app, ["profile"])
    assert text.exit_code == 0, text.output
    assert "verdict: not ready" in text.output and "weekly" in text.output and "usage" in text.output
    raw = runner.invoke(app, ["profile", "--json"])
    assert raw.exit_code == 0
    data = json.loads(raw.output)
    assert data["ready"] is False and data["verdict"].startswith("not ready")
    assert {s["cadence"] for s in data["splits"]} == {"monthly", "weekly"}
    assert not any(s["ok"] for s in data["splits"]) and all(s["slices"]["holdout"]["churners"] < 30 for s in data["splits"])
    assert {s["table"] for s in data["sources"]} == {"usage", "tickets", "surveys", "subscriptions"}


def test_profile_of_an_empty_warehouse_is_one_clear_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "empty"))
    result = runner.invoke(app, ["profile"])
    assert result.exit_code == 1
    assert "not ready" in result.output and "accounts" in result.output and "churnflow ingest" in result.output
    assert "Traceback" not in result.output
