"""What the last ingest declared about the customer's data (read by features, labels and training).

Placeholder with the interface agreed for the ingest package, which owns the real module:
until an ingest records a manifest, every reader gets the defaults (nothing absent, churn
derived from subscription coverage, no mapped attributes, usage event types learned).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa

from churnflow.schema import CANONICAL
from churnflow.warehouse import table_exists

ChurnSource = Literal["coverage", "churn_events"]


@dataclass(frozen=True)
class AttributeSpec:
    name: str
    table: str
    kind: Literal["category", "number"]
    description: str = ""
    sentence: str = ""
    risk_when: Literal["higher", "lower", "category"] = "category"


@dataclass(frozen=True)
class DataManifest:
    absent: frozenset[str] = field(default_factory=frozenset)
    churn_source: ChurnSource = "coverage"
    attributes: tuple[AttributeSpec, ...] = ()
    usage_event_types: tuple[str, ...] | None = None


def read_manifest(engine: sa.Engine) -> DataManifest:
    """The manifest of the last ingest; the defaults when no ingest ever ran (e.g. a demo book)."""
    return DataManifest()


def available_tables(engine: sa.Engine) -> frozenset[str]:
    """Canonical tables that exist in the warehouse and are not declared absent."""
    absent = read_manifest(engine).absent
    return frozenset(name for name in CANONICAL if name not in absent and table_exists(engine, name))
