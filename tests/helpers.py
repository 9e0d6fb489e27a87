"""Small helpers shared by tests (fixtures live in conftest.py files)."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import socket
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def copy_duckdb_warehouse(source_url: str, target: Path) -> str:
    """A private copy of a DuckDB warehouse file (with its WAL), for tests that write; returns its URL."""
    from churnflow.warehouse import get_engine

    source = Path(source_url.removeprefix("duckdb:///"))
    get_engine(source_url).dispose()  # DuckDB: release the file before copying it
    shutil.copyfile(source, target)  # not copy(): the source may be a read-only shared file
    if source.with_suffix(".duckdb.wal").exists():
        shutil.copyfile(source.with_suffix(".duckdb.wal"), Path(target).with_suffix(".duckdb.wal"))
    return f"duckdb:///{target}"


def copy_home(source: Path, target: Path) -> Path:
    """A private, writable copy of a churnflow home: warehouse, MLflow store and model artifacts.

    MLflow records absolute artifact locations (in its store and in each MLmodel file); they are
    rewritten to the copy, so a test that trains or loads in the copy never touches the source."""
    source, target = Path(source).resolve(), Path(target).resolve()
    shutil.copytree(source, target, copy_function=shutil.copyfile, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns("*.lock", ".complete"))
    old, new = source.as_uri(), target.as_uri()
    store = target / "mlflow.db"
    if store.exists():
        with sqlite3.connect(store) as conn:
            for (table,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
                for column in [row[1] for row in conn.execute(f'PRAGMA table_info("{table}")').fetchall() if row[2].upper() in ("TEXT", "VARCHAR") or "CHAR" in row[2].upper()]:
                    conn.execute(f'UPDATE "{table}" SET "{column}" = REPLACE("{column}", ?, ?) WHERE "{column}" LIKE ?',
                                 (old, new, f"%{old}%"))
        conn.close()
    for mlmodel in (target / "mlartifacts").rglob("MLmodel"):
        mlmodel.write_text(mlmodel.read_text(encoding="utf-8").replace(old, new), encoding="utf-8")
    return target


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes (xdist workers) on ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def build_once(shared: Path, name: str, build: Callable[[Path], None]) -> Path:
    """``shared/name``, built by ``build`` by the first process that asks and reused by the others.

    The first caller builds under a file lock; a finished build is marked and then made read-only,
    so a test that writes to it fails loudly instead of changing what other tests see."""
    target = shared / name
    with file_lock(shared / f"{name}.lock"):
        if not (target / ".complete").exists():
            if target.exists():  # an interrupted build
                make_writable(target)
                shutil.rmtree(target)
            target.mkdir(parents=True)
            build(target)
            (target / ".complete").touch()
            make_read_only(target)
    return target


def make_read_only(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o444)


def make_writable(root: Path) -> None:
    for path in root.rglob("*"):
        if path.is_file():
            path.chmod(0o644)


def source_digest(*packages: Path) -> str:
    """A short digest of the Python sources under ``packages``: a build made by other code is another build."""
    digest = hashlib.sha256()
    for package in packages:
        for path in sorted(Path(package).rglob("*.py")):
            digest.update(str(path.relative_to(package.parent)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def worker_shared_dir(basetemp: Path) -> Path:
    """A directory every xdist worker of this run shares (the parent of the workers' own basetemps)."""
    return basetemp.parent if os.environ.get("PYTEST_XDIST_WORKER") else basetemp
