"""Retry Salesforce calls the way their failures ask for.

simple-salesforce 1.12.10 retries nothing: request limits, expired sessions, 503s, dropped
connections and timeouts all surface as exceptions. :func:`call_with_retry` retries the
transient ones (bounded exponential backoff with full jitter) and logs in again once on
``INVALID_SESSION_ID``; :func:`is_ambiguous` tells a caller when a failed create may still
have been applied, so it looks before re-sending. Used by the login, the push, the pull and
the operator tools alike.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import requests
from simple_salesforce import Salesforce
from simple_salesforce.exceptions import (
    SalesforceAuthenticationFailed,
    SalesforceError,
    SalesforceExpiredSession,
    SalesforceGeneralError,
    SalesforceRefusedRequest,
)

log = logging.getLogger(__name__)

T = TypeVar("T")


class RetryCounter(Protocol):
    """Anything that counts the retries of a run (a push summary)."""

    retries: int


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded exponential backoff with full jitter (spreads retries of concurrent runs)."""

    attempts: int = 5
    base_delay: float = 1.0
    max_delay: float = 30.0

    def delay(self, attempt: int) -> float:
        return random.uniform(self.base_delay / 2, min(self.max_delay, self.base_delay * 2 ** attempt))


DEFAULT_RETRY = RetryPolicy()
ONCE = RetryPolicy(attempts=1)


def content_codes(exc: SalesforceError) -> set[str]:
    content = exc.content
    codes: set[str] = set()
    if isinstance(content, list):
        for item in content:
            if isinstance(item, dict) and item.get("errorCode"):
                codes.add(str(item["errorCode"]))
    elif isinstance(content, (str, bytes)):
        text = content.decode("utf-8", "replace") if isinstance(content, bytes) else content
        if "REQUEST_LIMIT_EXCEEDED" in text:
            codes.add("REQUEST_LIMIT_EXCEEDED")
    return codes


def is_retryable(exc: BaseException) -> bool:
    """Transient failures: 5xx, request limits, timeouts and connection errors (not TLS/auth)."""
    if isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, SalesforceAuthenticationFailed):
        # A real rejection carries Salesforce's code (INVALID_LOGIN, invalid_grant...). None
        # means an error page without one (a 503 from a proxy or maintenance): transient.
        return exc.code is None or (isinstance(exc.code, int) and exc.code >= 500)
    if isinstance(exc, SalesforceRefusedRequest):
        return "REQUEST_LIMIT_EXCEEDED" in content_codes(exc)
    if isinstance(exc, SalesforceGeneralError):
        return exc.status >= 500
    return False


def is_ambiguous(exc: BaseException) -> bool:
    """May Salesforce have applied a request that failed this way? (Then a create must not be
    blindly re-sent.) A read timeout, a connection dropped after sending, a 500/502/504 may
    hide a commit; a refused connection, a 503, a 401 or a request limit never do."""
    if isinstance(exc, requests.exceptions.ConnectTimeout) or isinstance(exc, requests.exceptions.SSLError):
        return False
    if isinstance(exc, (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError)):
        return True
    if isinstance(exc, SalesforceGeneralError):
        return exc.status >= 500 and exc.status != 503
    return False


def describe_exc(exc: BaseException) -> str:
    if isinstance(exc, SalesforceError) and not isinstance(exc, SalesforceAuthenticationFailed):
        codes = content_codes(exc)
        return f"HTTP {exc.status} {','.join(sorted(codes))}".strip()
    return type(exc).__name__


def relogin(sf: Salesforce) -> None:
    """Log in again (new session id) with the credentials simple-salesforce already holds."""
    sf._refresh_session()  # noqa: SLF001 - simple-salesforce's own re-login entry point (regenerates headers)


def _relogin_with_retry(sf: Salesforce, policy: RetryPolicy, what: str) -> None:
    """The login endpoint fails transiently too (503, dropped connection): retry it, bounded."""
    for attempt in range(policy.attempts):
        try:
            relogin(sf)
            return
        except Exception as exc:
            if not is_retryable(exc) or attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            log.warning("%s: login failed (%s); retrying in %.2f s", what, describe_exc(exc), pause)
            time.sleep(pause)


def call_with_retry(sf: Salesforce, fn: Callable[[int], T], what: str, policy: RetryPolicy = DEFAULT_RETRY,
                    stats: RetryCounter | None = None) -> T:
    """Run ``fn(attempt)`` until it succeeds, retrying transient failures a bounded number of times.

    ``attempt`` > 0 tells ``fn`` that an earlier try may have been applied by Salesforce
    (a timeout or dropped connection after the request was sent), so creates re-check
    what exists first. A 401 INVALID_SESSION_ID re-logs in once and repeats the same
    attempt: Salesforce rejected it before doing anything.
    """
    attempt = 0
    relogged = False
    while True:
        try:
            return fn(attempt)
        except SalesforceExpiredSession:
            if relogged or getattr(sf, "_salesforce_login_partial", None) is None:
                raise
            relogged = True
            log.warning("%s: session expired; logging in again", what)
            _relogin_with_retry(sf, policy, what)
            if stats is not None:
                stats.retries += 1
        except Exception as exc:
            if not is_retryable(exc) or attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            attempt += 1
            if stats is not None:
                stats.retries += 1
            log.warning("%s failed (%s); retry %d of %d in %.2f s", what, describe_exc(exc), attempt, policy.attempts - 1, pause)
            time.sleep(pause)


@contextmanager
def count_requests(session: requests.Session) -> Iterator[list[int]]:
    """Count HTTP requests made through ``session`` (logins, retries and bulk steps included)."""
    counter = [0]
    had_own = "request" in vars(session)
    original = session.request

    def counting(*args: Any, **kwargs: Any) -> requests.Response:
        counter[0] += 1
        return original(*args, **kwargs)

    session.request = counting  # type: ignore[method-assign]
    try:
        yield counter
    finally:
        if had_own:
            session.request = original  # type: ignore[method-assign]
        else:
            del session.request

