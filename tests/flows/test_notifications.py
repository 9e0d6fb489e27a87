"""A failed (or crashed) flow run notifies over a webhook and over SMTP, against real local
receivers (an http.server and an aiosmtpd server with login), and never logs the secrets."""

from __future__ import annotations

import email
import email.policy

import pytest

from tests.flows.conftest import SMTP_PASSWORD, WEBHOOK_SECRET, Receiver, set_failure_channels
from tests.helpers import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("prefect")]

def test_every_deployed_flow_has_the_hooks() -> None:
    from flows import pipeline
    from flows.notify import notify_failure

    for fl in (pipeline.daily_flow, pipeline.train_flow, pipeline.digest_flow, pipeline.monitor_flow, pipeline.backfill_flow, pipeline.demo_flow):
        assert notify_failure in fl.on_failure_hooks and notify_failure in fl.on_crashed_hooks, fl.name


def test_failed_flow_notifies_webhook_and_email(prefect_server: None, receivers: Receiver, caplog: pytest.LogCaptureFixture,
                                                capfd: pytest.CaptureFixture[str]) -> None:
    from prefect import flow

    from flows.notify import FAILURE_HOOKS

    @flow(name="doomed", **FAILURE_HOOKS)
    def doomed(as_of: str = "2026-11-01") -> None:
        raise RuntimeError("warehouse exploded")

    caplog.set_level("DEBUG")
    state = doomed(as_of="2026-11-02", return_state=True)
    assert state.is_failed()

    assert len(receivers.posts) == 1
    post = receivers.posts[0]
    assert post["path"] == f"/hooks/{WEBHOOK_SECRET}"
    text = post["json"]["text"]
    assert "doomed" in text and "Failed" in text and "warehouse exploded" in text and "2026-11-02" in text

    assert receivers.logins == [("ops", SMTP_PASSWORD)]
    assert len(receivers.mails) == 1
    mail = receivers.mails[0]
    assert sorted(mail.rcpt_tos) == ["cs-lead@example.com", "oncall@example.com"]
    message = email.message_from_bytes(mail.content, policy=email.policy.default)
    assert message["Subject"].startswith("[churnflow] doomed run") and message["Subject"].endswith("Failed")
    assert "warehouse exploded" in message.get_content() and "/runs/flow-run/" in message.get_content()

    out, err = capfd.readouterr()
    ours = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith("mail."))  # not the test's SMTP receiver
    logged = ours + out + err
    assert "notified via webhook, e-mail" in logged
    assert WEBHOOK_SECRET not in logged and SMTP_PASSWORD not in logged


def test_unreachable_channels_do_not_leak_secrets(prefect_server: None, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
                                                  capfd: pytest.CaptureFixture[str]) -> None:
    from prefect import flow

    from flows.notify import FAILURE_HOOKS

    dead = free_port()  # nothing listens here
    set_failure_channels(monkeypatch, dead, dead, ["oncall@example.com"])

    @flow(name="doomed-quietly", **FAILURE_HOOKS)
    def doomed() -> None:
        raise RuntimeError("boom")

    caplog.set_level("DEBUG")
    assert doomed(return_state=True).is_failed()
    out, err = capfd.readouterr()
    logged = caplog.text + out + err
    assert "failure webhook unreachable (ConnectionError)" in logged
    assert "failure e-mail via 127.0.0.1" in logged
    assert WEBHOOK_SECRET not in logged and SMTP_PASSWORD not in logged


def test_crashed_flow_notifies(prefect_server: None, receivers: Receiver) -> None:
    from prefect import flow

    from flows.notify import FAILURE_HOOKS

    class Killed(BaseException):
        """Stands in for what a crash looks like inside the process (not an Exception)."""

    @flow(name="crashing", **FAILURE_HOOKS)
    def crashing() -> None:
        raise Killed()

    with pytest.raises(Killed):
        crashing()
    assert len(receivers.posts) == 1 and "Crashed" in receivers.posts[0]["json"]["text"]
    assert len(receivers.mails) == 1
