"""Churn labels derived from subscriptions: definition, grace period, maturity."""

from __future__ import annotations

from datetime import date

import pandas as pd
import pytest

from features.labels import coverage_blocks, label_snapshots, labels_as_of, labels_for_dates, load_subscriptions, training_dates


def subs(*rows: tuple[str, str, str, str | None]) -> pd.DataFrame:
    return pd.DataFrame(
        [{"account_id": a, "start_date": pd.Timestamp(s), "end_date": pd.Timestamp(e), "cancelled_at": pd.Timestamp(c) if c else pd.NaT} for a, s, e, c in rows]
    )


BOOK = subs(
    ("renews", "2025-01-01", "2026-01-01", None),
    ("renews", "2026-01-01", "2027-01-01", None),  # renewal on the day: no churn
    ("late_renewal", "2025-01-01", "2026-01-01", None),
    ("late_renewal", "2026-01-20", "2027-01-20", None),  # 19-day gap < 30-day grace: no churn
    ("lapses", "2025-01-01", "2026-01-01", None),  # nothing after: churns 2026-01-01
    ("cancels", "2025-06-01", "2026-06-01", "2025-12-15 10:30"),  # churns the day after the cancellation day
    ("gap_too_long", "2025-01-01", "2026-01-01", None),
    ("gap_too_long", "2026-03-15", "2027-03-15", None),  # 73 days later: churned, then came back
)


def test_coverage_blocks_merge_within_grace() -> None:
    blocks = coverage_blocks(BOOK, grace_days=30)
    counts = blocks.groupby("account_id").size().to_dict()
    assert counts == {"renews": 1, "late_renewal": 1, "lapses": 1, "cancels": 1, "gap_too_long": 2}
    # covered through the day the cancellation was recorded: not a customer from the next day
    assert blocks.set_index("account_id").loc["cancels", "block_end"] == pd.Timestamp("2025-12-16")


def test_labels_follow_the_definition() -> None:
    labels = labels_as_of(BOOK, date(2025, 11, 1), horizon_days=90, grace_days=30, observed_until=date(2026, 6, 1)).set_index("account_id")
    assert labels["churned"].to_dict() == {"cancels": 1, "gap_too_long": 1, "lapses": 1, "late_renewal": 0, "renews": 0}
    assert labels.loc["lapses", "churn_date"] == pd.Timestamp("2026-01-01")


def test_horizon_bounds_the_label() -> None:
    labels = labels_as_of(BOOK, date(2025, 9, 1), horizon_days=90, grace_days=30, observed_until=date(2026, 6, 1)).set_index("account_id")
    # 2025-09-01 + 90 days = 2025-11-30: the December cancellation and January lapses are outside.
    assert labels["churned"].sum() == 0


def test_unmatured_labels_are_refused_not_counted_as_retained() -> None:
    with pytest.raises(ValueError, match="not matured"):
        labels_as_of(BOOK, date(2026, 3, 1), horizon_days=90, grace_days=30, observed_until=date(2026, 6, 1))


def test_accounts_not_covered_at_as_of_have_no_label() -> None:
    labels = labels_as_of(BOOK, date(2026, 2, 1), horizon_days=90, grace_days=30, observed_until=date(2026, 9, 1))
    assert "lapses" not in set(labels["account_id"]) and "cancels" not in set(labels["account_id"])


def test_training_dates_are_monthly_matured_and_have_history() -> None:
    dates = training_dates(data_start=date(2025, 5, 10), observed_until=date(2026, 11, 1), horizon_days=90, grace_days=30, snapshots=20)
    assert dates[0] == date(2025, 9, 1)  # first month start with 90 days of history
    assert dates[-1] == date(2026, 7, 1)  # 2026-07-01 + 120 days <= 2026-11-01
    assert all(d.day == 1 for d in dates)


def test_lead_time_shifts_the_window_and_excludes_churn_too_soon_to_act_on() -> None:
    kwargs = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 9, 1)}
    plain = labels_as_of(BOOK, date(2025, 12, 1), **kwargs).set_index("account_id")
    assert plain.loc["cancels", "churned"] == 1  # churns 2025-12-15
    led = labels_as_of(BOOK, date(2025, 12, 1), lead_days=30, **kwargs).set_index("account_id")
    assert "cancels" not in led.index  # churned inside the lead: excluded, not "retained"
    assert led.loc["lapses", "churned"] == 1  # 2026-01-01 is inside [D + 30, D + 120)
    with pytest.raises(ValueError, match="not matured"):
        labels_as_of(BOOK, date(2026, 4, 1), lead_days=60, **kwargs)


def test_open_ended_coverage_has_no_block_end() -> None:
    book = pd.concat([BOOK, pd.DataFrame([{"account_id": "evergreen", "start_date": pd.Timestamp("2025-01-01"), "end_date": pd.NaT,
                                           "cancelled_at": pd.NaT}])], ignore_index=True)
    blocks = coverage_blocks(book, grace_days=30).set_index("account_id")
    assert pd.isna(blocks.loc["evergreen", "block_end"])
    labels = labels_as_of(book, date(2025, 11, 1), horizon_days=90, grace_days=30, observed_until=date(2026, 6, 1)).set_index("account_id")
    assert labels.loc["evergreen", "churned"] == 0 and pd.isna(labels.loc["evergreen", "churn_date"])


def test_the_warehouse_and_the_frame_api_give_the_same_labels(book_engine) -> None:  # type: ignore[no-untyped-def]
    dates = [date(2025, 12, 1), date(2026, 3, 1), date(2026, 6, 1)]
    kwargs = {"horizon_days": 90, "grace_days": 30, "observed_until": date(2026, 11, 1)}
    from_engine = labels_for_dates(book_engine, dates, **kwargs)
    from_frame = label_snapshots(load_subscriptions(book_engine), dates, **kwargs)
    assert list(from_engine.columns) == ["as_of_date", "account_id", "churned", "churn_date"]
    assert from_engine["churned"].sum() > 10
    pd.testing.assert_frame_equal(from_engine, from_frame)
