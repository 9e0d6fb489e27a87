"""Bulk API 2.0 ingest jobs: CSV in, rows processed like API writes, result CSVs out; bulk row
failures can be injected per test.
"""

from __future__ import annotations

import csv
import io
import time
from dataclasses import dataclass, field
from typing import Any

from crm_sync.local.errors import ApiError, RecordError
from crm_sync.local.httpd import Response, json_body, json_response
from crm_sync.local.schema import now_string
from crm_sync.local.storage import Storage


@dataclass
class BulkJob:
    id: str
    sobject: str
    operation: str
    external_id: str | None
    line_ending: str
    delimiter: str
    created: str
    state: str = "Open"
    data: bytes = b""
    uploads: int = 0
    successes: list[tuple[str, bool, dict[str, str]]] = field(default_factory=list)
    failures: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    unprocessed: list[dict[str, str]] = field(default_factory=list)
    columns: list[str] = field(default_factory=list)
    error_message: str | None = None
    processing_ms: int = 0

    def info(self, version: str) -> dict[str, Any]:
        out: dict[str, Any] = {
            "id": self.id, "operation": self.operation, "object": self.sobject, "createdById": "",
            "createdDate": self.created, "systemModstamp": self.created, "state": self.state,
            "concurrencyMode": "Parallel", "contentType": "CSV", "apiVersion": float(version),
            "jobType": "V2Ingest", "lineEnding": self.line_ending, "columnDelimiter": self.delimiter,
            "contentUrl": f"services/data/v{version}/jobs/ingest/{self.id}/batches",
            "numberRecordsProcessed": len(self.successes) + len(self.failures),
            "numberRecordsFailed": len(self.failures), "retries": 0,
            "totalProcessingTime": self.processing_ms, "apiActiveProcessingTime": self.processing_ms,
            "apexProcessingTime": 0,
        }
        if self.external_id:
            out["externalIdFieldName"] = self.external_id
        if self.error_message:
            out["errorMessage"] = self.error_message
        return out


_DELIMITERS = {"COMMA": ",", "TAB": "\t", "PIPE": "|", "SEMICOLON": ";", "CARET": "^", "BACKQUOTE": "`"}


