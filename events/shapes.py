"""Webhook payload shapes: from a JSON body to one canonical row, through ingest's mapping
language and contracts (no second validator).

Each shape flattens its body to one flat record (nested keys joined with dots, plus the few
values a vendor spreads over several fields, derived here), then the shape's entry in
``events/mappings.yaml`` maps it with :func:`ingest.load.prepare_table`, which coerces and
checks it exactly as a row of an ingested file. The shapes (documented in docs/events.md):

* ``survey``, ``ticket``, ``failure``: churnflow's own canonical form,
  ``{"event_id", "type"?, "occurred_at"?, "data": {<canonical columns>}}``;
* ``zendesk``: a Zendesk event webhook for ticket events (``zen:event-type:ticket.*``);
* ``typeform``: a Typeform ``form_response`` webhook (account in the hidden field ``account_id``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime
from functools import lru_cache
from importlib import resources
from typing import Any, Literal

import numpy as np
import pandas as pd
import yaml

from churnflow.errors import ChurnflowError
from churnflow.schema import CANONICAL
from ingest.load import RawSource, prepare_table
from ingest.mapping import Mapping, load_mapping

Signature = Literal["churnflow", "zendesk", "typeform"]
TICKET_KINDS = ("ticket.created", "ticket.updated", "ticket.closed")
#: The canonical column that says when a row of each event table happened.
OCCURRED_COLUMN = {"surveys": "submitted_at", "tickets": "opened_at", "usage": "occurred_at"}


class EventError(ChurnflowError, ValueError):
    """A webhook event that cannot be accepted; ``field`` names the payload field, ``status`` the HTTP answer."""

    def __init__(self, message: str, *, field: str, value: object = None, status: int = 422) -> None:
        super().__init__(message)
        self.field = field
        self.value = value
        self.status = status


@dataclass(frozen=True)
class Extracted:
    """What a shape reads from a body: the event's id and kind, when it happened, and the
    flat record the mapping maps (``occurred_at`` may be None: the row's own time is used)."""

    event_id: str
    kind: str
    occurred_at: object
    record: dict[str, Any]


@dataclass(frozen=True)
class Shape:
    name: str
    table: str
    signature: Signature
    extract: Callable[[dict[str, Any]], Extracted]


@dataclass(frozen=True)
class MappedEvent:
    """An accepted event: its canonical row (coerced, contract-checked) and its envelope."""

    shape: str
    event_id: str
    kind: str
    table: str
    account_id: str
    occurred_at: datetime
    row: dict[str, Any]


def flatten(body: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (``{"a": {"b": 1}}`` -> ``{"a.b": 1}``); lists stay values."""
    out: dict[str, Any] = {}
    for key, value in body.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, f"{name}."))
        else:
            out[name] = value
    return out


def _event_id(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if value is None or (isinstance(value, str) and not value.strip()) or isinstance(value, (dict, list, bool)):
        raise EventError(f"missing event id: the body needs a non-empty '{key}'", field=key, value=value, status=400)
    return str(value).strip()


def _data(body: dict[str, Any]) -> dict[str, Any]:
    data = body.get("data")
    if not isinstance(data, dict):
        raise EventError("missing 'data': the canonical form carries the row's columns under 'data'", field="data", status=400)
    return data


def _canonical(table: str, default_kind: str) -> Callable[[dict[str, Any]], Extracted]:
    def extract(body: dict[str, Any]) -> Extracted:
        event_id = _event_id(body, "event_id")
        data = _data(body)
        kind = body.get("type") or default_kind
        if table == "tickets" and body.get("type") is None:
            kind = "ticket.closed" if data.get("closed_at") else "ticket.created"
        if table == "tickets" and kind not in TICKET_KINDS:
            raise EventError(f"type {kind!r} is not one of {', '.join(TICKET_KINDS)}", field="type", value=kind, status=422)
        return Extracted(event_id, str(kind), body.get("occurred_at"), dict(data))

    return extract


def _zendesk(body: dict[str, Any]) -> Extracted:
    """Zendesk ticket events: ``type`` ``zen:event-type:ticket.<what>``, the ticket under ``detail``.

    A ticket whose status is SOLVED or CLOSED is closed at its ``detail.updated_at``
    (Zendesk sends no close time); any other event than created is an update.
    """
    event_id = _event_id(body, "id")
    event_type = str(body.get("type") or "")
    if not event_type.startswith("zen:event-type:ticket."):
        raise EventError(f"type {event_type!r} is not a Zendesk ticket event (zen:event-type:ticket.*)", field="type", value=event_type)
    detail = body.get("detail")
    if not isinstance(detail, dict):
        raise EventError("missing 'detail': a Zendesk ticket event carries the ticket under 'detail'", field="detail", status=400)
    closed = str(detail.get("status") or "").upper() in ("SOLVED", "CLOSED")
    kind = "ticket.closed" if closed else "ticket.created" if event_type.endswith(".created") else "ticket.updated"
    record = flatten(body)
    record["closed_at"] = detail.get("updated_at") if closed else None
    return Extracted(event_id, kind, body.get("time"), record)


#: Typeform field types whose answer is the survey score, and those whose answer is the comment.
TYPEFORM_SCORE_FIELDS = ("nps", "opinion_scale", "rating", "number")
TYPEFORM_TEXT_FIELDS = ("long_text", "short_text")


def _typeform(body: dict[str, Any]) -> Extracted:
    """Typeform ``form_response``: the first score-type answer is the score, the first text
    answer the comment; the survey kind comes from the hidden field ``survey_kind`` (default nps)."""
    event_id = _event_id(body, "event_id")
    if body.get("event_type") != "form_response":
        raise EventError(f"event_type {body.get('event_type')!r} is not form_response", field="event_type", value=body.get("event_type"))
    response = body.get("form_response")
    if not isinstance(response, dict):
        raise EventError("missing 'form_response'", field="form_response", status=400)
    answers = [a for a in response.get("answers") or [] if isinstance(a, dict)]

    def first(types: tuple[str, ...]) -> Any:
        for answer in answers:
            if (answer.get("field") or {}).get("type") in types:
                return answer.get(answer.get("type") or "")
        return None

    record = flatten({k: v for k, v in body.items() if k != "form_response"})
    record.update(flatten({k: v for k, v in response.items() if k not in ("answers", "definition")}, "form_response."))
    record.setdefault("form_response.hidden.account_id", None)
    record["survey_kind"] = (response.get("hidden") or {}).get("survey_kind")
    record["answer_score"] = first(TYPEFORM_SCORE_FIELDS)
    record["answer_text"] = first(TYPEFORM_TEXT_FIELDS)
    return Extracted(event_id, "survey", response.get("submitted_at"), record)


SHAPES: dict[str, Shape] = {
    s.name: s
    for s in (
        Shape("survey", "surveys", "churnflow", _canonical("surveys", "survey")),
        Shape("ticket", "tickets", "churnflow", _canonical("tickets", "ticket.created")),
        Shape("failure", "usage", "churnflow", _canonical("usage", "failure")),
        Shape("zendesk", "tickets", "zendesk", _zendesk),
        Shape("typeform", "surveys", "typeform", _typeform),
    )
}


@lru_cache(maxsize=1)
def shape_mappings() -> dict[str, Mapping]:
    """The mappings of ``events/mappings.yaml``, each validated as an ingest mapping file."""
    data = yaml.safe_load(resources.files("events").joinpath("mappings.yaml").read_text(encoding="utf-8"))
    missing = sorted(set(SHAPES) - set(data))
    if missing:
        raise EventError(f"events/mappings.yaml: no mapping for shape(s) {missing}", field="mappings")
    return {name: load_mapping({"tables": tables}) for name, tables in data.items()}


def map_event(shape_name: str, body: dict[str, Any], *, known_accounts: pd.Index, run_date: date) -> MappedEvent:
    """One body -> one canonical row, or :class:`EventError` naming the first bad field.

    Mapping, coercion and the contract (required columns, enumerations, ranges, order, a
    known account, nothing after ``run_date``) are ingest's own (:func:`ingest.load.prepare_table`).
    """
    shape = SHAPES[shape_name]
    extracted = shape.extract(body)
    mapping = shape_mappings()[shape_name]
    src = mapping.model.tables[shape.table]
    where = f"{shape_name} event {extracted.event_id}"
    raw = RawSource(pd.DataFrame([extracted.record]).astype(object), f"{shape_name} webhook", "payload")
    try:
        prepared = prepare_table(shape.table, raw, src, mapping.options_for(src, where), run_date=run_date,
                                 known_accounts=known_accounts, where=where)
    except ChurnflowError as exc:  # a source column the mapping needs is absent from the payload
        raise EventError(str(exc), field=_missing_column(str(exc)), status=422) from None
    if len(prepared.violations):
        first = prepared.violations.iloc[0]
        reasons = "; ".join(f"{shape.table}.{v.field}: {v.reason}" + (f" (got {v.value!r})" if v.value is not None else "")
                            for v in prepared.violations.itertuples())
        raise EventError(f"event {extracted.event_id} refused by the {shape.table} contract: {reasons}",
                         field=str(first["field"]), value=first["value"], status=422)
    row = {k: _plain(v) for k, v in prepared.frame.iloc[0].to_dict().items()}
    row_time = row.get("closed_at") or row[OCCURRED_COLUMN[shape.table]]  # a close is what happened last
    occurred = _occurred_at(extracted.occurred_at, row_time)
    return MappedEvent(shape_name, extracted.event_id, extracted.kind, shape.table, str(row["account_id"]), occurred, row)


def _missing_column(message: str) -> str:
    import re

    found = re.search(r"column '([^']+)'|\['([^']+)'", message)
    return (found.group(1) or found.group(2)) if found else "body"


def _occurred_at(sent: object, row_time: datetime) -> datetime:
    """The sender's event time (converted to naive UTC), else the row's own timestamp."""
    if sent is None or sent == "":
        return row_time
    try:
        stamp = pd.Timestamp(sent)
    except (ValueError, TypeError):
        raise EventError(f"occurred_at {sent!r} is not a timestamp", field="occurred_at", value=sent) from None
    if stamp.tzinfo is not None:
        stamp = stamp.tz_convert("UTC").tz_localize(None)
    return stamp.to_pydatetime()


def _plain(value: object) -> object:
    """A JSON-able Python value of a coerced cell (timestamps as datetime, NA as None)."""
    if value is None or value is pd.NA or value is pd.NaT or (isinstance(value, float) and np.isnan(value)):
        return None
    if isinstance(value, pd.Timestamp):
        return value.to_pydatetime()
    if isinstance(value, np.generic):
        return value.item()
    return value


def row_to_json(row: dict[str, Any]) -> str:
    return json.dumps({k: v.isoformat() if isinstance(v, (datetime, date)) else v for k, v in row.items()}, sort_keys=True)


def rows_from_json(table: str, texts: list[str]) -> pd.DataFrame:
    """Inbox rows back as a frame of the canonical table (coerced to its declared kinds)."""
    from churnflow.schema import coerce

    return coerce(pd.DataFrame([json.loads(t) for t in texts], columns=CANONICAL[table].column_names), CANONICAL[table])
