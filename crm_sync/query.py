"""Read from Salesforce safely: URI-safe IN lists and paginated queries, each page retried.

Every SOQL value is quoted with :func:`crm_sync.soql.soql_quote`, and IN lists are split so
no query URI exceeds Salesforce's length limit.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import quote_plus

from simple_salesforce import Salesforce

from crm_sync.retry import RetryCounter, RetryPolicy, call_with_retry
from crm_sync.soql import soql_quote

#: Keep query URIs well under Salesforce's 16,384-character limit.
MAX_QUERY_URI = 12000


def in_clause_queries(sf: Salesforce, head: str, field_name: str, values: list[str], tail: str = "", *,
                      where: str = "", max_uri: int = MAX_QUERY_URI, max_values: int = 500) -> Iterator[str]:
    """Split ``head WHERE [where AND] field IN (...) tail`` into queries whose URI stays under ``max_uri``."""
    prefix = f"{head} WHERE {where + ' AND ' if where else ''}{field_name} IN ("
    suffix = ")" + (f" {tail}" if tail else "")
    base = len(sf.base_url) + len("queryAll/?q=") + len(quote_plus(prefix + suffix))
    batch: list[str] = []
    size = base
    for value in values:
        literal = soql_quote(value)
        cost = len(quote_plus(literal)) + 3  # ", " separator
        if batch and (size + cost > max_uri or len(batch) >= max_values):
            yield prefix + ", ".join(soql_quote(v) for v in batch) + suffix
            batch, size = [], base
        batch.append(value)
        size += cost
    if batch:
        yield prefix + ", ".join(soql_quote(v) for v in batch) + suffix


def query_all(sf: Salesforce, soql: str, policy: RetryPolicy, stats: RetryCounter | None = None,
              include_deleted: bool = False) -> list[dict[str, Any]]:
    """All records of a query (pagination followed), each page retried on its own."""
    first = call_with_retry(sf, lambda _a: sf.query(soql, include_deleted=include_deleted), "query", policy, stats)
    records = list(first["records"])
    page = first
    while not page.get("done", True):
        url = page["nextRecordsUrl"]
        page = call_with_retry(sf, lambda _a, u=url: sf.query_more(u, identifier_is_url=True), "query_more", policy, stats)
        records.extend(page["records"])
    return records

