"""Subscriptions as billing systems hold them, churn from the customer's source of truth,
and the label window strictly after D -- on DuckDB and PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow import schema
from ingest.contracts import CONTRACTS, check
from churnflow.demo_data import generate_book, write_book
from churnflow.settings import Settings
from churnflow.warehouse import read_sql, replace_rows
from features.build import build_features, next_renewal
from features.labels import (
    active_accounts,
    coverage_events,
    data_window,
    label_snapshots,
    labels_as_of,
    labels_for_dates,
    observation_end,
    subscription_leak_warnings,
    subscriptions_table_check,
)

D = date(2026, 6, 1)
LABEL = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 11, 1)}


def subs(*rows: dict) -> pd.DataFrame:
    base = {"end_date": pd.NaT, "cancelled_at": pd.NaT, "billing_period": None, "renewal_date": pd.NaT}
    frame = pd.DataFrame([{**base, **r} for r in rows])
    for col in ("start_date", "end_date", "cancelled_at", "renewal_date"):
        frame[col] = pd.to_datetime(frame[col], format="ISO8601")
    return frame


# ----------------------------------------------------------------- open-ended subscriptions

OPEN = subs(
    {"account_id": "evergreen", "start_date": "2025-01-15", "billing_period": "month"},
    {"account_id": "cancels", "start_date": "2025-01-15", "billing_period": "month", "cancelled_at": "2025-12-10 14:00"},
    {"account_id": "cancel_midnight", "start_date": "2025-01-15", "billing_period": "month", "cancelled_at": "2025-12-10"},
    # a fixed first year, then evergreen monthly: one stretch of coverage
    {"account_id": "fixed_then_open", "start_date": "2024-12-01", "end_date": "2025-12-01"},
    {"account_id": "fixed_then_open", "start_date": "2025-12-01", "billing_period": "month"},
    # a renewal cancelled before it started covers nothing: churn when the first term ends
    {"account_id": "cancelled_renewal", "start_date": "2025-01-01", "end_date": "2026-01-01"},
    {"account_id": "cancelled_renewal", "start_date": "2026-01-01", "end_date": "2027-01-01", "cancelled_at": "2025-11-20 09:00"},
)


def test_open_ended_subscriptions_churn_when_cancelled_and_not_before() -> None:
    kw = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 9, 1)}
    early = labels_as_of(OPEN, date(2025, 6, 1), **kw).set_index("account_id")
    assert early["churned"].to_dict() == {"evergreen": 0, "cancels": 0, "cancel_midnight": 0, "fixed_then_open": 0, "cancelled_renewal": 0}
    near = labels_as_of(OPEN, date(2025, 11, 1), **kw).set_index("account_id")
    assert near["churned"].to_dict() == {"evergreen": 0, "cancels": 1, "cancel_midnight": 1, "fixed_then_open": 0, "cancelled_renewal": 1}
    # covered through the day the cancellation was recorded; not a customer from the next day
    assert near.loc["cancels", "churn_date"] == pd.Timestamp("2025-12-11")
    assert near.loc["cancelled_renewal", "churn_date"] == pd.Timestamp("2026-01-01")
    assert near["churn_date"].isna().sum() == 2  # no churn date for the retained, never a made-up end
    # the day of the cancellation (not known at midnight): still active, churns strictly after D
    on_day = labels_as_of(OPEN, date(2025, 12, 10), **kw).set_index("account_id")
    assert on_day.loc["cancels", "churned"] == 1 and on_day.loc["cancel_midnight", "churned"] == 1
    after = labels_as_of(OPEN, date(2025, 12, 11), **kw)
    assert {"cancels", "cancel_midnight"}.isdisjoint(after["account_id"])
    assert set(after["account_id"]) == {"evergreen", "fixed_then_open", "cancelled_renewal"}


def test_a_term_ending_at_midnight_d_is_over_and_a_renewal_starting_on_d_continues() -> None:
    book = subs(
        {"account_id": "ends_at_d", "start_date": "2025-06-01", "end_date": "2026-06-01"},
        {"account_id": "renews_at_d", "start_date": "2025-06-01", "end_date": "2026-06-01"},
        {"account_id": "renews_at_d", "start_date": "2026-06-01", "end_date": "2027-06-01"},
        {"account_id": "starts_at_d", "start_date": "2026-06-01", "end_date": "2027-06-01"},
    )
    at_d = labels_as_of(book, D, **LABEL)
    assert list(at_d["account_id"]) == ["renews_at_d"] and at_d["churned"].tolist() == [0]
    day_before = labels_as_of(book, D - timedelta(days=1), **LABEL).set_index("account_id")
    assert day_before["churned"].to_dict() == {"ends_at_d": 1, "renews_at_d": 0}
    assert day_before.loc["ends_at_d", "churn_date"] == pd.Timestamp(D)
    assert "starts_at_d" in set(labels_as_of(book, D + timedelta(days=1), **LABEL)["account_id"])


# ----------------------------------------------------------------- next renewal


def test_next_renewal_from_billing_period_is_exact_and_never_made_up() -> None:
    terms = subs(
        {"account_id": "m31", "start_date": "2025-01-31", "billing_period": "month"},
        {"account_id": "q", "start_date": "2025-02-10", "billing_period": "quarter"},
        {"account_id": "y", "start_date": "2023-07-04", "billing_period": "year"},
        {"account_id": "stated", "start_date": "2024-01-01", "billing_period": "month", "renewal_date": "2027-03-10"},
        {"account_id": "stated_no_cycle", "start_date": "2024-01-01", "renewal_date": "2026-06-20"},
        {"account_id": "fixed", "start_date": "2025-09-01", "end_date": "2026-09-01", "billing_period": "month"},
        {"account_id": "unknown", "start_date": "2024-01-01"},
        {"account_id": "anniversary_on_d", "start_date": "2025-06-01", "billing_period": "year"},
    ).set_index("account_id")
    got = next_renewal(terms, date(2026, 2, 28))
    assert got["m31"] == pd.Timestamp("2026-03-31")  # Jan 31 cycle: Feb 28 is today, next is Mar 31
    assert got["q"] == pd.Timestamp("2026-05-10")
    assert got["y"] == pd.Timestamp("2026-07-04")
    assert got["stated"] == pd.Timestamp("2026-03-10")  # the stated date anchors the cycle for an earlier D
    assert got["stated_no_cycle"] == pd.Timestamp("2026-06-20")
    assert got["fixed"] == pd.Timestamp("2026-09-01")  # the term's end, not the billing cycle
    assert pd.isna(got["unknown"])
    on_d = next_renewal(terms, date(2026, 6, 1))
    assert on_d["anniversary_on_d"] == pd.Timestamp("2027-06-01")  # strictly after D
    assert pd.isna(on_d["stated_no_cycle"]) is False and on_d["stated_no_cycle"] == pd.Timestamp("2026-06-20")
    assert pd.isna(next_renewal(terms, date(2026, 6, 21))["stated_no_cycle"])  # a stale stated date is not used


def test_billing_cycle_anniversaries_match_calendar_month_arithmetic() -> None:
    rng = np.random.default_rng(3)
    n = 300
    anchors = pd.Timestamp("2022-01-01") + pd.to_timedelta(rng.integers(0, 2200, n), unit="D")
    periods = rng.choice(["month", "quarter", "year"], n)
    terms = pd.DataFrame({"start_date": anchors, "end_date": pd.NaT, "renewal_date": pd.NaT, "billing_period": periods})
    as_of = date(2025, 3, 30)
    got = next_renewal(terms, as_of)
    step = {"month": 1, "quarter": 3, "year": 12}
    for i in range(n):
        cycle = [anchors[i] + pd.DateOffset(months=k * step[periods[i]]) for k in range(-80, 80)]
        assert got[i] == min(c for c in cycle if c > pd.Timestamp(as_of)), (anchors[i], periods[i])


# ----------------------------------------------------------------- a crafted book in a real warehouse


def _crafted_book() -> dict[str, pd.DataFrame]:
    book = generate_book(accounts=150, days=400, seed=5)
    created = pd.Timestamp("2025-01-10 10:00")
    extra_accounts = pd.DataFrame({
        "account_id": ["X_ENDS", "X_OVERLAP", "X_OPEN", "X_STATED", "X_NOCYCLE"], "name": "Crafted", "segment": "smb",
        "created_at": created,
    })
    d = pd.Timestamp(D)
    rows = [
        {"subscription_id": "X1", "account_id": "X_ENDS", "start_date": "2025-06-01", "end_date": d, "arr": 100.0},
        {"subscription_id": "X2", "account_id": "X_OVERLAP", "start_date": "2025-06-01", "end_date": d, "arr": 100.0},
        {"subscription_id": "X3", "account_id": "X_OVERLAP", "start_date": "2025-09-01", "end_date": "2026-09-01", "arr": 50.0},
        {"subscription_id": "X4", "account_id": "X_OPEN", "start_date": "2025-01-31", "billing_period": "month", "arr": 70.0},
        {"subscription_id": "X5", "account_id": "X_STATED", "start_date": "2025-01-10", "billing_period": "year",
         "renewal_date": "2027-01-10", "arr": 80.0},
        {"subscription_id": "X6", "account_id": "X_NOCYCLE", "start_date": "2025-01-10", "arr": 90.0},
    ]
    extra_subs = subs(*[{"plan": "starter", "seats": 5, "auto_renew": True, **r} for r in rows])
    book["accounts"] = schema.coerce(pd.concat([book["accounts"], extra_accounts], ignore_index=True), schema.ACCOUNTS)
    book["subscriptions"] = schema.coerce(pd.concat([book["subscriptions"], extra_subs], ignore_index=True), schema.SUBSCRIPTIONS)
    return book


@pytest.fixture(params=["duckdb", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    return request.getfixturevalue("duck_engine" if request.param == "duckdb" else "pg_engine")


@pytest.fixture
def crafted(engine: sa.Engine) -> sa.Engine:
    write_book(engine, _crafted_book())
    return engine


def test_features_and_labels_agree_on_who_is_active_and_the_term_ending_at_d_is_over(crafted: sa.Engine) -> None:
    features = build_features(crafted, D).set_index("account_id")
    labels = labels_for_dates(crafted, [D], **LABEL)
    # one rule: exactly the accounts with a label get features
    assert set(features.index) == set(labels["account_id"]) == set(active_accounts(crafted, D))
    # the term ending at midnight D is over: neither labelled nor featured (fails if labels or features revert to >=)
    assert "X_ENDS" not in features.index and "X_ENDS" not in set(labels["account_id"])
    # ... and it does not count in the commercial state of an account that stays (fails if COMMERCIAL_SQL reverts)
    assert features.loc["X_OVERLAP", "arr"] == 50.0
    assert features.loc["X_OVERLAP", "days_to_renewal"] == (date(2026, 9, 1) - D).days
    # open-ended: the next monthly anniversary of Jan 31 after 2026-06-01 is 2026-06-30
    assert features.loc["X_OPEN", "days_to_renewal"] == 29
    assert features.loc["X_STATED", "days_to_renewal"] == (date(2027, 1, 10) - D).days
    assert np.isnan(features.loc["X_NOCYCLE", "days_to_renewal"])  # unknown, never a far-future sentinel
    assert features.loc["X_NOCYCLE", "journey_stage"] == "adoption"
    assert features["days_to_renewal"].max() <= 366
    the_day_before = labels_for_dates(crafted, [D - timedelta(days=1)], **LABEL).set_index("account_id")
    assert the_day_before.loc["X_ENDS", "churned"] == 1 and the_day_before.loc["X_ENDS", "churn_date"] == pd.Timestamp(D)


# ----------------------------------------------------------------- churn_events as the source of truth

EVENTS_ACCOUNTS = ["never", "churn_at_d", "quick_return", "late_return", "back_on_d", "created_at_d", "in_lead"]


def _events_book(engine: sa.Engine) -> None:
    created = [pd.Timestamp("2025-01-05 09:00")] * 5 + [pd.Timestamp(D), pd.Timestamp("2025-01-05 09:00")]
    accounts = schema.coerce(pd.DataFrame({"account_id": EVENTS_ACCOUNTS, "name": "A", "segment": "smb", "created_at": created}), schema.ACCOUNTS)
    events = schema.coerce(pd.DataFrame([
        {"account_id": "churn_at_d", "churn_date": D, "reason": "price"},
        {"account_id": "quick_return", "churn_date": date(2026, 7, 1), "reactivated_at": date(2026, 7, 20)},  # 19 days < grace
        {"account_id": "late_return", "churn_date": date(2026, 7, 1), "reactivated_at": date(2026, 10, 1)},
        {"account_id": "back_on_d", "churn_date": date(2026, 3, 1), "reactivated_at": D},
        {"account_id": "in_lead", "churn_date": date(2026, 6, 10)},
    ]), schema.CHURN_EVENTS)
    replace_rows(engine, "accounts", accounts, replace_all=True)
    replace_rows(engine, "churn_events", events, replace_all=True)


def test_churn_events_labels_follow_the_rule(engine: sa.Engine) -> None:
    _events_book(engine)
    at_d = labels_for_dates(engine, [D], churn_source="churn_events", **LABEL).set_index("account_id")
    # churn at exactly midnight D: not active; reactivated on D, or created on D: not yet active
    assert set(at_d.index) == {"never", "quick_return", "late_return", "in_lead"}
    assert at_d["churned"].to_dict() == {"never": 0, "quick_return": 0, "late_return": 1, "in_lead": 1}
    assert at_d.loc["late_return", "churn_date"] == pd.Timestamp("2026-07-01")
    before = labels_for_dates(engine, [D - timedelta(days=1)], churn_source="churn_events", **LABEL).set_index("account_id")
    assert before.loc["churn_at_d", "churned"] == 1 and before.loc["churn_at_d", "churn_date"] == pd.Timestamp(D)
    assert "back_on_d" not in before.index  # churned since March
    next_day = labels_for_dates(engine, [D + timedelta(days=1)], churn_source="churn_events", **LABEL)
    assert {"back_on_d", "created_at_d"} <= set(next_day["account_id"])
    in_gap = labels_for_dates(engine, [date(2026, 7, 10)], churn_source="churn_events", **{**LABEL, "observed_until": date(2027, 1, 1)})
    assert "quick_return" not in set(in_gap["account_id"])  # between churn and return it is not a customer
    led = labels_for_dates(engine, [D], churn_source="churn_events", lead_days=20, **LABEL).set_index("account_id")
    assert "in_lead" not in led.index and led.loc["late_return", "churned"] == 1  # churn inside the lead: excluded
    assert list(active_accounts(engine, D, "churn_events")) == sorted(at_d.index)
    with pytest.raises(ValueError, match="not matured"):
        labels_for_dates(engine, [date(2026, 9, 1)], churn_source="churn_events", **LABEL)


def test_a_missing_churn_source_is_refused_by_name(duck_engine: sa.Engine) -> None:
    _events_book(duck_engine)
    with pytest.raises(ValueError, match="churn source 'coverage' needs table 'subscriptions'"):
        labels_for_dates(duck_engine, [D], **LABEL)


def test_coverage_and_churn_events_agree_when_they_describe_the_same_churn(duck_engine: sa.Engine) -> None:
    book = generate_book(accounts=300, days=540, seed=1)
    events = coverage_events(book["subscriptions"])
    assert len(events) > 10
    book["churn_events"] = schema.coerce(events.assign(reason=None), schema.CHURN_EVENTS)
    write_book(duck_engine, book)
    dates = [date(2025, 10, 1), date(2026, 1, 1), date(2026, 3, 1), date(2026, 6, 15), date(2026, 7, 1)]
    kw = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 11, 1)}
    by_coverage = labels_for_dates(duck_engine, dates, churn_source="coverage", **kw)
    by_events = labels_for_dates(duck_engine, dates, churn_source="churn_events", **kw)
    assert by_coverage["churned"].sum() > 10
    pd.testing.assert_frame_equal(by_coverage, by_events)
    for d in dates:
        assert list(active_accounts(duck_engine, d, "coverage")) == list(active_accounts(duck_engine, d, "churn_events"))


def test_open_ended_rows_give_the_same_labels_as_the_terms_they_replace() -> None:
    """Collapse the demo book's renewal rows into one evergreen subscription per account."""
    book = generate_book(accounts=300, days=540, seed=1)
    terms = book["subscriptions"]
    evergreen = terms.sort_values("start_date").groupby("account_id").agg(
        start_date=("start_date", "min"), cancelled_at=("cancelled_at", "max"), billing_period=("billing_period", "first"),
    ).reset_index().assign(end_date=pd.NaT)
    dates = [date(2025, 10, 1), date(2026, 2, 1), date(2026, 7, 1)]
    kw = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 11, 1)}
    fixed = label_snapshots(terms, dates, **kw)
    opened = label_snapshots(evergreen, dates, **kw)
    assert fixed["churned"].sum() > 10
    pd.testing.assert_frame_equal(fixed, opened)


