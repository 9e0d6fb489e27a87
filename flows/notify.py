"""Failure notifications: a flow run that fails or crashes tells someone.

Attached to every deployed flow as ``on_failure`` and ``on_crashed`` hooks. Channels come
from the settings (``CHURNFLOW_NOTIFY_*``): a webhook that takes Slack-style JSON
(``{"text": ...}``; Slack, Mattermost, Teams workflows, or any HTTP receiver) and/or an
e-mail over SMTP. Both are optional and independent; a broken channel is logged (by type,
never with its URL or credentials) and never masks the run's own failure.
"""

from __future__ import annotations

import logging
import smtplib
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from typing import Any

import requests

from churnflow.mail import send_message, smtp_config
from churnflow.settings import Settings

log = logging.getLogger("churnflow.notify")


def failure_message(flow_name: str, flow_run: Any, state: Any) -> tuple[str, str]:
    """(subject, body) for a failed or crashed run; carries the run's parameters and UI link."""
    from prefect.settings import get_current_settings

    subject = f"[churnflow] {flow_name} run '{flow_run.name}' {state.name}"
    ui = get_current_settings().ui_url
    lines = [
        f"Flow: {flow_name}",
        f"Run: {flow_run.name} ({flow_run.id})",
        f"State: {state.name}: {state.message or ''}".rstrip(),
        f"Deployment: {flow_run.deployment_id or '(none: run outside a deployment)'}",
        f"Parameters: {dict(flow_run.parameters or {})}",
        f"Scheduled start: {flow_run.expected_start_time}",
    ]
    if ui:
        lines.append(f"UI: {ui.rstrip('/')}/runs/flow-run/{flow_run.id}")
    return subject, "\n".join(lines)


@contextmanager
def _urllib3_quiet() -> Iterator[None]:
    """urllib3 logs request lines (with the secret webhook path) at DEBUG: not for this call."""
    logger = logging.getLogger("urllib3.connectionpool")
    previous = logger.level
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.setLevel(previous)


def send_webhook(settings: Settings, subject: str, body: str) -> bool:
    if settings.notify_webhook_url is None:
        return False
    try:
        with _urllib3_quiet():
            response = requests.post(
                settings.notify_webhook_url.get_secret_value(), json={"text": f"*{subject}*\n{body}", "subject": subject, "body": body}, timeout=10
            )
        response.raise_for_status()
        return True
    except requests.HTTPError as exc:
        log.warning("failure webhook answered HTTP %s", exc.response.status_code if exc.response is not None else "?")
    except requests.RequestException as exc:  # the exception text would carry the (secret) URL
        log.warning("failure webhook unreachable (%s)", type(exc).__name__)
    return False


def send_email(settings: Settings, subject: str, body: str) -> bool:
    """Through the same relay as the digest (smtp_* settings), to ``notify_recipients``."""
    config = smtp_config(settings, settings.notify_recipients)
    if config is None:
        return False
    message = EmailMessage()
    message["Subject"] = subject
    message["From"] = config.sender
    message["To"] = ", ".join(config.recipients)
    message.set_content(body)
    try:
        send_message(message, config)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("failure e-mail via %s:%s not sent (%s)", config.host, config.port, type(exc).__name__)
    return False


def send_all(settings: Settings, subject: str, body: str) -> list[str]:
    """Send over every configured channel; the names of those that delivered."""
    return [name for name, ok in (("webhook", send_webhook(settings, subject, body)), ("e-mail", send_email(settings, subject, body))) if ok]


def notify_failure(flow: Any, flow_run: Any, state: Any) -> None:
    """Prefect ``on_failure`` / ``on_crashed`` hook."""
    try:
        settings = Settings()
    except Exception as exc:  # noqa: BLE001 - bad settings must not hide the run's failure
        log.warning("failure notification skipped: settings invalid (%s)", type(exc).__name__)
        return
    subject, body = failure_message(flow.name, flow_run, state)
    sent = send_all(settings, subject, body)
    log.info("failure of %s run %s notified via %s", flow.name, flow_run.name, ", ".join(sent) or "nothing (no channel configured)")


FAILURE_HOOKS: dict[str, list] = {"on_failure": [notify_failure], "on_crashed": [notify_failure]}
