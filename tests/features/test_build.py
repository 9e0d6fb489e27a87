"""Feature contracts, point-in-time correctness (leakage) and backend parity."""

from __future__ import annotations

from datetime import date, datetime, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.demo_data import book_end, generate_book, write_book
from churnflow.warehouse import read_sql, replace_rows
from features.build import book_catalogue, build_features, default_as_of
from features.catalogue import CATALOGUE, FEATURE_NAMES, features_markdown

AS_OF = date(2026, 6, 1)


def test_builder_produces_exactly_the_catalogue(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    frame = build_features(book_engine, AS_OF)
    catalogue = book_catalogue(book_engine, AS_OF)
    # A demo book has every source: the whole static catalogue, then 8 event types x 3.
    assert [f.name for f in catalogue[: len(FEATURE_NAMES)]] == FEATURE_NAMES
    assert len(catalogue) == len(FEATURE_NAMES) + 8 * 3
    assert list(frame.columns) == ["as_of_date", "account_id", *(f.name for f in catalogue)]
    assert frame["account_id"].is_unique
    assert len(frame) > 100
    # Every catalogue feature carries real signal on a demo book (none constant), except the
    # reopen flag's: a flag has no date, so it is unknown before the load that reported it
    # (the book is loaded once, at its end; churnflow.history, features.build).
    unknown_before_load = ["reopen_rate_90d", "first_contact_resolution_90d"]
    constant = [f.name for f in catalogue if frame[f.name].nunique(dropna=True) <= 1]
    assert constant == unknown_before_load
    assert frame[unknown_before_load].isna().all().all()
    at_load = build_features(book_engine, book_end(small_book).date())
    assert all(at_load[f].nunique(dropna=True) > 1 for f in unknown_before_load)


def test_only_accounts_covered_at_as_of_are_featured(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    frame = build_features(book_engine, AS_OF)
    subs = small_book["subscriptions"]
    d = pd.Timestamp(AS_OF)
    cancelled = pd.to_datetime(subs["cancelled_at"])
    covering = subs[(pd.to_datetime(subs["start_date"]) < d) & (pd.to_datetime(subs["end_date"]) >= d) & (cancelled.isna() | (cancelled >= d))]
    assert set(frame["account_id"]) == set(covering["account_id"])


def test_usage_counts_match_an_independent_pandas_computation(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    frame = build_features(book_engine, AS_OF).set_index("account_id")
    usage = small_book["usage"]
    d = pd.Timestamp(AS_OF)
    window = usage[(usage["occurred_at"] >= d - pd.Timedelta(days=30)) & (usage["occurred_at"] < d)]
    expected_users = window.groupby("account_id")["user_id"].nunique().reindex(frame.index).fillna(0)
    expected_events = window.groupby("account_id")["quantity"].sum().reindex(frame.index).fillna(0)
    np.testing.assert_allclose(frame["active_users_30d"], expected_users)
    np.testing.assert_allclose(frame["events_30d"], expected_events, rtol=1e-9)


def _future_mutations(engine: sa.Engine, book: dict[str, pd.DataFrame], as_of: date) -> None:
    """Append and change rows stamped on or after ``as_of`` in every table, including rows at
    exactly midnight of ``as_of`` (the boundary a leaky '<=' would read)."""
    d = pd.Timestamp(as_of)
    accounts = book["accounts"]["account_id"].head(200).tolist()
    n = len(accounts)
    usage = book["usage"].copy()
    usage.loc[usage["occurred_at"] >= d, "quantity"] *= 100
    boundary_usage = pd.DataFrame({
        "account_id": accounts, "occurred_at": [d] * n, "feature": "export", "quantity": 1e6,
        "duration_s": 10.0, "errors": 5000, "user_id": [f"leak-{i}" for i in range(n)],
    })
    replace_rows(engine, "usage", pd.concat([usage, boundary_usage, boundary_usage.assign(occurred_at=d + pd.Timedelta(hours=23))]), replace_all=True)

    tickets = book["tickets"].copy()
    closes_later = pd.to_datetime(tickets["closed_at"]) >= d
    tickets.loc[closes_later, "reopened"] = True
    tickets.loc[closes_later, "csat"] = 1
    new_tickets = pd.DataFrame({
        "ticket_id": [f"LEAK-T{i}" for i in range(n)], "account_id": accounts, "opened_at": [d] * n, "closed_at": [d + pd.Timedelta(days=1)] * n,
        "priority": "urgent", "channel": "phone", "first_response_minutes": 9999.0, "reopened": True, "csat": 1,
    })
    replace_rows(engine, "tickets", pd.concat([tickets, new_tickets]), replace_all=True)

    surveys = book["surveys"].copy()
    surveys.loc[pd.to_datetime(surveys["submitted_at"]) >= d, "score"] = 0
    new_surveys = pd.DataFrame({
        "response_id": [f"LEAK-S{i}" for i in range(n)], "account_id": accounts, "submitted_at": [d] * n,
        "kind": "nps", "score": 0.0, "comment": "terrible bugs, waiting forever, billing is too expensive",
    })
    replace_rows(engine, "surveys", pd.concat([surveys, new_surveys]), replace_all=True)

    subs = book["subscriptions"].copy()
    covering = (pd.to_datetime(subs["start_date"]) < d) & (pd.to_datetime(subs["end_date"]) > d) & subs["cancelled_at"].isna()
    subs.loc[covering, "cancelled_at"] = d + pd.Timedelta(days=3)  # cancellations recorded after D
    renewals = subs[covering].head(50).assign(
        subscription_id=lambda f: "LEAK-" + f["subscription_id"], start_date=d, end_date=d + pd.Timedelta(days=365), arr=1.0, cancelled_at=pd.NaT
    )
    replace_rows(engine, "subscriptions", pd.concat([subs, renewals]), replace_all=True)

    accounts_frame = pd.concat([book["accounts"], book["accounts"].head(5).assign(account_id=lambda f: "LEAK-" + f["account_id"], created_at=d)])
    replace_rows(engine, "accounts", accounts_frame, replace_all=True)


def test_rows_on_or_after_as_of_change_no_feature(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    before = build_features(book_engine, AS_OF)
    _future_mutations(book_engine, small_book, AS_OF)
    after = build_features(book_engine, AS_OF)
    pd.testing.assert_frame_equal(before, after)


def test_the_leakage_check_would_catch_a_leak(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    """The same mutations do change features one day later: the check above has teeth."""
    later = AS_OF + timedelta(days=1)
    before = build_features(book_engine, later)
    _future_mutations(book_engine, small_book, AS_OF)
    after = build_features(book_engine, later)
    assert not before.equals(after)


def test_default_as_of_is_the_day_after_the_newest_data(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    last = small_book["usage"]["occurred_at"].max()
    assert default_as_of(book_engine) == last.date() + timedelta(days=1)
    assert default_as_of(book_engine, today=date(2026, 3, 1)) == date(2026, 3, 1)


def test_catalogue_entries_are_complete_and_explainable() -> None:
    names = [f.name for f in CATALOGUE]
    assert len(names) == len(set(names))
    for feature in CATALOGUE:
        sample = (feature.categories[0] if feature.categories else "enterprise") if feature.is_categorical else 0.25
        sentence = feature.explain(sample)
        assert sentence and "{" not in sentence, feature.name
        assert (feature.risk_when == "category") == feature.is_categorical, feature.name
    assert "usage_trend_30d" in features_markdown()


@pytest.mark.postgres
def test_postgres_gives_the_same_features_as_duckdb(pg_engine: sa.Engine, duck_engine: sa.Engine) -> None:
    book = generate_book(accounts=120, days=400, seed=5)
    write_book(duck_engine, book)
    write_book(pg_engine, book)
    as_of = date(2026, 8, 1)
    duck = build_features(duck_engine, as_of)
    pg = build_features(pg_engine, as_of)
    assert len(duck) > 50
    pd.testing.assert_frame_equal(duck, pg, check_exact=False, rtol=1e-6)
    assert len(read_sql(pg_engine, "SELECT * FROM accounts")) == 120
    assert datetime(2026, 8, 1) == pd.Timestamp(pg["as_of_date"].iloc[0]).to_pydatetime()


def _built_at(engine: sa.Engine, as_of: date) -> pd.Timestamp:
    return pd.Timestamp(read_sql(engine, "SELECT built_at FROM feature_builds WHERE as_of_date = :d", {"d": as_of}).loc[0, "built_at"])


def test_features_are_reused_only_while_their_inputs_are_unchanged(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    from features.build import input_fingerprint, materialize_features

    first = materialize_features(book_engine, [AS_OF])
    built = _built_at(book_engine, AS_OF)
    again = materialize_features(book_engine, [AS_OF])
    assert _built_at(book_engine, AS_OF) == built  # reused, not rebuilt
    pd.testing.assert_frame_equal(first, again)

    # A change dated on or after D is not an input of D: still reused.
    d = pd.Timestamp(AS_OF)
    tickets = small_book["tickets"].copy()
    later = pd.to_datetime(tickets["opened_at"]) >= d
    tickets.loc[later, "priority"] = "urgent"
    replace_rows(book_engine, "tickets", tickets, replace_all=True)
    materialize_features(book_engine, [AS_OF])
    assert _built_at(book_engine, AS_OF) == built

    # Any value of an input row known at D changes the fingerprint: rebuilt, and it shows.
    fingerprint = input_fingerprint(book_engine, AS_OF)
    victim = tickets.index[(pd.to_datetime(tickets["opened_at"]) < d) & (pd.to_datetime(tickets["opened_at"]) >= d - pd.Timedelta(days=30))
                           & (tickets["priority"] == "low")][0]
    tickets.loc[victim, "priority"] = "high"  # same row count, same sums: only a value changed
    replace_rows(book_engine, "tickets", tickets, replace_all=True)
    assert input_fingerprint(book_engine, AS_OF) != fingerprint
    rebuilt = materialize_features(book_engine, [AS_OF]).set_index("account_id")
    assert _built_at(book_engine, AS_OF) > built
    account = tickets.loc[victim, "account_id"]
    assert rebuilt.loc[account, "high_priority_share_90d"] > first.set_index("account_id").loc[account, "high_priority_share_90d"]

    # A usage value inside the window: a user renamed on one day (counts and sums unchanged).
    built = _built_at(book_engine, AS_OF)
    usage = small_book["usage"].copy()
    row = usage.index[(usage["occurred_at"] < d) & (usage["occurred_at"] >= d - pd.Timedelta(days=5))][0]
    usage.loc[row, "user_id"] = "renamed-user"
    replace_rows(book_engine, "usage", usage, replace_all=True)
    again = materialize_features(book_engine, [AS_OF]).set_index("account_id")
    assert _built_at(book_engine, AS_OF) > built
    assert again.loc[usage.loc[row, "account_id"], "active_users_90d"] >= rebuilt.loc[usage.loc[row, "account_id"], "active_users_90d"]
