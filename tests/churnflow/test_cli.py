"""Every stage runs alone from the shell, in order, on a fresh home."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from typer.testing import CliRunner

from churnflow.cli import app
from churnflow.settings import Settings
from churnflow.warehouse import get_engine, read_sql
from tests.helpers import free_port

runner = CliRunner()


class MailSink:
    def __init__(self) -> None:
        self.envelopes: list = []

    async def handle_DATA(self, server, session, envelope) -> str:  # noqa: N802 - aiosmtpd hook name
        self.envelopes.append(envelope)
        return "250 OK"




def invoke(*args: str) -> str:
    result = runner.invoke(app, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def test_help_lists_every_stage() -> None:
    output = invoke("--help")
    for command in ("demo-data", "features", "train", "score", "outreach", "sync", "digest", "daily", "demo", "crm-server", "docs"):
        assert command in output


def test_each_stage_runs_alone(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from crm_sync.client import local_crm

    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CHURNFLOW_LOCAL_CRM_PORT", str(free_port()))
    invoke("demo-data", "--accounts", "300", "--days", "540", "--seed", "4")
    invoke("features", "--as-of", "2026-10-01")
    assert "roc_auc" in invoke("train")
    invoke("score", "--as-of", "2026-11-01")
    invoke("outreach", "--as-of", "2026-11-01")
    settings = Settings()
    with local_crm(settings):
        assert "dry run" in invoke("sync", "--as-of", "2026-11-01", "--dry-run")
        invoke("sync", "--as-of", "2026-11-01")
    sink = MailSink()
    controller = Controller(sink, hostname="127.0.0.1", port=free_port())
    controller.start()
    try:
        monkeypatch.setenv("CHURNFLOW_SMTP_HOST", "127.0.0.1")
        monkeypatch.setenv("CHURNFLOW_SMTP_PORT", str(controller.port))
        monkeypatch.setenv("CHURNFLOW_SMTP_SECURITY", "none")
        monkeypatch.setenv("CHURNFLOW_SMTP_RECIPIENTS", '["ceo@example.com", "cro@example.com"]')
        assert "emailed to 2" in invoke("digest", "--week-ending", "2026-11-01")
    finally:
        controller.stop()
    assert len(sink.envelopes) == 1 and sorted(sink.envelopes[0].rcpt_tos) == ["ceo@example.com", "cro@example.com"]

    engine = get_engine(settings.warehouse)
    counts = {t: int(read_sql(engine, f"SELECT COUNT(*) AS n FROM {t}").loc[0, "n"]) for t in ("account_features", "account_scores", "outreach_tasks")}
    assert all(n > 0 for n in counts.values()), counts
    assert list((tmp_path / "home" / "digests").glob("digest-2026-11-01.html"))


def test_a_stage_without_its_inputs_says_what_to_run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    invoke("demo-data", "--accounts", "50", "--days", "200", "--seed", "1")
    result = runner.invoke(app, ["outreach", "--as-of", "2026-11-01"])
    assert result.exit_code != 0
    assert "churnflow score" in result.output or "account_scores" in str(result.exception)


def test_validate_and_ingest_a_foreign_export(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import subprocess
    import sys

    export = tmp_path / "export"
    subprocess.run([sys.executable, str(Path(__file__).parents[2] / "examples" / "foreign_export" / "make_export.py"), str(export)], check=True, capture_output=True)
    monkeypatch.setenv("CHURNFLOW_HOME", str(tmp_path / "home"))
    mapping = str(export / "sources.yaml")
    output = invoke("validate", "--mapping", mapping, "--run-date", "2026-11-01")
    assert "quarantined" in output.lower() or "valid" in output
    invoke("ingest", "--mapping", mapping, "--run-date", "2026-11-01")
    engine = get_engine(Settings().warehouse)
    assert int(read_sql(engine, "SELECT COUNT(*) AS n FROM quarantine").loc[0, "n"]) > 0
    failed = runner.invoke(app, ["ingest", "--mapping", mapping, "--run-date", "2026-11-01", "--max-bad-share", "0.0000001"])
    assert failed.exit_code == 1 and "broke its contract" in failed.output
