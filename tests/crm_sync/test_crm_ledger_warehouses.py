"""The ledger's SQL on both warehouses: forward-only dates, change states, in-doubt creates,
repairs, and the in-place migration of a ledger written by an older churnflow."""

from __future__ import annotations

from datetime import date

import pytest
import sqlalchemy as sa

from crm_sync.ledger import LEDGER_TABLE, Ledger


@pytest.fixture(params=["duck", "pg"])
def engine(request: pytest.FixtureRequest) -> sa.Engine:
    return request.getfixturevalue("duck_engine" if request.param == "duck" else "pg_engine")


def test_ledger_round_trip(engine: sa.Engine) -> None:
    ledger = Ledger(engine)
    d1, d2, d3 = date(2026, 11, 19), date(2026, 11, 20), date(2026, 11, 21)
    states = {"a": {"Churnflow_Health_Band__c": "Red", "arr": 10.5}, "b": {"Churnflow_Health_Band__c": "Green", "arr": None}}
    ledger.record_intents("account_health", {"a": "h1", "b": "h2"}, states=states, as_of={"a": d2, "b": d2})
    ledger.record_outcomes("account_health", {"a": "001A"}, {"b": "NOT_FOUND: gone"})
    entries = ledger.entries("account_health")
    assert (entries["a"].status, entries["a"].sent_state, entries["a"].sent_as_of, entries["a"].seen_as_of) == ("sent", states["a"], d2, d2)
    assert (entries["b"].status, entries["b"].sent_state, entries["b"].sent_as_of, entries["b"].error) == ("failed", None, None, "NOT_FOUND: gone")
    ledger.mark_seen("account_health", ["a", "b"], d3)
    ledger.mark_seen("account_health", ["a"], d1)  # never moves back
    entries = ledger.entries("account_health")
    assert (entries["a"].seen_as_of, entries["a"].sent_as_of, entries["b"].seen_as_of) == (d3, d2, d3)
    # a new intent keeps what was confirmed until its own outcome is known
    ledger.record_intents("account_health", {"a": "h3"}, states={"a": {"x": 1}}, as_of={"a": d3})
    kept = ledger.entries("account_health", ["a"])["a"]
    assert (kept.status, kept.sent_hash, kept.sent_state, kept.sent_as_of) == ("intended", "h1", states["a"], d2)
    ledger.record_intents("tasks", {"k1": "t1"})
    ledger.record_outcomes("tasks", {}, {}, {"k1": "response lost"})
    doubt = ledger.entries("tasks")["k1"]
    assert (doubt.status, doubt.error) == ("in_doubt", "response lost") and doubt.updated_at is not None
    ledger.record_repairs({"00T2": "00T1"}, {"00T2": "closed as a duplicate of 00T1"})
    assert ledger.entries("task_repairs")["00T2"].error == "closed as a duplicate of 00T1"


def test_a_ledger_from_an_older_release_is_migrated_in_place(engine: sa.Engine) -> None:
    old = sa.Table(LEDGER_TABLE, sa.MetaData(), *[sa.Column(n, sa.String(), primary_key=n in ("kind", "record_key"))
                                                  for n in ("kind", "record_key", "status", "intended_hash", "sent_hash", "crm_id", "error", "run_id")],
                   sa.Column("updated_at", sa.DateTime()))
    old.create(engine)
    with engine.begin() as conn:
        conn.execute(old.insert(), [{"kind": "account_health", "record_key": "a", "status": "sent", "intended_hash": "h", "sent_hash": "h",
                                     "crm_id": "001A", "error": None, "run_id": "r", "updated_at": None}])
    ledger = Ledger(engine)
    entry = ledger.entries("account_health")["a"]
    assert (entry.status, entry.sent_hash, entry.sent_state, entry.seen_as_of) == ("sent", "h", None, None)
    ledger.mark_seen("account_health", ["a"], date(2026, 11, 20))
    assert ledger.entries("account_health")["a"].seen_as_of == date(2026, 11, 20)
    assert Ledger.existing(engine) is not None
