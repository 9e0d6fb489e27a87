"""sObject REST and composite sObject collections (up to 200 records per call)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

from crm_sync.local.errors import ApiError, RecordError
from crm_sync.local.httpd import Response, json_body, json_response
from crm_sync.local.schema import now_string
from crm_sync.local.soql_engine import SoqlEngine


COMPOSITE_LIMIT = 200


class SObjectRest(SoqlEngine):
    """sObject REST (describe, create, read, update, delete, upsert) and composite collections."""

    # -- sObject REST ------------------------------------------------------------------------
    def _sobjects(self, method: str, segs: list[str], query: dict[str, list[str]], body: bytes, version: str) -> Response:
        if not segs:
            if method != "GET":
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET")
            return json_response(200, {"encoding": "UTF-8", "maxBatchSize": 200, "sobjects": [
                {"name": s.name, "label": s.label, "keyPrefix": s.prefix, "queryable": True, "createable": True,
                 "updateable": True, "custom": False} for s in self.schema.values()]})
        schema = self.schema.get(segs[0].lower())
        if schema is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        if len(segs) == 1:
            if method == "POST":
                values = json_body(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                try:
                    rec = self._write(schema, values, None, source="json")
                except RecordError as exc:
                    raise exc.as_api_error() from None
                return json_response(201, {"id": rec["Id"], "success": True, "errors": []})
            if method == "GET":
                return json_response(200, {"objectDescribe": {"name": schema.name, "keyPrefix": schema.prefix}, "recentItems": []})
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,POST")
        if len(segs) == 2 and segs[1] == "describe":
            return json_response(200, schema.describe(version))
        if len(segs) == 2:
            rec = self._find(schema, segs[1])
            if method == "GET":
                wanted = (query.get("fields") or [""])[0]
                fdefs = [self._query_field(schema, f.strip()) for f in wanted.split(",") if f.strip()] or list(schema.fields.values())
                return json_response(200, self._project(schema, fdefs, rec, version))
            if method == "PATCH":
                values = json_body(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                self._write(schema, values, rec, source="json")
                return Response(204)
            if method == "DELETE":
                rec["IsDeleted"] = True
                rec["SystemModstamp"] = now_string()
                self._dirty[(schema.name.lower(), rec["Id"])] = None
                return Response(204)
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed. Allowed are GET,PATCH,DELETE")
        if len(segs) == 3:
            fdef = schema.get(segs[1])
            if fdef is None or not (fdef.external_id or fdef.type == "id"):
                raise ApiError(404, "NOT_FOUND", f"Provided external ID field does not exist or is not accessible: {segs[1]}")
            if method == "GET":
                matches = self._external_match(schema, fdef, segs[2])
                if not matches:
                    raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
                if len(matches) > 1:
                    return json_response(300, [f"/services/data/v{version}/sobjects/{schema.name}/{m['Id']}" for m in matches])
                return json_response(200, self._project(schema, list(schema.fields.values()), matches[0], version))
            if method == "PATCH":
                values = json_body(body)
                if not isinstance(values, dict):
                    raise ApiError(400, "JSON_PARSER_ERROR", "Cannot deserialize instance of sObject from a non-object value")
                matches = self._external_match(schema, fdef, segs[2])
                if len(matches) > 1:
                    return json_response(300, [f"/services/data/v{version}/sobjects/{schema.name}/{m['Id']}" for m in matches])
                try:
                    rec, created = self._upsert_one(schema, fdef, segs[2], values, "json")
                except RecordError as exc:
                    raise exc.as_api_error() from None
                # Like Salesforce: 201 on create; on update 200 with a body from v46.0, 204 before.
                modern = float(version) >= 46.0
                body_out: dict[str, Any] = {"id": rec["Id"], "success": True, "errors": []}
                if modern:
                    body_out["created"] = created
                if created:
                    return json_response(201, body_out)
                return json_response(200, body_out) if modern else Response(204)
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    # -- composite sObject collections ------------------------------------------------------
    def _composite(self, method: str, segs: list[str], query: dict[str, list[str]], body: bytes, version: str) -> Response:
        if method == "GET" and len(segs) == 1:
            schema = self._schema(segs[0])
            ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
            fdefs = [self._query_field(schema, f) for f in (query.get("fields") or ["Id"])[0].split(",") if f]
            out = []
            for rid in ids:
                try:
                    out.append(self._project(schema, fdefs, self._find(schema, rid), version))
                except RecordError:
                    out.append(None)
            return json_response(200, out)
        if method == "DELETE" and not segs:
            ids = [i for i in (query.get("ids") or [""])[0].split(",") if i]
            results = []
            for rid in ids:
                try:
                    schema = next(s for s in self.schema.values() if rid.startswith(s.prefix))
                    rec = self._find(schema, rid)
                    rec["IsDeleted"] = True
                    self._dirty[(schema.name.lower(), rec["Id"])] = None
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                except (RecordError, StopIteration):
                    results.append({"id": rid, "success": False, "errors": [RecordError("MALFORMED_ID", f"malformed id {rid}").as_result()]})
            return json_response(200, results)
        payload = json_body(body)
        if not isinstance(payload, dict) or not isinstance(payload.get("records"), list):
            raise ApiError(400, "JSON_PARSER_ERROR", "Expected a JSON object with a 'records' array")
        records = payload["records"]
        all_or_none = bool(payload.get("allOrNone", False))
        if len(records) > COMPOSITE_LIMIT:
            raise ApiError(400, "EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call")
        if method == "POST" and not segs:
            mode = "create"
        elif method == "PATCH" and not segs:
            mode = "update"
        elif method == "PATCH" and len(segs) == 2:
            mode = "upsert"
        else:
            raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
        # Validate everything against a snapshot; commit only what should commit.
        snapshot = {k: OrderedDict((i, dict(r)) for i, r in v.items()) for k, v in self._data.items()} if all_or_none else {}
        dirty_before = dict(self._dirty)
        results: list[dict[str, Any]] = []
        failed = False
        seen_ids: set[str] = set()
        for values in records:
            try:
                if not isinstance(values, dict):
                    raise RecordError("JSON_PARSER_ERROR", "record must be an object")
                sobject = (values.get("attributes") or {}).get("type") if mode != "upsert" else segs[0]
                if not sobject:
                    raise RecordError("INVALID_TYPE", "Must send a concrete entity type.")
                schema = self.schema.get(str(sobject).lower())
                if schema is None:
                    raise RecordError("INVALID_TYPE", f"sObject type '{sobject}' is not supported.")
                if mode == "create":
                    rec = self._write(schema, values, None, source="json")
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                elif mode == "update":
                    rid = values.get("Id") or values.get("id")
                    if not rid:
                        raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", [])
                    rec = self._find(schema, str(rid))
                    if rec["Id"] in seen_ids:
                        raise RecordError("INVALID_BATCH_REQUEST", "duplicate id in list", [])
                    seen_ids.add(rec["Id"])
                    rest = {k: v for k, v in values.items() if k.lower() != "id"}
                    self._write(schema, rest, rec, source="json")
                    results.append({"id": rec["Id"], "success": True, "errors": []})
                else:
                    fdef = schema.get(segs[1])
                    if fdef is None or not (fdef.external_id or fdef.type == "id"):
                        raise ApiError(400, "INVALID_FIELD", f"Field name provided, {segs[1]} is not an External ID or indexed field for {schema.name}")
                    key = next((v for k, v in values.items() if k.lower() == fdef.name.lower()), None)
                    if key is None:
                        raise RecordError("MISSING_ARGUMENT", f"{fdef.name} not specified", [fdef.name])
                    rec, created = self._upsert_one(schema, fdef, str(key), values, "json")
                    results.append({"id": rec["Id"], "success": True, "errors": [], "created": created})
            except RecordError as exc:
                failed = True
                item: dict[str, Any] = {"success": False, "errors": [exc.as_result()]}
                if mode == "upsert":
                    item["created"] = False
                results.append(item)
        if all_or_none and failed:
            self._data.update(snapshot)
            self._dirty = dirty_before
            for item in results:
                item.pop("id", None)
                item["id"] = None
                if item["success"]:
                    item["success"] = False
                    item["errors"] = [{"statusCode": "ALL_OR_NONE_OPERATION_ROLLED_BACK",
                                       "message": "Record rolled back because not all records were valid and the request was using AllOrNone header",
                                       "fields": []}]
        for item in results:
            if "id" not in item:
                item["id"] = None
        return json_response(200, [{"id": r["id"], "success": r["success"], "errors": r["errors"], **({"created": r["created"]} if "created" in r else {})} for r in results])
