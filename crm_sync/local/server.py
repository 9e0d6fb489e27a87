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
"""

from __future__ import annotations

import argparse
import csv
import html
import io
import ipaddress
import json
import logging
import os
import re
import secrets
import socket
import sqlite3
import ssl
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit
from xml.dom import minidom

from churnflow.vocabulary import CLOSED_TASK_STATUSES, NEW_TASK_STATUS, TASK_STATUSES
from crm_sync.fields import FIELDS, FieldSpec
from churnflow.salesforce_ids import make_id, to_id18
from crm_sync.soql import BoolOp, Cond, SoqlLiteral, SoqlError, like_to_regex, parse

log = logging.getLogger(__name__)

API_VERSION = "59.0"
ORG_ID = "00D8c000000LoCaLEAX"
MAX_URI_LENGTH = 16384
COMPOSITE_LIMIT = 200
DAILY_API_LIMIT = 100000

# --------------------------------------------------------------------------------------
# Schema
# --------------------------------------------------------------------------------------
@dataclass
class FieldDef:
    """One field as describe() reports it; drives validation of every write and query."""

    name: str
    type: str  # id string textarea picklist double percent currency datetime date boolean reference
    label: str
    length: int = 0
    precision: int = 0
    scale: int = 0
    picklist: tuple[str, ...] = ()
    nillable: bool = True
    createable: bool = True
    updateable: bool = True
    default: Any = None
    external_id: bool = False
    unique: bool = False
    reference_to: tuple[str, ...] = ()
    custom: bool = False
    filterable: bool = True

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "label": self.label,
            "type": self.type,
            "soapType": {"id": "tns:ID", "reference": "tns:ID", "double": "xsd:double", "percent": "xsd:double",
                         "currency": "xsd:double", "datetime": "xsd:dateTime", "date": "xsd:date",
                         "boolean": "xsd:boolean"}.get(self.type, "xsd:string"),
            "length": self.length,
            "precision": self.precision,
            "scale": self.scale,
            "nillable": self.nillable,
            "createable": self.createable,
            "updateable": self.updateable,
            "defaultedOnCreate": self.default is not None,
            "externalId": self.external_id,
            "unique": self.unique,
            "idLookup": self.type == "id" or self.external_id,
            "custom": self.custom,
            "filterable": self.filterable,
            "restrictedPicklist": bool(self.picklist),
            "picklistValues": [
                {"value": v, "label": v, "active": True, "defaultValue": v == self.default, "validFor": None}
                for v in self.picklist
            ],
            "referenceTo": list(self.reference_to),
            "calculated": False,
            "extraTypeInfo": "plaintextarea" if self.type == "textarea" else None,
        }


_SPEC_TYPES = {"Number": "double", "Percent": "percent", "Currency": "currency", "Text": "string",
               "LongTextArea": "textarea", "Picklist": "picklist", "DateTime": "datetime",
               "Date": "date"}


def _from_spec(spec: FieldSpec) -> FieldDef:
    return FieldDef(
        name=spec.api_name, type=_SPEC_TYPES[spec.type], label=spec.label,
        length=spec.length or (255 if spec.type == "Picklist" else 0),
        precision=spec.precision or 0, scale=spec.scale or 0, picklist=spec.picklist,
        external_id=spec.external_id, unique=spec.unique, custom=True,
        filterable=spec.type != "LongTextArea",
    )


def _system_fields() -> list[FieldDef]:
    return [
        FieldDef("Id", "id", "Record ID", length=18, nillable=False, createable=False, updateable=False),
        FieldDef("IsDeleted", "boolean", "Deleted", createable=False, updateable=False, nillable=False),
        FieldDef("CreatedDate", "datetime", "Created Date", createable=False, updateable=False, nillable=False),
        FieldDef("LastModifiedDate", "datetime", "Last Modified Date", createable=False, updateable=False, nillable=False),
        FieldDef("SystemModstamp", "datetime", "System Modstamp", createable=False, updateable=False, nillable=False),
    ]


class SObjectSchema:
    """Fields of one sObject, looked up case-insensitively like Salesforce does."""

    def __init__(self, name: str, prefix: str, label: str, fields: Iterable[FieldDef]) -> None:
        self.name = name
        self.prefix = prefix
        self.label = label
        self.fields: dict[str, FieldDef] = OrderedDict()
        for f in fields:
            self.fields[f.name.lower()] = f

    def get(self, name: str) -> FieldDef | None:
        return self.fields.get(name.lower())

    def describe(self, version: str) -> dict[str, Any]:
        base = f"/services/data/v{version}/sobjects/{self.name}"
        return {
            "name": self.name, "label": self.label, "labelPlural": self.label + "s", "keyPrefix": self.prefix,
            "custom": False, "createable": True, "updateable": True, "deletable": True, "queryable": True,
            "fields": [f.describe() for f in self.fields.values()],
            "urls": {"sobject": base, "describe": base + "/describe", "rowTemplate": base + "/{ID}"},
        }


def build_schema() -> dict[str, SObjectSchema]:
    """Account, User and Task as churnflow uses them, plus every field declared in fields.py."""
    custom = {"Account": [], "Task": [], "User": []}  # type: dict[str, list[FieldDef]]
    for spec in FIELDS:
        custom.setdefault(spec.sobject, []).append(_from_spec(spec))
    account = SObjectSchema("Account", "001", "Account", [
        *_system_fields(),
        FieldDef("Name", "string", "Account Name", length=255, nillable=False),
        FieldDef("OwnerId", "reference", "Owner ID", length=18, nillable=False, reference_to=("User",)),
        FieldDef("Industry", "picklist", "Industry", length=255, picklist=(
            "Software", "Retail", "Healthcare", "Finance", "Manufacturing", "Education", "Other")),
        # The org's own renewal date (maintained by CS ops, not by churnflow): read back when
        # CHURNFLOW_SF_RENEWAL_DATE_FIELD names it.
        FieldDef("Renewal_Date__c", "date", "Renewal Date"),
        # An org's own external id (e.g. the billing system's customer number): accounts can
        # be matched by it (CHURNFLOW_SF_ACCOUNT_MATCH_FIELD=Customer_Number__c).
        FieldDef("Customer_Number__c", "string", "Customer Number", length=40, external_id=True, unique=True),
        *custom["Account"],
    ])
    user = SObjectSchema("User", "005", "User", [
        *_system_fields()[:1], *_system_fields()[2:],
        FieldDef("Username", "string", "Username", length=80, nillable=False, unique=True),
        FieldDef("Email", "string", "Email", length=128, nillable=False),
        FieldDef("FirstName", "string", "First Name", length=40),
        FieldDef("LastName", "string", "Last Name", length=80, nillable=False),
        FieldDef("Name", "string", "Full Name", length=121, createable=False, updateable=False),
        FieldDef("IsActive", "boolean", "Active", nillable=False, default=True),
        *custom["User"],
    ])
    task = SObjectSchema("Task", "00T", "Task", [
        *_system_fields(),
        FieldDef("WhatId", "reference", "Related To ID", length=18, reference_to=("Account",)),
        FieldDef("OwnerId", "reference", "Assigned To ID", length=18, nillable=False, reference_to=("User",)),
        FieldDef("Subject", "string", "Subject", length=255),
        FieldDef("Description", "textarea", "Description", length=32000, filterable=False),
        FieldDef("Priority", "picklist", "Priority", length=40, picklist=("High", "Normal", "Low"),
                 nillable=False, default="Normal"),
        FieldDef("Status", "picklist", "Status", length=40, nillable=False, default=NEW_TASK_STATUS, picklist=TASK_STATUSES),
        FieldDef("ActivityDate", "date", "Due Date Only"),
        FieldDef("IsClosed", "boolean", "Closed", createable=False, updateable=False, nillable=False),
        *custom["Task"],
    ])
    return {s.name.lower(): s for s in (account, user, task)}



# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------


class ApiError(Exception):
    """A request-level error: HTTP status plus Salesforce's ``[{message, errorCode}]`` body."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


