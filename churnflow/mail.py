"""One way to send mail: the SMTP relay configured once in settings.

The weekly digest and failure notifications both go through :func:`send_message`, with
their own recipients (``smtp_recipients`` and ``notify_recipients``).
"""

from __future__ import annotations

import logging
import smtplib
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Literal

from churnflow.settings import Settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SmtpConfig:
    """How to reach the mail relay. ``password`` is excluded from ``repr`` so it never lands in logs."""

    host: str
    port: int = 587
    security: Literal["none", "starttls", "ssl"] = "starttls"
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sender: str = "churnflow@localhost"
    recipients: tuple[str, ...] = ()
    timeout_s: float = 30.0
    ca_file: Path | None = None  # extra CA bundle for relays with a private CA; None = system store

    def __post_init__(self) -> None:
        if self.security not in ("none", "starttls", "ssl"):
            raise ValueError(f"SmtpConfig.security must be 'none', 'starttls' or 'ssl', got {self.security!r}")
        if isinstance(self.recipients, str):
            object.__setattr__(self, "recipients", (self.recipients,))
        else:
            object.__setattr__(self, "recipients", tuple(self.recipients))
        if not self.recipients:
            raise ValueError("SmtpConfig.recipients is empty: nobody would receive the message")


def smtp_config(settings: Settings, recipients: Sequence[str]) -> SmtpConfig | None:
    """The relay from settings for these recipients, or None when no relay or no recipient is set."""
    if not settings.smtp_host or not recipients:
        return None
    return SmtpConfig(
        host=settings.smtp_host,
        port=settings.smtp_port,
        security=settings.smtp_security,
        username=settings.smtp_username,
        password=settings.smtp_password.get_secret_value() if settings.smtp_password else None,
        sender=settings.smtp_sender,
        recipients=tuple(recipients),
        ca_file=settings.smtp_ca_file,
    )


def send_message(message: EmailMessage, config: SmtpConfig) -> None:
    """Send through SMTP (plain, STARTTLS or implicit TLS, optional login).

    TLS always verifies the server certificate and host name (system store, or
    ``config.ca_file``): mail that names accounts and revenue must not go to an impostor relay.
    """
    context = ssl.create_default_context(cafile=str(config.ca_file) if config.ca_file else None)
    if config.username and config.security == "none":
        log.warning("SMTP login for %s over an unencrypted connection to %s", config.username, config.host)
    log.info("sending '%s' to %d recipient(s) via %s:%d (%s)", message["Subject"], len(config.recipients), config.host, config.port, config.security)
    smtp: smtplib.SMTP
    if config.security == "ssl":
        smtp = smtplib.SMTP_SSL(config.host, config.port, timeout=config.timeout_s, context=context)
    else:
        smtp = smtplib.SMTP(config.host, config.port, timeout=config.timeout_s)
    with smtp:
        smtp.ehlo()
        if config.security == "starttls":
            smtp.starttls(context=context)
            smtp.ehlo()
        if config.username:
            smtp.login(config.username, config.password or "")
        refused = smtp.send_message(message, from_addr=config.sender, to_addrs=list(config.recipients))
    if refused:
        log.warning("mail refused for %d recipient(s): %s", len(refused), sorted(refused))
