"""Webhook signatures: a shared-secret HMAC-SHA256 per request, compared in constant time.

The three header conventions (docs/events.md):

* churnflow's own shapes: ``X-Churnflow-Signature: sha256=<hex HMAC(secret, body)>``;
* Zendesk: ``X-Zendesk-Webhook-Signature: base64(HMAC(secret, timestamp + body))`` with the
  timestamp in ``X-Zendesk-Webhook-Signature-Timestamp``;
* Typeform: ``Typeform-Signature: sha256=<base64 HMAC(secret, body)>``.

Secrets come from the environment (``CHURNFLOW_EVENTS_SECRET``, or per shape
``CHURNFLOW_EVENTS_SECRET_<SHAPE>``, e.g. ``..._ZENDESK``) or a Prefect Secret block named in
``CHURNFLOW_EVENTS_SECRET_BLOCK``; they are held in memory only and never logged.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from collections.abc import Mapping
from datetime import datetime, timezone

from churnflow.errors import ChurnflowError

SECRET_ENV = "CHURNFLOW_EVENTS_SECRET"
SECRET_BLOCK_ENV = "CHURNFLOW_EVENTS_SECRET_BLOCK"
#: Zendesk signatures older (or newer) than this are refused: a captured request cannot be replayed later.
MAX_TIMESTAMP_SKEW_SECONDS = 24 * 3600


class SecretMissingError(ChurnflowError):
    """No webhook secret is configured for a shape; the intake does not run open."""


class SignatureError(ChurnflowError):
    """A request whose signature is missing or wrong (answered 401; the reason names the header)."""


def _secret_from_block(block_name: str) -> str:
    from prefect.blocks.system import Secret

    value = Secret.load(block_name).get()
    if not isinstance(value, str) or not value:
        raise SecretMissingError(f"Prefect Secret block {block_name!r} holds no secret string")
    return value


def resolve_secrets(shapes: list[str], environ: Mapping[str, str] | None = None) -> dict[str, bytes]:
    """shape -> secret: the shape's own variable, else the shared one, else the Secret block."""
    env = os.environ if environ is None else environ
    shared = env.get(SECRET_ENV)
    block = env.get(SECRET_BLOCK_ENV)
    if not shared and block:
        shared = _secret_from_block(block)
    secrets: dict[str, bytes] = {}
    for shape in shapes:
        value = env.get(f"{SECRET_ENV}_{shape.upper()}") or shared
        if not value:
            raise SecretMissingError(f"no webhook secret for the {shape} shape: set {SECRET_ENV} (or {SECRET_ENV}_{shape.upper()}), "
                                     f"or name a Prefect Secret block in {SECRET_BLOCK_ENV}")
        secrets[shape] = value.encode()
    return secrets


def sign(scheme: str, secret: bytes, body: bytes, timestamp: str | None = None) -> dict[str, str]:
    """The headers a sender of ``scheme`` puts on ``body`` (tests, the benchmark and docs use it)."""
    if scheme == "zendesk":
        stamp = timestamp or datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        digest = hmac.new(secret, stamp.encode() + body, hashlib.sha256).digest()
        return {"X-Zendesk-Webhook-Signature": base64.b64encode(digest).decode(), "X-Zendesk-Webhook-Signature-Timestamp": stamp}
    if scheme == "typeform":
        return {"Typeform-Signature": "sha256=" + base64.b64encode(hmac.new(secret, body, hashlib.sha256).digest()).decode()}
    return {"X-Churnflow-Signature": "sha256=" + hmac.new(secret, body, hashlib.sha256).hexdigest()}


def verify(scheme: str, secret: bytes, body: bytes, headers: Mapping[str, str], now: datetime | None = None) -> None:
    """Raise :class:`SignatureError` unless ``headers`` carry ``body``'s valid signature."""
    lower = {k.lower(): v for k, v in headers.items()}
    if scheme == "zendesk":
        given, stamp = lower.get("x-zendesk-webhook-signature"), lower.get("x-zendesk-webhook-signature-timestamp")
        if not given or not stamp:
            raise SignatureError("missing X-Zendesk-Webhook-Signature or X-Zendesk-Webhook-Signature-Timestamp header")
        try:
            sent = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
            skew = abs(((now or datetime.now(timezone.utc)) - sent).total_seconds())
        except (ValueError, TypeError):
            raise SignatureError("X-Zendesk-Webhook-Signature-Timestamp is not an ISO timestamp") from None
        if skew > MAX_TIMESTAMP_SKEW_SECONDS:
            raise SignatureError("X-Zendesk-Webhook-Signature-Timestamp is more than 24 h away from now (a replay?)")
        expected = sign(scheme, secret, body, stamp)["X-Zendesk-Webhook-Signature"]
        header = "X-Zendesk-Webhook-Signature"
    else:
        header = "Typeform-Signature" if scheme == "typeform" else "X-Churnflow-Signature"
        given = lower.get(header.lower())
        if not given:
            raise SignatureError(f"missing {header} header")
        expected = sign(scheme, secret, body)[header]
    if not hmac.compare_digest(expected.encode(), given.strip().encode()):
        raise SignatureError(f"{header} does not match the body (wrong secret, or the body was changed)")