class RecordError(Exception):
    """A record-level error (composite and bulk report these per record)."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_result(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def as_api_error(self, status: int = 400) -> ApiError:
        return ApiError(404 if self.code in ("NOT_FOUND", "ENTITY_IS_DELETED") else status, self.code, self.message, self.fields)

    def as_bulk(self) -> str:
        return f"{self.code}:{self.message}:{','.join(self.fields)} --"


# --------------------------------------------------------------------------------------
# Value coercion
# --------------------------------------------------------------------------------------
def now_string() -> str:
    now = datetime.now(timezone.utc)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}+0000"


def parse_datetime(value: str) -> str | None:
    """Normalise any ISO 8601 datetime to Salesforce's ``YYYY-MM-DDTHH:MM:SS.sss+0000``."""
    text = value.strip()
    text = re.sub(r"([+-]\d{2})(\d{2})$", r"\1:\2", text.replace("Z", "+00:00"))
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=timezone.utc)
    parsed = parsed.astimezone(timezone.utc)
    return parsed.strftime("%Y-%m-%dT%H:%M:%S.") + f"{parsed.microsecond // 1000:03d}+0000"


def _type_error(fdef: FieldDef, value: Any, source: str) -> RecordError:
    if source == "json":
        sf_type = {"double": "double", "percent": "double", "currency": "double", "datetime": "datetime",
                   "date": "date", "boolean": "boolean"}.get(fdef.type, "string")
        kind = type(value).__name__.upper()
        return RecordError("JSON_PARSER_ERROR", f"Cannot deserialize instance of {sf_type} from VALUE_{kind} value {value} or request may be missing a required field", [fdef.name])
    return RecordError("INVALID_TYPE_ON_FIELD_IN_RECORD", f"{fdef.label}: value not of required type: {value}", [fdef.name])


# --------------------------------------------------------------------------------------
# Faults
# --------------------------------------------------------------------------------------
FAULT_KINDS = ("limit", "expired", "unavailable", "slow", "late", "drop", "bulk_row_failures", "error")


@dataclass
class Fault:
    """One injected fault.

    It matches requests by ``method``, ``endpoint`` (the endpoint kind, see
    ``LocalSalesforce.api_calls``) and ``path`` (a regex searched in the URL path). The
    ``nth`` matching request is the first to fail, and ``count`` consecutive matching
    requests fail in total. ``after=True`` on a ``drop`` processes the request (writes
    commit) before the connection is dropped - the ambiguous case clients must survive.
    ``slow`` processes the request, then holds the response ``delay`` seconds (past the
    client's timeout, the writes are visible to the client's next call); ``late`` holds
    the request ``delay`` seconds *before* processing it, then commits it and drops the
    connection: the client gave up long ago, and a lookup it made meanwhile found nothing
    (as a Salesforce request keeps running after its client timed out).
    """

    kind: str
    method: str | None = None
    endpoint: str | None = None
    path: str | None = None
    nth: int = 1
    count: int = 1
    delay: float = 0.0
    rows: int = 0
    after: bool = False
    status: int = 500
    error_code: str = "UNKNOWN_EXCEPTION"
    message: str = "An unexpected error occurred."
    seen: int = 0
    fired: int = 0

    def matches(self, method: str, endpoint: str, path: str) -> bool:
        if self.method and self.method.upper() != method.upper():
            return False
        if self.endpoint and self.endpoint != endpoint:
            return False
        if self.path and not re.search(self.path, path):
            return False
        return True

    @property
    def exhausted(self) -> bool:
        return self.fired >= self.count


class FaultBook:
    """The faults injected into one server; thread-safe."""

    def __init__(self) -> None:
        self._faults: list[Fault] = []
        self._lock = threading.Lock()

    def add(self, kind: str, **options: Any) -> Fault:
        """Inject a fault, e.g. ``add("unavailable", endpoint="composite", nth=3)`` fails the 3rd composite call."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault kind {kind!r}; expected one of {FAULT_KINDS}")
        fault = Fault(kind=kind, **options)
        with self._lock:
            self._faults.append(fault)
        return fault

    def clear(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending(self) -> list[Fault]:
        with self._lock:
            return [f for f in self._faults if not f.exhausted]

    def take(self, method: str, endpoint: str, path: str, kinds: tuple[str, ...]) -> Fault | None:
        with self._lock:
            for fault in self._faults:
                if fault.kind not in kinds or fault.exhausted or not fault.matches(method, endpoint, path):
                    continue
                fault.seen += 1
                if fault.seen >= fault.nth:
                    fault.fired += 1
                    return fault
        return None


# --------------------------------------------------------------------------------------
# TLS
# --------------------------------------------------------------------------------------
def ensure_certificate(cert_dir: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """A self-signed certificate for ``host`` cached in ``cert_dir`` (regenerated when expiring).

    Clients trust exactly this certificate (``session.verify = cert path``) instead of
    disabling verification, so the HTTPS path is the same code as against Salesforce.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    cert_dir = Path(cert_dir)
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = certificate_file(cert_dir), cert_dir / "local-crm-key.pem"
    if cert_path.exists() and key_path.exists():
        try:
            existing = x509.load_pem_x509_certificate(cert_path.read_bytes())
            if existing.not_valid_after_utc > datetime.now(timezone.utc) + timedelta(days=7):
                return cert_path, key_path
        except ValueError:
            log.warning("cached local CRM certificate unreadable; regenerating")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, "churnflow local CRM")])
    sans: list[x509.GeneralName] = [x509.DNSName("localhost")]
    try:
        sans.append(x509.IPAddress(ipaddress.ip_address(host)))
    except ValueError:
        sans.append(x509.DNSName(host))
    if host != "127.0.0.1":
        sans.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    now = datetime.now(timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + timedelta(days=825))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, content_commitment=False,
                                     key_encipherment=False, data_encipherment=False, key_agreement=False,
                                     crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    _write_atomic(key_path, key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption()), mode=0o600)
    _write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), mode=0o644)
    return cert_path, key_path


def instance_file(cert_dir: Path) -> Path:
    """Where a running local CRM writes its instance token (beside its certificate)."""
    return Path(cert_dir) / "instance"


