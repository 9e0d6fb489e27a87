"""Test groups, assigned in one place: every test is exactly one of ``data``, ``model`` or
``system`` (declared with their meaning in pyproject.toml), so each group runs alone with
``pytest -m data`` (or ``model``, ``system``).

A test gets its group from the first of: a group marker written on the test itself, its entry
in ``OVERRIDES`` (test or file), or its folder in ``FOLDERS``. A test in a folder not listed
stops the collection with a message saying where to add it. This file sits at the repository
root so that the notebooks, collected by nbmake outside ``tests/``, are grouped too.
"""

from __future__ import annotations

import pytest

GROUPS = ("data", "model", "system")

# By the folder of the test file: tests mirror the packages.
FOLDERS = {
    "tests/churnflow": "data",
    "tests/ingest": "data",
    "tests/features": "data",
    "tests/outreach": "data",
    "tests/digest": "data",
    "tests/events": "data",
    "tests/models": "model",
    "tests/crm_sync": "system",
    "tests/flows": "system",
    "tests/acceptance": "system",
    "notebooks": "system",
}

# Tests (or whole files) that do more than their folder suggests.
OVERRIDES = {
    "tests/churnflow/test_cli.py::test_each_stage_runs_alone": "system",  # every stage, trained model, CRM and SMTP
    "tests/churnflow/test_cli_errors.py": "system",  # the CLI as a subprocess
    "tests/ingest/test_ingest.py::test_foreign_export_validates_ingests_and_scores": "model",  # trains and scores
    "tests/events/test_intake_durability.py": "system",  # the intake server as a process, killed
    "tests/test_suite.py": "data",  # the suite's own rules
    "tests/test_architecture.py": "data",  # the layers, read from the source
}


def group_of(nodeid: str) -> str | None:
    """The group a test gets from OVERRIDES or FOLDERS (None: not assigned)."""
    path, _, name = nodeid.partition("::")
    test = f"{path}::{name.split('[')[0]}"
    if test in OVERRIDES:
        return OVERRIDES[test]
    if path in OVERRIDES:
        return OVERRIDES[path]
    folder = path.rsplit("/", 1)[0] if "/" in path else ""
    while folder:
        if folder in FOLDERS:
            return FOLDERS[folder]
        folder = folder.rsplit("/", 1)[0] if "/" in folder else ""
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    unassigned, ambiguous = [], []
    for item in items:
        written = {m.name for m in item.iter_markers() if m.name in GROUPS}
        if not written:
            group = group_of(item.nodeid)
            if group is None:
                unassigned.append(item.nodeid)
                continue
            item.add_marker(getattr(pytest.mark, group))
            written = {group}
        if len(written) != 1:
            ambiguous.append(f"{item.nodeid} ({', '.join(sorted(written))})")
    if unassigned or ambiguous:
        lines = [f"  no group: {n}" for n in unassigned] + [f"  more than one group: {n}" for n in ambiguous]
        raise pytest.UsageError("every test must be exactly one of data, model, system: add its folder to FOLDERS or "
                                "the test to OVERRIDES in conftest.py (repository root), or mark it\n" + "\n".join(lines))
