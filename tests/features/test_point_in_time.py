"""Point in time on sources that overwrite rows (churnflow.history).

A source system exports its current state: a second extract, loaded after D, in which a
ticket was reopened, a first response arrived, a term was extended, ARR, seats, segment or
priority changed, must not change any feature as of D, and features as of a date after
that load must see the change. On DuckDB and PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta

import pandas as pd
import pytest
import sqlalchemy as sa

from churnflow.demo_data import generate_book, write_book
from churnflow.history import VERSIONED, HistoryError, record_versions, state_at_sql, sync_history
from churnflow.schema import HISTORY
from churnflow.warehouse import WarehouseError, read_sql, replace_rows
from features.build import build_features, input_fingerprint, materialize_features

D = date(2026, 8, 1)  # the first extract is taken (loaded) at D; features as of D are built
T2 = D + timedelta(days=10)  # the second extract, with the mutation, is loaded at T2
D2 = T2  # a date after the second load: features see the change
STATE = ("accounts", "subscriptions", "tickets")


def _d(day: date) -> pd.Timestamp:
    return pd.Timestamp(day)


@pytest.fixture(scope="module")
def book() -> dict[str, pd.DataFrame]:
    return generate_book(accounts=200, days=450, seed=3)


def extract_at(book: dict[str, pd.DataFrame], day: date) -> dict[str, pd.DataFrame]:
    """The book as its source systems would have exported it at ``day``: rows that existed,
    in the state they had (later closes, cancellations, responses not yet happened)."""
    d = _d(day)
    accounts = book["accounts"][book["accounts"]["created_at"] < d]
    subs = book["subscriptions"][pd.to_datetime(book["subscriptions"]["start_date"]) < d].copy()
    subs.loc[pd.to_datetime(subs["cancelled_at"]) >= d, "cancelled_at"] = pd.NaT
    tickets = book["tickets"][book["tickets"]["opened_at"] < d].copy()
    later = pd.to_datetime(tickets["closed_at"]) >= d
    tickets.loc[later, "closed_at"] = pd.NaT
    tickets.loc[later, "csat"] = pd.NA
    tickets.loc[later, "reopened"] = False
    answered_later = tickets["opened_at"] + pd.to_timedelta(tickets["first_response_minutes"], unit="min") >= d
    tickets.loc[answered_later, "first_response_minutes"] = float("nan")
    return {
        "accounts": accounts.reset_index(drop=True),
        "subscriptions": subs.reset_index(drop=True),
        "usage": book["usage"][book["usage"]["occurred_at"] < d].reset_index(drop=True),
        "tickets": tickets.reset_index(drop=True),
        "surveys": book["surveys"][book["surveys"]["submitted_at"] < d].reset_index(drop=True),
    }


def _steady_accounts(extract: dict[str, pd.DataFrame]) -> list[str]:
    """Accounts covered by exactly one term from before D until well after D2."""
    subs = extract["subscriptions"]
    covering = subs[(pd.to_datetime(subs["end_date"]) > _d(D2) + pd.Timedelta(days=30)) & subs["cancelled_at"].isna()]
    counts = covering.groupby("account_id").size()
    return sorted(counts[counts == 1].index)


def _recent_closed_ticket(extract: dict[str, pd.DataFrame], accounts: list[str], skip: int = 0) -> pd.Series:
    t = extract["tickets"]
    pick = t[t["account_id"].isin(accounts) & (t["opened_at"] >= _d(D) - pd.Timedelta(days=60))
             & t["closed_at"].notna() & ~t["reopened"].astype(bool) & t["priority"].isin(["low", "normal"])]
    return pick.sort_values("ticket_id").iloc[skip]


@dataclass(frozen=True)
class Mutation:
    """A change the source made after D: applied to the extract loaded at T2 (and, for
    ``setup``, to both extracts: the state at D). ``feature`` must change at D2."""

    name: str
    feature: str
    change: Callable[[dict[str, pd.DataFrame]], str]  # mutates the later extract, returns the account
    setup: Callable[[dict[str, pd.DataFrame]], None] | None = None


def _reopen_still_open(x: dict[str, pd.DataFrame]) -> str:
    ticket = _recent_closed_ticket(x, _steady_accounts(x), skip=0)
    rows = x["tickets"]["ticket_id"] == ticket["ticket_id"]
    x["tickets"].loc[rows, ["reopened", "closed_at"]] = [True, pd.NaT]
    return ticket["account_id"]


def _reopen_solved_again(x: dict[str, pd.DataFrame]) -> str:
    ticket = _recent_closed_ticket(x, _steady_accounts(x), skip=3)
    rows = x["tickets"]["ticket_id"] == ticket["ticket_id"]
    x["tickets"].loc[rows, ["reopened", "closed_at"]] = [True, _d(D) + pd.Timedelta(days=3)]
    return ticket["account_id"]


def _waiting_ticket(account: str, ticket_id: str, opened_hours_before: float, minutes: float) -> pd.DataFrame:
    return pd.DataFrame({
        "ticket_id": [ticket_id], "account_id": [account], "opened_at": [_d(D) - pd.Timedelta(hours=opened_hours_before)],
        "closed_at": [pd.NaT], "priority": ["normal"], "channel": ["email"], "first_response_minutes": [minutes],
        "reopened": [False], "csat": [pd.NA],
    })


def _response_setup(x: dict[str, pd.DataFrame]) -> None:
    """At D, two tickets opened just before D: one not answered yet, one answered 30 minutes in."""
    accounts = _steady_accounts(x)
    x["tickets"] = pd.concat([x["tickets"], _waiting_ticket(accounts[5], "PIT-WAITING", 2, float("nan")),
                              _waiting_ticket(accounts[6], "PIT-ANSWERED", 3, 30.0)], ignore_index=True)


def _response_arrives(x: dict[str, pd.DataFrame]) -> str:
    rows = x["tickets"]["ticket_id"] == "PIT-WAITING"
    x["tickets"].loc[rows, ["first_response_minutes", "closed_at"]] = [600.0, _d(D) + pd.Timedelta(days=1)]
    return x["tickets"].loc[rows, "account_id"].iloc[0]


def _response_revised(x: dict[str, pd.DataFrame]) -> str:
    rows = x["tickets"]["ticket_id"] == "PIT-ANSWERED"
    x["tickets"].loc[rows, "first_response_minutes"] = 400.0  # the helpdesk recomputed it after D
    return x["tickets"].loc[rows, "account_id"].iloc[0]


def _steady_term_row(x: dict[str, pd.DataFrame], index: int) -> pd.Series:
    account = _steady_accounts(x)[index]
    subs = x["subscriptions"]
    term = subs[(subs["account_id"] == account) & (pd.to_datetime(subs["end_date"]) > _d(D2) + pd.Timedelta(days=30))]
    return term.index[0]


def _end_date_extended(x: dict[str, pd.DataFrame]) -> str:
    row = _steady_term_row(x, 7)
    x["subscriptions"].loc[row, "end_date"] = pd.to_datetime(x["subscriptions"].loc[row, "end_date"]) + pd.Timedelta(days=365)
    return x["subscriptions"].loc[row, "account_id"]


def _arr_changed(x: dict[str, pd.DataFrame]) -> str:
    row = _steady_term_row(x, 8)
    x["subscriptions"].loc[row, "arr"] = x["subscriptions"].loc[row, "arr"] * 3 + 1000
    return x["subscriptions"].loc[row, "account_id"]


def _seats_changed(x: dict[str, pd.DataFrame]) -> str:
    usage = x["usage"]
    recent = usage[usage["occurred_at"] >= _d(D) - pd.Timedelta(days=15)]
    users = set(recent["account_id"])
    index = next(i for i, a in enumerate(_steady_accounts(x)) if a in users and i >= 9)
    row = _steady_term_row(x, index)
    x["subscriptions"].loc[row, "seats"] = x["subscriptions"].loc[row, "seats"] * 4 + 10
    return x["subscriptions"].loc[row, "account_id"]


def _segment_changed(x: dict[str, pd.DataFrame]) -> str:
    account = _steady_accounts(x)[20]
    rows = x["accounts"]["account_id"] == account
    old = x["accounts"].loc[rows, "segment"].iloc[0]
    x["accounts"].loc[rows, "segment"] = "enterprise" if old != "enterprise" else "smb"
    return account


def _priority_changed(x: dict[str, pd.DataFrame]) -> str:
    ticket = _recent_closed_ticket(x, _steady_accounts(x), skip=6)
    x["tickets"].loc[x["tickets"]["ticket_id"] == ticket["ticket_id"], "priority"] = "urgent"
    return ticket["account_id"]


MUTATIONS = [
    Mutation("a_reopened_still_open", "open_tickets", _reopen_still_open),
    Mutation("a_reopened_and_solved_again", "reopen_rate_90d", _reopen_solved_again),
    Mutation("b_first_response_after_d", "median_first_response_minutes_90d", _response_arrives, _response_setup),
    Mutation("b_first_response_revised", "median_first_response_minutes_90d", _response_revised, _response_setup),
    Mutation("c_end_date_extended", "days_to_renewal", _end_date_extended),
    Mutation("d_arr_changed", "arr", _arr_changed),
    Mutation("e_seats_changed", "seat_utilisation_30d", _seats_changed),
    Mutation("f_segment_changed", "segment", _segment_changed),
    Mutation("g_priority_changed", "high_priority_share_90d", _priority_changed),
]


@pytest.fixture(params=["duckdb", "postgresql"])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    return request.getfixturevalue("duck_engine" if request.param == "duckdb" else "pg_engine")


def _copy(extract: dict[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    return {name: frame.copy() for name, frame in extract.items()}


@pytest.mark.parametrize("mutation", MUTATIONS, ids=[m.name for m in MUTATIONS])
def test_a_later_extract_changes_no_feature_as_of_d(engine: sa.Engine, book: dict[str, pd.DataFrame], mutation: Mutation) -> None:
    first = _copy(extract_at(book, D))
    if mutation.setup:
        mutation.setup(first)
    write_book(engine, first, loaded_at=D)
    at_d = build_features(engine, D)
    at_d2 = build_features(engine, D2)

    second = _copy(first)
    account = mutation.change(second)
    for table in STATE:
        replace_rows(engine, table, second[table], replace_all=True, loaded_at=T2)

    pd.testing.assert_frame_equal(build_features(engine, D), at_d)  # nothing leaks back to D
    later = build_features(engine, D2).set_index("account_id")
    before = at_d2.set_index("account_id")
    assert account in later.index and account in before.index
    new, old = later.loc[account, mutation.feature], before.loc[account, mutation.feature]
    assert not (new == old or (pd.isna(new) and pd.isna(old))), f"{mutation.name}: {mutation.feature} of {account} is still {old} at D2"
    # and nothing else did: the change is the mutation's own
    pd.testing.assert_frame_equal(later.drop(index=account), before.drop(index=account))


def test_without_history_the_same_mutations_leak(duck_engine: sa.Engine, book: dict[str, pd.DataFrame]) -> None:
    """The check above has teeth: overwrite the tables without keeping history (as a source
    system does) and features as of D change."""
    first = _copy(extract_at(book, D))
    _response_setup(first)
    write_book(duck_engine, first, loaded_at=D)
    at_d = build_features(duck_engine, D)
    second = _copy(first)
    for mutation in MUTATIONS:
        mutation.change(second)
    for table in STATE:
        replace_rows(duck_engine, table, second[table], replace_all=True, loaded_at=T2)
    with duck_engine.begin() as conn:  # what churnflow read before: the tables as they are now
        for table in VERSIONED:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}_history"'))
    leaked = build_features(duck_engine, D, refresh=False).set_index("account_id")
    changed = [f for f in leaked.columns if not leaked[f].equals(at_d.set_index("account_id")[f])]
    assert {"segment", "arr", "days_to_renewal", "seat_utilisation_30d", "high_priority_share_90d", "open_tickets",
            "median_first_response_minutes_90d"} <= set(changed)


def test_the_first_version_stands_for_dates_before_the_first_load(duck_engine: sa.Engine, book: dict[str, pd.DataFrame]) -> None:
    """A book loaded once, at its end: features of past dates equal those from the plain
    tables, except the reopen flag (no date: unknown before the load that reported it)."""
    extract = extract_at(book, D)
    write_book(duck_engine, extract, loaded_at=D)
    early = D - timedelta(days=60)
    from_history = build_features(duck_engine, early)
    assert from_history["reopen_rate_90d"].isna().all()
    assert from_history["first_contact_resolution_90d"].isna().all()
    assert build_features(duck_engine, D)["reopen_rate_90d"].notna().any()  # from the load on, the flag is known
    with duck_engine.begin() as conn:
        for table in VERSIONED:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}_history"'))
    plain = build_features(duck_engine, early, refresh=False)  # the tables themselves, known_since unknown
    pd.testing.assert_frame_equal(from_history, plain)


def test_fingerprint_changes_only_with_the_version_valid_at_d(engine: sa.Engine, book: dict[str, pd.DataFrame]) -> None:
    first = extract_at(book, D)
    write_book(engine, first, loaded_at=D)
    at_d = materialize_features(engine, [D]).set_index("account_id")
    built = read_sql(engine, "SELECT built_at FROM feature_builds").loc[0, "built_at"]
    fp_d, fp_d2 = input_fingerprint(engine, D), input_fingerprint(engine, D2)

    second = _copy(first)
    for mutation in (m for m in MUTATIONS if m.setup is None):
        mutation.change(second)
    for table in STATE:
        replace_rows(engine, table, second[table], replace_all=True, loaded_at=T2)
    assert input_fingerprint(engine, D) == fp_d  # only a later version was added
    assert input_fingerprint(engine, D2) != fp_d2
    materialize_features(engine, [D])
    assert read_sql(engine, "SELECT built_at FROM feature_builds").loc[0, "built_at"] == built  # reused

    corrected = _copy(first)  # the extract of D itself corrected (an ingest re-run for D)
    account = _priority_changed(corrected)
    replace_rows(engine, "tickets", corrected["tickets"], replace_all=True, loaded_at=D)
    assert input_fingerprint(engine, D) != fp_d
    rebuilt = materialize_features(engine, [D]).set_index("account_id")
    assert read_sql(engine, "SELECT built_at FROM feature_builds").loc[0, "built_at"] > built
    assert rebuilt.loc[account, "high_priority_share_90d"] > at_d.loc[account, "high_priority_share_90d"]  # the corrected version


# -- the history itself --------------------------------------------------------------------

def _accounts(rows: list[tuple[str, str]]) -> pd.DataFrame:
    return pd.DataFrame({
        "account_id": [a for a, _ in rows], "name": [f"Company {a}" for a, _ in rows], "industry": None,
        "segment": [s for _, s in rows], "country": None, "created_at": pd.Timestamp("2025-01-01"), "owner_email": None,
        "crm_account_id": None,
    })


def _history(engine: sa.Engine) -> pd.DataFrame:
    frame = read_sql(engine, "SELECT account_id, segment, valid_from, valid_to, first_version FROM accounts_history "
                             "ORDER BY account_id, valid_from")
    frame["valid_to"] = pd.to_datetime(frame["valid_to"])
    return frame


def _state(engine: sa.Engine, as_of: datetime) -> dict[str, str]:
    frame = read_sql(engine, f"SELECT account_id, segment FROM {state_at_sql(engine, 'accounts')} AS a", {"as_of": as_of})
    return dict(zip(frame["account_id"], frame["segment"]))


def test_record_versions_keeps_each_loaded_version(engine: sa.Engine) -> None:
    t1, t2, t3 = datetime(2026, 1, 1), datetime(2026, 2, 1), datetime(2026, 3, 1)
    replace_rows(engine, "accounts", _accounts([("A", "smb"), ("B", "smb"), ("C", "smb")]), replace_all=True, loaded_at=t1)
    replace_rows(engine, "accounts", _accounts([("A", "smb"), ("B", "enterprise"), ("D", "smb")]), replace_all=True, loaded_at=t2)
    history = _history(engine)
    assert list(zip(history["account_id"], history["segment"], history["first_version"])) == [
        ("A", "smb", True), ("B", "smb", True), ("B", "enterprise", False), ("C", "smb", True), ("D", "smb", True)]
    assert [None if pd.isna(v) else v for v in history["valid_to"]] == [None, pd.Timestamp(t2), None, pd.Timestamp(t2), None]
    assert list(pd.to_datetime(history["valid_from"])) == [pd.Timestamp(t) for t in (t1, t1, t2, t1, t2)]

    assert _state(engine, datetime(2025, 6, 1)) == {"A": "smb", "B": "smb", "C": "smb", "D": "smb"}  # first versions
    assert _state(engine, t1) == {"A": "smb", "B": "smb", "C": "smb", "D": "smb"}
    assert _state(engine, t2) == {"A": "smb", "B": "enterprise", "D": "smb"}  # loaded at t2: known at t2

    # the same extract again (an ingest re-run): nothing recorded
    with engine.begin() as conn:
        report = record_versions(conn, "accounts", loaded_at=t2)
    assert (report.added, report.changed, report.gone, report.unchanged) == (0, 0, 0, 3)
    assert len(_history(engine)) == 5
    # the extract of t2 corrected: its version is replaced, not stacked
    replace_rows(engine, "accounts", _accounts([("A", "smb"), ("B", "mid_market"), ("D", "smb")]), replace_all=True, loaded_at=t2)
    assert len(_history(engine)) == 5 and _state(engine, t2)["B"] == "mid_market"
    # a write without a load time corrects the latest load; so does a direct write, at the next sync
    with engine.begin() as conn:
        conn.execute(sa.text("UPDATE accounts SET segment = 'enterprise' WHERE account_id = 'B'"))
    [report] = [r for r in sync_history(engine) if r.table == "accounts"]
    assert (report.changed, report.loaded_at) == (1, t2)
    assert _state(engine, t2)["B"] == "enterprise" and _state(engine, t1)["B"] == "smb"
    assert len(_history(engine)) == 5
    # a later load, then an older extract again: the versions loaded after it are discarded
    replace_rows(engine, "accounts", _accounts([("A", "enterprise")]), replace_all=True, loaded_at=t3)
    assert _state(engine, t3) == {"A": "enterprise"} and len(_history(engine)) == 6
    replace_rows(engine, "accounts", _accounts([("A", "smb"), ("B", "enterprise"), ("D", "smb")]), replace_all=True, loaded_at=t2)
    assert _state(engine, t3) == {"A": "smb", "B": "enterprise", "D": "smb"}
    assert len(_history(engine)) == 5


def test_a_table_with_duplicate_keys_is_refused_naming_the_key(duck_engine: sa.Engine) -> None:
    frame = _accounts([("A", "smb"), ("A", "enterprise")])
    # the declared key is the table's primary key: the database refuses the second copy itself
    with pytest.raises(WarehouseError, match=r"table 'accounts' refused the rows \(key: account_id\): .*duplicate key"):
        replace_rows(duck_engine, "accounts", frame, replace_all=True, loaded_at=date(2026, 1, 1))
    assert read_sql(duck_engine, "SELECT COUNT(*) AS n FROM accounts").loc[0, "n"] == 0  # the write was rolled back
    replace_rows(duck_engine, "accounts", _accounts([("A", "smb")]), replace_all=True, loaded_at=date(2026, 1, 1))
    with duck_engine.begin() as conn:  # another tool recreates the table without constraints and a row without a key
        conn.execute(sa.text("DROP TABLE accounts"))
        conn.execute(sa.text("CREATE TABLE accounts (account_id VARCHAR, name VARCHAR, industry VARCHAR, segment VARCHAR, "
                             "country VARCHAR, created_at TIMESTAMP, owner_email VARCHAR, crm_account_id VARCHAR)"))
        conn.execute(sa.text("INSERT INTO accounts (account_id, name, segment, created_at) VALUES (NULL, 'x', 'smb', '2025-01-01')"))
    with pytest.raises(HistoryError, match=r"table 'accounts': 1 row\(s\) have no account_id"):
        sync_history(duck_engine)


def test_what_a_first_load_after_d_says_about_timing_is_not_used_at_d(duck_engine: sa.Engine, book: dict[str, pd.DataFrame]) -> None:
    """A first load after D stands for D, except the fields whose timing it does not carry:
    a first response that came after D, a close after D, a reopen flag."""
    late = _waiting_ticket(_steady_accounts(extract_at(book, T2))[5], "PIT-LATE", 2, 600.0)  # answered at D + 8 h
    late["closed_at"] = _d(D) + pd.Timedelta(days=1)
    late["reopened"] = True
    solved = _waiting_ticket(late["account_id"].iloc[0], "PIT-SOLVED", 24 * 6, 20.0)
    solved["closed_at"] = _d(D) - pd.Timedelta(days=5)  # solved before D, reopened: when?
    solved["reopened"] = True
    extract = _copy(extract_at(book, T2))
    unknown = [late.assign(first_response_minutes=float("nan"), closed_at=pd.NaT, reopened=False), solved.assign(reopened=False)]
    extract["tickets"] = pd.concat([extract["tickets"], *unknown], ignore_index=True)
    write_book(duck_engine, extract, loaded_at=T2)
    expected = build_features(duck_engine, D)  # the tickets as they were at D: open, no response yet; solved

    extract["tickets"] = pd.concat([extract["tickets"].iloc[:-2], late, solved], ignore_index=True)
    write_book(duck_engine, extract, loaded_at=T2)
    pd.testing.assert_frame_equal(build_features(duck_engine, D), expected)


def test_ingest_records_each_extract_at_its_run_date(tmp_path) -> None:  # noqa: ANN001 - pytest's tmp_path
    """The user's path: `churnflow ingest --run-date` stamps the versions with the extract's date."""
    import yaml

    from ingest.load import ingest
    from churnflow.warehouse import get_engine

    (tmp_path / "accounts.csv").write_text("id,company,tier,since\nA1,Acme,smb,2024-01-05\nA2,Beta,smb,2024-02-05\n")
    mapping = tmp_path / "sources.yaml"
    mapping.write_text(yaml.safe_dump({"tables": {
        "accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "name": "company", "segment": "tier", "created_at": "since"}},
        "tickets": {"file": "tickets.csv", "columns": {"ticket_id": "no", "account_id": "acct", "opened_at": "opened",
                                                       "closed_at": "closed", "priority": "prio", "reopened": "reopened"}},
    }}))
    header = "no,acct,opened,closed,prio,reopened\n"
    (tmp_path / "tickets.csv").write_text(header + "T1,A1,2026-09-01,2026-09-02,low,no\nT2,A2,2026-09-20,,normal,no\n")
    engine = get_engine(f"duckdb:///{tmp_path}/w.duckdb")
    r1, r2 = date(2026, 10, 1), date(2026, 10, 15)
    ingest(engine, mapping, r1)
    (tmp_path / "tickets.csv").write_text(header + "T1,A1,2026-09-01,,urgent,yes\nT2,A2,2026-09-20,2026-10-03,normal,no\n")
    for _ in range(2):  # a re-run for the same run date records nothing new
        ingest(engine, mapping, r2)
        history = read_sql(engine, "SELECT ticket_id, priority, valid_from, valid_to FROM tickets_history ORDER BY ticket_id, valid_from")
        # an extract with run date R holds rows stamped during R: its state is known from R + 1
        known = [r1 + timedelta(days=1), r2 + timedelta(days=1)]
        assert len(history) == 4 and list(pd.to_datetime(history["valid_from"]).dt.date) == known * 2

    def state(day: date) -> pd.DataFrame:
        sql = f"SELECT ticket_id, priority, closed_at, reopened, known_since FROM {state_at_sql(engine, 'tickets')} AS t ORDER BY ticket_id"
        return read_sql(engine, sql, {"as_of": datetime(day.year, day.month, day.day)})

    at_r1 = state(r1 + timedelta(days=7))
    assert at_r1["priority"].tolist() == ["low", "normal"] and at_r1["closed_at"].isna().tolist() == [False, True]
    assert state(r2)["priority"].tolist() == ["low", "normal"]  # not yet known during the run date
    at_r2 = state(r2 + timedelta(days=1))
    assert at_r2["priority"].tolist() == ["urgent", "normal"] and at_r2["reopened"].tolist() == [True, False]
    assert list(pd.to_datetime(at_r2["known_since"]).dt.date) == [known[1]] * 2


def test_a_column_added_to_a_table_is_added_to_its_history(engine: sa.Engine) -> None:
    """A spec that gained a column since the history was created: older versions hold NULL
    (unknown), the next load records the values."""
    t1, t2 = datetime(2026, 1, 1), datetime(2026, 2, 1)
    frame = _accounts([("A", "smb"), ("B", "smb")]).assign(country="DE")
    replace_rows(engine, "accounts", frame, replace_all=True, loaded_at=t1)
    kept = ", ".join(f'"{c}"' for c in HISTORY["accounts_history"].column_names if c != "country")
    with engine.begin() as conn:  # as if the history had been created before `country` was declared (and before keys)
        conn.execute(sa.text(f"CREATE TABLE accounts_history_old AS SELECT {kept} FROM accounts_history"))
        conn.execute(sa.text("DROP TABLE accounts_history"))
        conn.execute(sa.text("ALTER TABLE accounts_history_old RENAME TO accounts_history"))
    replace_rows(engine, "accounts", frame, replace_all=True, loaded_at=t2)
    history = read_sql(engine, "SELECT account_id, country, valid_from FROM accounts_history ORDER BY account_id, valid_from")
    assert [None if pd.isna(c) else c for c in history["country"]] == [None, "DE", None, "DE"]