# ----------------------------------------------------------------- observation window


def test_observation_end_reads_every_present_source_and_the_setting_wins(duck_engine: sa.Engine) -> None:
    book = generate_book(accounts=100, days=300, seed=2)
    book["usage"] = book["usage"].iloc[0:0]
    write_book(duck_engine, book)  # a book without usage works
    last = max(book["tickets"]["opened_at"].max(), book["surveys"]["submitted_at"].max(), book["subscriptions"]["start_date"].max())
    first, end = data_window(duck_engine)
    assert end == observation_end(duck_engine) == last.date() + timedelta(days=1)
    assert first == min(book["tickets"]["opened_at"].min(), book["surveys"]["submitted_at"].min()).date()
    assert observation_end(duck_engine, Settings(observation_end=date(2026, 9, 1))) == date(2026, 9, 1)
    later = book["tickets"].head(1).assign(ticket_id="LATE", opened_at=pd.Timestamp(end) + pd.Timedelta(days=3, hours=5))
    replace_rows(duck_engine, "tickets", later)
    assert observation_end(duck_engine) == end + timedelta(days=4)


# ----------------------------------------------------------------- contracts and leak warnings


def test_contract_allows_open_ended_terms_and_checks_churn_events() -> None:
    frame = schema.coerce(subs(
        {"subscription_id": "S1", "account_id": "A", "plan": "p", "seats": 1, "arr": 1.0, "start_date": "2026-01-01"},
        {"subscription_id": "S2", "account_id": "A", "plan": "p", "seats": 1, "arr": 1.0, "start_date": "2026-01-01",
         "end_date": "2025-01-01", "billing_period": "fortnight"},
    ), schema.SUBSCRIPTIONS)
    v = check(frame, CONTRACTS["subscriptions"], run_date=date(2026, 11, 1), known_accounts=["A"])
    assert {(int(r.row), r.field) for r in v.itertuples()} == {(1, "end_date"), (1, "billing_period")}
    events = schema.coerce(pd.DataFrame({"account_id": ["A", "B", "A", "A"],
                                         "churn_date": ["2026-01-01", "2026-01-01", "2026-01-01", "2026-02-01"],
                                         "reactivated_at": [None, None, None, "2026-01-15"]}), schema.CHURN_EVENTS)
    v = check(events, CONTRACTS["churn_events"], run_date=date(2026, 11, 1), known_accounts=["A"])
    assert {(int(r.row), r.reason) for r in v.itertuples()} == {
        (3, "reactivated_at before churn_date"), (1, "unknown account_id"), (2, "duplicate account_id/churn_date (first occurrence kept)")}


