"""Tests of the demo book generator: determinism, the data contract, and the planted signals."""

from __future__ import annotations

import re
from datetime import date

import numpy as np
import pandas as pd
import pytest

from churnflow import schema
from churnflow.demo_data import (
    DRIVERS,
    HAZARD_WEIGHTS,
    generate_book,
    iter_usage_chunks,
    monthly_hazard,
    simulate_world,
    write_book,
    write_demo_book,
)
from churnflow.warehouse import get_engine, read_sql

TABLES = ("accounts", "subscriptions", "usage", "tickets", "surveys", "truth")
SPECS = {**schema.ALL_INPUTS}


@pytest.fixture(scope="module")
def book() -> dict[str, pd.DataFrame]:
    return generate_book(accounts=200, days=240, seed=11)


@pytest.fixture(scope="module")
def big() -> dict[str, pd.DataFrame]:
    """A 1000-account book over the default 540 days, for empirical signal checks."""
    return generate_book(accounts=1000, days=540, seed=3)


def _churn_at(book: dict[str, pd.DataFrame]) -> pd.Series:
    subs = book["subscriptions"]
    return subs.dropna(subset=["cancelled_at"]).set_index("account_id")["cancelled_at"]


def test_deterministic_for_a_seed_and_different_for_another(book: dict[str, pd.DataFrame]) -> None:
    again = generate_book(accounts=200, days=240, seed=11)
    for name in TABLES:
        pd.testing.assert_frame_equal(book[name], again[name], obj=name)
    other = generate_book(accounts=200, days=240, seed=12)
    assert not book["usage"].equals(other["usage"])
    assert not book["subscriptions"].equals(other["subscriptions"])
    assert not book["accounts"]["name"].equals(other["accounts"]["name"])


def test_end_date_default_is_fixed_and_window_respected(book: dict[str, pd.DataFrame]) -> None:
    end = pd.Timestamp(date(2026, 11, 1))
    start = end - pd.Timedelta(days=240)
    for name, col in (("usage", "occurred_at"), ("tickets", "opened_at"), ("surveys", "submitted_at")):
        assert book[name][col].min() >= start, name
        assert book[name][col].max() < end, name
    custom = generate_book(accounts=30, days=60, seed=1, end_date=date(2024, 3, 1))
    assert custom["usage"]["occurred_at"].max() < pd.Timestamp("2024-03-01")


def test_every_table_satisfies_the_schema(book: dict[str, pd.DataFrame]) -> None:
    assert set(book) == set(TABLES)
    for name in TABLES:
        frame = book[name]
        spec = SPECS[name]
        assert list(frame.columns) == spec.column_names
        pd.testing.assert_frame_equal(schema.coerce(frame, spec), frame, obj=name)
        for col in spec.columns:
            if col.required:
                assert frame[col.name].notna().all(), f"{name}.{col.name} has nulls"
        if spec.key:
            assert not frame.duplicated(list(spec.key)).any(), f"{name} key not unique"
        assert len(frame) > 0, name
    assert not book["truth"].duplicated(["account_id", "period_start"]).any()


def test_referential_integrity_and_ids(book: dict[str, pd.DataFrame]) -> None:
    ids = set(book["accounts"]["account_id"])
    for name in ("subscriptions", "usage", "tickets", "surveys", "truth"):
        assert set(book[name]["account_id"]) <= ids, name
    assert set(book["subscriptions"]["account_id"]) == ids  # every account has a contract
    crm = book["accounts"]["crm_account_id"]
    assert crm.is_unique
    assert crm.map(lambda s: bool(re.fullmatch(r"001[0-9A-Za-z]{15}", s))).all()
    owners = book["accounts"]["owner_email"].dropna()
    assert owners.str.fullmatch(r"[a-z]+\.[a-z]+@example\.com").all()
    assert 6 <= owners.nunique() <= 14
    assert set(book["accounts"]["segment"]) == {"smb", "mid_market", "enterprise"}


