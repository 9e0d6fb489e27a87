"""HTTP plumbing: a threading HTTPS server whose handler hands every request to the app's
``dispatch`` and writes back its :class:`Response` (or drops the connection).
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any

from crm_sync.local.errors import ApiError

if TYPE_CHECKING:
    from crm_sync.local.server import LocalSalesforce

log = logging.getLogger(__name__)


@dataclass
class Response:
    """What ``dispatch`` answers: status, body and headers."""

    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), headers=headers or {})


def json_body(body: bytes) -> Any:
    """A request's JSON body; malformed JSON fails as Salesforce fails it."""
    try:
        return json.loads(body.decode("utf-8") or "null")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "TLSServer"

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib signature
        # Paths only: never headers (sessions) or bodies (passwords).
        log.debug("local CRM %s", format % args)

    def _handle(self) -> None:
        app = self.server.app
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        outcome = app.dispatch(self.command, self.path, dict(self.headers.items()), body)
        if outcome is None:  # dropped connection
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            return
        delay, response = outcome
        if delay:
            time.sleep(delay)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for key, value in response.headers.items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(response.body)

    do_GET = do_POST = do_PATCH = do_PUT = do_DELETE = do_HEAD = _handle


class TLSServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], app: "LocalSalesforce", context: ssl.SSLContext) -> None:
        self.app = app
        self.context = context
        super().__init__(address, _Handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        # Handshake in the worker thread, so one slow client cannot block accept().
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            log.debug("local CRM TLS handshake failed: %s", exc)
            return
        try:
            self.RequestHandlerClass(tls, client_address, self)
        finally:
            try:
                tls.close()
            except OSError:
                pass

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("local CRM connection error from %s", client_address, exc_info=True)
