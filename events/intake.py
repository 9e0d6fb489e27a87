"""The event intake: a small HTTP service (``churnflow serve-events``, default port 8787).

``POST /events/<shape>`` for each shape of :mod:`events.shapes` (survey, ticket, failure,
zendesk, typeform). Per request, in this order:

1. the signature (:mod:`events.auth`) -> 401 when missing or wrong (nothing stored);
2. the body is JSON with an event id -> 400 otherwise (quarantined);
3. an id already in the inbox -> 200 ``duplicate``: nothing changes;
4. mapped and checked by ingest's mapping language and contracts -> 422 with the field and
   reason otherwise (quarantined);
5. committed to ``event_inbox`` (one transaction), THEN answered 202 ``accepted``: a process
   killed right after the answer has lost nothing;
6. published as a Prefect event for the account (after the answer is decided; a lost publish
   is redone by the redelivery loop, which re-publishes events still unapplied after
   :data:`REDELIVER_AFTER`).

With a DuckDB warehouse the intake lets go of the file after each request, so reactions in
other processes can open it; PostgreSQL is the better home for a busy intake.
"""

from __future__ import annotations

import json
import logging
import threading
from datetime import date, datetime, timedelta, timezone
from typing import Any

import pandas as pd
import sqlalchemy as sa
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from churnflow.settings import Settings
from churnflow.warehouse import get_engine, table_exists
from events import auth, inbox
from events.publish import publish
from events.shapes import SHAPES, EventError, map_event

log = logging.getLogger(__name__)

DEFAULT_PORT = 8787
REDELIVER_AFTER = timedelta(seconds=60)
REDELIVER_EVERY_SECONDS = 30.0
REDELIVER_BACKOFF_MAX = timedelta(minutes=30)


def _utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


def _known_account(engine: sa.Engine, account_id: object) -> pd.Index:
    if account_id is None or not table_exists(engine, "accounts"):
        return pd.Index([], dtype=object)
    with engine.connect() as conn:
        found = conn.execute(sa.text("SELECT account_id FROM accounts WHERE account_id = :a"), {"a": str(account_id)}).first()
    return pd.Index([found[0]] if found else [], dtype=object)