def _terms(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    start = pd.Timestamp("2025-01-01") + pd.to_timedelta(rng.integers(0, 200, n), unit="D")
    return pd.DataFrame({"subscription_id": [f"S{i}" for i in range(n)], "account_id": [f"A{i}" for i in range(n)],
                         "start_date": start, "end_date": start + pd.Timedelta(days=365), "cancelled_at": pd.NaT,
                         "auto_renew": rng.random(n) < 0.6, "billing_period": "year", "renewal_date": pd.NaT})


def test_leak_warnings_flag_outcome_columns_and_stay_quiet_on_honest_terms() -> None:
    run = date(2026, 11, 1)
    assert subscription_leak_warnings(_terms(), run) == []
    assert subscription_leak_warnings(generate_book(accounts=300, days=540, seed=1)["subscriptions"], run) == []

    left = _terms()
    left["end_date"] = pd.NaT
    left.loc[:9, "end_date"] = pd.Timestamp("2026-03-01")  # filled only for those who left
    assert any(w.startswith("subscriptions.end_date: set on only 10 of 40 rows") for w in subscription_leak_warnings(left, run))

    stamped = _terms().assign(cancelled_at=pd.Timestamp("2026-10-30 12:00"))
    assert any(w.startswith("subscriptions.cancelled_at: set on 100%") for w in subscription_leak_warnings(stamped, run))

    rewritten = _terms()
    rewritten.loc[:9, "cancelled_at"] = rewritten.loc[:9, "start_date"] + pd.Timedelta(days=100, hours=3)
    rewritten.loc[:9, "end_date"] = rewritten.loc[:9, "cancelled_at"].dt.normalize()
    assert any("rewritten when the customer cancelled" in w for w in subscription_leak_warnings(rewritten, run))

    switched = _terms().assign(auto_renew=True)
    switched.loc[:9, "cancelled_at"] = pd.Timestamp("2025-12-01 10:00")
    switched.loc[:9, "auto_renew"] = False
    assert any(w.startswith("subscriptions.auto_renew") for w in subscription_leak_warnings(switched, run))
    switched.loc[20:25, "auto_renew"] = False  # switched off on live rows too: the flag is honest
    assert not any(w.startswith("subscriptions.auto_renew") for w in subscription_leak_warnings(switched, run))

    stated = _terms().assign(billing_period=None, renewal_date=pd.Timestamp("2026-12-01"))
    assert any(w.startswith("subscriptions.renewal_date") for w in subscription_leak_warnings(stated, run))

    # as an ingest table check: the run date comes from the rows themselves
    assert subscriptions_table_check(_terms()) == []
    assert any(w.startswith("end_date: set on only 10 of 40 rows") for w in subscriptions_table_check(left))


def test_a_subscriptions_table_from_before_open_ended_terms_is_upgraded_on_write(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        conn.execute(sa.text(
            'CREATE TABLE subscriptions (subscription_id VARCHAR NOT NULL, account_id VARCHAR NOT NULL, plan VARCHAR NOT NULL, '
            'seats BIGINT NOT NULL, arr DOUBLE PRECISION NOT NULL, start_date DATE NOT NULL, end_date DATE NOT NULL, '
            'cancelled_at TIMESTAMP, auto_renew BOOLEAN NOT NULL)'))
    frame = schema.coerce(subs({"subscription_id": "S1", "account_id": "A", "plan": "p", "seats": 1, "arr": 1.0,
                                "start_date": "2026-01-01", "billing_period": "month"}), schema.SUBSCRIPTIONS)
    replace_rows(engine, "subscriptions", frame, replace_all=True)
    stored = read_sql(engine, "SELECT subscription_id, end_date, billing_period, renewal_date FROM subscriptions")
    assert stored["billing_period"].tolist() == ["month"] and stored["end_date"].isna().all()
