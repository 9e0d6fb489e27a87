"""Usage rollups and scored comments: correct, incremental, never stale, same on PostgreSQL."""

from __future__ import annotations

from datetime import date, timedelta

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow import schema
from churnflow.demo_data import generate_book, write_book
from churnflow.warehouse import append_rows, read_sql, replace_rows
from features.build import build_features
from features.rollups import refresh_survey_text, refresh_usage_rollups, usage_writes_pending
from features.text import sentiment


def _rollup(engine: sa.Engine) -> pd.DataFrame:
    frame = read_sql(engine, "SELECT account_id, activity_date, user_id, feature, events, errors, source_rows FROM usage_daily")
    frame["activity_date"] = pd.to_datetime(frame["activity_date"])
    frame["errors"] = frame["errors"].astype(float)
    frame["source_rows"] = frame["source_rows"].astype(float)
    keys = ["account_id", "activity_date", "user_id", "feature"]
    return frame.sort_values(keys, na_position="first").reset_index(drop=True)


def _expected_rollup(usage: pd.DataFrame) -> pd.DataFrame:
    """The same rollup computed independently in pandas from the raw rows."""
    raw = usage.assign(activity_date=pd.to_datetime(usage["occurred_at"]).dt.normalize())
    keys = ["account_id", "activity_date", "user_id", "feature"]
    out = raw.groupby(keys, dropna=False).agg(events=("quantity", "sum"), errors=("errors", "sum"), source_rows=("quantity", "size")).reset_index()
    out["errors"] = out["errors"].astype(float)
    out["source_rows"] = out["source_rows"].astype(float)
    return out.sort_values(keys, na_position="first").reset_index(drop=True)


def _midnight_rows(accounts: list[str], day: date) -> pd.DataFrame:
    """Rows at exactly midnight and a tick before it: the boundaries a day bucket can get wrong."""
    d = pd.Timestamp(day)
    n = len(accounts)
    frame = pd.DataFrame({
        "account_id": accounts * 2,
        "occurred_at": [d] * n + [d - pd.Timedelta(microseconds=1)] * n,
        "feature": "export", "quantity": 7.0, "duration_s": 1.0, "errors": 1,
        "user_id": [f"edge-{i}" for i in range(2 * n)],
    })
    return schema.coerce(frame, schema.USAGE)


