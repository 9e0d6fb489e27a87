"""A temporary Prefect server that cannot start is one clear line, not a page of traceback."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from flows.runtime import DEFAULT_STARTUP_TIMEOUT_SECONDS, STARTUP_TIMEOUT_ENV, configure_temporary_server


def test_generous_startup_timeout_unless_the_user_set_one(monkeypatch) -> None:
    monkeypatch.delenv(STARTUP_TIMEOUT_ENV, raising=False)
    assert configure_temporary_server() == DEFAULT_STARTUP_TIMEOUT_SECONDS >= 120
    monkeypatch.setenv(STARTUP_TIMEOUT_ENV, "45")
    assert configure_temporary_server() == 45


def test_a_server_that_never_starts_is_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect"), STARTUP_TIMEOUT_ENV: "0", "CHURNFLOW_HOME": str(tmp_path / "home")}
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.run([sys.executable, "-m", "churnflow.cli", "daily", "--as-of", "2026-11-01"], capture_output=True, text=True,
                          env=env, cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr + proc.stdout
    assert "temporary server did not start within 0 s" in " ".join(proc.stderr.split())
