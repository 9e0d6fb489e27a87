"""Layers point one way (docs/architecture.md): core <- stages, in order <- flows and the entry modules.

Every .py of the project's packages is parsed with ``ast``; every import counts, at the top
of a module or inside a function (a lazy import is still a dependency). The core
(``churnflow/``) imports no stage and no flow; a stage imports the core and earlier stages
only; ``churnflow/cli.py`` and ``churnflow/docs.py`` compose everything and may import
anything, and nothing imports them. Modules of one layer do not import each other in a cycle.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]

CORE = "churnflow"
# in order: each may import the ones before it (events: the webhook intake, an input beside ingest)
STAGES = ("ingest", "events", "features", "models", "outreach", "crm_sync", "digest")
FLOWS = "flows"
ENTRY_MODULES = frozenset({"churnflow.cli", "churnflow.docs"})
PACKAGES = (CORE, *STAGES, FLOWS)

def layer(module: str) -> int | None:
    """0 for the core, 1.. for the stages in order, len(STAGES) + 1 for flows; None: not ours."""
    top = module.split(".", 1)[0]
    if top == CORE:
        return 0
    if top in STAGES:
        return 1 + STAGES.index(top)
    if top == FLOWS:
        return len(STAGES) + 1
    return None


def imported_modules(source: str, module: str, is_package: bool = False, *, runtime_only: bool = False) -> set[str]:
    """Every module ``source`` imports (absolute names), top-level and inside functions;
    ``runtime_only``: without the imports under ``if TYPE_CHECKING:`` (never executed)."""
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    typing_only = {id(inner) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for inner in ast.walk(stmt)}
    found: set[str] = set()
    for node in ast.walk(tree):
        if runtime_only and id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join([*parts, *([base] if base else [])])
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names if alias.name != "*"}  # `from pkg import module`
    return {name for name in found if name}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def violations(sources: Mapping[str, str], packages: Iterable[str] = ()) -> list[str]:
    """The layering violations of ``sources`` (module name -> source text); ``packages``: the
    names among them that are packages (``__init__``), for relative imports."""
    known_modules = set(sources)
    graph: dict[str, set[str]] = {}
    out: list[str] = []
    pkgs = set(packages)
    for module, source in sorted(sources.items()):
        here = layer(module)
        if here is None:
            continue
        imports = {name for name in imported_modules(source, module, module in pkgs) if layer(name) is not None}
        targets = {_resolve(name, known_modules) for name in imports}
        targets.discard(module)
        # a cycle needs imports that run: type-only imports (under TYPE_CHECKING) do not count
        at_runtime = {_resolve(name, known_modules) for name in imported_modules(source, module, module in pkgs, runtime_only=True)}
        graph[module] = {t for t in targets & at_runtime if layer(t) == here and t in known_modules and t != module}
        if module in ENTRY_MODULES:
            continue
        for target in sorted(targets):
            there = layer(target)
            if target in ENTRY_MODULES:
                out.append(f"{module} imports the entry module {target}")
            elif there is not None and there > here:
                what = "the core" if here == 0 else f"stage {module.split('.')[0]}"
                kind = "flows" if there == len(STAGES) + 1 else f"the later stage {target.split('.')[0]}"
                out.append(f"{module}: {what} imports {kind} ({target})")
    out += [f"import cycle: {' -> '.join(cycle)}" for cycle in _cycles(graph)]
    return out


def _resolve(name: str, modules: set[str]) -> str:
    """The module an imported name lives in: the longest prefix that is a module of ours
    (``features.rollups.refresh`` -> ``features.rollups``), else the name itself."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return name


def _cycles(graph: Mapping[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one module (Tarjan), each as a sorted list."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups)


def project_sources() -> tuple[dict[str, str], set[str]]:
    sources: dict[str, str] = {}
    packages: set[str] = set()
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
                packages.add(".".join(parts))
            sources[".".join(parts)] = path.read_text(encoding="utf-8")
    return sources, packages


def test_layers_point_one_way() -> None:
    sources, packages = project_sources()
    found = set(violations(sources, packages))
    assert sorted(found) == [], "layering violations (see docs/architecture.md)"


def test_every_package_has_a_layer() -> None:
    """A new top-level package must take its place in the layers (here and in docs/architecture.md)."""
    ours = {p.parent.name for p in ROOT.glob("*/__init__.py")} - {"tests"}
    assert ours <= set(PACKAGES), f"packages without a layer: {sorted(ours - set(PACKAGES))}"


@pytest.mark.parametrize(("sources", "expected"), [
    ({"churnflow.schema": "from features.text import TOPICS\n"}, "churnflow.schema: the core imports the later stage features (features.text)"),
    ({"churnflow.warehouse": "def f():\n    from features.rollups import record\n"}, "the core imports the later stage features"),
    ({"churnflow.warehouse": "import flows.tasks\n"}, "the core imports flows (flows.tasks)"),
    ({"ingest.load": "from features import rollups\n"}, "stage ingest imports the later stage features (features.rollups)"),
    ({"models.train": "def due():\n    import digest.build\n"}, "stage models imports the later stage digest"),
    ({"outreach.playbooks": "from churnflow.cli import main\n"}, "imports the entry module churnflow.cli"),
    ({"crm_sync.ops": "from crm_sync.sync import run\n", "crm_sync.sync": "def f():\n    from . import ops\n"},
     "import cycle: crm_sync.ops -> crm_sync.sync"),
])
def test_a_violating_source_is_caught(sources: dict[str, str], expected: str) -> None:
    found = violations(sources)
    assert any(expected in v for v in found), found


@pytest.mark.parametrize("sources", [
    {"features.rollups": "from ingest.usage_days import day_ranges\nfrom churnflow import schema\n"},
    {"churnflow.cli": "from digest.build import build\nimport flows.pipeline\n"},
    {"flows.tasks": "from models import train\nfrom digest.build import build\n"},
    {"crm_sync.ops": "from crm_sync.push import push\n", "crm_sync.push": "import pandas\n"},
    {"outreach.decisions": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from outreach.playbooks import Book\n",
     "outreach.playbooks": "from outreach.decisions import decide\n"},  # a type-only import makes no cycle
])
def test_allowed_directions_pass(sources: dict[str, str]) -> None:
    assert violations(sources) == []


def test_every_stage_table_constant_names_a_declared_table() -> None:
    """A stage's ``*_TABLE = "name"`` is a table it writes or reads: it is declared in churnflow/schema.py."""
    from churnflow.schema import DECLARED

    sources, _ = project_sources()
    undeclared = []
    for module, source in sources.items():
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
                for target in node.targets:
                    if isinstance(target, ast.Name) and target.id.endswith("_TABLE") and node.value.value not in DECLARED:
                        undeclared.append(f"{module}.{target.id} = {node.value.value!r}")
    assert undeclared == []
