"""``churnflow bench ingest``: load a raw event table streamed in chunks, beside reading it whole.

Prints figures, asserts nothing. A synthetic events export (one row per event, several
monthly files) is written once; each load runs in a child process so its peak memory is its
own: the streamed path (a ``file:`` usage source, read in chunks of ``STREAM_CHUNK_ROWS``)
and, for comparison, the same rows read whole (a ``query:`` over the staged files, the path
every non-streamed source takes).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

RUN_DATE = date(2026, 11, 1)


def write_events_export(folder: Path, events: int, accounts: int = 20_000, seed: int = 1) -> dict[str, int]:
    """An events-only export: accounts.csv and events-<month>.csv (epoch milliseconds), written in slices."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    ids = np.array([f"u{i:06d}" for i in range(accounts)])
    pd.DataFrame({"uid": ids, "signed_up": "2025-01-01T00:00:00Z"}).to_csv(folder / "accounts.csv", index=False)
    start = pd.Timestamp("2025-11-01").value // 1_000_000
    span = (pd.Timestamp(RUN_DATE).value // 1_000_000) - start
    kinds = np.array(["SessionStart", "PageView", "LikePost", "FriendAdded", "DislikePost", "FriendRemoved", "CreatePost", "Report"])
    written, step = 0, 1_000_000
    while written < events:
        n = min(step, events - written)
        ts = np.sort(start + rng.integers(0, span, n))
        part = pd.DataFrame({"event_ts": ts, "uid": rng.choice(ids, n), "event": rng.choice(kinds, n)})
        month = pd.to_datetime(part["event_ts"], unit="ms").dt.strftime("%Y-%m")
        for m, rows in part.groupby(month):
            target = folder / f"events-{m}.csv"
            rows.to_csv(target, index=False, mode="a", header=not target.exists())
        written += n
    return {"accounts": accounts, "events": events}


def _mapping(folder: Path, *, streamed: bool) -> Path:
    usage = {"account_id": "uid", "occurred_at": "event_ts", "feature": "event", "user_id": "uid"}
    mapping = {
        "version": 1, "options": {"epoch_unit": "ms"},
        "staging": {} if streamed else {"events": {"file": "events-*.csv"}},
        "tables": {
            "accounts": {"file": "accounts.csv", "columns": {"account_id": "uid", "created_at": "signed_up"},
                         "constants": {"name": "user", "segment": "self_serve"}},
            "usage": {"file": "events-*.csv", "columns": usage} if streamed else
                     {"query": "SELECT uid, event_ts, event, _source_file, _source_row FROM staging_events", "columns": usage},
            "tickets": "absent", "surveys": "absent",
        },
    }
    path = folder / ("streamed.yaml" if streamed else "whole.yaml")
    path.write_text(yaml.safe_dump(mapping), encoding="utf-8")
    return path


def _load(mapping: str, warehouse: str, queue: multiprocessing.Queue) -> None:
    from ingest.load import ingest
    from churnflow.warehouse import get_engine

    start = time.perf_counter()
    report = ingest(get_engine(warehouse), mapping, RUN_DATE)
    seconds = time.perf_counter() - start
    usage = next(t for t in report.tables if t.table == "usage")
    queue.put({"seconds": round(seconds, 1), "rows": usage.rows_loaded, "rows_per_s": int(usage.rows_loaded / seconds),
               "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024})


def _timed(mapping: Path, warehouse: Path) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    proc = ctx.Process(target=_load, args=(str(mapping), f"duckdb:///{warehouse}", queue))
    proc.start()
    result = queue.get()
    proc.join()
    return result


def bench_ingest(work_dir: Path, *, events: int, whole: bool = True) -> dict[str, object]:
    """Write the export, then time the streamed load (and the whole-read load unless ``whole=False``)."""
    from ingest.load import STREAM_CHUNK_ROWS

    export = work_dir / "export"
    written = write_events_export(export, events)
    out: dict[str, object] = {**written, "chunk_rows": STREAM_CHUNK_ROWS,
                              "streamed": _timed(_mapping(export, streamed=True), work_dir / "streamed.duckdb")}
    if whole:
        out["read_whole"] = _timed(_mapping(export, streamed=False), work_dir / "whole.duckdb")
    return out
