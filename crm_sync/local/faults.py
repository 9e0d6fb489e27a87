"""Fault injection: request limits, expired sessions, 503s, slow or lost responses, dropped
connections and failing bulk rows, armed per test so the client's retries meet real HTTP.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from typing import Any


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
