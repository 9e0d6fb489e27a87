"""Generated docs stay in step with their declarations."""

from __future__ import annotations

from pathlib import Path

from churnflow.docs import generated_docs

DOCS = Path(__file__).parents[2] / "docs"


def test_committed_docs_match_the_declarations() -> None:
    for name, text in generated_docs().items():
        assert (DOCS / name).read_text(encoding="utf-8") == text, f"docs/{name} is stale: run `churnflow docs`"
