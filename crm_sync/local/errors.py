"""Salesforce's error shapes: request-level (:class:`ApiError`, JSON list body) and record-level
(:class:`RecordError`, as a composite result, an API error or a Bulk 2.0 ``sf__Error``).
"""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """A request-level error: HTTP status plus Salesforce's ``[{message, errorCode}]`` body."""

    def __init__(self, status: int, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.fields = fields

    def body(self) -> list[dict[str, Any]]:
        item: dict[str, Any] = {"message": self.message, "errorCode": self.code}
        if self.fields is not None:
            item["fields"] = self.fields
        return [item]


class RecordError(Exception):
    """A record-level error (composite and bulk report these per record)."""

    def __init__(self, code: str, message: str, fields: list[str] | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.fields = fields or []

    def as_result(self) -> dict[str, Any]:
        return {"statusCode": self.code, "message": self.message, "fields": self.fields}

    def as_api_error(self, status: int = 400) -> ApiError:
        return ApiError(404 if self.code in ("NOT_FOUND", "ENTITY_IS_DELETED") else status, self.code, self.message, self.fields)

    def as_bulk(self) -> str:
        return f"{self.code}:{self.message}:{','.join(self.fields)} --"
