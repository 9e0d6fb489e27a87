"""What a user can type wrong gets one clear line and a non-zero exit, never a traceback (issue #13, item 9)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from churnflow.demo_data import write_book
from churnflow.settings import Settings
from churnflow.warehouse import get_engine


def _cli(home: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full = {**os.environ, "CHURNFLOW_HOME": str(home), "COLUMNS": "250", **env}
    full.pop("CHURNFLOW_WAREHOUSE_URL", None)
    return subprocess.run([sys.executable, "-m", "churnflow.cli", *args], capture_output=True, text=True, env=full, cwd=home, timeout=300)


def _one_clear_line(proc: subprocess.CompletedProcess, *needles: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text and "╭─" not in text, text
    assert "error:" in proc.stderr, text
    for needle in needles:
        assert needle in " ".join(text.split()), text


@pytest.fixture(scope="module")
def book_home(tmp_path_factory: pytest.TempPathFactory, small_book: dict) -> Path:
    home = tmp_path_factory.mktemp("cli-errors")
    engine = get_engine(Settings(home=home).warehouse)
    write_book(engine, {k: small_book[k] for k in ("accounts", "subscriptions")})
    engine.dispose()
    return home


def test_unknown_account_and_bad_band(book_home: Path) -> None:
    _one_clear_line(_cli(book_home, "override", "--account", "NOPE", "--band", "red", "--reason", "x", "--until", "2027-01-01"),
                    "no account_id 'NOPE'")
    _one_clear_line(_cli(book_home, "override", "--account", "NOPE", "--band", "purple", "--reason", "x", "--until", "2027-01-01"),
                    "green, yellow, red", "'purple'")


def test_broken_playbooks_file_names_file_and_line(book_home: Path, tmp_path: Path) -> None:
    broken = tmp_path / "playbooks.yaml"
    broken.write_text("playbooks:\n  - name: x\n    when: {all: [\n", encoding="utf-8")
    proc = _cli(book_home, "outreach", "--as-of", "2026-11-01", CHURNFLOW_PLAYBOOKS_FILE=str(broken))
    # outreach needs scores first; the playbooks are read only then, so read them directly too
    from outreach.playbooks import PlaybookError, load_playbooks

    with pytest.raises(PlaybookError, match=r"playbooks.yaml: not valid YAML at line \d+"):
        load_playbooks(broken)
    _one_clear_line(proc)


def test_missing_table_is_named(tmp_path: Path) -> None:
    _one_clear_line(_cli(tmp_path, "features", "--as-of", "2026-11-01"), "no table")


def test_a_locked_duckdb_warehouse_waits_then_fails_clearly(book_home: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time; c = duckdb.connect(sys.argv[1]); print('held', flush=True); time.sleep(60)",
                               str(book_home / "warehouse.duckdb")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        proc = _cli(book_home, "override", "--account", "NOPE", "--band", "red", "--reason", "x", "--until", "2027-01-01",
                    CHURNFLOW_WAREHOUSE_LOCK_WAIT_SECONDS="2")
        _one_clear_line(proc, "is locked by another process", f"PID {holder.pid}")
    finally:
        holder.kill()
        holder.wait()


def test_serve_events_refuses_a_port_out_of_range(tmp_path: Path) -> None:
    proc = _cli(tmp_path, "serve-events", "--port", "99999", CHURNFLOW_EVENTS_SECRET="s")
    text = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "Traceback" not in text and "--port" in text, text
