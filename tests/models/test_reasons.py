"""Reasons a CS team can trust: each says which way it pushes and compared with what, a
protective driver is never shown as a risk, context facts are shown as context."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from churnflow.settings import Settings
from churnflow.vocabulary import AT_RISK_BANDS
from churnflow.warehouse import get_engine
from features.catalogue import states_direction
from models.explain import ALL_PEERS, PEER_COLUMN, peer_baselines
from models.registry import load_model
from models.score import load_features, score_accounts
from tests.helpers import copy_duckdb_warehouse

DAY = date(2026, 10, 1)
# Sentences the issue found shown as reasons for yellow and red accounts: bare facts.
BARE_FACTS = ("Customer for 1,775 days", "ARR is 1,900", "Took 1 days to first product use", "761 product events in the last 90 days")
OLD_DRIVER_FIELDS = {"feature", "family", "value", "contribution", "sentence"}


@pytest.fixture(scope="module")
def scored(trained_home: Settings, tmp_path_factory: pytest.TempPathFactory) -> tuple[Settings, pd.DataFrame, pd.DataFrame]:
    """The trained test book scored on one day (in a private copy of its warehouse), with the day's features."""
    url = copy_duckdb_warehouse(trained_home.warehouse, tmp_path_factory.mktemp("reasons") / "warehouse.duckdb")
    home = Settings(home=trained_home.home, warehouse_url=url)
    engine = get_engine(home.warehouse)
    return home, score_accounts(engine, home, DAY), load_features(engine, DAY)


def _parsed(scores: pd.DataFrame, column: str) -> list[tuple[str, dict]]:
    out = []
    for account, band, raw in scores[["account_id", "band", column]].itertuples(index=False):
        if raw is None or (isinstance(raw, float) and np.isnan(raw)):
            continue
        loaded = json.loads(raw)
        out += [(band, d) for d in (loaded if isinstance(loaded, list) else [loaded])]
    return out


def test_the_direction_rule_rejects_bare_facts() -> None:
    for fact in BARE_FACTS:
        assert not states_direction(fact), fact
    assert states_direction("Seat use 28%, well below the 65% typical for accounts of this size")
    assert states_direction("Product usage fell 42% over the last 30 days")


def test_no_reason_for_a_red_or_yellow_account_is_a_bare_fact(scored) -> None:
    _, scores, _ = scored
    at_risk = scores[scores["model_band"].isin(AT_RISK_BANDS)]
    assert len(at_risk) > 20
    sentences = [s for text in at_risk["top_drivers_text"] for s in str(text).splitlines() if s]
    sentences += [s for s in at_risk["protective_driver_text"].dropna()]
    assert len(sentences) > 2 * len(at_risk)  # reasons are still given, not dropped wholesale
    bare = [s for s in sentences if not states_direction(s)]
    assert not bare, bare[:5]


def test_a_reason_lies_on_the_side_it_is_shown_on(scored) -> None:
    home, scores, _ = scored
    model = load_model(home).model
    risk, protective = _parsed(scores, "top_drivers"), _parsed(scores, "protective_driver")
    assert risk and protective
    for _, d in risk:
        feature = model.feature(d["feature"])
        assert d["kind"] == "risk" and d["contribution"] > 0 and not feature.is_context
        assert OLD_DRIVER_FIELDS <= d.keys()  # readers of the old shape keep working
        assert feature.risky_side(d["value"], d["baseline"]) is not False, d  # e.g. a rise in usage is never a risk
        if feature.risk_when in ("higher", "lower"):
            assert feature.risky_side(d["value"], d["baseline"]) is True, d
    for _, d in protective:
        feature = model.feature(d["feature"])
        assert d["kind"] == "protective" and d["contribution"] < 0 and not feature.is_context
        assert feature.risky_side(d["value"], d["baseline"]) is not True, d
    # The usage trend is cited both ways on this book: as a fall for risk, as a rise (or a
    # smaller fall than peers') never.
    trends = [d for _, d in risk if d["feature"] == "usage_trend_30d"]
    assert trends and all(d["value"] < 0 and "fell" in d["sentence"] for d in trends)


def test_context_facts_are_shown_as_context_not_as_reasons(scored) -> None:
    home, scores, _ = scored
    model = load_model(home).model
    context = _parsed(scores, "context_drivers")
    assert context, "the model leans on tenure, ARR or plan for some accounts"
    for _, d in context:
        assert d["kind"] == "context" and (model.feature(d["feature"]).is_context or d["value"] is None)
    cited = {d["feature"] for _, d in _parsed(scores, "top_drivers")} | {d["feature"] for _, d in _parsed(scores, "protective_driver")}
    assert not cited & {"tenure_days", "arr", "plan", "segment", "seats", "days_to_first_value", "days_to_renewal", "journey_stage"}
    texts = scores["context_text"].dropna()
    assert texts.str.contains("Customer for").any() or texts.str.contains("ARR is").any()


def test_baselines_are_the_peers_medians_of_the_same_day(scored) -> None:
    home, scores, features = scored
    model = load_model(home).model
    baselines = peer_baselines(model, features)
    assert baselines.groups, "the test book has segments large enough to be peers"
    for group, rows in features.groupby(PEER_COLUMN):
        if str(group) in baselines.groups:
            assert baselines.of(group, "events_30d")[0] == pytest.approx(rows["events_30d"].median())
    assert baselines.of(None, "events_30d") == (pytest.approx(features["events_30d"].median()), ALL_PEERS)
    # Every comparison stored names the day's typical value of the account's own peers.
    segment = features.set_index("account_id")[PEER_COLUMN].astype(str)
    for account, raw in scores[["account_id", "top_drivers"]].head(100).itertuples(index=False):
        for d in json.loads(raw):
            if d["baseline"] is not None:
                typical, peers = baselines.of(segment[account], d["feature"])
                assert d["baseline"] == typical and d["peers"] == peers


def test_scoring_a_few_accounts_compares_them_with_the_whole_book(scored) -> None:
    home, scores, _ = scored
    engine = get_engine(home.warehouse)
    few = scores.sort_values("p_churn").tail(3)["account_id"].tolist()
    again = score_accounts(engine, home, DAY, accounts=few).set_index("account_id")
    before = scores.set_index("account_id").loc[few]
    pd.testing.assert_series_equal(again.loc[few, "top_drivers_text"], before["top_drivers_text"])



def test_no_change_is_no_reason(scored) -> None:
    """A trend of 0% ("rose 0%") says no direction: never a risk or protective reason, also for
    per-event-type trends whose risky direction the model learns."""
    _, scores, _ = scored
    shown = _parsed(scores, "top_drivers") + _parsed(scores, "protective_driver")
    trends = [d for _, d in shown if d["feature"].endswith("_trend_30d")]
    assert trends, "the book's reasons include trends"
    flat = [d["sentence"] for d in trends if d["value"] is not None and round(abs(float(d["value"])) * 100) == 0]
    assert not flat, flat[:5]
