"""The local CRM never pushes into a server it did not start for this home (issue #13, item 8)."""

from __future__ import annotations

from pathlib import Path

import pytest

from churnflow.settings import Settings
from crm_sync.client import ForeignLocalCrm, connect, local_crm
from crm_sync.local.server import LocalSalesforce
from tests.helpers import free_port


def test_a_foreign_server_on_the_port_is_refused_and_our_own_is_used(tmp_path: Path) -> None:
    port = free_port()
    ours = Settings(home=tmp_path / "ours", local_crm_port=port)
    theirs = Settings(home=tmp_path / "theirs", local_crm_port=port)
    server = LocalSalesforce(state_path=theirs.crm_dir / "crm.sqlite", port=port, cert_dir=theirs.crm_dir)
    server.start()
    try:
        with pytest.raises(ForeignLocalCrm, match=f"port {port} is taken by a server that is not the local CRM of"):
            with local_crm(ours):
                pass
        with local_crm(theirs) as started:  # the same home: the running server is its own, reuse it
            assert started is None
            assert connect(theirs).query("SELECT Id FROM Account")["totalSize"] == 0
    finally:
        server.stop()
    assert not (theirs.crm_dir / "instance").exists()


def test_a_stale_instance_file_does_not_vouch_for_another_server(tmp_path: Path) -> None:
    port = free_port()
    ours = Settings(home=tmp_path / "ours", local_crm_port=port)
    with local_crm(ours) as server:  # our server writes its token, then dies without cleaning up
        assert server is not None
        token = (ours.crm_dir / "instance").read_text()
    (ours.crm_dir / "instance").write_text(token)
    other = Settings(home=tmp_path / "other", local_crm_port=port)
    foreign = LocalSalesforce(state_path=other.crm_dir / "crm.sqlite", port=port, cert_dir=other.crm_dir)
    foreign.start()
    try:
        with pytest.raises(ForeignLocalCrm):
            with local_crm(ours):
                pass
    finally:
        foreign.stop()