def test_rollup_matches_an_independent_computation(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    accounts = small_book["accounts"]["account_id"].head(5).tolist()
    # Midnight rows on 40 consecutive days: some fall on the edge of a rolled chunk.
    edges = pd.concat([_midnight_rows(accounts, date(2026, 4, 1) + timedelta(days=i)) for i in range(40)], ignore_index=True)
    edges["user_id"] = [f"edge-{i}" for i in range(len(edges))]
    append_rows(book_engine, "usage", edges)
    refresh_usage_rollups(book_engine)
    usage = pd.concat([small_book["usage"], edges], ignore_index=True)
    pd.testing.assert_frame_equal(_rollup(book_engine), _expected_rollup(usage), check_dtype=False, rtol=1e-9)


def test_a_daily_refresh_reads_only_new_and_dirty_days(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    accounts = small_book["accounts"]["account_id"].head(30).tolist()
    next_midnight = _midnight_rows(accounts, date(2026, 2, 11)).iloc[: len(accounts)]  # rows at exactly 2026-02-11 00:00
    append_rows(book_engine, "usage", next_midnight)
    usage = pd.concat([small_book["usage"], next_midnight], ignore_index=True)
    last = pd.to_datetime(usage["occurred_at"]).max().date()
    first = refresh_usage_rollups(book_engine)
    assert first.full and first.source_rows == len(usage)

    nothing_new = refresh_usage_rollups(book_engine, recheck_days=1)
    assert not nothing_new.full and nothing_new.days_rolled == 1  # the last day, checked again

    new_day = _midnight_rows(accounts, last + timedelta(days=2))  # rows of the next day and the one after
    # Late rows for an old day; rolling that day alone must leave the next day's rows alone.
    late = _midnight_rows(accounts, date(2026, 2, 10)).assign(user_id=lambda f: "late-" + f["user_id"], occurred_at=pd.Timestamp(2026, 2, 10, 12))
    append_rows(book_engine, "usage", new_day)
    append_rows(book_engine, "usage", late)
    report = refresh_usage_rollups(book_engine, recheck_days=1)
    assert not report.full
    rolled_days = {last, last + timedelta(days=1), last + timedelta(days=2), date(2026, 2, 10)}
    assert report.days_rolled == len(rolled_days)
    raw_days = pd.to_datetime(pd.concat([usage, new_day, late])["occurred_at"]).dt.date
    assert report.source_rows == int(raw_days.isin(rolled_days).sum())  # only those days were read
    assert report.source_rows < len(usage) / 20

    incremental = _rollup(book_engine)
    refresh_usage_rollups(book_engine, rebuild=True)
    pd.testing.assert_frame_equal(incremental, _rollup(book_engine))
    pd.testing.assert_frame_equal(incremental, _expected_rollup(pd.concat([usage, new_day, late], ignore_index=True)), check_dtype=False, rtol=1e-9)


def test_replacing_the_whole_usage_table_forgets_the_rollups(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    refresh_usage_rollups(book_engine)
    halved = small_book["usage"].assign(quantity=lambda f: f["quantity"] / 2)
    replace_rows(book_engine, "usage", halved, replace_all=True)
    report = refresh_usage_rollups(book_engine)
    assert report.full
    assert _rollup(book_engine)["events"].sum() == pytest.approx(halved["quantity"].sum())


def test_rows_written_behind_churnflows_back_are_caught_only_near_the_end(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    """A direct INSERT is invisible to the write hook: the refresh re-checks the last days, and
    ``rebuild`` is the documented way to take in older changes."""
    refresh_usage_rollups(book_engine)
    last = pd.to_datetime(small_book["usage"]["occurred_at"]).max().date()
    with book_engine.begin() as conn:
        for day in (last, date(2026, 2, 10)):
            conn.execute(sa.text("INSERT INTO usage (account_id, occurred_at, feature, quantity, duration_s, errors, user_id) "
                                 "VALUES ('ACC000001', :t, 'export', 1000, 0, 0, 'direct')"), {"t": pd.Timestamp(day) + pd.Timedelta(hours=12)})
    refresh_usage_rollups(book_engine, recheck_days=2)
    direct = _rollup(book_engine).query("user_id == 'direct'")
    assert list(direct["activity_date"].dt.date) == [last]
    refresh_usage_rollups(book_engine, rebuild=True)
    assert len(_rollup(book_engine).query("user_id == 'direct'")) == 2


def test_features_follow_late_rows_through_the_rollups(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    as_of = date(2026, 6, 1)
    before = build_features(book_engine, as_of).set_index("account_id")
    victim = before.index[0]
    late = schema.coerce(pd.DataFrame({
        "account_id": [victim], "occurred_at": [pd.Timestamp(as_of) - pd.Timedelta(days=3)], "feature": "export",
        "quantity": 5000.0, "duration_s": 1.0, "errors": 0, "user_id": "late-user",
    }), schema.USAGE)
    append_rows(book_engine, "usage", late)
    after = build_features(book_engine, as_of).set_index("account_id")
    assert after.loc[victim, "events_7d"] == pytest.approx(before.loc[victim, "events_7d"] + 5000)
    assert after.loc[victim, "active_users_7d"] == before.loc[victim, "active_users_7d"] + 1
    unchanged = after.drop(index=victim)
    pd.testing.assert_frame_equal(unchanged, before.drop(index=victim))


def test_each_comment_is_scored_once_and_again_when_it_changes(book_engine: sa.Engine, small_book: dict[str, pd.DataFrame]) -> None:
    surveys = small_book["surveys"]
    commented = surveys[surveys["comment"].fillna("").str.len() > 0]
    since = date(2025, 1, 1)
    assert refresh_survey_text(book_engine, since) == int((pd.to_datetime(commented["submitted_at"]) >= pd.Timestamp(since)).sum())
    assert refresh_survey_text(book_engine, since) == 0

    changed = surveys.copy()
    target = commented.index[-1]
    changed.loc[target, "comment"] = "terrible, broken, I hate it"
    dropped = commented.index[-2]
    changed = changed.drop(index=dropped)
    replace_rows(book_engine, "surveys", changed, replace_all=True)
    assert refresh_survey_text(book_engine, since) == 1
    text = read_sql(book_engine, "SELECT response_id, sentiment FROM survey_text").set_index("response_id")
    assert text.loc[surveys.loc[target, "response_id"], "sentiment"] == pytest.approx(sentiment(pd.Series(["terrible, broken, I hate it"])).iloc[0])
    assert surveys.loc[dropped, "response_id"] not in text.index
    assert len(text) == int((changed["comment"].fillna("").str.len() > 0).sum())


@pytest.mark.postgres
def test_postgres_rolls_the_same_as_duckdb(pg_engine: sa.Engine, duck_engine: sa.Engine) -> None:
    book = generate_book(accounts=80, days=200, seed=9)
    for engine in (duck_engine, pg_engine):
        write_book(engine, book)
        refresh_usage_rollups(engine)
        last = pd.to_datetime(book["usage"]["occurred_at"]).max().date()
        append_rows(engine, "usage", _midnight_rows(book["accounts"]["account_id"].head(5).tolist(), last))
        assert not refresh_usage_rollups(engine).full
    pd.testing.assert_frame_equal(_rollup(duck_engine), _rollup(pg_engine), check_dtype=False, rtol=1e-9)
    np.testing.assert_array_equal(_rollup(pg_engine)["source_rows"].sum(), len(book["usage"]) + 10)


def _rows(account: str, day: date, n: int, feature: str = "export") -> pd.DataFrame:
    stamps = [pd.Timestamp(day) + pd.Timedelta(hours=1 + i) for i in range(n)]
    frame = pd.DataFrame({"account_id": account, "occurred_at": stamps, "feature": feature, "quantity": 1.0 + np.arange(n),
                          "duration_s": 2.0, "errors": 0, "user_id": [f"u{i}" for i in range(n)]})
    return schema.coerce(frame, schema.USAGE)


def test_every_writer_of_usage_reaches_the_rollups(duck_engine: sa.Engine, tmp_path) -> None:
    """Write usage through every writer, each time on old days the incremental recheck would
    not look at; the rollups must then agree with a from-scratch rebuild."""
    import subprocess
    import sys

    from churnflow.warehouse import insert_frame, transaction
    from ingest.usage_days import add_day_hash_parts, day_hash_parts, replace_usage_by_day, replace_usage_by_day_from

    base = pd.concat([_rows(f"A{i}", date(2026, 1, 1) + timedelta(days=d), 3) for i in range(3) for d in range(60)], ignore_index=True)
    replace_rows(duck_engine, "usage", base, replace_all=True)
    refresh_usage_rollups(duck_engine)

    def roll_and_compare(what: str) -> None:
        assert usage_writes_pending(duck_engine), what  # feature fingerprints refuse to vouch until the refresh
        report = refresh_usage_rollups(duck_engine, recheck_days=1)
        assert not usage_writes_pending(duck_engine), what
        incremental = _rollup(duck_engine)
        refresh_usage_rollups(duck_engine, rebuild=True)
        pd.testing.assert_frame_equal(incremental, _rollup(duck_engine), check_dtype=False, rtol=1e-9, obj=what)
        pd.testing.assert_frame_equal(incremental, _expected_rollup(read_sql(duck_engine, "SELECT * FROM usage")), check_dtype=False, rtol=1e-9, obj=what)
        assert report.full == (what in ("replace where", "replace_all")), what  # a day-named write rolls only its days

    append_rows(duck_engine, "usage", _rows("A9", date(2026, 1, 5), 2))
    roll_and_compare("append")
    replace_rows(duck_engine, "usage", _rows("A0", date(2026, 1, 6), 1, "import"), where={"account_id": "A1"})  # days it cannot name
    roll_and_compare("replace where")
    with transaction(duck_engine) as conn:
        insert_frame(conn, "usage", _rows("A2", date(2026, 1, 10), 4))
    roll_and_compare("insert_frame")
    current = schema.coerce(read_sql(duck_engine, "SELECT * FROM usage"), schema.USAGE)
    replace_usage_by_day(duck_engine, current)  # the ingest's first load: the whole table
    roll_and_compare("replace_all")
    edited = pd.concat([current, _rows("A1", date(2026, 1, 12), 2)], ignore_index=True)
    edited = edited[pd.to_datetime(edited["occurred_at"]).dt.date != date(2026, 1, 20)]
    replace_usage_by_day(duck_engine, edited)  # the ingest: only the changed days
    roll_and_compare("ingest by day")
    with duck_engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE load_usage AS SELECT * FROM usage WHERE occurred_at >= '2026-01-03'"))
    remaining = read_sql(duck_engine, "SELECT * FROM load_usage")
    replace_usage_by_day_from(duck_engine, "load_usage", add_day_hash_parts([day_hash_parts(schema.coerce(remaining, schema.USAGE))]))
    roll_and_compare("ingest streamed by day")
    # another process that imports only the core writes old days: the journal still tells the rollups
    duck_engine.dispose()
    url = str(duck_engine.url)
    script = ("import pandas as pd, sys; from churnflow import schema; from churnflow.warehouse import get_engine, append_rows; "
              f"append_rows(get_engine({url!r}), 'usage', schema.coerce(pd.DataFrame({{'account_id': ['A7'], 'occurred_at': [pd.Timestamp('2026-01-15 08:00')], "
              "'feature': ['export']}), schema.USAGE)); assert 'features' not in sys.modules and 'features.rollups' not in sys.modules")
    subprocess.run([sys.executable, "-c", script], check=True)
    roll_and_compare("another process, core only")
    assert read_sql(duck_engine, "SELECT COUNT(*) AS n FROM usage WHERE account_id = 'A7'")["n"].iloc[0] == 1
