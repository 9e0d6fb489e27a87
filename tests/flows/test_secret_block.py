"""The Salesforce password can come from a Prefect Secret block instead of the environment."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnflow.settings import Settings
from crm_sync.client import connect
from crm_sync.local.server import LocalSalesforce

pytestmark = pytest.mark.xdist_group("prefect")


def test_password_from_a_prefect_secret_block(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    from prefect.blocks.system import Secret

    caplog.set_level("DEBUG")
    with LocalSalesforce(cert_dir=tmp_path / "crm") as server:
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(server.cert_path))
        Secret(value=server.password).save("churnflow-sf-password", overwrite=True)
        settings = Settings(home=tmp_path, crm="salesforce", sf_domain=server.domain, sf_username=server.username,
                            sf_security_token=server.security_token, sf_secret_block="churnflow-sf-password")
        assert settings.sf_password is None
        sf = connect(settings)
        assert sf.query("SELECT COUNT() FROM User")["totalSize"] >= 1
        Secret(value="wrong-password").save("churnflow-sf-password", overwrite=True)
        with pytest.raises(Exception, match="(?i)invalid|login|auth"):
            connect(settings)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert server.password not in logged and "wrong-password" not in logged
