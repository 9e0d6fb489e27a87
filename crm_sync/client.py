"""Log in to Salesforce (a real org, or churnflow's local server) with simple-salesforce.

One place decides how churnflow authenticates, so the push code never sees a password:
``connect(settings)`` returns a logged-in ``simple_salesforce.Salesforce``. Secrets come
from the settings (environment / config file) or from a Prefect Secret block, are passed
straight to simple-salesforce and are never logged.
"""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from simple_salesforce import Salesforce

from churnflow.errors import ChurnflowError
from crm_sync.local.schema import API_VERSION
from crm_sync.local.server import LocalSalesforce, serve_until_signalled
from crm_sync.local.tls import certificate_file, instance_file
from crm_sync.retry import DEFAULT_RETRY, RetryPolicy, describe_exc, is_retryable

log = logging.getLogger(__name__)

#: Seconds a single HTTP call may take before it is treated as failed (and retried).
DEFAULT_TIMEOUT = (10.0, 120.0)


class TimeoutSession(requests.Session):
    """A requests session with a default timeout on every call.

    simple-salesforce exposes no timeout for most calls (bulk, sObject updates); without
    one a hung connection hangs the pipeline forever instead of being retried.
    """

    def __init__(self, timeout: float | tuple[float, float] = DEFAULT_TIMEOUT) -> None:
        super().__init__()
        self.timeout = timeout

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:  # type: ignore[override]
        kwargs.setdefault("timeout", self.timeout)
        return super().request(method, url, *args, **kwargs)


def local_session(cert_path: Path, timeout: float | tuple[float, float] = DEFAULT_TIMEOUT) -> TimeoutSession:
    """A session that trusts exactly the local server's certificate.

    ``trust_env`` is off: requests lets ``REQUESTS_CA_BUNDLE``/``CURL_CA_BUNDLE`` override
    ``session.verify``, and a proxy from the environment must never see loopback traffic.
    """
    session = TimeoutSession(timeout)
    session.trust_env = False
    session.verify = str(cert_path)
    return session


def connect_local(
    server: LocalSalesforce | None = None,
    *,
    port: int | None = None,
    cert_dir: Path | None = None,
    host: str = "127.0.0.1",
    timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
    version: str = API_VERSION,
    retry: RetryPolicy | None = None,
) -> Salesforce:
    """Log in to a local server (an object, or one listening on ``host:port`` with its cert in ``cert_dir``)."""
    if server is not None:
        cert_path, domain = server.cert_path, server.domain
    else:
        if port is None or cert_dir is None:
            raise ValueError("connect_local needs a server, or a port and the cert_dir of a running server")
        # Only read the certificate: generating one here would not match the running server's.
        cert_path = certificate_file(cert_dir)
        if not cert_path.exists():
            raise FileNotFoundError(f"no local CRM certificate at {cert_path}: is the local CRM running with this crm_dir?")
        domain = f"{host}:{port}/local"
    return login_with_retry(lambda: Salesforce(
        username=LocalSalesforce.username,
        password=LocalSalesforce.password,
        security_token=LocalSalesforce.security_token,
        domain=domain,
        session=local_session(cert_path, timeout),
        version=version,
    ), retry or DEFAULT_RETRY, "local CRM login")


def login_with_retry(login: Callable[[], Salesforce], policy: RetryPolicy = DEFAULT_RETRY, what: str = "login") -> Salesforce:
    """Log in, retrying what every other call retries (503 / maintenance pages, timeouts,
    dropped connections), bounded, with backoff; a real rejection (INVALID_LOGIN) is raised at once."""
    for attempt in range(policy.attempts):
        try:
            return login()
        except Exception as exc:
            if not is_retryable(exc) or attempt + 1 >= policy.attempts:
                raise
            pause = policy.delay(attempt)
            log.warning("%s failed (%s); retry %d of %d in %.2f s", what, describe_exc(exc), attempt + 1, policy.attempts - 1, pause)
            time.sleep(pause)
    raise AssertionError("unreachable")  # pragma: no cover


def _secret(value: Any) -> str | None:
    if value is None:
        return None
    return value.get_secret_value() if hasattr(value, "get_secret_value") else str(value)


def _password_from_block(block_name: str) -> str:
    """Read the password from a Prefect Secret block (imported lazily: Prefect is heavy)."""
    from prefect.blocks.system import Secret

    value = Secret.load(block_name).get()
    if not isinstance(value, str) or not value:
        raise RuntimeError(f"Prefect Secret block {block_name!r} holds no password string")
    return value


