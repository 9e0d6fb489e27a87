"""Acceptance: foreign exports of shapes unlike the demo load from a mapping file alone and run
end to end, as a new user would run them (the CLI for validate / ingest / profile / score).

* (a) ``examples/b2b_export``: no surveys, open-ended monthly and annual subscriptions, churn only
  in a churn-events table, usage keyed by subscription, priorities recoded.
* (b) ``examples/selfserve_events``: an events-only product with eight event types of opposite
  effect, one seat per account, churn as a status/date field and two account attributes that
  drive churn. The model must find the planted per-type effects: its holdout AUC is within a
  few points of a logistic regression given the simulator's true drivers on the same rows.
* A book with too few churners: ``train`` refuses, names the cause and the fix, and no champion
  is served.

Both generators are independent simulators (not churnflow's demo generator); their exports are
built once per session.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from datetime import date
from pathlib import Path
from types import ModuleType

import numpy as np
import pandas as pd
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql, table_exists

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
RUN_DATE = "2026-11-01"


def _load(example: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{example}", ROOT / "examples" / example / "make_export.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    return module


def _cli(home: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess:
    get_engine(Settings(home=home).warehouse).dispose()  # DuckDB: one process holds the file at a time
    env = {**os.environ, "CHURNFLOW_HOME": str(home), "COLUMNS": "200", "NO_COLOR": "1"}
    for name in [k for k in env if k.startswith(("CHURNFLOW_MIN_CHURNERS_", "CHURNFLOW_GATE_"))] + ["CHURNFLOW_WAREHOUSE_URL"]:
        env.pop(name, None)  # a new user's defaults, not the small test books' relaxed gate (tests/conftest.py)
    proc = subprocess.run([sys.executable, "-m", "churnflow.cli", *args], capture_output=True, text=True, env=env, cwd=home, timeout=600)
    if ok:
        assert proc.returncode == 0, f"churnflow {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


@pytest.fixture(scope="session")
def b2b_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    example = _load("b2b_export")
    export = tmp_path_factory.mktemp("b2b-export")
    example.write_export(example.simulate(accounts=500, seed=3), export)
    home = tmp_path_factory.mktemp("b2b-home")
    _cli(home, "ingest", "--mapping", str(export / "sources.yaml"), "--run-date", RUN_DATE)
    return home


@pytest.fixture(scope="session")
def selfserve(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ModuleType, object]:
    example = _load("selfserve_events")
    export = tmp_path_factory.mktemp("selfserve-export")
    book = example.simulate(accounts=1500, seed=5)
    example.write_export(book, export)
    home = tmp_path_factory.mktemp("selfserve-home")
    _cli(home, "ingest", "--mapping", str(export / "sources.yaml"), "--run-date", RUN_DATE)
    return home, example, book


def test_b2b_export_validates_with_recoding_and_absent_surveys(tmp_path: Path) -> None:
    example = _load("b2b_export")
    export = tmp_path / "export"
    example.write_export(example.simulate(accounts=120, seed=4), export)
    out = _cli(tmp_path, "validate", "--mapping", str(export / "sources.yaml"), "--run-date", RUN_DATE).stdout
    assert "surveys" in out and "absent" in out
    engine = get_engine(Settings(home=tmp_path).warehouse)
    assert not table_exists(engine, "tickets"), "validate wrote a canonical table"


def test_b2b_export_runs_end_to_end(b2b_home: Path) -> None:
    settings = Settings(home=b2b_home)
    engine = get_engine(settings.warehouse)
    # recoded priorities and the two bad usage rows
    priorities = set(read_sql(engine, "SELECT DISTINCT priority FROM tickets")["priority"])
    assert priorities <= {"low", "normal", "high", "urgent"} and "urgent" in priorities
    quarantined = read_sql(engine, "SELECT table_name, field FROM quarantine")
    assert {("usage", "account_id"), ("usage", "quantity")} <= set(map(tuple, quarantined.to_numpy()))
    assert not table_exists(engine, "surveys")
    assert read_sql(engine, "SELECT COUNT(*) AS n FROM subscriptions WHERE end_date IS NOT NULL").loc[0, "n"] == 0

    profile = _cli(b2b_home, "profile").stdout
    assert "churn" in profile.lower() and "ready" in profile.lower()

    train = _cli(b2b_home, "train").stdout
    assert "AUC" in train and "[" in train  # a point estimate with its interval
    score = _cli(b2b_home, "score", "--as-of", RUN_DATE).stdout
    assert "Traceback" not in score
    scores = read_sql(engine, "SELECT * FROM account_scores")
    assert len(scores) > 0
    drivers = " ".join(scores["top_drivers_text"].fillna("")) + " ".join(scores["protective_driver_text"].fillna(""))
    assert "NPS" not in drivers and "CSAT" not in drivers and "survey" not in drivers.lower()
    # churned customers (per the churn-events table) are not scored as if still customers
    gone = read_sql(engine, "SELECT account_id FROM churn_events WHERE churn_date < :d AND reactivated_at IS NULL",
                    {"d": pd.Timestamp(RUN_DATE).to_pydatetime()})["account_id"]
    assert not set(gone) & set(scores["account_id"])
    assert scores["band"].nunique() >= 2, "every account in one band"


def test_selfserve_model_finds_per_type_effects(selfserve: tuple[Path, ModuleType, object]) -> None:
    from models.train import holdout_rows, train

    home, example, book = selfserve
    settings = Settings(home=home)
    engine = get_engine(settings.warehouse)
    profile = _cli(home, "profile").stdout
    assert "ready" in profile.lower()
    result = train(engine, settings)
    ts = result.training_set
    names = list(ts.frame.columns)
    # the product's own event names (FriendRemoved, LikePost...) each get their usage features
    for event in example.EXPORT_NAMES.values():
        assert f"events_{event.lower()}_30d" in names, names
    assert "acquisition_channel" in names and "holder_age" in names

    def drivers(rows: pd.DataFrame) -> pd.DataFrame:
        parts = []
        for d, group in rows.groupby(rows["as_of_date"].dt.date):
            truth = example.true_driver_frame(book, d)
            parts.append(group[["account_id", "churned"]].merge(truth, on="account_id", how="inner"))
        return pd.concat(parts, ignore_index=True)

    fit = drivers(ts.frame[ts.frame["as_of_date"].dt.date.isin(ts.fit_dates)])
    hold_rows = holdout_rows(ts)
    hold = drivers(hold_rows)
    assert len(hold) == len(hold_rows)
    cols = [c for c in fit.columns if c not in ("account_id", "churned")]
    oracle = LogisticRegression(max_iter=2000).fit(fit[cols], fit["churned"])
    oracle_auc = roc_auc_score(hold["churned"], oracle.predict_proba(hold[cols])[:, 1])
    auc = result.metrics["roc_auc"]
    print(f"selfserve holdout AUC {auc:.3f} vs true-driver model {oracle_auc:.3f} on {len(hold)} rows")  # noqa: T201
    assert auc >= oracle_auc - 0.04, (auc, oracle_auc)


def test_too_few_churners_refuses_training(tmp_path: Path) -> None:
    example = _load("b2b_export")
    export = tmp_path / "export"
    example.write_export(example.simulate(accounts=60, seed=8), export)
    _cli(tmp_path, "ingest", "--mapping", str(export / "sources.yaml"), "--run-date", RUN_DATE)
    refused = _cli(tmp_path, "train", ok=False)
    text = refused.stdout + refused.stderr
    assert refused.returncode != 0
    assert "holdout has 7 churned accounts (needs 30)" in " ".join(text.split()) or "churned accounts (needs" in text, text
    assert "fix:" in text and "more history" in text, text  # the cause and the fix
    scored = _cli(tmp_path, "score", "--as-of", RUN_DATE, ok=False)
    assert scored.returncode != 0
    assert "refused" in (scored.stdout + scored.stderr)