def test_scores_within_scales(book: dict[str, pd.DataFrame]) -> None:
    s = book["surveys"]
    assert set(s["kind"]) == {"nps", "csat", "ces"}
    for kind, lo, hi in (("nps", 0, 10), ("csat", 1, 5), ("ces", 1, 7)):
        scores = s.loc[s["kind"] == kind, "score"]
        assert scores.between(lo, hi).all() and (scores == scores.round()).all(), kind
    csat = book["tickets"]["csat"].dropna()
    assert csat.between(1, 5).all()
    assert s["comment"].isna().any() and s["comment"].notna().any()
    t = book["tickets"]
    assert t["priority"].isin(["low", "normal", "high", "urgent"]).all()
    assert t["channel"].isin(["email", "chat", "phone", "web"]).all()
    assert (t["first_response_minutes"] > 0).all()
    closed = t.dropna(subset=["closed_at"])
    assert (closed["closed_at"] > closed["opened_at"]).all()
    assert t["closed_at"].isna().any()  # some tickets are still open
    assert ((book["truth"]["hazard"] >= 0) & (book["truth"]["hazard"] < 1)).all()
    assert (book["truth"]["period_start"].dt.day == 1).all()
    u = book["usage"]
    assert (u["quantity"] >= 1).all() and (u["errors"] >= 0).all() and (u["duration_s"] > 0).all()
    per_user_day = u.assign(day=u["occurred_at"].dt.normalize()).duplicated(["user_id", "day"])
    assert not per_user_day.any()  # one row per active user per active day


def test_activity_inside_the_account_life(book: dict[str, pd.DataFrame]) -> None:
    acc = book["accounts"].set_index("account_id")
    churn = _churn_at(book)
    for name, col in (("usage", "occurred_at"), ("tickets", "opened_at"), ("surveys", "submitted_at")):
        f = book[name]
        created = f["account_id"].map(acc["created_at"])
        assert (f[col] >= created).all(), name
        ends = f["account_id"].map(churn)
        assert (f[col][ends.notna()] < ends[ends.notna()]).all(), name
    closed = book["tickets"].dropna(subset=["closed_at"])
    ends = closed["account_id"].map(churn)
    assert (closed["closed_at"][ends.notna()] <= ends[ends.notna()]).all()


def test_subscriptions_tell_the_churn_story(book: dict[str, pd.DataFrame]) -> None:
    subs = book["subscriptions"].sort_values(["account_id", "start_date"])
    assert (subs["end_date"] > subs["start_date"]).all()
    assert set(subs["plan"]) <= {"starter", "growth", "enterprise"}
    assert (subs["seats"] >= 1).all() and (subs["arr"] > 0).all()
    # Renewals are contiguous: each term starts where the previous one ended.
    prev_end = subs.groupby("account_id")["end_date"].shift()
    has_prev = prev_end.notna()
    assert (subs.loc[has_prev, "start_date"] == prev_end[has_prev]).all()
    # A cancellation is on the account's last term, inside that term, and nothing follows it.
    last = subs.groupby("account_id").tail(1)
    cancelled = subs.dropna(subset=["cancelled_at"])
    assert cancelled["subscription_id"].isin(last["subscription_id"]).all()
    assert cancelled["account_id"].is_unique
    assert (cancelled["cancelled_at"] >= cancelled["start_date"]).all()
    assert (cancelled["cancelled_at"] < cancelled["end_date"]).all()
    # The first term shown is the account's first (created in the window) or the one in force
    # at the window start (long-standing accounts).
    start = pd.Timestamp("2026-11-01") - pd.Timedelta(days=240)
    first = subs.groupby("account_id").head(1).set_index("account_id")
    created = book["accounts"].set_index("account_id")["created_at"].reindex(first.index)
    new = created >= start
    assert (first.loc[new, "start_date"] == created[new].dt.normalize()).all()
    assert (first.loc[~new, "start_date"] <= start).all() and (first.loc[~new, "end_date"] > start).all()
    # Retained accounts are covered through the end of the window (they renewed).
    end = pd.Timestamp("2026-11-01")
    retained = last[last["cancelled_at"].isna()]
    assert (retained["end_date"] >= end).all()
    assert 0 < len(cancelled) < len(last)
    # The truth table covers each account's customer months, ending with the churn month.
    truth = book["truth"]
    churn = _churn_at(book)
    last_month = truth.groupby("account_id")["period_start"].max()
    expect = churn.dt.to_period("M").dt.to_timestamp()
    assert (last_month.reindex(expect.index) == expect).all()


