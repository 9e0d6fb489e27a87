"""Running flows without a Prefect server: a temporary server that starts on a busy machine.

Without ``PREFECT_API_URL`` a flow run starts Prefect's ephemeral server, which by default
gives up after 20 s. On a loaded 2-core laptop it needs longer, and its failure is a page of
traceback. :func:`temporary_server_guard` raises the start-up timeout (unless the user set one)
and turns a failed start into one clear line.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from churnflow.errors import ChurnflowError

STARTUP_TIMEOUT_ENV = "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"
DEFAULT_STARTUP_TIMEOUT_SECONDS = 180
_STARTUP_FAILURE = "attempting to connect to ephemeral Prefect API server"


class PrefectStartupError(ChurnflowError):
    """Prefect's temporary server did not start; the message says what to do."""


def configure_temporary_server() -> int:
    """Give the ephemeral server a generous start-up timeout unless one is set; return it."""
    os.environ.setdefault(STARTUP_TIMEOUT_ENV, str(DEFAULT_STARTUP_TIMEOUT_SECONDS))
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    return int(os.environ[STARTUP_TIMEOUT_ENV])


@contextmanager
def temporary_server_guard() -> Iterator[None]:
    """Run flows under a generous start-up timeout; a server that never starts is one line."""
    timeout = configure_temporary_server()
    try:
        yield
    except RuntimeError as exc:
        if _STARTUP_FAILURE not in str(exc) or os.environ.get("PREFECT_API_URL"):
            raise
        raise PrefectStartupError(
            f"Prefect's temporary server did not start within {timeout} s (is the machine very busy?). "
            f"Set {STARTUP_TIMEOUT_ENV} higher, or run `prefect server start` and set PREFECT_API_URL=http://127.0.0.1:4200/api."
        ) from None
