"""Record storage of the local org: seed, read, validate and write records, persist them."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterable
from datetime import date
from pathlib import Path
from typing import Any

from churnflow.vocabulary import CLOSED_TASK_STATUSES
from churnflow.salesforce_ids import make_id, to_id18
from crm_sync.local.errors import ApiError, RecordError
from crm_sync.local.schema import FieldDef, SObjectSchema, now_string, parse_datetime, type_error


class Storage:
    """The org's records: in memory, persisted to SQLite when ``state_path`` is set, validated
    on every write as Salesforce validates (types, picklists, lengths, required, references).

    The attributes are set by :class:`crm_sync.local.server.LocalSalesforce`; the other parts
    of the server (SOQL, REST, bulk, login, page) build on these.
    """

    schema: dict[str, SObjectSchema]
    state_path: Path | None
    page_size: int
    api_version: str
    integration_user_id: str
    api_calls: Counter[str]
    _lock: threading.RLock
    _data: dict[str, OrderedDict[str, dict[str, Any]]]
    _counters: Counter[str]
    _sessions: set[str]
    _cursors: OrderedDict[str, tuple[list[dict[str, Any]], int]]
    _dirty: dict[tuple[str, str], None]
    _seq: int
    _text_fields: set[str]
    _db: sqlite3.Connection | None

    # -- persistence -----------------------------------------------------------------------
    def _open_state(self) -> None:
        if self.state_path is None:
            return
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.state_path), check_same_thread=False)
        self._db.execute("CREATE TABLE IF NOT EXISTS records (sobject TEXT, id TEXT PRIMARY KEY, seq INTEGER, body TEXT)")
        self._db.execute("CREATE TABLE IF NOT EXISTS counters (prefix TEXT PRIMARY KEY, value INTEGER)")
        for prefix, value in self._db.execute("SELECT prefix, value FROM counters"):
            self._counters[prefix] = value
        self._seq = self._db.execute("SELECT COALESCE(MAX(seq), 0) FROM records").fetchone()[0]
        for sobject, rid, body in self._db.execute("SELECT sobject, id, body FROM records ORDER BY seq"):
            if sobject in self._data:
                self._data[sobject][rid] = json.loads(body)

    def _flush(self) -> None:
        if self._db is None or not self._dirty:
            self._dirty.clear()
            return
        rows = []
        for sobject, rid in self._dirty:
            if rid in self._data[sobject]:
                self._seq += 1
                rows.append((sobject, rid, self._seq, json.dumps(self._data[sobject][rid])))
        with self._db:
            # seq keeps insertion order across restarts; an update keeps the original seq.
            self._db.executemany(
                "INSERT INTO records (sobject, id, seq, body) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(id) DO UPDATE SET body = excluded.body",
                rows,
            )
            self._db.executemany("INSERT INTO counters VALUES (?, ?) ON CONFLICT(prefix) DO UPDATE SET value = excluded.value",
                                 list(self._counters.items()))
        self._dirty.clear()

    # -- data access for tests and the demo ---------------------------------------------------
    def _schema(self, sobject: str) -> SObjectSchema:
        schema = self.schema.get(sobject.lower())
        if schema is None:
            raise ApiError(404, "NOT_FOUND", f"The requested resource does not exist")
        return schema

    def seed(self, sobject: str, records: Iterable[dict[str, Any]], *, skip_existing: bool = False) -> list[str]:
        """Insert records directly (no API call is counted); records may carry their own Id.

        Validation is the same as for API writes except that read-only fields may be set.
        With ``skip_existing`` a record whose Id (or, for Users, Username) exists is left
        as it is and its Id returned, so mirroring a warehouse into the org is idempotent.
        """
        schema = self._schema(sobject)
        table = self._data[schema.name.lower()]
        ids: list[str] = []
        with self._lock:
            for values in records:
                values = dict(values)
                given = values.pop("Id", None)
                rid = None
                if given is not None:
                    rid = to_id18(str(given))
                    if rid is None or not rid.startswith(schema.prefix):
                        raise ValueError(f"malformed {sobject} Id {given!r}")
                if skip_existing:
                    if rid is not None and rid in table:
                        ids.append(rid)
                        continue
                    username = str(values.get("Username", "")).lower()
                    if schema.name == "User" and username:
                        match = next((r["Id"] for r in table.values() if str(r.get("Username", "")).lower() == username), None)
                        if match:
                            ids.append(match)
                            continue
                if rid is not None and rid in table:
                    raise ValueError(f"DUPLICATE_VALUE: {sobject} {rid} already exists")
                try:
                    rec = self._write(schema, values, None, source="json", trusted=True, new_id=rid)
                except RecordError as exc:
                    raise ValueError(f"{exc.code}: {exc.message}") from exc
                ids.append(rec["Id"])
            self._flush()
        return ids

    def records(self, sobject: str, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Copies of the stored records, oldest first."""
        schema = self._schema(sobject)
        with self._lock:
            return [dict(r) for r in self._data[schema.name.lower()].values() if include_deleted or not r.get("IsDeleted")]

    def get_record(self, sobject: str, record_id: str) -> dict[str, Any] | None:
        schema = self._schema(sobject)
        rid = to_id18(record_id)
        with self._lock:
            rec = self._data[schema.name.lower()].get(rid or "")
            return dict(rec) if rec and not rec.get("IsDeleted") else None

    # -- writes ----------------------------------------------------------------------------
    def _next_id(self, prefix: str) -> str:
        self._counters[prefix] += 1
        return make_id(prefix, self._counters[prefix] + 1000)

    def _coerce(self, schema: SObjectSchema, fdef: FieldDef, value: Any, source: str) -> Any:
        """Validate one value as Salesforce would; return the stored form."""
        if value is None:
            if not fdef.nillable:
                raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name])
            return None
        t = fdef.type
        if t in ("string", "textarea", "picklist"):
            if isinstance(value, bool) or isinstance(value, (dict, list)):
                raise type_error(fdef, value, source)
            text = value if isinstance(value, str) else (str(int(value)) if isinstance(value, float) and value.is_integer() else str(value))
            if t == "picklist" and fdef.picklist and text not in fdef.picklist:
                raise RecordError("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                                  f"{fdef.label}: bad value for restricted picklist field: {text}", [fdef.name])
            if fdef.length and len(text) > fdef.length:
                shown = text if len(text) < 100 else text[:97] + "..."
                raise RecordError("STRING_TOO_LONG", f"{fdef.label}: data value too large: {shown} (max length={fdef.length})", [fdef.name])
            return text
        if t in ("double", "percent", "currency"):
            if isinstance(value, bool):
                raise type_error(fdef, value, source)
            try:
                number = float(value)
            except (TypeError, ValueError):
                raise type_error(fdef, value, source) from None
            if number != number or number in (float("inf"), float("-inf")):
                raise type_error(fdef, value, source)
            number = round(number, fdef.scale)
            if fdef.precision and abs(number) >= 10 ** (fdef.precision - fdef.scale):
                raise RecordError("NUMBER_OUTSIDE_VALID_RANGE",
                                  f"{fdef.label}: value outside of valid range on numeric field: {value}", [fdef.name])
            return number
        if t == "datetime":
            parsed = parse_datetime(value) if isinstance(value, str) else None
            if parsed is None:
                raise type_error(fdef, value, source)
            return parsed
        if t == "date":
            if not isinstance(value, str):
                raise type_error(fdef, value, source)
            text = value.strip()
            try:
                return date.fromisoformat(text[:10] if "T" in text else text).isoformat()
            except ValueError:
                raise type_error(fdef, value, source) from None
        if t == "boolean":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            raise type_error(fdef, value, source)
        if t in ("reference", "id"):
            rid = to_id18(value) if isinstance(value, str) else None
            if rid is None:
                raise RecordError("MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name])
            if t == "reference":
                targets = [self.schema[r.lower()] for r in fdef.reference_to]
                target = next((s for s in targets if rid.startswith(s.prefix)), None)
                if target is None:
                    raise RecordError("MALFORMED_ID", f"{fdef.label}: id value of incorrect type: {value}", [fdef.name])
                ref = self._data[target.name.lower()].get(rid)
                if ref is None or ref.get("IsDeleted"):
                    raise RecordError("INVALID_CROSS_REFERENCE_KEY", "invalid cross reference id", [fdef.name])
                if target.name == "User" and fdef.name == "OwnerId" and not ref.get("IsActive", True):
                    raise RecordError("INACTIVE_OWNER_OR_USER",
                                      f"operation performed with inactive user [{rid}] as owner of {schema.name.lower()}", [])
            return rid
        raise RecordError("UNKNOWN_EXCEPTION", f"unsupported type {t}")  # pragma: no cover

    def _write(self, schema: SObjectSchema, values: dict[str, Any], existing: dict[str, Any] | None, *,
               source: str, trusted: bool = False, new_id: str | None = None, commit: bool = True) -> dict[str, Any]:
        """Validate and apply one insert (existing=None) or update. Returns the stored record."""
        record = dict(existing) if existing else {}
        for key, value in values.items():
            if key == "attributes":
                continue
            fdef = schema.get(key)
            if fdef is None:
                if source == "json":
                    raise RecordError("INVALID_FIELD", f"No such column '{key}' on sobject of type {schema.name}", [key])
                raise RecordError("INVALID_FIELD", f"Field name not found : {key}", [key])
            if fdef.type == "id":
                if existing is not None and to_id18(str(value)) == existing["Id"]:
                    continue
                if existing is None and not trusted:
                    raise RecordError("INVALID_FIELD", "cannot specify Id in an insert call", ["Id"])
                raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE", "Unable to create/update fields: Id.", ["Id"])
            allowed = fdef.createable if existing is None else fdef.updateable
            if not allowed and not trusted:
                raise RecordError("INVALID_FIELD_FOR_INSERT_UPDATE",
                                  f"Unable to create/update fields: {fdef.name}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                                  [fdef.name])
            record[fdef.name] = self._coerce(schema, fdef, value, source)
        if existing is None:
            for fdef in schema.fields.values():
                if fdef.name not in record:
                    if fdef.name == "OwnerId":
                        record["OwnerId"] = self.integration_user_id
                    elif fdef.default is not None:
                        record[fdef.name] = fdef.default
                    elif fdef.type == "boolean":
                        record[fdef.name] = False
                    elif fdef.createable and not fdef.nillable:
                        raise RecordError("REQUIRED_FIELD_MISSING", f"Required fields are missing: [{fdef.name}]", [fdef.name])
                    else:
                        record[fdef.name] = None
        for fdef in schema.fields.values():
            if fdef.unique and record.get(fdef.name) is not None:
                for other in self._data[schema.name.lower()].values():
                    if other.get("Id") != record.get("Id") and not other.get("IsDeleted") and \
                            str(other.get(fdef.name)).lower() == str(record[fdef.name]).lower() and (existing is None or other["Id"] != existing["Id"]):
                        raise RecordError("DUPLICATE_VALUE",
                                          f"duplicate value found: {fdef.name} duplicates value on record with id: {other['Id']}", [fdef.name])
        # derived fields
        if schema.name == "Task":
            record["IsClosed"] = record.get("Status") in CLOSED_TASK_STATUSES
        if schema.name == "User":
            record["Name"] = " ".join(p for p in (record.get("FirstName"), record.get("LastName")) if p)
        stamp = now_string()
        if existing is None:
            record["Id"] = new_id or self._next_id(schema.prefix)
            record["IsDeleted"] = False
            record["CreatedDate"] = stamp
        record["LastModifiedDate"] = stamp
        record["SystemModstamp"] = stamp
        if commit:
            self._data[schema.name.lower()][record["Id"]] = record
            self._dirty[(schema.name.lower(), record["Id"])] = None
        return record

    def _find(self, schema: SObjectSchema, record_id: str) -> dict[str, Any]:
        rid = to_id18(record_id)
        if rid is None or not rid.startswith(schema.prefix):
            raise RecordError("MALFORMED_ID", f"{schema.name} ID: id value of incorrect type: {record_id}", ["Id"])
        rec = self._data[schema.name.lower()].get(rid)
        if rec is None or rec.get("IsDeleted"):
            raise RecordError("ENTITY_IS_DELETED" if rec else "NOT_FOUND",
                              "entity is deleted" if rec else "The requested resource does not exist", [])
        return rec

    def _external_match(self, schema: SObjectSchema, fdef: FieldDef, value: str) -> list[dict[str, Any]]:
        if fdef.type == "id":
            rid = to_id18(value)
            rec = self._data[schema.name.lower()].get(rid or "")
            return [rec] if rec and not rec.get("IsDeleted") else []
        return [r for r in self._data[schema.name.lower()].values()
                if not r.get("IsDeleted") and r.get(fdef.name) is not None and str(r[fdef.name]).lower() == value.lower()]

    def _upsert_one(self, schema: SObjectSchema, fdef: FieldDef, value: str, values: dict[str, Any], source: str) -> tuple[dict[str, Any], bool]:
        matches = self._external_match(schema, fdef, value)
        if len(matches) > 1:
            raise RecordError("DUPLICATE_EXTERNAL_ID",
                              f"{fdef.label}: more than one record found for external id field: {[m['Id'] for m in matches]}", [fdef.name])
        body = {k: v for k, v in values.items() if k.lower() != fdef.name.lower()}
        if fdef.type != "id":
            body[fdef.name] = value
        if matches:
            return self._write(schema, body, matches[0], source=source), False
        if fdef.type == "id":
            raise RecordError("NOT_FOUND", "Provided external ID field does not exist or is not accessible: " + value, [])
        return self._write(schema, body, None, source=source), True
