"""A Salesforce-compatible HTTPS server for the demo and the tests.

No Salesforce org is reachable from CI or a laptop demo, so churnflow ships the part of
Salesforce it talks to: SOAP/OAuth login, SOQL query/queryAll with pagination, sObject
REST, composite sObject collections, Bulk API 2.0 ingest, describe and limits. It is
deliberately as strict as Salesforce (unknown fields, restricted picklists, lengths,
required fields, malformed ids all fail with Salesforce's error codes and JSON shapes),
because a lenient fake lets bugs through to production. Faults (request limits, expired
sessions, 503s, slow responses, dropped connections, failing bulk rows) can be injected
per test so the client's retry logic is exercised against real HTTP.

simple-salesforce always builds ``https://{domain}.salesforce.com/services/Soap/u/{v}``
login URLs, so the server speaks TLS with a self-signed certificate and accepts a login at
any path ending in ``/services/Soap/u/<version>``: ``domain="127.0.0.1:PORT/local"`` then
makes the client log in at ``https://127.0.0.1:PORT/local.salesforce.com/services/...``.

The parts live in modules of this package, one concern each: :mod:`~crm_sync.local.httpd`
(HTTPS server and handler), :mod:`~crm_sync.local.login`, :mod:`~crm_sync.local.sobjects`
(sObject REST and composite), :mod:`~crm_sync.local.soql_engine`,
:mod:`~crm_sync.local.bulk_jobs` (Bulk API 2.0), :mod:`~crm_sync.local.faults`,
:mod:`~crm_sync.local.tls` (certificate and instance token), :mod:`~crm_sync.local.page`
(the HTML view), :mod:`~crm_sync.local.storage` and :mod:`~crm_sync.local.schema`. This
module assembles them into :class:`LocalSalesforce`, routes requests, and runs the server
(``python -m crm_sync.local.server --port 8765 --state PATH``).
"""

from __future__ import annotations

import argparse
import logging
import re
import secrets
import sqlite3
import ssl
import threading
import time
from collections import Counter, OrderedDict
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from crm_sync.local.bulk_jobs import BulkIngest, BulkJob
from crm_sync.local.errors import ApiError, RecordError
from crm_sync.local.faults import FaultBook
from crm_sync.local.httpd import Response, TLSServer, json_body, json_response
from crm_sync.local.login import Login
from crm_sync.local.page import StatusPage
from crm_sync.local.schema import API_VERSION, build_schema
from crm_sync.local.sobjects import SObjectRest
from crm_sync.local.tls import certificate_file, ensure_certificate, instance_file

log = logging.getLogger(__name__)


MAX_URI_LENGTH = 16384
DAILY_API_LIMIT = 100000

#: Public names of this module that live in its parts (callers import them from here).
__all__ = ["API_VERSION", "MAX_URI_LENGTH", "LocalSalesforce", "build_schema", "certificate_file", "instance_file",
           "main", "serve_until_signalled"]


