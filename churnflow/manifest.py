"""What the last ingest said about this customer's data (read by features, labels and the gate).

Minimal placeholder with the interface the lead fixed; the ingest package owns the real
module (it writes the manifest when a mapping is loaded). Until then every reader gets the
defaults: nothing declared absent, churn from coverage, no mapped attributes, event types
learned from the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa

from churnflow.schema import CANONICAL
from churnflow.warehouse import table_exists


@dataclass(frozen=True)
class AttributeSpec:
    """An extra account / subscription column used as a model feature."""

    name: str
    table: str  # "accounts" or "subscriptions"
    kind: Literal["category", "number"]
    description: str = ""
    sentence: str = ""
    risk_when: Literal["higher", "lower", "category"] = "category"


@dataclass(frozen=True)
class DataManifest:
    absent: frozenset[str] = field(default_factory=frozenset)
    churn_source: Literal["coverage", "churn_events"] = "coverage"
    attributes: tuple[AttributeSpec, ...] = ()
    usage_event_types: tuple[str, ...] | None = None


def read_manifest(engine: sa.Engine) -> DataManifest:
    """The manifest of the last ingest; the defaults when no ingest ever ran."""
    return DataManifest()


def available_tables(engine: sa.Engine) -> frozenset[str]:
    """Canonical tables that exist in the warehouse and are not declared absent."""
    absent = read_manifest(engine).absent
    return frozenset(name for name in CANONICAL if name not in absent and table_exists(engine, name))
