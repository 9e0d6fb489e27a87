"""What the last ingest declared about the data: absent sources, churn source, attributes.

Every ingest writes one row to ``ingest_manifest`` (declared in :mod:`churnflow.schema`)
inside the same transaction as its load, so the manifest always describes the data the
warehouse holds. Features, labels and training read it through :func:`read_manifest`
instead of re-reading the mapping file, which may have changed since the load.

A warehouse no ingest ever finished on (a demo book written with ``write_book``) gets the
defaults: nothing absent, churn derived from subscription coverage, no attributes, and
usage event types learned at training.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import sqlalchemy as sa

from churnflow.schema import CANONICAL, INGEST_MANIFEST
from churnflow.warehouse import table_exists

ChurnSource = Literal["coverage", "churn_events"]
AttributeKind = Literal["category", "number"]
RiskWhen = Literal["higher", "lower", "category"]


@dataclass(frozen=True)
class AttributeSpec:
    """An extra account/subscription column the mapping declared as a model feature.

    ``risk_when`` says which direction reads as risk in explanations: ``higher`` / ``lower``
    for numbers, ``category`` for categories (no direction).
    """

    name: str
    table: Literal["accounts", "subscriptions"]
    kind: AttributeKind
    description: str = ""
    sentence: str = ""
    risk_when: RiskWhen = "category"


@dataclass(frozen=True)
class DataManifest:
    """The ingest's declarations (defaults when no ingest ever finished)."""

    absent: frozenset[str] = frozenset()
    churn_source: ChurnSource = "coverage"
    attributes: tuple[AttributeSpec, ...] = ()
    usage_event_types: tuple[str, ...] | None = None
    run_id: str | None = field(default=None, compare=False)

    def to_config(self) -> dict[str, Any]:
        """The JSON-able form stored in ``ingest_manifest.config``."""
        return {
            "absent": sorted(self.absent),
            "churn_source": self.churn_source,
            "attributes": [asdict(a) for a in self.attributes],
            "usage_event_types": list(self.usage_event_types) if self.usage_event_types is not None else None,
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], run_id: str | None = None) -> "DataManifest":
        types = config.get("usage_event_types")
        return cls(
            absent=frozenset(config.get("absent") or ()),
            churn_source=config.get("churn_source") or "coverage",
            attributes=tuple(AttributeSpec(**a) for a in config.get("attributes") or ()),
            usage_event_types=tuple(types) if types is not None else None,
            run_id=run_id,
        )


def read_manifest(engine: sa.Engine | sa.Connection) -> DataManifest:
    """The declarations of the newest ingest whose load committed (defaults if none)."""
    if not table_exists(engine, INGEST_MANIFEST.name):
        return DataManifest()
    t = sa.table(INGEST_MANIFEST.name, sa.column("run_id"), sa.column("finished_at"), sa.column("config"))
    stmt = sa.select(t.c.run_id, t.c.config).where(t.c.finished_at.is_not(None)).order_by(t.c.finished_at.desc(), t.c.run_id.desc()).limit(1)
    if isinstance(engine, sa.Connection):
        row = engine.execute(stmt).first()
    else:
        with engine.connect() as conn:
            row = conn.execute(stmt).first()
    if row is None:
        return DataManifest()
    return DataManifest.from_config(json.loads(row.config), run_id=row.run_id)


def available_tables(engine: sa.Engine | sa.Connection) -> frozenset[str]:
    """Canonical tables that exist in the warehouse and the last ingest did not declare absent."""
    absent = read_manifest(engine).absent
    inspector = sa.inspect(engine)
    return frozenset(name for name in CANONICAL if name not in absent and inspector.has_table(name))
