"""Publishing the digest: files on disk, a mail with inline charts, the Markdown for Prefect.

:func:`publish_digest` is the one entry point the CLI and the weekly flow share. Mail goes
through :mod:`churnflow.mail` (the relay the failure notifications use too); credentials
come from the settings and are never logged.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import date
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from pathlib import Path

import sqlalchemy as sa

from churnflow.mail import SmtpConfig, send_message, smtp_config
from churnflow.settings import Settings
from digest.build import build_digest
from digest.render import render_html, render_markdown, render_text
from digest.report import Digest
from features.catalogue import CATALOGUE

log = logging.getLogger(__name__)


def write_digest(digest: Digest, out_dir: Path | str) -> Path:
    """Write ``digest-<week_ending>.html`` and ``.txt``; returns the HTML path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html_path = out / f"digest-{digest.week_ending.isoformat()}.html"
    html_path.write_text(render_html(digest, images="data"), encoding="utf-8")
    html_path.with_suffix(".txt").write_text(render_text(digest), encoding="utf-8")
    log.info("wrote digest to %s", html_path)
    return html_path


def build_message(digest: Digest, config: SmtpConfig) -> EmailMessage:
    """multipart/alternative: text, then multipart/related (HTML + charts as cid: images)."""
    msg = EmailMessage()
    msg["Subject"] = digest.subject
    msg["From"] = config.sender
    msg["To"] = ", ".join(config.recipients)
    msg["Date"] = formatdate(localtime=False, usegmt=True)
    msg["Message-ID"] = make_msgid(domain=config.sender.rsplit("@", 1)[-1] or "churnflow")
    msg.set_content(render_text(digest))
    msg.add_alternative(render_html(digest, images="cid"), subtype="html")
    html_part = msg.get_payload()[1]
    for chart in digest.charts:
        if chart.png:
            html_part.add_related(chart.png, maintype="image", subtype="png", cid=f"<{chart.cid}>",
                                  filename=f"{chart.key}.png", disposition="inline")
    return msg


def send_digest(digest: Digest, config: SmtpConfig) -> None:
    """Mail the digest (text + HTML with inline charts) through the configured relay."""
    send_message(build_message(digest, config), config)


@dataclass(frozen=True)
class PublishedDigest:
    """What publishing a digest produced: the file, the Markdown for Prefect, whether it was mailed."""

    path: Path
    markdown: str
    emailed_to: tuple[str, ...]


def smtp_config_from(settings: Settings) -> SmtpConfig | None:
    """The SMTP config for the digest's recipients, or None when mail is not configured."""
    return smtp_config(settings, settings.smtp_recipients)


def publish_digest(engine: sa.Engine, settings: Settings, week_ending: date, *, send: bool = True) -> PublishedDigest:
    """Build the digest with the configured options, write its files and mail it if SMTP is set.

    The one entry point the CLI and the weekly flow share.
    """
    digest = build_digest(
        engine,
        week_ending,
        include_verbatims=settings.digest_include_verbatims,
        include_contacts=settings.digest_include_contacts,
        feature_family={f.name: f.family for f in CATALOGUE},
        outcome_horizon_days=settings.horizon_days,
        churn_grace_days=settings.churn_grace_days,
        label_lead_days=settings.label_lead_days,
        currency=settings.currency,
    )
    path = write_digest(digest, settings.digests)
    config = smtp_config_from(settings) if send else None
    if config is not None:
        send_digest(digest, config)
    return PublishedDigest(path, render_markdown(digest), config.recipients if config else ())