def certificate_file(cert_dir: Path) -> Path:
    """Where the local CRM's certificate is cached (clients trust this file)."""
    return Path(cert_dir) / "local-crm-cert.pem"


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write via a temp file and rename, created with ``mode``: readers never see half a key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------
# HTTP plumbing
# --------------------------------------------------------------------------------------
@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str = "application/json;charset=UTF-8"
    headers: dict[str, str] = field(default_factory=dict)


def json_response(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(status, json.dumps(payload).encode("utf-8"), headers=headers or {})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_TLSServer"

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


class _TLSServer(ThreadingHTTPServer):
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


# --------------------------------------------------------------------------------------
# The server
# --------------------------------------------------------------------------------------
@dataclass
class BulkJob:
    id: str
    sobject: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    created: str
    state: str = "Open"
    data: bytes = b""
    uploads: int = 0
    successes: list[tuple[str, bool, dict[str, str]]] = field(default_factory=list)
    failures: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    unprocessed: list[dict[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    error_message: str | None = None
    processing_ms: int = 0

    def info(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.sobject, "createdById": "",
            "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(version),
            "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
            "contentUrl": f"services/data/v{version}/jobs/ingest/{self.id}/batches",
            "numberRecordsProcessed": len(self.successes) + len(self.failures),
            "numberRecordsFailed": len(self.failures), "retries": 0,
            "totalProcessingTime": self.processing_ms, "apiActiveProcessingTime": self.processing_ms,
            "apexProcessingTime": 0,
        }
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        if self.error_message:
            out["errorMessage"] = self.error_message
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


class LocalSalesforce:
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
        self._httpd: _TLSServer | None = None
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
        self._httpd = _TLSServer((self.host, self.port), self, context)
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

    # -- persistence -----------------------------------------------------------------------
    def _open_state(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.state_path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS records (sobject TEXT, id TEXT PRIMARY KEY, seq INTEGER, body TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (prefix TEXT PRIMARY KEY, value INTEGER)")
        for prefix, value in self._db.execute("SELECT prefix, value FROM counters"):
            self._counters[prefix] = value
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        for sobject, rid, body in self._db.execute("SELECT sobject, id, body FROM records ORDER BY seq"):
            if sobject in self._data:
                self._data[sobject][rid] = json.loads(body)

    def _flush(self) -> None:
        if self._db is None or not self._dirty:
            self._dirty.clear()
            return
        rows = []
        for sobject, rid in self._dirty:
            if rid in self._data[sobject]:
                self._seq += 1
                rows.append((sobject, rid, self._seq, json.dumps(self._data[sobject][rid])))
        with self._db:
            # seq keeps insertion order across restarts; an update keeps the original seq.
            self._db.executemany(
                "INSERT INTO records (sobject, id, seq, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                rows,
            )
            self._db.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(prefix) DO UPDATE SET value = excluded.value",
                                 list(self._counters.items()))
        self._dirty.clear()

    # -- data access for tests and the demo ---------------------------------------------------
    def _schema(self, sobject: str) -> SObjectSchema:
        schema = self.schema.get(sobject.lower())
        if schema is None:
            raise ApiError(404, "NOT_FOUND", f"The requested resource does not exist")
        return schema

    def seed(self, sobject: str, records: Iterable[dict[str, Any]], *, skip_existing: bool = False) -> list[str]:
        """Insert records directly (no API call is counted); records may carry their own Id.

        Validation is the same as for API writes except that read-only fields may be set.
        With ``skip_existing`` a record whose Id (or, for Users, Username) exists is left
        as it is and its Id returned, so mirroring a warehouse into the org is idempotent.
        """
        schema = self._schema(sobject)
        table = self._data[schema.name.lower()]
        ids: list[str] = []
        with self._lock:
            for values in records:
                values = dict(values)
                given = values.pop("Id", None)
                rid = None
                if given is not None:
                    rid = to_id18(str(given))
                    if rid is None or not rid.startswith(schema.prefix):
                        raise ValueError(f"malformed {sobject} Id {given!r}")
                if skip_existing:
                    if rid is not None and rid in table:
                        ids.append(rid)
                        continue
                    username = str(values.get("Username", "")).lower()
                    if schema.name == "User" and username:
                        match = next((r["Id"] for r in table.values() if str(r.get("Username", "")).lower() == username), None)
                        if match:
                            ids.append(match)
                            continue
                if rid is not None and rid in table:
                    raise ValueError(f"DUPLICATE_VALUE: {sobject} {rid} already exists")
                try:
                    rec = self._write(schema, values, None, source="json", trusted=True, new_id=rid)
                except RecordError as exc:
                    raise ValueError(f"{exc.code}: {exc.message}") from exc
                ids.append(rec["Id"])
            self._flush()
        return ids

    def records(self, sobject: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Copies of the stored records, oldest first."""
        schema = self._schema(sobject)
        with self._lock:
            return [dict(r) for r in self._data[schema.name.lower()].values() if include_deleted or not r.get("IsDeleted")]

    def get_record(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        schema = self._schema(sobject)
        rid = to_id18(record_id)
        with self._lock:
            rec = self._data[schema.name.lower()].get(rid or "")
            return dict(rec) if rec and not rec.get("IsDeleted") else None

    # -- writes ----------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        self._counters[prefix] += 1
        return make_id(prefix, self._counters[prefix] + 1000)

    def _coerce(self, schema: SObjectSchema, fdef: FieldDef, value: Any, source: str) -> Any:
        """Validate one value as Salesforce would; return the stored form."""
        if value is None:
            if not fdef.nillable:
                raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name])
            return None
        t = fdef.type
        if t in ("string", "textarea", "picklist"):
            if isinstance(value, bool) or isinstance(value, (dict, list)):
                raise _type_error(fdef, value, source)
            text = value if isinstance(value, str) else (str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
            if t == "picklist" and fdef.picklist and text not in fdef.picklist:
                raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                  f"{fdef.label}: bad value for restricted picklist field: {text}", [fdef.name])
            if fdef.length and len(text) > fdef.length:
                shown = text if len(text) < 100 else text[:97] + "..."
                raise RecordError("STRING_TOO_LONG", f"{fdef.label}: data value too large: {shown} (max length={fdef.length})", [fdef.name])
            return text
        if t in ("double", "percent", "currency"):
            if isinstance(value, bool):
                raise _type_error(fdef, value, source)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise _type_error(fdef, value, source) from None
            if number != number or number in (float("inf"), float("-inf")):
                raise _type_error(fdef, value, source)
            number = round(number, fdef.scale)
            if fdef.precision and abs(number) >= 10 ** (fdef.precision - fdef.scale):
                raise RecordError("NUMBER_OUTSIDE_VALID_RANGE",
                                  f"{fdef.label}: value outside of valid range on numeric field: {value}", [fdef.name])
            return number
        if t == "datetime":
            parsed = parse_datetime(value) if isinstance(value, str) else None
            if parsed is None:
                raise _type_error(fdef, value, source)
            return parsed
        if t == "date":
            if not isinstance(value, str):
                raise _type_error(fdef, value, source)
            text = value.strip()
            try:
                return date.fromisoformat(text[:10] if "T" in text else text).isoformat()
            except ValueError:
                raise _type_error(fdef, value, source) from None
        if t == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise _type_error(fdef, value, source)
        if t in ("reference", "id"):
            rid = to_id18(value) if isinstance(value, str) else None
            if rid is None:
                raise RecordError("MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name])
            if t == "reference":
                targets = [self.schema[r.lower()] for r in fdef.reference_to]
                target = next((s for s in targets if rid.startswith(s.prefix)), None)
                if target is None:
                    raise RecordError("MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name])
                ref = self._data[target.name.lower()].get(rid)
                if ref is None or ref.get("IsDeleted"):
                    raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [fdef.name])
                if target.name == "User" and fdef.name == "OwnerId" and not ref.get("IsActive", True):
                    raise RecordError("INACTIVE_OWNER_OR_USER",
                                      f"operation performed with inactive user [{rid}] as owner of {schema.name.lower()}", [])
            return rid
        raise RecordError("UNKNOWN_EXCEPTION", f"unsupported type {t}")  # pragma: no cover

    def _write(self, schema: SObjectSchema, values: dict[str, Any], existing: dict[str, Any] | None, *,
               source: str, trusted: bool = False, new_id: str | None = None, commit: bool = True) -> dict[str, Any]:
        """Validate and apply one insert (existing=None) or update. Returns the stored record."""
        record = dict(existing) if existing else {}
        for key, value in values.items():
            if key == "attributes":
                continue
            fdef = schema.get(key)
            if fdef is None:
                if source == "json":
                    raise RecordError("INVALID_FIELD", f"No such column '{key}' on sobject of type {schema.name}", [key])
                raise RecordError("INVALID_FIELD", f"Field name not found : {key}", [key])
            if fdef.type == "id":
                if existing is not None and to_id18(str(value)) == existing["Id"]:
                    continue
                if existing is None and not trusted:
                    raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields: Id.", ["Id"])
            allowed = fdef.createable if existing is None else fdef.updateable
            if not allowed and not trusted:
                raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                  f"Unable to create/update fields: {fdef.name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                                  [fdef.name])
            record[fdef.name] = self._coerce(schema, fdef, value, source)
        if existing is None:
            for fdef in schema.fields.values():
                if fdef.name not in record:
                    if fdef.name == "OwnerId":
                        record["OwnerId"] = self.integration_user_id
                    elif fdef.default is not None:
                        record[fdef.name] = fdef.default
                    elif fdef.type == "boolean":
                        record[fdef.name] = False
                    elif fdef.createable and not fdef.nillable:
                        raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name])
                    else:
                        record[fdef.name] = None
        for fdef in schema.fields.values():
            if fdef.unique and record.get(fdef.name) is not None:
                for other in self._data[schema.name.lower()].values():
                    if other.get("Id") != record.get("Id") and not other.get("IsDeleted") and \
                            str(other.get(fdef.name)).lower() == str(record[fdef.name]).lower() and (existing is None or other["Id"] != existing["Id"]):
                        raise RecordError("DUPLICATE_VALUE",
                                          f"duplicate value found: {fdef.name} duplicates value on record with id: {other['Id']}", [fdef.name])
        # derived fields
        if schema.name == "Task":
            record["IsClosed"] = record.get("Status") in CLOSED_TASK_STATUSES
        if schema.name == "User":
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        stamp = now_string()
        if existing is None:
            record["Id"] = new_id or self._next_id(schema.prefix)
            record["IsDeleted"] = False
            record["CreatedDate"] = stamp
        record["LastModifiedDate"] = stamp
        record["SystemModstamp"] = stamp
        if commit:
            self._data[schema.name.lower()][record["Id"]] = record
            self._dirty[(schema.name.lower(), record["Id"])] = None
        return record

    def _find(self, schema: SObjectSchema, record_id: str) -> dict[str, Any]:
        rid = to_id18(record_id)
        if rid is None or not rid.startswith(schema.prefix):
            raise RecordError("MALFORMED_ID", f"{schema.name} ID: id value of incorrect type: {record_id}", ["Id"])
        rec = self._data[schema.name.lower()].get(rid)
        if rec is None or rec.get("IsDeleted"):
            raise RecordError("ENTITY_IS_DELETED" if rec else "NOT_FOUND",
                              "entity is deleted" if rec else "The requested resource does not exist", [])
        return rec

    def _external_match(self, schema: SObjectSchema, fdef: FieldDef, value: str) -> list[dict[str, Any]]:
        if fdef.type == "id":
            rid = to_id18(value)
            rec = self._data[schema.name.lower()].get(rid or "")
            return [rec] if rec and not rec.get("IsDeleted") else []
        return [r for r in self._data[schema.name.lower()].values()
                if not r.get("IsDeleted") and r.get(fdef.name) is not None and str(r[fdef.name]).lower() == value.lower()]

    def _upsert_one(self, schema: SObjectSchema, fdef: FieldDef, value: str, values: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
        matches = self._external_match(schema, fdef, value)
        if len(matches) > 1:
            raise RecordError("DUPLICATE_EXTERNAL_ID",
                              f"{fdef.label}: more than one record found for external id field: {[m['Id'] for m in matches]}", [fdef.name])
        body = {k: v for k, v in values.items() if k.lower() != fdef.name.lower()}
        if fdef.type != "id":
            body[fdef.name] = value
        if matches:
            return self._write(schema, body, matches[0], source=source), False
        if fdef.type == "id":
            raise RecordError("NOT_FOUND", "Provided external ID field does not exist or is not accessible: " + value, [])
        return self._write(schema, body, None, source=source), True

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

    def _auth(self, headers: dict[str, str]) -> None:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        with self._lock:
            valid = token in self._sessions
        if not valid:
            raise ApiError(401, "INVALID_SESSION_ID", "Session expired or invalid")

    def _route(self, method: str, path: str, query: dict[str, list[str]], headers: dict[str, str],
               body: bytes, endpoint: str) -> Response:
        """Route by the raw (percent-encoded) ``path``."""
        if endpoint == "login":
            return self._login(path, body, headers)
        if path.startswith("/local/seed/") and method == "POST":
            # churnflow-only (not a Salesforce API): mirror warehouse accounts/users into the local org.
            self._auth(headers)
            payload = self._json(body)
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

    # -- login -----------------------------------------------------------------------------
    def _new_session(self) -> str:
        token = f"{ORG_ID[:15]}!AQ{secrets.token_urlsafe(48)}"
        with self._lock:
            self._sessions.add(token)
        return token

    def _login(self, path: str, body: bytes, headers: dict[str, str]) -> Response:
        if path.endswith("/services/oauth2/token"):
            return self._oauth(body, headers)
        m = re.search(r"/services/Soap/u/([\d.]+)/?$", path)
        version = m.group(1) if m else self.api_version
        username = password = None
        try:
            doc = minidom.parseString(body)
            u = doc.getElementsByTagNameNS("*", "username")
            p = doc.getElementsByTagNameNS("*", "password")
            username = u[0].firstChild.nodeValue if u and u[0].firstChild else None
            password = p[0].firstChild.nodeValue if p and p[0].firstChild else None
        except Exception:  # malformed XML is an INVALID_LOGIN like any other bad login
            username = None
        if username != self.username or password != self.password + self.security_token:
            log.info("local CRM rejected a SOAP login")
            fault = (
                '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
                'xmlns:sf="urn:fault.partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><soapenv:Fault>'
                "<faultcode>sf:INVALID_LOGIN</faultcode><faultstring>INVALID_LOGIN: Invalid username, password, security token; or user locked out.</faultstring>"
                '<detail><sf:LoginFault xsi:type="sf:LoginFault"><sf:exceptionCode>INVALID_LOGIN</sf:exceptionCode>'
                "<sf:exceptionMessage>Invalid username, password, security token; or user locked out.</sf:exceptionMessage>"
                "</sf:LoginFault></detail></soapenv:Fault></soapenv:Body></soapenv:Envelope>"
            )
            return Response(500, fault.encode(), "text/xml; charset=utf-8")
        session = self._new_session()
        server_url = f"{self.base_url}/services/Soap/u/{version}/{ORG_ID[:15]}"
        xml = (
            '<?xml version="1.0" encoding="UTF-8"?><soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/" '
            'xmlns="urn:partner.soap.sforce.com" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance"><soapenv:Body><loginResponse><result>'
            f"<metadataServerUrl>{self.base_url}/services/Soap/m/{version}/{ORG_ID[:15]}</metadataServerUrl>"
            "<passwordExpired>false</passwordExpired><sandbox>false</sandbox>"
            f"<serverUrl>{server_url}</serverUrl><sessionId>{session}</sessionId>"
            f"<userId>{self.integration_user_id}</userId><userInfo><organizationId>{ORG_ID}</organizationId>"
            f"<userName>{html.escape(self.username)}</userName><sessionSecondsValid>7200</sessionSecondsValid></userInfo>"
            "</result></loginResponse></soapenv:Body></soapenv:Envelope>"
        )
        return Response(200, xml.encode(), "text/xml; charset=utf-8")

    def _oauth(self, body: bytes, headers: dict[str, str]) -> Response:
        form = {k: v[0] for k, v in parse_qs(body.decode("utf-8", "replace")).items()}
        grant = form.get("grant_type", "")
        ok = False
        if grant == "password":
            ok = form.get("username") == self.username and form.get("password") in (
                self.password, self.password + self.security_token)
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer":
            import jwt

            try:
                claims = jwt.decode(form.get("assertion", ""), options={"verify_signature": False})
                ok = claims.get("sub") == self.username and claims.get("iss") == self.consumer_key \
                    and float(claims.get("exp", 0)) > time.time()
            except jwt.PyJWTError:
                ok = False
        if not ok:
            return json_response(400, {"error": "invalid_grant", "error_description": "authentication failure"})
        return json_response(200, {
            "access_token": self._new_session(), "instance_url": self.base_url,
            "id": f"{self.base_url}/id/{ORG_ID}/{self.integration_user_id}", "token_type": "Bearer",
            "issued_at": str(int(time.time() * 1000)), "signature": secrets.token_urlsafe(32),
        })

    # -- SOQL ------------------------------------------------------------------------------
    def _query(self, text: str, version: str, include_deleted: bool, batch_size: int, head: str) -> Response:
        try:
            parsed = parse(text)
        except SoqlError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        schema = self.schema.get(parsed.sobject.lower())
        if schema is None:
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{parsed.sobject}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name.")
        selected: list[FieldDef] = []
        for name in parsed.fields:
            fdef = self._query_field(schema, name)
            if fdef in selected:
                raise ApiError(400, "INVALID_FIELD", f"duplicate field selected: {fdef.name}")
            selected.append(fdef)
        where = self._bind(schema, parsed.where) if parsed.where is not None else None
        rows = [r for r in self._data[schema.name.lower()].values()
                if (include_deleted or not r.get("IsDeleted")) and (where is None or self._eval(where, r))]
        for name, desc, nulls_last in reversed(parsed.order_by):
            fdef = self._query_field(schema, name)
            if fdef.type == "textarea":
                raise ApiError(400, "INVALID_FIELD", f"field '{fdef.name}' can not be sorted in a query call")
            nl = desc if nulls_last is None else nulls_last
            present = [r for r in rows if r.get(fdef.name) is not None]
            missing = [r for r in rows if r.get(fdef.name) is None]
            present.sort(key=lambda r, f=fdef: _sort_key(r.get(f.name)), reverse=desc)
            rows = present + missing if nl else missing + present
        rows = rows[parsed.offset:]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        if parsed.count_only:
            return json_response(200, {"totalSize": len(rows), "done": True, "records": []})
        records = [self._project(schema, selected, r, version) for r in rows]
        return self._page(records, 0, batch_size, version, head)

    def _page(self, records: list[dict[str, Any]], start: int, batch_size: int, version: str, head: str) -> Response:
        end = start + batch_size
        payload: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records), "records": records[start:end]}
        if end < len(records):
            locator = "01g" + secrets.token_hex(8)[:15]
            self._cursors[locator] = (records, batch_size)
            while len(self._cursors) > 200:
                self._cursors.popitem(last=False)
            payload["nextRecordsUrl"] = f"/services/data/v{version}/{head}/{locator}-{end}"
        return json_response(200, payload)

    def _query_more(self, locator: str, version: str, head: str) -> Response:
        m = re.match(r"^(01g\w+)-(\d+)$", locator)
        cursor = self._cursors.get(m.group(1)) if m else None
        if cursor is None or m is None:
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        records, batch = cursor
        return self._page(records, int(m.group(2)), batch, version, head)

    def _query_field(self, schema: SObjectSchema, name: str) -> FieldDef:
        fdef = schema.get(name)
        if fdef is None:
            raise ApiError(400, "INVALID_FIELD", (
                f"No such column '{name}' on entity '{schema.name}'. If you are attempting to use a custom field, "
                "be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."))
        return fdef

    def _bind(self, schema: SObjectSchema, node: Any) -> Any:
        """Resolve field names and type-check literals once, before any record is evaluated."""
        if isinstance(node, BoolOp):
            return BoolOp(node.op, [self._bind(schema, n) for n in node.items])
        assert isinstance(node, Cond)
        fdef = self._query_field(schema, node.field)
        if not fdef.filterable:
            raise ApiError(400, "INVALID_FIELD", f"field '{fdef.name}' can not be filtered in a query call")
        if node.op == "LIKE":
            if fdef.type not in ("string", "picklist", "id", "reference"):
                raise ApiError(400, "INVALID_FIELD", f"invalid operator on field: {fdef.name}")
            return Cond(fdef.name, "LIKE", like_to_regex(node.value))
        if node.op in ("IN", "NOT IN"):
            values = frozenset(self._literal(fdef, v) for v in node.value)
            return Cond(fdef.name, node.op, values)
        value = self._literal(fdef, node.value)
        if value is None and node.op not in ("=", "!="):
            raise ApiError(400, "MALFORMED_QUERY", f"invalid operator for null: {node.op}")
        return Cond(fdef.name, node.op, value)

    def _literal(self, fdef: FieldDef, lit: SoqlLiteral) -> Any:
        if lit.kind == "null":
            return None
        t = fdef.type
        if t in ("id", "reference"):
            rid = to_id18(lit.value) if lit.kind == "string" else None
            if rid is None:
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}")
            return rid
        if t in ("string", "picklist", "textarea"):
            if lit.kind != "string":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type string and should be enclosed in quotes")
            return lit.value.casefold()
        if t in ("double", "percent", "currency"):
            if lit.kind != "number":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type double and should not be enclosed in quotes")
            return float(lit.value)
        if t == "boolean":
            if lit.kind != "bool":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type boolean and should not be enclosed in quotes")
            return lit.value
        if t == "datetime":
            if lit.kind != "datetime":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type dateTime and should not be enclosed in quotes")
            return parse_datetime(lit.value)
        if t == "date":
            if lit.kind != "date":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type date and should not be enclosed in quotes")
            return lit.value
        raise ApiError(400, "MALFORMED_QUERY", f"unsupported filter on {fdef.name}")  # pragma: no cover

    def _eval(self, node: Any, record: dict[str, Any]) -> bool:
        if isinstance(node, BoolOp):
            if node.op == "AND":
                return all(self._eval(n, record) for n in node.items)
            if node.op == "OR":
                return any(self._eval(n, record) for n in node.items)
            return not self._eval(node.items[0], record)
        raw = record.get(node.field)
        value = raw.casefold() if isinstance(raw, str) and node.field in self._text_fields else raw
        op = node.op
        if op == "LIKE":
            return raw is not None and bool(node.value.match(str(raw)))
        if op == "IN":
            return value is not None and value in node.value
        if op == "NOT IN":
            return value is None or value not in node.value
        if op == "=":
            return value == node.value
        if op == "!=":
            return value != node.value
        if value is None or node.value is None:
            return False
        try:
            return {"<": value < node.value, ">": value > node.value, "<=": value <= node.value, ">=": value >= node.value}[op]
        except TypeError:
            return False

    def _project(self, schema: SObjectSchema, selected: list[FieldDef], record: dict[str, Any], version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {"type": schema.name, "url": f"/services/data/v{version}/sobjects/{schema.name}/{record['Id']}"}}
        for fdef in selected:
            out[fdef.name] = record.get(fdef.name)
        return out

    # -- sObject REST ------------------------------------------------------------------------
    def _json(self, body: bytes) -> Any:
        try:
            return json.loads(body.decode("utf-8") or "null")
        except (ValueError, UnicodeDecodeError) as exc:
            raise ApiError(400, "JSON_PARSER_ERROR", f"Unexpected character: {exc}") from None

    def _sobjects(self, method: str, segs: list[str], query: dict[str, list[str]], body: bytes, version: str) -> Response:
        if not segs:
            if method != "GET":
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET")
            return json_response(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
                {"name": s.name, "label": s.label, "keyPrefix": s.prefix, "queryable": True, "createable": True,
                 "updateable": True, "custom": False} for s in self.schema.values()]})
        schema = self.schema.get(segs[0].lower())
        if schema is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(segs) == 1:
            if method == "POST":
                values = self._json(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                try:
                    rec = self._write(schema, values, None, source="json")
                except RecordError as exc:
                    raise exc.as_api_error() from None
                return json_response(201, {"id": rec["Id"], "success": True, "errors": []})
            if method == "GET":
                return json_response(200, {"objectDescribe": {"name": schema.name, "keyPrefix": schema.prefix}, "recentItems": []})
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,POST")
        if len(segs) == 2 and segs[1] == "describe":
            return json_response(200, schema.describe(version))
        if len(segs) == 2:
            rec = self._find(schema, segs[1])
            if method == "GET":
                wanted = (query.get("fields") or [""])[0]
                fdefs = [self._query_field(schema, f.strip()) for f in wanted.split(",") if f.strip()] or list(schema.fields.values())
                return json_response(200, self._project(schema, fdefs, rec, version))
            if method == "PATCH":
                values = self._json(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                self._write(schema, values, rec, source="json")
                return Response(204)
            if method == "DELETE":
                rec["IsDeleted"] = True
                rec["SystemModstamp"] = now_string()
                self._dirty[(schema.name.lower(), rec["Id"])] = None
                return Response(204)
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE")
        if len(segs) == 3:
            fdef = schema.get(segs[1])
            if fdef is None or not (fdef.external_id or fdef.type == "id"):
                raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {segs[1]}")
            if method == "GET":
                matches = self._external_match(schema, fdef, segs[2])
                if not matches:
                    raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
                if len(matches) > 1:
                    return json_response(300, [f"/services/data/v{version}/sobjects/{schema.name}/{m['Id']}" for m in matches])
                return json_response(200, self._project(schema, list(schema.fields.values()), matches[0], version))
            if method == "PATCH":
                values = self._json(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                matches = self._external_match(schema, fdef, segs[2])
                if len(matches) > 1:
                    return json_response(300, [f"/services/data/v{version}/sobjects/{schema.name}/{m['Id']}" for m in matches])
                try:
                    rec, created = self._upsert_one(schema, fdef, segs[2], values, "json")
                except RecordError as exc:
                    raise exc.as_api_error() from None
                # Like Salesforce: 201 on create; on update 200 with a body from v46.0, 204 before.
                modern = float(version) >= 46.0
                body_out: dict[str, Any] = {"id": rec["Id"], "success": True, "errors": []}
                if modern:
                    body_out["created"] = created
                if created:
                    return json_response(201, body_out)
                return json_response(200, body_out) if modern else Response(204)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    # -- composite sObject collections ------------------------------------------------------
    def _composite(self, method: str, segs: list[str], query: dict[str, list[str]], body: bytes, version: str) -> Response:
        if method == "GET" and len(segs) == 1:
            schema = self._schema(segs[0])
            ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
            fdefs = [self._query_field(schema, f) for f in (query.get("fields") or ["Id"])[0].split(",") if f]
            out = []
            for rid in ids:
                try:
                    out.append(self._project(schema, fdefs, self._find(schema, rid), version))
                except RecordError:
                    out.append(None)
            return json_response(200, out)
        if method == "DELETE" and not segs:
            ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
            results = []
            for rid in ids:
                try:
                    schema = next(s for s in self.schema.values() if rid.startswith(s.prefix))
                    rec = self._find(schema, rid)
                    rec["IsDeleted"] = True
                    self._dirty[(schema.name.lower(), rec["Id"])] = None
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                except (RecordError, StopIteration):
                    results.append({"id": rid, "success": False, "errors": [RecordError("MALFORMED_ID", f"malformed id {rid}").as_result()]})
            return json_response(200, results)
        payload = self._json(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "Expected a JSON object with a 'records' array")
        records = payload["records"]
        all_or_none = bool(payload.get("allOrNone", False))
        if len(records) > COMPOSITE_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
        if method == "POST" and not segs:
            mode = "create"
        elif method == "PATCH" and not segs:
            mode = "update"
        elif method == "PATCH" and len(segs) == 2:
            mode = "upsert"
        else:
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
        # Validate everything against a snapshot; commit only what should commit.
        snapshot = {k: OrderedDict((i, dict(r)) for i, r in v.items()) for k, v in self._data.items()} if all_or_none else {}
        dirty_before = dict(self._dirty)
        results: list[dict[str, Any]] = []
        failed = False
        seen_ids: set[str] = set()
        for values in records:
            try:
                if not isinstance(values, dict):
                    raise RecordError("JSON_PARSER_ERROR", "record must be an object")
                sobject = (values.get("attributes") or {}).get("type") if mode != "upsert" else segs[0]
                if not sobject:
                    raise RecordError("INVALID_TYPE", "Must send a concrete entity type.")
                schema = self.schema.get(str(sobject).lower())
                if schema is None:
                    raise RecordError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
                if mode == "create":
                    rec = self._write(schema, values, None, source="json")
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                elif mode == "update":
                    rid = values.get("Id") or values.get("id")
                    if not rid:
                        raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", [])
                    rec = self._find(schema, str(rid))
                    if rec["Id"] in seen_ids:
                        raise RecordError("INVALID_BATCH_REQUEST", "duplicate id in list", [])
                    seen_ids.add(rec["Id"])
                    rest = {k: v for k, v in values.items() if k.lower() != "id"}
                    self._write(schema, rest, rec, source="json")
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                else:
                    fdef = schema.get(segs[1])
                    if fdef is None or not (fdef.external_id or fdef.type == "id"):
                        raise ApiError(400, "INVALID_FIELD", f"Field name provided, {segs[1]} is not an External ID or indexed field for {schema.name}")
                    key = next((v for k, v in values.items() if k.lower() == fdef.name.lower()), None)
                    if key is None:
                        raise RecordError("MISSING_ARGUMENT", f"{fdef.name} not specified", [fdef.name])
                    rec, created = self._upsert_one(schema, fdef, str(key), values, "json")
                    results.append({"id": rec["Id"], "success": True, "errors": [], "created": created})
            except RecordError as exc:
                failed = True
                item: dict[str, Any] = {"success": False, "errors": [exc.as_result()]}
                if mode == "upsert":
                    item["created"] = False
                results.append(item)
        if all_or_none and failed:
            self._data.update(snapshot)
            self._dirty = dirty_before
            for item in results:
                item.pop("id", None)
                item["id"] = None
                if item["success"]:
                    item["success"] = False
                    item["errors"] = [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                       "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                                       "fields": []}]
        for item in results:
            if "id" not in item:
                item["id"] = None
        return json_response(200, [{"id": r["id"], "success": r["success"], "errors": r["errors"], **({"created": r["created"]} if "created" in r else {})} for r in results])

    # -- Bulk API 2.0 ingest ---------------------------------------------------------------
    def _job(self, job_id: str) -> BulkJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def _bulk(self, method: str, segs: list[str], body: bytes, headers: dict[str, str], version: str) -> Response:
        if not segs:
            if method == "GET":
                return json_response(200, {"done": True, "records": [j.info(version) for j in self._jobs.values()], "nextRecordsUrl": None})
            if method != "POST":
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
            spec = self._json(body)
            if not isinstance(spec, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "job specification must be an object")
            operation = spec.get("operation")
            if operation not in ("insert", "update", "upsert", "delete", "hardDelete"):
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
            schema = self.schema.get(str(spec.get("object", "")).lower())
            if schema is None:
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid object: {spec.get('object')}")
            ext = spec.get("externalIdFieldName")
            if operation == "upsert":
                fdef = schema.get(ext or "")
                if fdef is None or not (fdef.external_id or fdef.type == "id"):
                    raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {ext} is not an External ID or indexed field for {schema.name}")
                ext = fdef.name
            line_ending = spec.get("lineEnding", "LF")
            delimiter = spec.get("columnDelimiter", "COMMA")
            if line_ending not in ("LF", "CRLF") or delimiter not in _DELIMITERS:
                raise ApiError(400, "INVALIDJOB", "InvalidJob : invalid lineEnding or columnDelimiter")
            if spec.get("contentType", "CSV") != "CSV":
                raise ApiError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
            job = BulkJob(id=self._next_id("750"), sobject=schema.name,
                          operation=operation, external_id=ext if operation == "upsert" else None,
                          line_ending=line_ending, delimiter=delimiter, created=now_string())
            self._jobs[job.id] = job
            return json_response(200, job.info(version))
        job = self._job(segs[0])
        if len(segs) == 1:
            if method == "GET":
                return json_response(200, job.info(version))
            if method == "DELETE":
                if job.state not in ("UploadComplete", "JobComplete", "Aborted", "Failed"):
                    raise ApiError(400, "INVALIDJOBSTATE", f"Deleting a job in state {job.state} is not allowed")
                del self._jobs[job.id]
                return Response(204)
            if method == "PATCH":
                state = (self._json(body) or {}).get("state")
                if state == "Aborted":
                    if job.state in ("JobComplete", "Failed", "Aborted"):
                        raise ApiError(400, "INVALIDJOBSTATE", f"Aborting a job in state {job.state} is not allowed")
                    job.state = "Aborted"
                    return json_response(200, job.info(version))
                if state == "UploadComplete":
                    if job.state != "Open":
                        raise ApiError(409, "INVALIDJOBSTATE", f"Closing a job in state {job.state} is not allowed")
                    job.state = "UploadComplete"
                    info = job.info(version)
                    self._process_job(job)
                    return json_response(200, info)
                raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state change to {state}")
        if len(segs) == 2:
            kind = segs[1].lower()
            if kind == "batches" and method == "PUT":
                if job.state != "Open":
                    raise ApiError(409, "INVALIDJOBSTATE", f"Uploading data to a job in state {job.state} is not allowed")
                if job.uploads:
                    raise ApiError(400, "INVALIDJOBSTATE", "Only one upload of job data is allowed per job")
                job.data = body
                job.uploads += 1
                return Response(201)
            if method == "GET" and kind in ("successfulresults", "failedresults", "unprocessedrecords"):
                if job.state not in ("JobComplete", "Failed", "Aborted"):
                    raise ApiError(400, "INVALIDJOBSTATE", f"Results are not available for a job in state {job.state}")
                return Response(200, self._results_csv(job, kind), "text/csv")
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _results_csv(self, job: BulkJob, kind: str) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
        if kind == "successfulresults":
            writer.writerow(["sf__Id", "sf__Created", *job.columns])
            for rid, created, row in job.successes:
                writer.writerow([rid, "true" if created else "false", *[row.get(c, "") for c in job.columns]])
        elif kind == "failedresults":
            writer.writerow(["sf__Id", "sf__Error", *job.columns])
            for rid, error, row in job.failures:
                writer.writerow([rid, error, *[row.get(c, "") for c in job.columns]])
        else:
            writer.writerow(job.columns)
            for row in job.unprocessed:
                writer.writerow([row.get(c, "") for c in job.columns])
        return buf.getvalue().encode("utf-8")

    def _process_job(self, job: BulkJob) -> None:
        """Run an ingest job synchronously at UploadComplete; rows fail independently, like Salesforce."""
        started = time.monotonic()
        schema = self.schema[job.sobject.lower()]
        text = job.data.decode("utf-8-sig")
        # The header row (never quoted in practice) shows which line ending the file uses;
        # CRLF inside quoted values is data, not a line ending.
        first_break = text.find("\n")
        used = "CRLF" if first_break > 0 and text[first_break - 1] == "\r" else "LF"
        if first_break >= 0 and used != job.line_ending:
            job.state = "Failed"
            job.error_message = f"ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is {job.line_ending}"
            return
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.delimiter])
        try:
            header = next(reader)
        except StopIteration:
            job.state, job.error_message = "Failed", "InvalidBatch : Empty CSV file"
            return
        for name in header:
            if schema.get(name) is None:
                job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {name}"
                return
        job.columns = header
        fail_rows = 0
        fault = self.faults.take("PATCH", "bulk2", f"/jobs/ingest/{job.id}", ("bulk_row_failures",))
        if fault is not None:
            fail_rows = fault.rows
        for line in reader:
            if not line:
                continue
            row = dict(zip(header, line))
            if len(line) != len(header):
                job.failures.append(("", "INVALID_FIELD:Incorrect number of columns in row --", row))
                continue
            if fail_rows > 0:
                fail_rows -= 1
                job.failures.append(("", "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records: --", row))
                continue
            values: dict[str, Any] = {}
            for name, cell in row.items():
                fdef = schema.get(name)
                assert fdef is not None
                if cell == "#N/A":
                    values[fdef.name] = None
                elif cell == "":
                    if job.operation == "insert" or (job.operation == "upsert"):
                        continue  # blank = leave unset on insert / unchanged on update
                    continue
                else:
                    values[fdef.name] = cell
            try:
                if job.operation == "insert":
                    rec = self._write(schema, values, None, source="csv")
                    job.successes.append((rec["Id"], True, row))
                elif job.operation in ("update", "delete", "hardDelete"):
                    rid = values.pop("Id", None)
                    if not rid:
                        raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", [])
                    rec = self._find(schema, rid)
                    if job.operation == "update":
                        self._write(schema, values, rec, source="csv")
                    else:
                        rec["IsDeleted"] = True
                        self._dirty[(schema.name.lower(), rec["Id"])] = None
                    job.successes.append((rec["Id"], False, row))
                else:
                    fdef = schema.get(job.external_id or "Id")
                    assert fdef is not None
                    key = values.get(fdef.name)
                    if not key:
                        raise RecordError("MISSING_ARGUMENT", f"{fdef.name} not specified", [fdef.name])
                    rec, created = self._upsert_one(schema, fdef, str(key), values, "csv")
                    job.successes.append((rec["Id"], created, row))
            except RecordError as exc:
                job.failures.append(("", exc.as_bulk(), row))
        job.processing_ms = int((time.monotonic() - started) * 1000)
        job.state = "JobComplete"

    # -- the CS team's view ------------------------------------------------------------------
    def render_page(self) -> str:
        """A read-only HTML page: accounts with their churnflow health fields and open tasks."""
        with self._lock:
            accounts = [r for r in self._data["account"].values() if not r.get("IsDeleted")]
            users = {i: r for i, r in self._data["user"].items()}
            tasks: dict[str, list[dict[str, Any]]] = {}
            for t in self._data["task"].values():
                if not t.get("IsDeleted") and not t.get("IsClosed") and t.get("WhatId"):
                    tasks.setdefault(t["WhatId"], []).append(t)
        esc = html.escape
        colors = {"Green": "#2e7d32", "Yellow": "#f9a825", "Red": "#c62828"}

        def fmt(value: Any, suffix: str = "") -> str:
            if value is None:
                return "&ndash;"
            if isinstance(value, float):
                return esc(f"{value:,.2f}".rstrip("0").rstrip(".") + suffix)
            return esc(str(value) + suffix)

        accounts.sort(key=lambda r: (-(r.get("Churnflow_Churn_Risk__c") or -1), r.get("Name") or ""))
        counts: dict[str, int] = {}
        for acc in accounts:
            band_name = acc.get("Churnflow_Health_Band__c") or "not scored"
            counts[band_name] = counts.get(band_name, 0) + 1
        order = {"Red": 0, "Yellow": 1, "Green": 2}
        band_counts = ", ".join(f"{n} {esc(b)}" for b, n in sorted(counts.items(), key=lambda kv: order.get(kv[0], 3)))
        rows = []
        for acc in accounts:
            band = acc.get("Churnflow_Health_Band__c")
            open_tasks = "".join(
                f"<li><b>{esc(t.get('Priority') or '')}</b> {esc(t.get('Subject') or '')} "
                f"<span class=muted>due {esc(t.get('ActivityDate') or '-')} &middot; {esc(users.get(t.get('OwnerId') or '', {}).get('Name', '') or '')}</span></li>"
                for t in sorted(tasks.get(acc["Id"], []), key=lambda t: t.get("ActivityDate") or ""))
            rows.append(
                "<tr>"
                f"<td>{esc(acc.get('Name') or '')}<div class=muted>{esc(acc['Id'])}</div></td>"
                f"<td>{esc(users.get(acc.get('OwnerId') or '', {}).get('Name', '') or '')}</td>"
                f"<td>{fmt(acc.get('Churnflow_Health_Score__c'))}</td>"
                f"<td><span class=band style='background:{colors.get(band or '', '#999')}'>{esc(band or '-')}</span></td>"
                f"<td>{fmt(acc.get('Churnflow_Churn_Risk__c'), '%')}</td>"
                f"<td>{fmt(acc.get('Churnflow_Health_Trend__c'))}</td>"
                f"<td>{fmt(acc.get('Churnflow_ARR_At_Risk__c'))}</td>"
                f"<td class=drivers>{esc(acc.get('Churnflow_Top_Drivers__c') or '')}</td>"
                f"<td>{esc(acc.get('Churnflow_Score_As_Of__c') or '')}<div class=muted>run {esc(acc.get('Churnflow_Scored_At__c') or '-')}</div></td>"
                f"<td><ul>{open_tasks}</ul></td>"
                "</tr>")
        return (
            "<!doctype html><html><head><meta charset=utf-8><title>Local CRM - account health</title><style>"
            "body{font-family:system-ui,sans-serif;margin:2em}table{border-collapse:collapse;width:100%}"
            "td,th{border-bottom:1px solid #ddd;padding:6px;vertical-align:top;text-align:left;font-size:14px}"
            ".muted{color:#777;font-size:12px}.band{color:#fff;border-radius:4px;padding:2px 8px}"
            ".drivers{white-space:pre-wrap;max-width:28em}ul{margin:0;padding-left:1.2em}</style></head><body>"
            f"<h1>Account health</h1><p class=muted>{len(accounts)} accounts &middot; {band_counts} &middot; "
            f"{sum(len(v) for v in tasks.values())} open tasks &middot; read-only view of the local Salesforce-compatible CRM</p>"
            "<table><thead><tr><th>Account</th><th>Owner</th><th>Health</th><th>Band</th><th>Churn risk</th>"
            "<th>Trend 30d</th><th>ARR at risk</th><th>Top drivers</th><th>Score as of</th><th>Open tasks</th></tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table></body></html>"
        )


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        return (1, value.casefold())
    if isinstance(value, bool):
        return (0, int(value))
    return (0, value)


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