def test_monthly_hazard_moves_in_the_stated_direction() -> None:
    base = pd.DataFrame({name: [0.2] for name in DRIVERS})
    h0 = monthly_hazard(base)[0]
    assert 0 < h0 < 1
    for name in DRIVERS:
        raised = base.copy()
        raised[name] = raised[name] + 0.5
        h1 = monthly_hazard(raised)[0]
        weight = HAZARD_WEIGHTS[name]
        assert weight != 0, name
        assert (h1 > h0) if weight > 0 else (h1 < h0), name
    # The planted directions themselves (what the docs promise).
    for name in ("usage_decline", "seat_underuse", "error_spike", "slow_first_response", "reopened_tickets",
                 "detractor_nps", "low_csat", "high_ces", "renewal_within_90d", "segment_smb", "young_account"):
        assert HAZARD_WEIGHTS[name] > 0, name
    assert HAZARD_WEIGHTS["segment_enterprise"] < 0
    # Vectorised: one probability per row, missing drivers count as zero.
    many = monthly_hazard(pd.DataFrame({"usage_decline": np.linspace(0, 1, 5)}))
    assert many.shape == (5,) and np.all(np.diff(many) > 0)


def test_churned_accounts_used_less_before_churn(big: dict[str, pd.DataFrame]) -> None:
    """Churners' per-seat usage in the 30 days before churn is below same-segment retained accounts'."""
    usage = big["usage"]
    acc = big["accounts"].set_index("account_id")
    subs = big["subscriptions"]
    churn = _churn_at(big)
    seats = subs.sort_values("start_date").groupby("account_id")["seats"].last()
    retained = acc.index.difference(churn.index)
    daily = (usage.assign(day=usage["occurred_at"].dt.normalize())
             .groupby(["account_id", "day"])["quantity"].sum().rename("q").reset_index())
    daily_by_acc = {k: g.set_index("day")["q"] for k, g in daily.groupby("account_id")}
    created = acc["created_at"]
    gaps = []
    for aid, when in churn.items():
        lo, hi = when.normalize() - pd.Timedelta(days=30), when.normalize()
        if created[aid] > lo - pd.Timedelta(days=60):
            continue  # compare established accounts only
        seg = acc.at[aid, "segment"]
        peers = [r for r in retained if acc.at[r, "segment"] == seg and created[r] < lo - pd.Timedelta(days=60)]
        def per_seat(a: str) -> float:
            s = daily_by_acc.get(a)
            total = 0.0 if s is None else float(s[(s.index >= lo) & (s.index < hi)].sum())
            return total / seats[a]
        own = per_seat(aid)
        peer = float(np.median([per_seat(r) for r in peers[:60]]))
        gaps.append(own - peer)
    assert len(gaps) >= 50
    gaps_arr = np.array(gaps)
    assert np.median(gaps_arr) < 0
    assert (gaps_arr < 0).mean() > 0.6


def test_churned_accounts_have_more_detractors(big: dict[str, pd.DataFrame]) -> None:
    nps = big["surveys"][big["surveys"]["kind"] == "nps"]
    churned = set(_churn_at(big).index)
    detractor = nps["score"] <= 6
    is_churner = nps["account_id"].isin(churned)
    assert detractor[is_churner].mean() > detractor[~is_churner].mean() + 0.05


def test_churn_rate_is_calibrated(big: dict[str, pd.DataFrame]) -> None:
    acc = big["accounts"].set_index("account_id")
    churn = _churn_at(big)
    start = pd.Timestamp("2026-11-01") - pd.Timedelta(days=540)
    at_start = acc.index[acc["created_at"] < start]
    churn_day = churn.reindex(at_start)
    annual = float((churn_day < start + pd.Timedelta(days=365)).mean())
    assert 0.13 <= annual <= 0.23, annual
    rates = []
    for offset in range(0, 540 - 90, 30):
        s = start + pd.Timedelta(days=offset)
        active = acc.index[(acc["created_at"] < s)]
        ends = churn.reindex(active)
        active_now = ends.isna() | (ends >= s)
        churned = (ends >= s) & (ends < s + pd.Timedelta(days=90))
        rates.append(churned.sum() / active_now.sum())
    assert 0.035 <= float(np.mean(rates)) <= 0.075, rates
    assert max(rates) < 0.12