class LocalSalesforce(SObjectRest, BulkIngest, Login, StatusPage):
    """A local, strict, fault-injectable Salesforce org over HTTPS.

    ``state_path`` (SQLite) keeps records across restarts; without it the org lives in
    memory. ``port=0`` picks a free port. The demo credentials are :attr:`username`,
    :attr:`password` and :attr:`security_token`.
    """

    username = "integration@churnflow.local"
    password = "churnflow-local-demo"
    security_token = "LOCALTOKEN0000"
    consumer_key = "churnflow-local-consumer"

    def __init__(
        self,
        state_path: Path | None = None,
        port: int = 0,
        cert_dir: Path | None = None,
        page_size: int = 2000,
        *,
        host: str = "127.0.0.1",
        api_version: str = API_VERSION,
    ) -> None:
        self.state_path = Path(state_path) if state_path else None
        self.cert_dir = Path(cert_dir) if cert_dir else (
            self.state_path.parent if self.state_path else Path.home() / ".churnflow" / "crm")
        self.port = port
        self.host = host
        self.page_size = page_size
        self.api_version = api_version
        self.schema = build_schema()
        self.faults = FaultBook()
        self.api_calls: Counter[str] = Counter()
        self.request_log: list[tuple[str, str, int]] = []
        self._lock = threading.RLock()
        self._data: dict[str, OrderedDict[str, dict[str, Any]]] = {k: OrderedDict() for k in self.schema}
        self._counters: Counter[str] = Counter()
        self._sessions: set[str] = set()
        self._cursors: OrderedDict[str, tuple[list[dict[str, Any]], int]] = OrderedDict()
        self._jobs: dict[str, BulkJob] = {}
        self._dirty: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self._seq = 0
        # Text compares case-insensitively, as in SOQL; ids, dates and datetimes compare exactly.
        self._text_fields = {f.name for s in self.schema.values() for f in s.fields.values()
                             if f.type in ("string", "picklist", "textarea")}
        self._db: sqlite3.Connection | None = None
        self._httpd: TLSServer | None = None
        self._thread: threading.Thread | None = None
        self.cert_path, self.key_path = ensure_certificate(self.cert_dir, host)
        self._open_state()
        if not any(r.get("Username") == self.username for r in self._data["user"].values()):
            self.seed("User", [{"Username": self.username, "Email": self.username, "FirstName": "Churnflow",
                                "LastName": "Integration", "IsActive": True}])
        self.integration_user_id = next(
            i for i, r in self._data["user"].items() if r.get("Username") == self.username)

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> str:
        """Start serving in a background thread; returns the base URL."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert_path, self.key_path)
        self._httpd = TLSServer((self.host, self.port), self, context)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="local-salesforce", daemon=True)
        self._thread.start()
        # Who is this server: a client holding the same crm_dir reads the token from the file and
        # checks it against /local/instance, so it never pushes into another home's CRM.
        self.instance_token = secrets.token_hex(16)
        instance_file(self.cert_dir).write_text(self.instance_token, encoding="utf-8")
        log.info("local Salesforce-compatible server listening on %s", self.base_url)
        return self.base_url

    def stop(self) -> None:
        token = getattr(self, "instance_token", None)
        if token and instance_file(self.cert_dir).exists() and instance_file(self.cert_dir).read_text(encoding="utf-8") == token:
            instance_file(self.cert_dir).unlink()
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        with self._lock:
            if self._db is not None:
                self._flush()
                self._db.close()
                self._db = None

    def __enter__(self) -> "LocalSalesforce":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        return f"https://{self.host}:{self.port}"

    @property
    def domain(self) -> str:
        """What to pass as simple-salesforce's ``domain`` to log in here."""
        return f"{self.host}:{self.port}/local"

    def expire_sessions(self) -> None:
        """Invalidate every session, as Salesforce does when a session times out."""
        with self._lock:
            self._sessions.clear()

    # -- dispatch --------------------------------------------------------------------------
    def dispatch(self, method: str, raw_path: str, headers: dict[str, str], body: bytes) -> tuple[float, Response] | None:
        """Handle one HTTP request; None means 'drop the connection'."""
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        query = parse_qs(parts.query, keep_blank_values=True)
        endpoint = self._endpoint_kind(method, path)
        if path == "/local/instance" and method == "GET":  # churnflow's identity check: not an API call, never faulted
            return 0.0, self._finish(json_response(200, {"instance": getattr(self, "instance_token", None)}), method, path)
        with self._lock:
            self.api_calls["total"] += 1
            self.api_calls[endpoint] += 1
        fault = self.faults.take(method, endpoint, path, ("limit", "expired", "unavailable", "drop", "error", "slow", "late"))
        delay = 0.0
        if fault is not None:
            log.debug("local CRM injecting %s fault on %s %s", fault.kind, method, path)
            if fault.kind == "late":
                time.sleep(fault.delay)  # not holding the lock: the client's other calls go on meanwhile
            if fault.kind == "drop" and not fault.after:
                return None
            if fault.kind == "limit":
                return 0.0, self._finish(json_response(403, [{"message": "TotalRequests Limit exceeded.", "errorCode": "REQUEST_LIMIT_EXCEEDED"}]), method, path)
            if fault.kind == "expired":
                self.expire_sessions()
                return 0.0, self._finish(json_response(401, [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}]), method, path)
            if fault.kind == "unavailable":
                page = b"<!DOCTYPE html><html><head><title>Service Unavailable</title></head><body>Service Unavailable<br>Please try again later.</body></html>"
                return 0.0, self._finish(Response(503, page, "text/html"), method, path)
            if fault.kind == "error":
                return 0.0, self._finish(json_response(fault.status, [{"message": fault.message, "errorCode": fault.error_code}]), method, path)
            if fault.kind == "slow":
                delay = fault.delay
        try:
            if len(raw_path) > MAX_URI_LENGTH:
                raise ApiError(414, "URI_TOO_LONG", f"Request-URI Too Long (max {MAX_URI_LENGTH} characters)")
            response = self._route(method, parts.path, query, headers, body, endpoint)
        except ApiError as exc:
            response = json_response(exc.status, exc.body())
        except RecordError as exc:
            response = json_response(*self._record_error_status(exc))
        except Exception:  # a server bug must look like Salesforce's 500, and be visible in logs
            log.exception("local CRM failed on %s %s", method, path)
            response = json_response(500, [{"message": "An unexpected error occurred.", "errorCode": "UNKNOWN_EXCEPTION"}])
        finally:
            with self._lock:
                self._flush()
        response = self._finish(response, method, path)
        if fault is not None and fault.kind in ("drop", "late"):
            return None
        return delay, response

    @staticmethod
    def _record_error_status(exc: RecordError) -> tuple[int, list[dict[str, Any]]]:
        api = exc.as_api_error()
        return api.status, api.body()

    def _finish(self, response: Response, method: str, path: str) -> Response:
        with self._lock:
            self.request_log.append((method, path, response.status))
            used = self.api_calls["total"]
        response.headers.setdefault("Sforce-Limit-Info", f"api-usage={used}/{DAILY_API_LIMIT}")
        return response

    @staticmethod
    def _endpoint_kind(method: str, path: str) -> str:
        if re.search(r"/services/Soap/u/[\d.]+/?$", path) or path.endswith("/services/oauth2/token"):
            return "login"
        m = re.match(r"^/services/data/v[\d.]+/([^/]+)(?:/(.*))?$", path)
        if not m:
            return "page" if path in ("/", "/index.html") else "other"
        head, rest = m.group(1), m.group(2) or ""
        if head in ("query", "queryAll"):
            return "query"
        if head == "composite":
            return "composite"
        if head == "jobs":
            return "bulk2"
        if head == "limits":
            return "limits"
        if head == "sobjects":
            if rest.endswith("/describe") or rest in ("", "describe"):
                return "describe"
            return "sobject"
        return "other"

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes, endpoint: str) -> Response:
        """Route by the raw (percent-encoded) ``path``."""
        if endpoint == "login":
            return self._login(path, body, headers)
        if path.startswith("/local/seed/") and method == "POST":
            # churnflow-only (not a Salesforce API): mirror warehouse accounts/users into the local org.
            self._auth(headers)
            payload = json_body(body)
            try:
                ids = self.seed(path.rsplit("/", 1)[-1], payload.get("records", []), skip_existing=True)
            except ValueError as exc:
                raise ApiError(400, "INVALID_INPUT", str(exc)) from None
            return json_response(200, {"ids": ids})
        if endpoint == "page" and method == "GET":
            return Response(200, self.render_page().encode("utf-8"), "text/html; charset=utf-8")
        if path.rstrip("/") == "/services/data" and method == "GET":
            return json_response(200, [{"label": "Winter '24", "url": f"/services/data/v{self.api_version}", "version": self.api_version}])
        m = re.match(r"^/services/data/v([\d.]+)/(.*)$", path)
        if not m:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        version, rest = m.group(1), m.group(2).strip("/")
        self._auth(headers)
        # ``path`` is still percent-encoded: split first, so an encoded '/' stays inside its segment.
        segs = [unquote(seg) for seg in rest.split("/")] if rest else []
        if not segs:
            return json_response(200, {k: f"/services/data/v{version}/{k}" for k in ("sobjects", "query", "queryAll", "composite", "jobs", "limits")})
        head = segs[0]
        with self._lock:
            if head in ("query", "queryAll") and method == "GET":
                if len(segs) == 2:
                    return self._query_more(segs[1], version, head)
                text = (query.get("q") or [""])[0]
                batch = self._batch_size(headers)
                return self._query(text, version, include_deleted=head == "queryAll", batch_size=batch, head=head)
            if head == "limits" and method == "GET":
                used = self.api_calls["total"]
                return json_response(200, {
                    "DailyApiRequests": {"Max": DAILY_API_LIMIT, "Remaining": max(DAILY_API_LIMIT - used, 0)},
                    "DailyBulkV2QueryJobs": {"Max": 10000, "Remaining": 10000},
                    "DailyBulkApiBatches": {"Max": 15000, "Remaining": 15000 - len(self._jobs)},
                    "DataStorageMB": {"Max": 1024, "Remaining": 1000},
                })
            if head == "sobjects":
                return self._sobjects(method, segs[1:], query, body, version)
            if head == "composite" and len(segs) >= 2 and segs[1] == "sobjects":
                return self._composite(method, segs[2:], query, body, version)
            if head == "jobs" and len(segs) >= 2 and segs[1] == "ingest":
                return self._bulk(method, segs[2:], body, headers, version)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _batch_size(self, headers: dict[str, str]) -> int:
        opts = next((v for k, v in headers.items() if k.lower() == "sforce-query-options"), "")
        m = re.search(r"batchSize=(\d+)", opts)
        if m:
            return max(200, min(2000, int(m.group(1)), self.page_size))
        return self.page_size


def main(argv: list[str] | None = None) -> None:
    """``python -m crm_sync.local.server --port 8765 --state PATH``: serve in the foreground."""
    parser = argparse.ArgumentParser(description="churnflow's local Salesforce-compatible HTTPS server")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--state", type=Path, default=None, help="SQLite file that persists the org's records")
    parser.add_argument("--cert-dir", type=Path, default=None, help="where the self-signed certificate is cached")
    parser.add_argument("--host", default="127.0.0.1")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = LocalSalesforce(state_path=args.state, port=args.port, cert_dir=args.cert_dir, host=args.host)
    url = server.start()
    log.info("serving %s (login domain %r, username %r, certificate %s); Ctrl-C stops",
             url, server.domain, server.username, server.cert_path)
    serve_until_signalled(server)


def serve_until_signalled(server: LocalSalesforce) -> None:
    """Block until SIGINT or SIGTERM, then stop the server cleanly (state flushed, port freed)."""
    import signal

    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        stop.wait()
        log.info("stopping the local CRM")
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        server.stop()


if __name__ == "__main__":
    main()
