"""``churnflow bench features``: a year of monthly snapshots from scratch, then one new day.

Prints figures, asserts nothing. The book is written without its last day of usage; the
full build rolls all usage history up and builds 12 monthly snapshots; then the held-back
day arrives (appended as a loader would) and the incremental run rolls it and builds that
day's features. Each build runs in a child process so its peak memory is its own (the
generator's is not counted).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
import uuid
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import sqlalchemy as sa

from features.labels import month_starts


def _build(url: str, days: list[date], connect_args: dict, queue: multiprocessing.Queue) -> None:
    from features.build import materialize_features, refresh_derived

    engine = sa.create_engine(url, connect_args=connect_args)
    start = time.perf_counter()
    rolled = refresh_derived(engine, min(days))
    derived_s = time.perf_counter() - start
    rows = len(materialize_features(engine, days, refresh=False))
    queue.put({
        "seconds": round(time.perf_counter() - start, 2),
        "rollup_and_comments_s": round(derived_s, 2),
        "usage_rows_rolled": rolled.source_rows,
        "days_rolled": rolled.days_rolled,
        "feature_rows": rows,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024,
    })


def _timed_build(url: str, days: list[date], connect_args: dict) -> dict[str, Any]:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    proc = ctx.Process(target=_build, args=(url, days, connect_args, queue))
    proc.start()
    result = queue.get()  # before join: a child blocks on exit until its queue is drained
    proc.join()
    if proc.exitcode != 0:
        raise RuntimeError(f"feature build for the benchmark failed in its child process (exit code {proc.exitcode})")
    return result


def bench_features(work_dir: Path, *, accounts: int, days: int, usage_density: float = 1.0, seed: int = 5,
                   postgres_url: str | None = None) -> dict[str, object]:
    """Generate a book, time a full build of 12 monthly snapshots, then one incremental day."""
    from churnflow import schema
    from churnflow.demo_data import book_from_world, iter_usage_chunks, simulate_world, write_book
    from churnflow.warehouse import append_rows, get_engine

    if postgres_url:
        bench_schema = f"cf_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(postgres_url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{bench_schema}"'))
        connect_args = {"options": f"-csearch_path={bench_schema}"}
        url, engine = postgres_url, sa.create_engine(postgres_url, connect_args=connect_args)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"bench-{accounts}-{days}-{seed}-{usage_density}.duckdb"
        path.unlink(missing_ok=True)
        connect_args, url = {}, f"duckdb:///{path}"
        engine = get_engine(url)
    try:
        start = time.perf_counter()
        world = simulate_world(accounts=accounts, days=days, seed=seed)
        new_day = world.window_start + timedelta(days=world.days - 1)
        held_back: list[pd.DataFrame] = []

        def all_but_the_last_day() -> Any:
            for chunk in iter_usage_chunks(world, density=usage_density):
                late = chunk["occurred_at"] >= pd.Timestamp(new_day)
                held_back.append(chunk[late])
                yield chunk[~late]

        counts = write_book(engine, book_from_world(world, include_usage=False), usage_chunks=all_but_the_last_day())
        generate_s = time.perf_counter() - start
        snapshots = month_starts(new_day - timedelta(days=365), new_day)[-12:]
        engine.dispose()  # DuckDB allows one process to hold the file: the builds run in children
        full = _timed_build(url, snapshots, connect_args)
        arriving = schema.coerce(pd.concat(held_back, ignore_index=True), schema.USAGE)
        append_rows(engine, "usage", arriving)
        engine.dispose()
        incremental = _timed_build(url, [new_day + timedelta(days=1)], connect_args)
        return {
            "backend": engine.dialect.name,
            "accounts": counts["accounts"],
            "usage_rows": counts["usage"] + len(arriving),
            "generate_and_load_s": round(generate_s, 1),
            "full_build": {**full, "snapshots": len(snapshots), "usage_rows_per_s": round(counts["usage"] / full["seconds"])},
            "incremental_day": {**incremental, "new_usage_rows": len(arriving)},
            "incremental_share_of_full": round(incremental["seconds"] / full["seconds"], 3),
        }
    finally:
        if postgres_url:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{bench_schema}" CASCADE'))
            admin.dispose()