def connect(settings: Any, *, timeout: float | tuple[float, float] = DEFAULT_TIMEOUT, retry: RetryPolicy | None = None) -> Salesforce:
    """A logged-in Salesforce client for ``settings`` (a ``churnflow.settings.Settings``).

    Local mode logs in to the local server at 127.0.0.1:``local_crm_port`` (certificate in
    ``settings.crm_dir``). Real mode uses JWT bearer when a consumer key and private key
    file are set, else username + password + security token; the password comes from
    ``sf_password`` or the Prefect Secret block ``sf_secret_block``.
    """
    if settings.crm == "local":
        port = settings.local_crm_port
        if not port:
            raise ValueError("local_crm_port is 0: start the local CRM first (crm_sync.client.local_crm) so a port is known")
        log.info("connecting to the local CRM on 127.0.0.1:%s", port)
        return connect_local(port=port, cert_dir=settings.crm_dir, timeout=timeout, retry=retry)
    if not settings.sf_username:
        raise ValueError("sf_username is required to connect to Salesforce (CHURNFLOW_SF_USERNAME)")
    policy = retry or DEFAULT_RETRY
    session = TimeoutSession(timeout)
    if settings.sf_consumer_key and settings.sf_privatekey_file:
        log.info("connecting to Salesforce (%s) with JWT bearer", settings.sf_domain)
        return login_with_retry(lambda: Salesforce(
            username=settings.sf_username, consumer_key=settings.sf_consumer_key,
            privatekey_file=str(Path(settings.sf_privatekey_file).expanduser()),
            domain=settings.sf_domain, session=session, version=API_VERSION,
        ), policy, "Salesforce login")
    password = _secret(settings.sf_password)
    if password is None and settings.sf_secret_block:
        password = _password_from_block(settings.sf_secret_block)
    if password is None:
        raise ValueError("no Salesforce password: set CHURNFLOW_SF_PASSWORD or sf_secret_block, or configure JWT")
    log.info("connecting to Salesforce (%s) with username and password", settings.sf_domain)
    return login_with_retry(lambda: Salesforce(
        username=settings.sf_username, password=password,
        security_token=_secret(settings.sf_security_token) or "",
        domain=settings.sf_domain, session=session, version=API_VERSION,
    ), policy, "Salesforce login")


class ForeignLocalCrm(ChurnflowError):
    """What listens on the local CRM port is not the local CRM of this churnflow home."""


def verify_local_instance(crm_dir: Path, port: int, host: str = "127.0.0.1") -> None:
    """Refuse to push into a server on ``port`` that is not the local CRM started for ``crm_dir``
    (another user's churnflow, another home, anything else): its instance token must be the
    one our server wrote beside our certificate, served over TLS with our certificate."""
    fix = (f"stop it, or give this home another port (CHURNFLOW_LOCAL_CRM_PORT=0 picks a free one), "
           f"or start this home's CRM with `churnflow crm-server`")
    expected_file = instance_file(crm_dir)
    if not expected_file.exists() or not certificate_file(crm_dir).exists():
        raise ForeignLocalCrm(f"port {port} is taken by a server that is not the local CRM of {crm_dir}: {fix}")
    try:
        answer = requests.get(f"https://{host}:{port}/local/instance", verify=str(certificate_file(crm_dir)), timeout=10)
        served = answer.json().get("instance") if answer.ok else None
    except (requests.RequestException, ValueError):
        served = None
    if served != expected_file.read_text(encoding="utf-8").strip():
        raise ForeignLocalCrm(f"port {port} is taken by a server that is not the local CRM of {crm_dir}: {fix}")


def _port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


@contextmanager
def local_crm(settings: Any) -> Iterator[LocalSalesforce | None]:
    """Run the local CRM in-process for the duration (state in ``settings.crm_dir``).

    If something already listens on ``local_crm_port`` (``churnflow crm-server`` in another
    terminal), that server is used and None is yielded. With ``local_crm_port=0`` a free
    port is picked and ``settings.local_crm_port`` is set to it for the duration, so
    ``connect(settings)`` finds it (only through this settings object: a new ``Settings()``
    or another process would not know the port).
    """
    port = settings.local_crm_port
    if port and _port_in_use(port):
        verify_local_instance(settings.crm_dir, port)
        log.info("the local CRM of %s already listens on port %s; using it", settings.crm_dir, port)
        yield None
        return
    server = LocalSalesforce(state_path=settings.crm_dir / "crm.sqlite", port=port, cert_dir=settings.crm_dir)
    server.start()
    if not port:
        settings.local_crm_port = server.port
    try:
        yield server
    finally:
        server.stop()
        settings.local_crm_port = port  # a picked port is dead now: do not leave it behind


def serve_local_crm(settings: Any, port: int | None = None) -> None:
    """Serve the local CRM in the foreground on the demo's state until Ctrl-C."""
    server = LocalSalesforce(state_path=settings.crm_dir / "crm.sqlite", port=port or settings.local_crm_port,
                             cert_dir=settings.crm_dir)
    url = server.start()
    log.warning("local CRM serving %s/ (self-signed certificate %s); Ctrl-C stops", url, server.cert_path)
    serve_until_signalled(server)
