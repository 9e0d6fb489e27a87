"""Features that fit any book: absent families, per-event-type usage, mapped attributes,
raw category values and a feature cache whose column set changes."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.demo_data import generate_book, write_book
from churnflow.manifest import AttributeSpec, DataManifest
from churnflow.warehouse import drop_tables, read_sql, replace_rows
from features.build import (
    as_model_frame,
    book_catalogue,
    build_features,
    learn_categories,
    learn_event_types,
    materialize_features,
    refresh_derived,
)
from features.catalogue import CATALOGUE, FEATURE_NAMES, event_type_features, feature_catalogue, slugify

AS_OF = date(2026, 6, 1)


def _event_columns(frame: pd.DataFrame) -> list[str]:
    static = set(FEATURE_NAMES)
    return [c for c in frame.columns if c.startswith("events_") and c not in static]


# -- optional families ---------------------------------------------------------------------


def test_a_book_without_surveys_has_no_perception_feature(book_engine: sa.Engine) -> None:
    drop_tables(book_engine, ["surveys", "survey_text"])
    catalogue = book_catalogue(book_engine, AS_OF)
    assert not [f.name for f in catalogue if f.family == "perception"]
    frame = build_features(book_engine, AS_OF)
    perception = {f.name for f in CATALOGUE if f.family == "perception"}
    assert perception.isdisjoint(frame.columns)  # not computed, not zero-filled
    assert {"tickets_30d", "events_30d", "arr"} <= set(frame.columns)
    # Features and their cache still work (fingerprints skip the absent table).
    again = materialize_features(book_engine, [AS_OF])
    pd.testing.assert_frame_equal(frame, again)


def test_a_manifest_declaring_sources_absent_removes_their_families() -> None:
    catalogue = feature_catalogue(DataManifest(absent=frozenset({"surveys", "tickets"})), ["like"])
    families = {f.family for f in catalogue}
    assert families == {"usage", "commercial", "lifecycle"}
    assert "events_like_30d" in {f.name for f in catalogue}
    no_usage = feature_catalogue(DataManifest(absent=frozenset({"usage"})), ["like"])
    names = {f.name for f in no_usage}
    assert not [f for f in no_usage if f.family == "usage"] and "days_to_first_value" not in names
    assert "events_like_30d" not in names and "tenure_days" in names


# -- per-event-type usage ------------------------------------------------------------------


def test_event_types_default_to_the_most_frequent_known_at_the_as_of_date(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    usage = small_book["usage"]
    d = pd.Timestamp(AS_OF)
    known = usage[(usage["occurred_at"] >= d - pd.Timedelta(days=365)) & (usage["occurred_at"] < d)]
    counts = known.groupby("feature").size()
    expected = sorted(counts.index, key=lambda v: (-counts[v], v))[:3]
    refresh_derived(book_engine, AS_OF)  # the list is read from the rollups
    assert learn_event_types(book_engine, AS_OF, top=3) == tuple(expected)
    # A flood of a new type on or after D does not change the list as of D.
    flood = usage.head(5000).assign(occurred_at=d + pd.Timedelta(hours=1), feature="brand_new")
    replace_rows(book_engine, "usage", pd.concat([usage, flood]), replace_all=True)
    refresh_derived(book_engine, AS_OF)
    assert learn_event_types(book_engine, AS_OF, top=3) == tuple(expected)
    assert "brand_new" not in learn_event_types(book_engine, AS_OF, top=50)
    assert "brand_new" in learn_event_types(book_engine, AS_OF + timedelta(days=1), top=50)
    assert learn_event_types(book_engine, AS_OF, top=0) == ()


def test_event_type_features_match_an_independent_pandas_computation(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    types = ["reports", "alerts", "never_seen", "api_trend"]
    catalogue = feature_catalogue(book_engine, types)
    frame = build_features(book_engine, AS_OF, catalogue=catalogue).set_index("account_id")
    assert _event_columns(frame) == [f"events_{t}_{s}" for t in types for s in ("30d", "trend_30d", "90d")]
    # A type whose slug ends in "_trend" is still a count, not mistaken for a trend.
    usage = small_book["usage"].copy()
    usage.loc[usage["feature"] == "api", "feature"] = "api_trend"
    replace_rows(book_engine, "usage", usage, replace_all=True)
    frame = build_features(book_engine, AS_OF, catalogue=catalogue).set_index("account_id")
    d = pd.Timestamp(AS_OF)
    for t in types:
        rows = usage[usage["feature"] == t]

        def window(start: int, end: int = 0) -> pd.Series:
            mask = (rows["occurred_at"] >= d - pd.Timedelta(days=start)) & (rows["occurred_at"] < d - pd.Timedelta(days=end))
            return rows[mask].groupby("account_id")["quantity"].sum().reindex(frame.index).fillna(0.0)

        n30, prev30, n90 = window(30), window(60, 30), window(90)
        np.testing.assert_allclose(frame[f"events_{t}_30d"], n30, rtol=1e-9)
        np.testing.assert_allclose(frame[f"events_{t}_90d"], n90, rtol=1e-9)
        np.testing.assert_allclose(frame[f"events_{t}_trend_30d"], (n30 - prev30) / prev30.clip(lower=1), rtol=1e-9)
    assert frame["events_reports_30d"].sum() > 0 and (frame["events_never_seen_90d"] == 0).all()
    assert frame["events_api_trend_30d"].sum() > 0 and frame["events_api_trend_30d"].min() >= 0  # a count


def test_event_type_features_ignore_rows_at_or_after_the_as_of_date(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    catalogue = feature_catalogue(book_engine, ["reports", "alerts"])
    before = build_features(book_engine, AS_OF, catalogue=catalogue)
    later = build_features(book_engine, AS_OF + timedelta(days=1), catalogue=catalogue)
    usage = small_book["usage"].copy()
    d = pd.Timestamp(AS_OF)
    usage.loc[usage["occurred_at"] >= d, "quantity"] *= 100
    accounts = before["account_id"].head(100).tolist()
    boundary = pd.DataFrame({"account_id": accounts, "occurred_at": [d] * len(accounts), "feature": "reports", "quantity": 1e6,
                             "duration_s": 1.0, "errors": 0, "user_id": "leak"})
    replace_rows(book_engine, "usage", pd.concat([usage, boundary]), replace_all=True)
    pd.testing.assert_frame_equal(before, build_features(book_engine, AS_OF, catalogue=catalogue))
    # The same change is seen one day later: the check has teeth.
    after_later = build_features(book_engine, AS_OF + timedelta(days=1), catalogue=catalogue)
    assert not later["events_reports_30d"].equals(after_later["events_reports_30d"])


def test_event_type_names_are_slugs_with_deterministic_collisions() -> None:
    assert slugify("Add Friend!") == "add_friend" and slugify("Ünfriend") == "nfriend" and slugify("***") == "x"
    assert len(slugify("a" * 200)) == 40
    forward = event_type_features(["Like", "like", "LIKE ", "events"])
    backward = event_type_features(["events", "LIKE ", "like", "Like"])
    by_key = lambda features: {(f.key, f.name) for f in features}  # noqa: E731
    assert by_key(forward) == by_key(backward)  # the names do not depend on the order
    names = [f.name for f in forward]
    assert len(names) == len(set(names)) and not set(names) & set(FEATURE_NAMES)
    assert {f.name for f in forward if f.key == "LIKE "} == {"events_like_30d", "events_like_trend_30d", "events_like_90d"}
    # Sorted raw values ("LIKE " < "Like" < "like") take the suffixes in turn.
    assert {f.name for f in forward if f.key == "Like"} == {"events_like_2_30d", "events_like_2_trend_30d", "events_like_2_90d"}
    assert {f.name for f in forward if f.key == "like"} == {"events_like_3_30d", "events_like_3_trend_30d", "events_like_3_90d"}
    # A type whose slug makes another type's trend name is pushed aside, not merged.
    tricky = [f.name for f in event_type_features(["a", "a_trend"])]
    assert len(tricky) == len(set(tricky)) == 6
    for f in forward:
        assert f.risk_when == "learned" and f.family == "usage" and "{" not in f.explain(3.0)


# -- attributes ----------------------------------------------------------------------------


ATTRIBUTES = (
    AttributeSpec("acquisition_channel", "accounts", "category", "How the account was acquired", "Acquired through {value}"),
    AttributeSpec("Age", "accounts", "number", "Age of the account holder", "Account holder is {value:.0f} years old", "lower"),
    AttributeSpec("contract_type", "subscriptions", "category", "", "On a {value} contract"),
)


def _write_attributes(engine: sa.Engine, book: dict[str, pd.DataFrame]) -> pd.DataFrame:
    accounts = book["accounts"]["account_id"].tolist()
    rows = []
    for i, account in enumerate(accounts):
        rows.append({"account_id": account, "subscription_id": None, "name": "acquisition_channel", "value_number": None,
                     "value_text": ["organic", "paid_social", "referral"][i % 3]})
        if i % 5:
            rows.append({"account_id": account, "subscription_id": None, "name": "Age", "value_number": float(20 + i % 50), "value_text": None})
    for sub in book["subscriptions"].itertuples():
        rows.append({"account_id": sub.account_id, "subscription_id": sub.subscription_id, "name": "contract_type",
                     "value_number": None, "value_text": f"term-{sub.subscription_id}"})
    frame = pd.DataFrame(rows).astype({"subscription_id": object, "value_number": float, "value_text": object})
    replace_rows(engine, "account_attributes", frame, replace_all=True)
    return frame


def test_mapped_attributes_become_features(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    written = _write_attributes(book_engine, small_book)
    catalogue = feature_catalogue(DataManifest(attributes=ATTRIBUTES), ())
    by_name = {f.name: f for f in catalogue}
    assert by_name["acquisition_channel"].family == "lifecycle" and by_name["acquisition_channel"].is_categorical
    assert by_name["age"].risk_when == "lower" and by_name["contract_type"].family == "commercial"
    frame = build_features(book_engine, AS_OF, catalogue=catalogue).set_index("account_id")
    account_values = written[written["subscription_id"].isna()]
    channel = account_values[account_values["name"] == "acquisition_channel"].set_index("account_id")["value_text"]
    age = account_values[account_values["name"] == "Age"].set_index("account_id")["value_number"]
    pd.testing.assert_series_equal(frame["acquisition_channel"], channel.reindex(frame.index), check_names=False)
    np.testing.assert_allclose(frame["age"], age.reindex(frame.index).to_numpy(dtype=float))  # NaN where unknown
    assert frame["age"].isna().any() and frame["age"].notna().any()
    # Subscription attributes: the value on the main active term at D (highest ARR).
    subs = small_book["subscriptions"]
    d = pd.Timestamp(AS_OF)
    cancelled = pd.to_datetime(subs["cancelled_at"])
    active = subs[(pd.to_datetime(subs["start_date"]) < d) & (pd.to_datetime(subs["end_date"]) >= d) & (cancelled.isna() | (cancelled >= d))]
    main = active.sort_values(["account_id", "arr", "subscription_id"], ascending=[True, False, True]).groupby("account_id").head(1)
    expected = ("term-" + main.set_index("account_id")["subscription_id"]).reindex(frame.index)
    pd.testing.assert_series_equal(frame["contract_type"], expected, check_names=False)
    assert by_name["age"].explain(frame["age"].dropna().iloc[0]).startswith("Account holder is")


# -- categories ----------------------------------------------------------------------------


def test_a_plan_outside_the_demo_lists_keeps_its_own_name(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    subs = small_book["subscriptions"].copy()
    subs.loc[subs["plan"] == "growth", "plan"] = "Platinum Plus"
    replace_rows(book_engine, "subscriptions", subs, replace_all=True)
    frame = build_features(book_engine, AS_OF)
    assert "Platinum Plus" in set(frame["plan"]) and "other" not in set(frame["plan"])
    categories = learn_categories(frame["plan"])
    assert "Platinum Plus" in categories and categories[-1] == "other"
    # A value first seen at scoring, or too rare at training, is "other".
    scoring = frame.head(3).assign(plan=["Platinum Plus", "diamond", "starter"])
    X = as_model_frame(scoring, ["plan"], {"plan": categories})
    assert list(X["plan"].astype(str)) == ["Platinum Plus", "other", "starter"]
    rare = pd.Series(["a"] * 30 + ["b"] * 5)
    assert learn_categories(rare) == ["a", "other"]


# -- the feature cache ---------------------------------------------------------------------


def test_the_feature_cache_copes_with_a_changing_column_set(book_engine: sa.Engine) -> None:
    small = feature_catalogue(book_engine, ["reports"])
    large = feature_catalogue(book_engine, ["reports", "alerts"])
    first = materialize_features(book_engine, [AS_OF], catalogue=small)
    other_day = materialize_features(book_engine, [AS_OF + timedelta(days=7)], catalogue=large)  # adds columns
    assert "events_alerts_30d" in other_day.columns and "events_alerts_30d" not in first.columns
    stored = read_sql(book_engine, "SELECT * FROM account_features WHERE as_of_date = :d", {"d": pd.Timestamp(AS_OF).to_pydatetime()})
    assert "events_alerts_30d" in stored.columns and len(stored) == len(first)
    built = read_sql(book_engine, "SELECT built_at FROM feature_builds WHERE as_of_date = :d", {"d": AS_OF}).loc[0, "built_at"]
    again = materialize_features(book_engine, [AS_OF], catalogue=small)  # reused under its own list
    pd.testing.assert_frame_equal(first, again)
    assert read_sql(book_engine, "SELECT built_at FROM feature_builds WHERE as_of_date = :d", {"d": AS_OF}).loc[0, "built_at"] == built
    # Another feature list for the same day is another build.
    bigger = materialize_features(book_engine, [AS_OF], catalogue=large)
    assert "events_alerts_30d" in bigger.columns
    # A column that changes kind (number -> category) cannot be kept: the table is rebuilt.
    renamed = [f if f.name != "events_alerts_30d" else type(f)(**{**f.__dict__, "risk_when": "category"}) for f in large]
    changed = materialize_features(book_engine, [AS_OF], catalogue=renamed)
    assert changed["events_alerts_30d"].dtype == object
    assert read_sql(book_engine, "SELECT COUNT(*) AS n FROM feature_builds").loc[0, "n"] == 1  # other days forgotten
    rebuilt = materialize_features(book_engine, [AS_OF + timedelta(days=7)], catalogue=large)
    pd.testing.assert_frame_equal(rebuilt, other_day)


@pytest.mark.postgres
def test_postgres_gives_the_same_book_features_as_duckdb(pg_engine: sa.Engine, duck_engine: sa.Engine) -> None:
    book = generate_book(accounts=120, days=400, seed=5)
    for engine in (duck_engine, pg_engine):
        write_book(engine, book)
        _write_attributes(engine, book)
    as_of = date(2026, 8, 1)
    catalogue = feature_catalogue(DataManifest(attributes=ATTRIBUTES), ["reports", "alerts"])
    duck = materialize_features(duck_engine, [as_of], catalogue=catalogue)
    pg = materialize_features(pg_engine, [as_of], catalogue=catalogue)
    assert len(duck) > 50 and "events_alerts_trend_30d" in duck.columns and "contract_type" in duck.columns
    pd.testing.assert_frame_equal(duck, pg, check_exact=False, rtol=1e-6)
    assert learn_event_types(duck_engine, as_of, 4) == learn_event_types(pg_engine, as_of, 4)
    # The PostgreSQL cache grows columns too.
    wider = materialize_features(pg_engine, [as_of], catalogue=feature_catalogue(DataManifest(attributes=ATTRIBUTES), ["reports", "api"]))
    assert "events_api_30d" in wider.columns


def test_a_book_with_only_accounts_subscriptions_and_surveys_still_builds(book_engine: sa.Engine) -> None:
    drop_tables(book_engine, ["usage", "usage_daily", "usage_account_daily", "usage_rollup_days", "tickets"])
    frame = materialize_features(book_engine, [AS_OF])
    families = {f.family for f in book_catalogue(book_engine, AS_OF)}
    assert families == {"perception", "commercial", "lifecycle"}
    assert "days_to_first_value" not in frame.columns and not _event_columns(frame)
    assert {"nps_latest", "arr", "tenure_days", "journey_stage"} <= set(frame.columns) and len(frame) > 100
