"""The health scale: a monotone transform of p_churn whose band cut-offs sit at fixed points,
never disagreeing with the band, and old history re-expressed so trends do not jump."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.settings import Settings
from churnflow.vocabulary import FAMILIES
from churnflow.warehouse import get_engine, read_sql
from models.explain import contributions, family_scores
from models.registry import load_model
from models.score import (
    BAND_HEALTH, HEALTH_SCALE, band_of, band_thresholds, health_score, load_features, previous_health, reexpress_old_scores,
    score_accounts, store_scores,
)
from tests.helpers import copy_duckdb_warehouse

DAY = date(2026, 9, 10)


def _threshold_pairs(rng: np.random.Generator, n: int) -> list[tuple[float, float]]:
    """(red, yellow) pairs as settings can give them: base-rate multiples (capped at 0.999),
    absolute overrides, tiny and huge base rates, and the degenerate yellow == red cap."""
    pairs = [(0.12, 0.04), (0.999, 0.999), (0.03, 0.01), (0.9, 0.001), (0.002, 0.001)]
    for _ in range(n):
        yellow = float(rng.uniform(1e-4, 0.9))
        pairs.append((float(min(rng.uniform(1.01, 6) * yellow, 0.999)), yellow))
    return pairs


def test_health_and_band_never_disagree_over_many_probabilities_and_thresholds() -> None:
    rng = np.random.default_rng(15)
    for red, yellow in _threshold_pairs(rng, 300):
        # Uniform p, plus every cut-off and its neighbours, where rounding could cross a band.
        edges = np.array([0.0, 1.0, yellow, red, np.nextafter(yellow, 0), np.nextafter(red, 0), np.nextafter(red, 1)])
        p = np.sort(np.concatenate([rng.uniform(0, 1, 400), rng.uniform(0, min(1, 2 * red), 400), np.clip(edges, 0, 1)]))
        health, bands = health_score(p, red, yellow), band_of(p, red, yellow)
        for name, (low, high) in BAND_HEALTH.items():
            inside = health[bands == name]
            assert ((inside >= low) & (inside <= high)).all(), (name, red, yellow)
        assert (np.diff(health) <= 0).all(), (red, yellow)  # higher risk never reads healthier
        assert health[0] == 100 and health[-1] == 0


def test_the_cut_offs_land_at_the_documented_points() -> None:
    red, yellow = 0.12, 0.04
    # The worked example of docs/health-score.md.
    p = np.array([0.0, 0.02, 0.039999, 0.04, 0.08, 0.12, 0.2, 0.56, 1.0])
    assert health_score(p, red, yellow).tolist() == [100, 85, 70, 69, 55, 39, 36, 20, 0]
    # The old scale put a p of 0.2 (red here) at 80; the new one reads it as red.
    assert band_of(0.2, red, yellow) == "red" and health_score(0.2, red, yellow) < 40
    # The same probability reads healthier when the bands are set wider, as the colour does.
    assert health_score(0.1, 0.3, 0.1) > health_score(0.1, 0.12, 0.04)


@pytest.fixture
def home(trained_home: Settings, tmp_path: Path) -> Settings:
    """The trained home's model with a private copy of its warehouse (these tests write scores)."""
    url = copy_duckdb_warehouse(trained_home.warehouse, tmp_path / "warehouse.duckdb")
    return Settings(home=trained_home.home, warehouse_url=url)


def _rows(engine: sa.Engine, day: date) -> pd.DataFrame:
    rows = read_sql(engine, "SELECT * FROM account_scores WHERE as_of_date = :d", {"d": datetime(day.year, day.month, day.day)})
    return rows.sort_values("account_id").reset_index(drop=True)


def _back_to_the_old_scale(engine: sa.Engine, home: Settings, day: date) -> None:
    """Rewrite a day's rows as churnflow stored them before the scale had a version:
    round(100 * (1 - p)) for the score and for each family's probability, no scale, no thresholds."""
    model = load_model(home).model
    rows = _rows(engine, day)
    features = load_features(engine, day).set_index("account_id").loc[rows["account_id"]].reset_index()
    old_scale = lambda p: np.rint(100 * (1 - np.asarray(p))).astype(int)  # noqa: E731 - the scale before
    subs = family_scores(model, contributions(model, features), old_scale)
    rows[subs.columns] = subs
    rows["health_score"] = old_scale(rows["p_churn"])
    rows[["health_scale", "red_threshold", "yellow_threshold"]] = None
    store_scores(engine, rows, day)


def test_old_history_is_re_expressed_so_the_trend_does_not_jump(home: Settings) -> None:
    engine = get_engine(home.warehouse)
    loaded = load_model(home)
    red, yellow = band_thresholds(home, loaded.base_rate)
    week_before, day = DAY - timedelta(days=7), DAY
    new_scale = score_accounts(engine, home, week_before, loaded=loaded).sort_values("account_id").reset_index(drop=True)
    assert (new_scale["health_scale"] == HEALTH_SCALE).all()
    _back_to_the_old_scale(engine, home, week_before)
    old = _rows(engine, week_before)
    assert (old["health_score"] != new_scale["health_score"]).mean() > 0.5  # the scales really differ
    # Not yet re-expressed: old-scale rows give no trend rather than a jump.
    assert previous_health(engine, day)[7].empty

    scores = score_accounts(engine, home, day, loaded=loaded)
    again = _rows(engine, week_before)
    assert (again["health_scale"] == HEALTH_SCALE).all()
    np.testing.assert_array_equal(again["health_score"], new_scale["health_score"])
    np.testing.assert_allclose(again[["red_threshold", "yellow_threshold"]].to_numpy(dtype=float)[0], [red, yellow])
    # Each re-expressed health lies in its stored band's range.
    for name, (low, high) in BAND_HEALTH.items():
        inside = again.loc[again["model_band"] == name, "health_score"]
        assert inside.between(low, high).all()
    # Sub-scores come back within a few points: they were stored rounded to 0.01 of probability,
    # which spans up to 0.005 / 0.04 * 30 = 3.75 points where green is 0.04 wide.
    for family in FAMILIES:
        known = new_scale[f"{family}_score"].notna()
        gap = (again.loc[known, f"{family}_score"].astype(float) - new_scale.loc[known, f"{family}_score"].astype(float)).abs()
        assert gap.max() <= 4, family
    # The trend compares like with like: today's health minus last week's, both on the new scale.
    merged = scores.merge(new_scale[["account_id", "health_score"]], on="account_id", suffixes=("", "_then"))
    np.testing.assert_allclose(merged["health_change_7d"], merged["health_score"] - merged["health_score_then"])
    assert reexpress_old_scores(engine, home, loaded) == 0  # done once