def test_usage_volume_follows_seasonality(big: dict[str, pd.DataFrame]) -> None:
    u = big["usage"]
    dow = u["occurred_at"].dt.dayofweek
    per_day = u.groupby(u["occurred_at"].dt.normalize()).size()
    weekday = per_day[per_day.index.dayofweek < 5].mean()
    weekend = per_day[per_day.index.dayofweek >= 5].mean()
    assert weekend < 0.3 * weekday
    assert (dow >= 5).any()
    nov = per_day[(per_day.index.month == 11) & (per_day.index.dayofweek < 5)].mean()
    dec = per_day[(per_day.index.month == 12) & (per_day.index.dayofweek < 5)].mean()
    assert dec < nov


def test_write_book_round_trips_row_counts(tmp_path, book: dict[str, pd.DataFrame]) -> None:
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    counts = write_book(engine, book)
    assert counts == {name: len(book[name]) for name in TABLES}
    for name in TABLES:
        n = int(read_sql(engine, f'SELECT COUNT(*) AS n FROM "{name}"')["n"].iloc[0])
        assert n == len(book[name]), name
    # Writing again replaces rather than duplicates.
    write_book(engine, book)
    assert int(read_sql(engine, 'SELECT COUNT(*) AS n FROM "usage"')["n"].iloc[0]) == len(book["usage"])
    engine.dispose()


def test_streamed_write_matches_in_memory_book(tmp_path) -> None:
    """write_demo_book streams usage in chunks and yields exactly generate_book's rows."""
    engine = get_engine(f"duckdb:///{tmp_path}/s.duckdb")
    counts = write_demo_book(engine, accounts=120, days=120, seed=5)
    mem = generate_book(accounts=120, days=120, seed=5)
    assert counts == {name: len(mem[name]) for name in TABLES}
    stored = read_sql(engine, 'SELECT user_id, occurred_at, quantity, errors FROM "usage"')
    key = ["user_id", "occurred_at"]
    stored = stored.sort_values(key).reset_index(drop=True)
    expected = mem["usage"][stored.columns].sort_values(key).reset_index(drop=True)
    assert (stored["user_id"] == expected["user_id"]).all()
    assert (pd.to_datetime(stored["occurred_at"]) == expected["occurred_at"]).all()
    assert stored["quantity"].sum() == expected["quantity"].sum()
    assert stored["errors"].sum() == expected["errors"].sum()
    engine.dispose()


def test_usage_chunks_are_memory_bounded_and_well_formed() -> None:
    world = simulate_world(accounts=120, days=120, seed=5)
    chunks = list(iter_usage_chunks(world, max_cells=20_000))
    assert len(chunks) > 1
    for chunk in chunks:
        pd.testing.assert_frame_equal(schema.coerce(chunk, schema.USAGE), chunk)
    accounts = [set(c["account_id"]) for c in chunks if len(c)]
    assert all(not (x & y) for i, x in enumerate(accounts) for y in accounts[i + 1:])  # chunks split by account


def test_ticket_csat_is_the_csat_survey(book: dict[str, pd.DataFrame]) -> None:
    """A ticket's CSAT answer is recorded on the ticket and as a csat survey response."""
    t = book["tickets"]
    s = book["surveys"]
    csat_surveys = s[s["kind"] == "csat"]
    assert len(csat_surveys) == t["csat"].notna().sum() > 0
    assert sorted(csat_surveys["score"].astype(int)) == sorted(t["csat"].dropna().astype(int))
    per_acc_t = t.dropna(subset=["csat"]).groupby("account_id").size()
    per_acc_s = csat_surveys.groupby("account_id").size()
    pd.testing.assert_series_equal(per_acc_t.sort_index(), per_acc_s.sort_index(), check_names=False)