class BulkIngest(Storage):
    """Bulk API 2.0 ingest jobs: create, upload CSV, close, process, results."""

    _jobs: dict[str, BulkJob]

    # -- Bulk API 2.0 ingest ---------------------------------------------------------------
    def _job(self, job_id: str) -> BulkJob:
        job = self._jobs.get(job_id)
        if job is None:
            raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")
        return job

    def _bulk(self, method: str, segs: list[str], body: bytes, headers: dict[str, str], version: str) -> Response:
        if not segs:
            if method == "GET":
                return json_response(200, {"done": True, "records": [j.info(version) for j in self._jobs.values()], "nextRecordsUrl": None})
            if method != "POST":
                raise ApiError(405, "METHOD_NOT_ALLOWED", f"HTTP Method '{method}' not allowed.")
            spec = json_body(body)
            if not isinstance(spec, dict):
                raise ApiError(400, "JSON_PARSER_ERROR", "job specification must be an object")
            operation = spec.get("operation")
            if operation not in ("insert", "update", "upsert", "delete", "hardDelete"):
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid operation: {operation}")
            schema = self.schema.get(str(spec.get("object", "")).lower())
            if schema is None:
                raise ApiError(400, "INVALIDJOB", f"InvalidJob : Invalid object: {spec.get('object')}")
            ext = spec.get("externalIdFieldName")
            if operation == "upsert":
                fdef = schema.get(ext or "")
                if fdef is None or not (fdef.external_id or fdef.type == "id"):
                    raise ApiError(400, "INVALIDJOB", f"InvalidJob : Field name provided, {ext} is not an External ID or indexed field for {schema.name}")
                ext = fdef.name
            line_ending = spec.get("lineEnding", "LF")
            delimiter = spec.get("columnDelimiter", "COMMA")
            if line_ending not in ("LF", "CRLF") or delimiter not in _DELIMITERS:
                raise ApiError(400, "INVALIDJOB", "InvalidJob : invalid lineEnding or columnDelimiter")
            if spec.get("contentType", "CSV") != "CSV":
                raise ApiError(400, "INVALIDJOB", "InvalidJob : contentType must be CSV")
            job = BulkJob(id=self._next_id("750"), sobject=schema.name,
                          operation=operation, external_id=ext if operation == "upsert" else None,
                          line_ending=line_ending, delimiter=delimiter, created=now_string())
            self._jobs[job.id] = job
            return json_response(200, job.info(version))
        job = self._job(segs[0])
        if len(segs) == 1:
            if method == "GET":
                return json_response(200, job.info(version))
            if method == "DELETE":
                if job.state not in ("UploadComplete", "JobComplete", "Aborted", "Failed"):
                    raise ApiError(400, "INVALIDJOBSTATE", f"Deleting a job in state {job.state} is not allowed")
                del self._jobs[job.id]
                return Response(204)
            if method == "PATCH":
                state = (json_body(body) or {}).get("state")
                if state == "Aborted":
                    if job.state in ("JobComplete", "Failed", "Aborted"):
                        raise ApiError(400, "INVALIDJOBSTATE", f"Aborting a job in state {job.state} is not allowed")
                    job.state = "Aborted"
                    return json_response(200, job.info(version))
                if state == "UploadComplete":
                    if job.state != "Open":
                        raise ApiError(409, "INVALIDJOBSTATE", f"Closing a job in state {job.state} is not allowed")
                    job.state = "UploadComplete"
                    info = job.info(version)
                    self._process_job(job)
                    return json_response(200, info)
                raise ApiError(400, "INVALIDJOBSTATE", f"Invalid state change to {state}")
        if len(segs) == 2:
            kind = segs[1].lower()
            if kind == "batches" and method == "PUT":
                if job.state != "Open":
                    raise ApiError(409, "INVALIDJOBSTATE", f"Uploading data to a job in state {job.state} is not allowed")
                if job.uploads:
                    raise ApiError(400, "INVALIDJOBSTATE", "Only one upload of job data is allowed per job")
                job.data = body
                job.uploads += 1
                return Response(201)
            if method == "GET" and kind in ("successfulresults", "failedresults", "unprocessedrecords"):
                if job.state not in ("JobComplete", "Failed", "Aborted"):
                    raise ApiError(400, "INVALIDJOBSTATE", f"Results are not available for a job in state {job.state}")
                return Response(200, self._results_csv(job, kind), "text/csv")
        raise ApiError(404, "NOT_FOUND", "The requested resource does not exist")

    def _results_csv(self, job: BulkJob, kind: str) -> bytes:
        buf = io.StringIO()
        writer = csv.writer(buf, quoting=csv.QUOTE_ALL, lineterminator="\n")
        if kind == "successfulresults":
            writer.writerow(["sf__Id", "sf__Created", *job.columns])
            for rid, created, row in job.successes:
                writer.writerow([rid, "true" if created else "false", *[row.get(c, "") for c in job.columns]])
        elif kind == "failedresults":
            writer.writerow(["sf__Id", "sf__Error", *job.columns])
            for rid, error, row in job.failures:
                writer.writerow([rid, error, *[row.get(c, "") for c in job.columns]])
        else:
            writer.writerow(job.columns)
            for row in job.unprocessed:
                writer.writerow([row.get(c, "") for c in job.columns])
        return buf.getvalue().encode("utf-8")

    def _process_job(self, job: BulkJob) -> None:
        """Run an ingest job synchronously at UploadComplete; rows fail independently, like Salesforce."""
        started = time.monotonic()
        schema = self.schema[job.sobject.lower()]
        text = job.data.decode("utf-8-sig")
        # The header row (never quoted in practice) shows which line ending the file uses;
        # CRLF inside quoted values is data, not a line ending.
        first_break = text.find("\n")
        used = "CRLF" if first_break > 0 and text[first_break - 1] == "\r" else "LF"
        if first_break >= 0 and used != job.line_ending:
            job.state = "Failed"
            job.error_message = f"ClientInputError : LineEnding is invalid on user data. Current LineEnding setting is {job.line_ending}"
            return
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=_DELIMITERS[job.delimiter])
        try:
            header = next(reader)
        except StopIteration:
            job.state, job.error_message = "Failed", "InvalidBatch : Empty CSV file"
            return
        for name in header:
            if schema.get(name) is None:
                job.state, job.error_message = "Failed", f"InvalidBatch : Field name not found : {name}"
                return
        job.columns = header
        fail_rows = 0
        fault = self.faults.take("PATCH", "bulk2", f"/jobs/ingest/{job.id}", ("bulk_row_failures",))
        if fault is not None:
            fail_rows = fault.rows
        for line in reader:
            if not line:
                continue
            row = dict(zip(header, line))
            if len(line) != len(header):
                job.failures.append(("", "INVALID_FIELD:Incorrect number of columns in row --", row))
                continue
            if fail_rows > 0:
                fail_rows -= 1
                job.failures.append(("", "UNABLE_TO_LOCK_ROW:unable to obtain exclusive access to this record or 1 records: --", row))
                continue
            values: dict[str, Any] = {}
            for name, cell in row.items():
                fdef = schema.get(name)
                assert fdef is not None
                if cell == "#N/A":
                    values[fdef.name] = None
                elif cell == "":
                    if job.operation == "insert" or (job.operation == "upsert"):
                        continue  # blank = leave unset on insert / unchanged on update
                    continue
                else:
                    values[fdef.name] = cell
            try:
                if job.operation == "insert":
                    rec = self._write(schema, values, None, source="csv")
                    job.successes.append((rec["Id"], True, row))
                elif job.operation in ("update", "delete", "hardDelete"):
                    rid = values.pop("Id", None)
                    if not rid:
                        raise RecordError("MISSING_ARGUMENT", "Id not specified in an update call", [])
                    rec = self._find(schema, rid)
                    if job.operation == "update":
                        self._write(schema, values, rec, source="csv")
                    else:
                        rec["IsDeleted"] = True
                        self._dirty[(schema.name.lower(), rec["Id"])] = None
                    job.successes.append((rec["Id"], False, row))
                else:
                    fdef = schema.get(job.external_id or "Id")
                    assert fdef is not None
                    key = values.get(fdef.name)
                    if not key:
                        raise RecordError("MISSING_ARGUMENT", f"{fdef.name} not specified", [fdef.name])
                    rec, created = self._upsert_one(schema, fdef, str(key), values, "csv")
                    job.successes.append((rec["Id"], created, row))
            except RecordError as exc:
                job.failures.append(("", exc.as_bulk(), row))
        job.processing_ms = int((time.monotonic() - started) * 1000)
        job.state = "JobComplete"
