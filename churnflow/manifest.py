"""What the last ingest declared about the sources (placeholder with the shared interface).

The ingest package owns this module; until it lands, this version returns the defaults
that hold when no ingest ever ran (a demo book written with ``write_book``): nothing
absent, churn from coverage, no attributes, usage event types learned at training.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import sqlalchemy as sa

from churnflow.schema import CANONICAL
from churnflow.warehouse import table_exists


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
    absent: frozenset[str] = frozenset()
    churn_source: Literal["coverage", "churn_events"] = "coverage"
    attributes: tuple[AttributeSpec, ...] = field(default_factory=tuple)
    usage_event_types: tuple[str, ...] | None = None


def read_manifest(engine: sa.Engine) -> DataManifest:
    """The manifest of the last ingest (defaults: no ingest recorded)."""
    return DataManifest()


def available_tables(engine: sa.Engine) -> frozenset[str]:
    """Canonical tables that exist in the warehouse and are not declared absent."""
    absent = read_manifest(engine).absent
    return frozenset(name for name in CANONICAL if name not in absent and table_exists(engine, name))
