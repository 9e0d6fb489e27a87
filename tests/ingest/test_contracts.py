"""Data contracts: derived from schema.py plus the declared ranges, checked vectorised."""

from __future__ import annotations

from datetime import date

import numpy as np
import pandas as pd

from ingest.contracts import CONTRACTS, contract_for, check, quarantine_frame, top_reasons
from churnflow.schema import CANONICAL

RUN_DATE = date(2026, 11, 1)


def _found(violations: pd.DataFrame) -> set[tuple[int, str, str]]:
    return {(int(r.row), r.field, r.reason) for r in violations.itertuples()}


def test_contracts_are_derived_from_the_schema() -> None:
    assert set(CONTRACTS) == set(CANONICAL)
    for name, spec in CANONICAL.items():
        c = contract_for(name)
        assert c.required == tuple(col.name for col in spec.columns if col.required)
        assert c.key == spec.key
        assert set(c.timestamps) == {col.name for col in spec.columns if col.kind == "timestamp"}
    assert CONTRACTS["tickets"].ranges["csat"] == (1, 5)
    assert CONTRACTS["surveys"].conditional_ranges["score"][1] == {"nps": (0, 10), "csat": (1, 5), "ces": (1, 7)}
    assert CONTRACTS["accounts"].reference is None and CONTRACTS["usage"].reference == "account_id"
    assert "end_date > start_date" in CONTRACTS["subscriptions"].describe()


def test_survey_scores_are_checked_on_their_kind_scale() -> None:
    frame = pd.DataFrame({
        "response_id": [f"R{i}" for i in range(7)],
        "account_id": ["A"] * 7,
        "submitted_at": pd.to_datetime(["2026-01-01"] * 7),
        "kind": ["nps", "nps", "csat", "csat", "ces", "ces", "pulse"],
        "score": [0.0, 11.0, 5.0, 6.0, 7.0, 0.0, 3.0],
        "comment": [None] * 7,
    })
    v = check(frame, CONTRACTS["surveys"], run_date=RUN_DATE, known_accounts=["A"])
    assert _found(v) == {
        (1, "score", "score out of range 0-10 for kind=nps"),
        (3, "score", "score out of range 1-5 for kind=csat"),
        (5, "score", "score out of range 1-7 for kind=ces"),
        (6, "kind", "kind not one of ces, csat, nps"),
    }
    assert v.loc[v["row"] == 1, "value"].iloc[0] == "11"


def test_ranges_order_future_references_and_required() -> None:
    frame = pd.DataFrame({
        "subscription_id": ["S1", "S2", "S3", "S4", "S5"],
        "account_id": ["A", "A", "B", "A", None],
        "plan": ["p"] * 5,
        "seats": pd.array([1, -1, 1, 1, 1], dtype="Int64"),
        "arr": [10.0, 10.0, -5.0, 10.0, 10.0],
        "start_date": pd.to_datetime(["2026-01-01"] * 5),
        "end_date": pd.to_datetime(["2027-01-01", "2027-01-01", "2027-01-01", "2026-01-01", "2027-01-01"]),
        "cancelled_at": pd.to_datetime([None, None, None, None, "2026-12-01"]),
        "auto_renew": [True] * 5,
    })
    v = check(frame, CONTRACTS["subscriptions"], run_date=RUN_DATE, known_accounts=pd.Index(["A"]))
    assert _found(v) == {
        (1, "seats", "seats below 0"),
        (2, "arr", "arr below 0"),
        (2, "account_id", "unknown account_id"),
        (3, "end_date", "end_date not after start_date"),
        (4, "account_id", "missing required account_id"),
        (4, "cancelled_at", "cancelled_at after the run date 2026-11-01"),
    }
    assert top_reasons(v, 2)[0][1] == 1
    # end_date is a date, legitimately in the future: only timestamps are held to the run date
    assert not (v["field"] == "end_date").any() or set(v.loc[v["field"] == "end_date", "row"]) == {3}


def test_duplicates_keep_the_first_valid_occurrence() -> None:
    frame = pd.DataFrame({
        "ticket_id": ["T1", "T1", "T2", "T2", "T2"],
        "account_id": ["A"] * 5,
        "opened_at": pd.to_datetime(["2026-01-01"] * 5),
        "closed_at": pd.to_datetime([None] * 5),
        "priority": ["low", "low", "bogus", "high", "high"],
        "channel": [None] * 5,
        "first_response_minutes": [1.0] * 5,
        "reopened": [False] * 5,
        "csat": pd.array([None] * 5, dtype="Int64"),
    })
    v = check(frame, CONTRACTS["tickets"], run_date=RUN_DATE, known_accounts=["A"])
    # T2's first copy is invalid, so the second copy is the one kept and the third is the duplicate
    assert _found(v) == {
        (1, "ticket_id", "duplicate ticket_id (first occurrence kept)"),
        (2, "priority", "priority not one of high, low, normal, urgent"),
        (4, "ticket_id", "duplicate ticket_id (first occurrence kept)"),
    }
    # rows already rejected elsewhere (e.g. unparseable values) do not shadow later copies
    v = check(frame, CONTRACTS["tickets"], run_date=RUN_DATE, known_accounts=["A"], exclude=np.array([True, False, False, False, False]))
    assert (1, "ticket_id", "duplicate ticket_id (first occurrence kept)") not in _found(v)


def test_checks_are_vectorised_on_a_million_usage_rows() -> None:
    import time

    n = 1_000_000
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({
        "account_id": np.where(rng.random(n) < 0.001, "ZZZ", "A" + (rng.integers(0, 1000, n)).astype(str)).astype(object),
        "occurred_at": pd.Timestamp("2026-01-01") + pd.to_timedelta(rng.integers(0, 300 * 86400, n), unit="s"),
        "feature": "f",
        "quantity": rng.poisson(3, n).astype(float),
        "duration_s": 1.0,
        "errors": pd.array(rng.poisson(0.1, n), dtype="Int64"),
        "user_id": "u",
    })
    frame.loc[:9, "quantity"] = -1.0
    known = pd.Index([f"A{i}" for i in range(1000)])
    start = time.perf_counter()
    v = check(frame, CONTRACTS["usage"], run_date=RUN_DATE, known_accounts=known)
    assert time.perf_counter() - start < 10
    assert (v["reason"] == "quantity below 0").sum() == 10
    assert (v["reason"] == "unknown account_id").sum() == (frame["account_id"] == "ZZZ").sum()


def test_quarantine_frame_has_stable_types() -> None:
    q = quarantine_frame(pd.DataFrame({"table_name": ["usage"], "source": ["a.csv"], "source_row": [3], "field": ["quantity"],
                                       "value": ["-1"], "reason": ["quantity below 0"], "run_id": ["r"], "quarantined_at": [pd.Timestamp("2026-11-01")]}))
    assert list(q.columns) == ["table_name", "source", "source_row", "source_key", "field", "value", "reason", "run_id", "quarantined_at"]
    assert str(q["source_row"].dtype) == "Int64" and q["source_key"].iloc[0] is None
