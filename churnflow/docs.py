"""Docs generated from their single declarations (schema, labels, feature catalogue, mapping models)."""

from __future__ import annotations

import inspect

from churnflow import history
from ingest.mapping import mapping_markdown
from churnflow.schema import data_model_markdown
from features import build, labels
from features.catalogue import features_markdown


def generated_docs() -> dict[str, str]:
    """File name -> text, for docs/. A test checks the committed files match."""
    churn = inspect.cleandoc(labels.__doc__ or "")
    data_model = data_model_markdown() + "\n## Churn and labels\n\n" + churn.split("\n", 1)[1].strip() + "\n"
    point_in_time = [inspect.cleandoc(m.__doc__ or "").split("\n", 1)[1].strip() for m in (history, build)]
    data_model += "\n## Point in time\n\n" + "\n\n".join(point_in_time) + "\n"
    return {"data-model.md": data_model, "features.md": features_markdown() + "\n", "mapping.md": mapping_markdown()}
