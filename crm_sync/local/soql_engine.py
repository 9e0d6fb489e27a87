"""SOQL query/queryAll with pagination, over the stored records (parsed by :mod:`crm_sync.soql`)."""

from __future__ import annotations

import re
import secrets
from typing import Any

from churnflow.salesforce_ids import to_id18
from crm_sync.soql import BoolOp, Cond, SoqlLiteral, SoqlError, like_to_regex, parse
from crm_sync.local.errors import ApiError
from crm_sync.local.httpd import Response, json_response
from crm_sync.local.schema import FieldDef, SObjectSchema, parse_datetime
from crm_sync.local.storage import Storage


class SoqlEngine(Storage):
    """query, queryAll and query_more: parse, bind to the schema, filter, order, page."""

    # -- SOQL ------------------------------------------------------------------------------
    def _query(self, text: str, version: str, include_deleted: bool, batch_size: int, head: str) -> Response:
        try:
            parsed = parse(text)
        except SoqlError as exc:
            raise ApiError(400, exc.code, exc.message) from None
        schema = self.schema.get(parsed.sobject.lower())
        if schema is None:
            raise ApiError(400, "INVALID_TYPE", f"sObject type '{parsed.sobject}' is not supported. If you are attempting to use a custom object, be sure to append the '__c' after the entity name.")
        selected: list[FieldDef] = []
        for name in parsed.fields:
            fdef = self._query_field(schema, name)
            if fdef in selected:
                raise ApiError(400, "INVALID_FIELD", f"duplicate field selected: {fdef.name}")
            selected.append(fdef)
        where = self._bind(schema, parsed.where) if parsed.where is not None else None
        rows = [r for r in self._data[schema.name.lower()].values()
                if (include_deleted or not r.get("IsDeleted")) and (where is None or self._eval(where, r))]
        for name, desc, nulls_last in reversed(parsed.order_by):
            fdef = self._query_field(schema, name)
            if fdef.type == "textarea":
                raise ApiError(400, "INVALID_FIELD", f"field '{fdef.name}' can not be sorted in a query call")
            nl = desc if nulls_last is None else nulls_last
            present = [r for r in rows if r.get(fdef.name) is not None]
            missing = [r for r in rows if r.get(fdef.name) is None]
            present.sort(key=lambda r, f=fdef: _sort_key(r.get(f.name)), reverse=desc)
            rows = present + missing if nl else missing + present
        rows = rows[parsed.offset:]
        if parsed.limit is not None:
            rows = rows[: parsed.limit]
        if parsed.count_only:
            return json_response(200, {"totalSize": len(rows), "done": True, "records": []})
        records = [self._project(schema, selected, r, version) for r in rows]
        return self._page(records, 0, batch_size, version, head)

    def _page(self, records: list[dict[str, Any]], start: int, batch_size: int, version: str, head: str) -> Response:
        end = start + batch_size
        payload: dict[str, Any] = {"totalSize": len(records), "done": end >= len(records), "records": records[start:end]}
        if end < len(records):
            locator = "01g" + secrets.token_hex(8)[:15]
            self._cursors[locator] = (records, batch_size)
            while len(self._cursors) > 200:
                self._cursors.popitem(last=False)
            payload["nextRecordsUrl"] = f"/services/data/v{version}/{head}/{locator}-{end}"
        return json_response(200, payload)

    def _query_more(self, locator: str, version: str, head: str) -> Response:
        m = re.match(r"^(01g\w+)-(\d+)$", locator)
        cursor = self._cursors.get(m.group(1)) if m else None
        if cursor is None or m is None:
            raise ApiError(400, "INVALID_QUERY_LOCATOR", "invalid query locator")
        records, batch = cursor
        return self._page(records, int(m.group(2)), batch, version, head)

    def _query_field(self, schema: SObjectSchema, name: str) -> FieldDef:
        fdef = schema.get(name)
        if fdef is None:
            raise ApiError(400, "INVALID_FIELD", (
                f"No such column '{name}' on entity '{schema.name}'. If you are attempting to use a custom field, "
                "be sure to append the '__c' after the custom field name. Please reference your WSDL or the describe call for the appropriate names."))
        return fdef

    def _bind(self, schema: SObjectSchema, node: Any) -> Any:
        """Resolve field names and type-check literals once, before any record is evaluated."""
        if isinstance(node, BoolOp):
            return BoolOp(node.op, [self._bind(schema, n) for n in node.items])
        assert isinstance(node, Cond)
        fdef = self._query_field(schema, node.field)
        if not fdef.filterable:
            raise ApiError(400, "INVALID_FIELD", f"field '{fdef.name}' can not be filtered in a query call")
        if node.op == "LIKE":
            if fdef.type not in ("string", "picklist", "id", "reference"):
                raise ApiError(400, "INVALID_FIELD", f"invalid operator on field: {fdef.name}")
            return Cond(fdef.name, "LIKE", like_to_regex(node.value))
        if node.op in ("IN", "NOT IN"):
            values = frozenset(self._literal(fdef, v) for v in node.value)
            return Cond(fdef.name, node.op, values)
        value = self._literal(fdef, node.value)
        if value is None and node.op not in ("=", "!="):
            raise ApiError(400, "MALFORMED_QUERY", f"invalid operator for null: {node.op}")
        return Cond(fdef.name, node.op, value)

    def _literal(self, fdef: FieldDef, lit: SoqlLiteral) -> Any:
        if lit.kind == "null":
            return None
        t = fdef.type
        if t in ("id", "reference"):
            rid = to_id18(lit.value) if lit.kind == "string" else None
            if rid is None:
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR", f"invalid ID field: {lit.value}")
            return rid
        if t in ("string", "picklist", "textarea"):
            if lit.kind != "string":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type string and should be enclosed in quotes")
            return lit.value.casefold()
        if t in ("double", "percent", "currency"):
            if lit.kind != "number":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type double and should not be enclosed in quotes")
            return float(lit.value)
        if t == "boolean":
            if lit.kind != "bool":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type boolean and should not be enclosed in quotes")
            return lit.value
        if t == "datetime":
            if lit.kind != "datetime":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type dateTime and should not be enclosed in quotes")
            return parse_datetime(lit.value)
        if t == "date":
            if lit.kind != "date":
                raise ApiError(400, "INVALID_QUERY_FILTER_OPERATOR",
                               f"value of filter criterion for field '{fdef.name}' must be of type date and should not be enclosed in quotes")
            return lit.value
        raise ApiError(400, "MALFORMED_QUERY", f"unsupported filter on {fdef.name}")  # pragma: no cover

    def _eval(self, node: Any, record: dict[str, Any]) -> bool:
        if isinstance(node, BoolOp):
            if node.op == "AND":
                return all(self._eval(n, record) for n in node.items)
            if node.op == "OR":
                return any(self._eval(n, record) for n in node.items)
            return not self._eval(node.items[0], record)
        raw = record.get(node.field)
        value = raw.casefold() if isinstance(raw, str) and node.field in self._text_fields else raw
        op = node.op
        if op == "LIKE":
            return raw is not None and bool(node.value.match(str(raw)))
        if op == "IN":
            return value is not None and value in node.value
        if op == "NOT IN":
            return value is None or value not in node.value
        if op == "=":
            return value == node.value
        if op == "!=":
            return value != node.value
        if value is None or node.value is None:
            return False
        try:
            return {"<": value < node.value, ">": value > node.value, "<=": value <= node.value, ">=": value >= node.value}[op]
        except TypeError:
            return False

    def _project(self, schema: SObjectSchema, selected: list[FieldDef], record: dict[str, Any], version: str) -> dict[str, Any]:
        out: dict[str, Any] = {"attributes": {"type": schema.name, "url": f"/services/data/v{version}/sobjects/{schema.name}/{record['Id']}"}}
        for fdef in selected:
            out[fdef.name] = record.get(fdef.name)
        return out


def _sort_key(value: Any) -> Any:
    if isinstance(value, str):
        return (1, value.casefold())
    if isinstance(value, bool):
        return (0, int(value))
    return (0, value)
