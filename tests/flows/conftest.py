"""Flow test fixtures: one Prefect test server per session (it takes 10-25 s to start),
and local notification receivers (an HTTP webhook and an SMTP server with login)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from tests.helpers import free_port


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=180):
        yield




def pytest_configure(config: pytest.Config) -> None:
    # Registered by pytest-xdist; declared here too so `-p no:xdist` runs pass --strict-markers.
    config.addinivalue_line("markers", "xdist_group(name): run these tests in one xdist worker")


WEBHOOK_SECRET = "T000-hook-secret-4f9c"
SMTP_PASSWORD = "smtp-pass-8d1e"


def set_failure_channels(monkeypatch: pytest.MonkeyPatch, webhook_port: int, smtp_port: int, recipients: list[str],
                         security: str | None = None) -> None:
    """Point churnflow's failure notifications at a webhook and an SMTP relay on loopback, with login."""
    monkeypatch.setenv("CHURNFLOW_NOTIFY_WEBHOOK_URL", f"http://127.0.0.1:{webhook_port}/hooks/{WEBHOOK_SECRET}")
    monkeypatch.setenv("CHURNFLOW_SMTP_HOST", "127.0.0.1")
    monkeypatch.setenv("CHURNFLOW_SMTP_PORT", str(smtp_port))
    if security is not None:
        monkeypatch.setenv("CHURNFLOW_SMTP_SECURITY", security)
    monkeypatch.setenv("CHURNFLOW_SMTP_USERNAME", "ops")
    monkeypatch.setenv("CHURNFLOW_SMTP_PASSWORD", SMTP_PASSWORD)
    monkeypatch.setenv("CHURNFLOW_NOTIFY_RECIPIENTS", json.dumps(recipients))


class Receiver:
    def __init__(self) -> None:
        self.posts: list[dict] = []
        self.mails: list[object] = []
        self.logins: list[tuple[str, str]] = []


@pytest.fixture
def receivers(monkeypatch: pytest.MonkeyPatch) -> Iterator[Receiver]:
    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    got = Receiver()

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.posts.append({"path": self.path, "json": json.loads(body)})
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    http = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=http.serve_forever, daemon=True).start()

    class Mailbox:
        async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201, N802
            got.mails.append(envelope)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):  # noqa: ANN001, ANN202
        assert isinstance(auth_data, LoginPassword)
        got.logins.append((auth_data.login.decode(), auth_data.password.decode()))
        return AuthResult(success=auth_data.password.decode() == SMTP_PASSWORD)

    smtp_port = free_port()
    smtp = Controller(Mailbox(), hostname="127.0.0.1", port=smtp_port, authenticator=authenticator, auth_require_tls=False)
    smtp.start()
    set_failure_channels(monkeypatch, http.server_address[1], smtp_port, ["oncall@example.com", "cs-lead@example.com"], security="none")
    try:
        yield got
    finally:
        smtp.stop()
        http.shutdown()
        http.server_close()
