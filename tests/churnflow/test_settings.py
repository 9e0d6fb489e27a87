"""Settings: embedded defaults, env and TOML overrides, secrets kept secret."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from churnflow.settings import Settings


def test_defaults_are_embedded_under_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHURNFLOW_CONFIG", raising=False)
    s = Settings()
    assert s.warehouse == f"duckdb:///{tmp_path / '.churnflow' / 'warehouse.duckdb'}"
    assert s.tracking_uri == f"sqlite:///{tmp_path / '.churnflow' / 'mlflow.db'}"
    assert s.crm == "local"


def test_toml_then_env_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "churnflow.toml"
    config.write_text('horizon_days = 60\nwarehouse_url = "postgresql+psycopg://u@h/db"\nred_threshold = 0.5\nyellow_threshold = 0.2\n')
    monkeypatch.setenv("CHURNFLOW_CONFIG", str(config))
    monkeypatch.setenv("CHURNFLOW_HORIZON_DAYS", "120")
    s = Settings()
    assert s.horizon_days == 120  # env beats the file
    assert s.warehouse == "postgresql+psycopg://u@h/db"  # file beats the default
    assert s.red_threshold == 0.5


def test_config_text_is_data_not_code(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "churnflow.toml"
    config.write_text('model_name = "__import__(\'os\').system(\'touch pwned\')"\n')
    monkeypatch.setenv("CHURNFLOW_CONFIG", str(config))
    monkeypatch.chdir(tmp_path)
    assert Settings().model_name.startswith("__import__")
    assert not (tmp_path / "pwned").exists()


def test_bad_values_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_YELLOW_THRESHOLD", "0.6")
    monkeypatch.setenv("CHURNFLOW_RED_THRESHOLD", "0.4")
    with pytest.raises(ValidationError, match="yellow_threshold"):
        Settings()


def test_secrets_do_not_show_in_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNFLOW_SF_PASSWORD", "hunter2-secret")
    monkeypatch.setenv("CHURNFLOW_SF_SECURITY_TOKEN", "tok-secret")
    s = Settings()
    assert s.sf_password is not None and s.sf_password.get_secret_value() == "hunter2-secret"
    assert "hunter2-secret" not in repr(s) and "tok-secret" not in str(s.model_dump())
