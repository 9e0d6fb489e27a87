"""Small helpers shared by tests (fixtures live in conftest.py files)."""

from __future__ import annotations

import socket
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_duckdb_warehouse(source_url: str, target: Path) -> str:
    """A private copy of a DuckDB warehouse file (with its WAL), for tests that write; returns its URL."""
    import shutil

    from churnflow.warehouse import get_engine

    source = Path(source_url.removeprefix("duckdb:///"))
    get_engine(source_url).dispose()  # DuckDB: release the file before copying it
    shutil.copy(source, target)
    if source.with_suffix(".duckdb.wal").exists():
        shutil.copy(source.with_suffix(".duckdb.wal"), Path(target).with_suffix(".duckdb.wal"))
    return f"duckdb:///{target}"
