"""``churnflow bench features``: how long a year of monthly snapshots and one new day take.

Prints figures, asserts nothing. Each build runs in a child process so its peak memory
is its own (the generator's is not counted).
"""

from __future__ import annotations

import multiprocessing
import resource
import time
import uuid
from datetime import date, timedelta
from pathlib import Path

import sqlalchemy as sa

from churnflow.warehouse import get_engine, read_sql
from features.labels import month_starts


def _build(url: str, days: list[date], connect_args: dict, queue: multiprocessing.Queue) -> None:
    from features.build import materialize_features

    engine = sa.create_engine(url, connect_args=connect_args)
    start = time.perf_counter()
    rows = len(materialize_features(engine, days))
    queue.put((time.perf_counter() - start, rows, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024))


def _timed_build(url: str, days: list[date], connect_args: dict) -> dict[str, float]:
    ctx = multiprocessing.get_context("spawn")
    queue: multiprocessing.Queue = ctx.Queue()
    proc = ctx.Process(target=_build, args=(url, days, connect_args, queue))
    proc.start()
    proc.join()
    if proc.exitcode != 0 or queue.empty():
        raise RuntimeError(f"feature build for the benchmark failed in its child process (exit code {proc.exitcode})")
    seconds, rows, peak_mb = queue.get()
    return {"seconds": round(seconds, 2), "feature_rows": rows, "peak_rss_mb": peak_mb}


def bench_features(work_dir: Path, *, accounts: int, days: int, seed: int = 5, postgres_url: str | None = None) -> dict[str, object]:
    """Generate a book, then time a full build of 12 monthly snapshots and one incremental day."""
    from churnflow.demo_data import write_demo_book

    if postgres_url:
        schema = f"cf_bench_{uuid.uuid4().hex[:8]}"
        admin = sa.create_engine(postgres_url)
        with admin.begin() as conn:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        connect_args = {"options": f"-csearch_path={schema}"}
        url, engine = postgres_url, sa.create_engine(postgres_url, connect_args=connect_args)
    else:
        work_dir.mkdir(parents=True, exist_ok=True)
        path = work_dir / f"bench-{accounts}-{days}-{seed}.duckdb"
        path.unlink(missing_ok=True)
        connect_args, url = {}, f"duckdb:///{path}"
        engine = get_engine(url)
    try:
        start = time.perf_counter()
        counts = write_demo_book(engine, accounts=accounts, days=days, seed=seed)
        generate_s = time.perf_counter() - start
        last = read_sql(engine, "SELECT MAX(occurred_at) AS t FROM usage").loc[0, "t"].date() + timedelta(days=1)
        snapshots = month_starts(last - timedelta(days=365), last)[-12:]
        engine.dispose()  # DuckDB allows one process to hold the file: the builds run in children
        full = _timed_build(url, snapshots, connect_args)
        incremental = _timed_build(url, [last], connect_args)
        return {
            "backend": engine.dialect.name,
            "accounts": counts["accounts"],
            "usage_rows": counts["usage"],
            "generate_and_load_s": round(generate_s, 1),
            "full_build": {**full, "snapshots": len(snapshots), "usage_rows_per_s": round(counts["usage"] / full["seconds"])},
            "incremental_day": incremental,
            "incremental_share_of_full": round(incremental["seconds"] / full["seconds"], 3),
        }
    finally:
        if postgres_url:
            engine.dispose()
            with admin.begin() as conn:
                conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