class Intake:
    """The intake's logic, free of HTTP: ``handle`` returns (status, JSON answer)."""

    def __init__(self, settings: Settings, secrets: dict[str, bytes], *, publish_events: bool = True) -> None:
        self.settings = settings
        self.engine = get_engine(settings.warehouse)
        self._secrets = secrets
        self.publish_events = publish_events
        self._lock = threading.Lock() if self.engine.dialect.name == "duckdb" else None
        self._backoff: dict[str, tuple[datetime, int]] = {}  # account -> (next re-publish, rounds so far)
        inbox.ensure_inbox(self.engine)
        self._release()

    def _release(self) -> None:
        """DuckDB: one process holds the file; let go of it between requests."""
        if self.engine.dialect.name == "duckdb":
            self.engine.dispose()

    def handle(self, shape_name: str, body: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
        shape = SHAPES.get(shape_name)
        if shape is None:
            return 404, {"status": "unknown", "reason": f"no shape '{shape_name}'; POST to /events/<{'|'.join(SHAPES)}>"}
        try:
            auth.verify(shape.signature, self._secrets[shape_name], body, headers)
        except auth.SignatureError as exc:
            return 401, {"status": "refused", "reason": str(exc)}
        if self._lock is None:
            return self._accept(shape_name, body)
        with self._lock:
            try:
                return self._accept(shape_name, body)
            finally:
                self._release()

    def _accept(self, shape_name: str, body: bytes) -> tuple[int, dict[str, Any]]:
        now = _utcnow()
        event_id: str | None = None
        try:
            try:
                payload = json.loads(body)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise EventError(f"the body is not JSON: {exc}", field="body", value=body[:200].decode(errors="replace"), status=400) from None
            if not isinstance(payload, dict):
                raise EventError("the body is not a JSON object", field="body", status=400)
            event_id = _peek_event_id(payload)
            if event_id and inbox.is_known(self.engine, event_id):
                return 200, {"status": "duplicate", "event_id": event_id}
            account = _peek_account(shape_name, payload)
            event = map_event(shape_name, payload, known_accounts=_known_account(self.engine, account),
                              run_date=max(date.today(), now.date()))
        except EventError as exc:
            inbox.quarantine_event(self.engine, shape_name, event_id, exc.field, exc.value, str(exc), now)
            log.info("event %s (%s) refused: %s", event_id, shape_name, exc)
            return exc.status, {"status": "refused", "event_id": event_id, "field": exc.field, "reason": str(exc)}
        if not inbox.commit_event(self.engine, event, now):
            return 200, {"status": "duplicate", "event_id": event.event_id}
        if self.publish_events:
            publish(event.event_id, event.account_id, event.kind, shape_name)
        return 202, {"status": "accepted", "event_id": event.event_id, "account_id": event.account_id, "kind": event.kind,
                     "table": event.table, "received_at": now.isoformat()}

    def redeliver(self, older_than: timedelta = REDELIVER_AFTER, now: datetime | None = None) -> int:
        """Publish again the events still unapplied after ``older_than`` (one per account).

        Per account the wait doubles after each re-publish (up to :data:`REDELIVER_BACKOFF_MAX`):
        under a backlog the events are unapplied only because their reaction is queued, and
        re-publishing every round would queue another run per account each time (the burst
        benchmark saw it). A restarted intake starts over: its first round re-publishes all."""
        now = now or _utcnow()
        if self._lock is not None:
            with self._lock:
                stale = inbox.stale_pending(self.engine, older_than, now)
                self._release()
        else:
            stale = inbox.stale_pending(self.engine, older_than, now)
        latest = stale.drop_duplicates("account_id", keep="last")
        self._backoff = {a: due for a, due in self._backoff.items() if a in set(latest["account_id"].astype(str))}
        sent = 0
        for row in latest.itertuples():
            account = str(row.account_id)
            due, rounds = self._backoff.get(account, (now, 0))
            if now < due:
                continue
            publish(str(row.event_id), account, str(row.kind), str(row.source))
            self._backoff[account] = (now + min(older_than * 2 ** rounds, REDELIVER_BACKOFF_MAX), rounds + 1)
            sent += 1
        if sent:
            log.info("re-published %d account(s) with %d unapplied event(s)", sent, len(stale))
        return sent


def _peek_event_id(payload: dict[str, Any]) -> str | None:
    for key in ("event_id", "id"):
        value = payload.get(key)
        if isinstance(value, (str, int)) and not isinstance(value, bool) and str(value).strip():
            return str(value).strip()
    return None


def _peek_account(shape_name: str, payload: dict[str, Any]) -> object:
    """The account id the payload names, before mapping (to look up only that account)."""
    if shape_name == "zendesk":
        return (payload.get("detail") or {}).get("organization_id") if isinstance(payload.get("detail"), dict) else None
    if shape_name == "typeform":
        response = payload.get("form_response") if isinstance(payload.get("form_response"), dict) else {}
        return (response.get("hidden") or {}).get("account_id") if isinstance(response.get("hidden"), dict) else None
    data = payload.get("data")
    return data.get("account_id") if isinstance(data, dict) else None


def create_app(settings: Settings | None = None, secrets: dict[str, bytes] | None = None, *, publish_events: bool = True,
               redeliver_every: float | None = REDELIVER_EVERY_SECONDS) -> Any:
    """The FastAPI application (secrets resolved now: a missing one fails before serving)."""
    from contextlib import asynccontextmanager


    settings = settings or Settings()
    intake = Intake(settings, secrets if secrets is not None else auth.resolve_secrets(list(SHAPES)), publish_events=publish_events)
    stop = threading.Event()

    def redeliver_loop() -> None:
        while not stop.wait(redeliver_every or 0):
            try:
                intake.redeliver()
            except Exception as exc:  # noqa: BLE001 - keep the loop alive; the next round retries
                log.warning("redelivery failed: %s", type(exc).__name__)

    @asynccontextmanager
    async def lifespan(app: FastAPI):  # noqa: ANN202 - FastAPI's lifespan protocol
        thread = None
        if publish_events and redeliver_every:
            thread = threading.Thread(target=redeliver_loop, name="churnflow-redeliver", daemon=True)
            thread.start()
        yield
        stop.set()

    app = FastAPI(title="churnflow event intake", lifespan=lifespan,
                  description="Webhooks for survey responses, tickets and product failures (docs/events.md).")
    app.state.intake = intake

    @app.get("/health")
    def health() -> dict[str, Any]:
        return {"status": "ok", "shapes": list(SHAPES)}

    @app.post("/events/{shape}")
    async def receive(shape: str, request: Request) -> JSONResponse:
        body = await request.body()  # the raw bytes: the signature covers them exactly
        status, answer = await run_in_threadpool(intake.handle, shape, body, dict(request.headers))
        return JSONResponse(answer, status_code=status)

    return app


def serve(host: str = "127.0.0.1", port: int = DEFAULT_PORT, settings: Settings | None = None) -> None:
    """Run the intake in the foreground (uvicorn) until stopped."""
    import uvicorn

    app = create_app(settings)
    log.warning("churnflow event intake on http://%s:%d/events/<%s>", host, port, "|".join(SHAPES))
    uvicorn.run(app, host=host, port=port, log_level="warning")
