"""A usage file is streamed in chunks and loads exactly what reading it whole would (issue #12, item 7)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa
import yaml

import ingest.load as ingest_module
from ingest.load import ingest
from churnflow.warehouse import get_engine, read_sql

RUN_DATE = pd.Timestamp("2026-11-01").date()


def _export(folder: Path, *, edited_day: str | None = None) -> Path:
    rng = np.random.default_rng(3)
    folder.mkdir(parents=True, exist_ok=True)
    accounts = pd.DataFrame({"id": [f"A{i}" for i in range(20)], "name": "x", "segment": "smb", "created": "2025-01-01"})
    accounts.to_csv(folder / "accounts.csv", index=False)
    n = 1_000
    events = pd.DataFrame({
        "who": rng.choice(accounts["id"], n),
        "ts": (pd.Timestamp("2026-09-01") + pd.to_timedelta(rng.integers(0, 60 * 86_400, n), unit="s")).strftime("%Y-%m-%dT%H:%M:%S"),
        "event": rng.choice(["like", "dislike", "post"], n),
        "n": rng.integers(1, 4, n).astype(str),
    }).sort_values("ts")
    events.loc[events.index[10], "who"] = "GHOST"  # unknown account
    events.loc[events.index[500], "n"] = "-2"  # negative quantity
    events.loc[events.index[777], "ts"] = "not a time"
    if edited_day:
        events.loc[events["ts"].str.startswith(edited_day), "n"] = "9"
    events.iloc[:600].to_csv(folder / "events-1.csv", index=False)
    events.iloc[600:].to_csv(folder / "events-2.csv", index=False)
    return folder


def _mapping(folder: Path, *, streamed: bool) -> Path:
    usage_columns = {"account_id": "who", "occurred_at": "ts", "feature": "event", "quantity": "n", "user_id": "who"}
    usage = {"file": "events-*.csv", "columns": usage_columns} if streamed else {
        "query": 'SELECT who, ts, event, n, _source_file, _source_row FROM staging_events', "columns": usage_columns}
    mapping = {
        "version": 1,
        "staging": {} if streamed else {"events": {"file": "events-*.csv"}},
        "tables": {
            "accounts": {"file": "accounts.csv", "columns": {"account_id": "id", "created_at": "created"}},
            "usage": usage,
            "tickets": "absent",
            "surveys": "absent",
        },
    }
    path = folder / ("streamed.yaml" if streamed else "whole.yaml")
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return path


def _state(engine: sa.Engine) -> dict[str, pd.DataFrame]:
    usage = read_sql(engine, "SELECT * FROM usage").sort_values(["occurred_at", "account_id", "feature", "quantity"]).reset_index(drop=True)
    days = read_sql(engine, "SELECT * FROM usage_ingest_days ORDER BY activity_date").reset_index(drop=True)
    quarantine = read_sql(engine, "SELECT source, source_row, field, reason FROM quarantine WHERE table_name = 'usage' "
                                  "ORDER BY source, source_row, field").reset_index(drop=True)
    return {"usage": usage, "days": days, "quarantine": quarantine}


def test_streamed_usage_equals_the_whole_extract_read_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = _export(tmp_path / "export")
    whole = get_engine(f"duckdb:///{tmp_path / 'whole.duckdb'}")
    report_whole = ingest(whole, _mapping(folder, streamed=False), RUN_DATE)
    monkeypatch.setattr(ingest_module, "STREAM_CHUNK_ROWS", 70)  # many chunks, across two files
    streamed = get_engine(f"duckdb:///{tmp_path / 'streamed.duckdb'}")
    report_streamed = ingest(streamed, _mapping(folder, streamed=True), RUN_DATE)
    a, b = _state(whole), _state(streamed)
    pd.testing.assert_frame_equal(a["usage"], b["usage"])
    pd.testing.assert_frame_equal(a["days"], b["days"])  # per-day hashes add up across chunks
    pd.testing.assert_frame_equal(a["quarantine"], b["quarantine"])  # the same file rows, fields and reasons
    usage_whole = next(t for t in report_whole.tables if t.table == "usage")
    usage_streamed = next(t for t in report_streamed.tables if t.table == "usage")
    assert (usage_streamed.rows_read, usage_streamed.rows_loaded, usage_streamed.rows_quarantined) == \
           (usage_whole.rows_read, usage_whole.rows_loaded, usage_whole.rows_quarantined) == (1_000, 997, 3)
    assert not [t for t in sa.inspect(streamed).get_table_names() if t.startswith("load_")]  # the load table is gone


def test_a_streamed_reload_rewrites_only_the_changed_day(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "STREAM_CHUNK_ROWS", 128)
    engine = get_engine(f"duckdb:///{tmp_path / 'w.duckdb'}")
    ingest(engine, _mapping(_export(tmp_path / "v1"), streamed=True), RUN_DATE)
    before = _state(engine)["days"]
    ingest(engine, _mapping(_export(tmp_path / "v2", edited_day="2026-09-15"), streamed=True), RUN_DATE)
    after = _state(engine)
    changed = before.merge(after["days"], on="activity_date", suffixes=("_1", "_2"))
    changed = changed[changed["content_hash_1"] != changed["content_hash_2"]]
    assert list(pd.to_datetime(changed["activity_date"]).dt.strftime("%Y-%m-%d")) == ["2026-09-15"]
    day = after["usage"][after["usage"]["occurred_at"].dt.strftime("%Y-%m-%d") == "2026-09-15"]
    assert len(day) and (day["quantity"] == 9).all()


def test_a_bad_byte_deep_in_a_streamed_file_names_the_file_and_rows(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ingest_module, "STREAM_CHUNK_ROWS", 100)
    folder = _export(tmp_path / "export")
    data = (folder / "events-2.csv").read_bytes()
    (folder / "events-2.csv").write_bytes(data[: len(data) // 2] + b"\xff\xfe" + data[len(data) // 2:])
    engine = get_engine(f"duckdb:///{tmp_path / 'w.duckdb'}")
    with pytest.raises(ingest_module.SourceError, match=r"events-2.csv: not valid utf-8 after data row \d+"):
        ingest(engine, _mapping(folder, streamed=True), RUN_DATE)
    assert not sa.inspect(engine).has_table("usage")  # nothing loaded
    assert not [t for t in sa.inspect(engine).get_table_names() if t.startswith("load_")]
