"""The packages import one way, down one study's flow, and no module imports itself round a cycle.

node (receive → … → delivery) may import inference (the pipelines) and dicom_sr (the result
objects); inference may import dicom_sr (its result contract, dicom_sr.findings, and the codes) but
not node; dicom_sr imports neither. Inside node, a stage imports the stages after it in the
flow (receive → spool → jobs → delivery → notify) and the shared core (node.config, node.db, node.errors,
…), never one before it and never node.ops, which operates them all. Every import counts,
module-level, lazy (in a function) or for annotations only, read from the source with ast so that
nothing is executed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("node", "inference", "dicom_sr")
#: package → the other packages it may import
ALLOWED = {"node": {"inference", "dicom_sr"}, "inference": {"dicom_sr"}, "dicom_sr": set()}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(path): path
           for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def _module_of(name: str) -> str | None:
    """The radnode module an imported name lives in (``inference.pipelines.create`` → the package)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(module: str) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(MODULES[module].read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found.update(target for target in map(_module_of, names) if target is not None and target != module)
    return found


GRAPH = {module: _imports(module) for module in MODULES}


@pytest.mark.parametrize("package", PACKAGES)
def test_a_package_imports_only_the_packages_below_it_in_the_flow(package: str) -> None:
    wrong = sorted(f"{module} imports {target}" for module, targets in GRAPH.items()
                   if module.split(".")[0] == package for target in targets
                   if target.split(".")[0] not in ALLOWED[package] | {package})
    assert not wrong, wrong


#: node's stages in the order one study goes through them
STAGES = ("node.receive", "node.spool", "node.jobs", "node.delivery", "node.notify")
CORE = ("node.config", "node.db", "node.dimse", "node.durable", "node.errors", "node.metrics", "node.tls")


def _stage(module: str) -> str | None:
    return next((stage for stage in (*STAGES, "node.ops", *CORE) if module == stage
                 or module.startswith(stage + ".")), None)


def test_each_node_module_is_a_stage_ops_or_the_shared_core() -> None:
    assert [m for m in MODULES if m.startswith("node.") and _stage(m) is None] == []


def test_a_stage_imports_no_stage_before_it_and_the_core_imports_no_stage() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        stage = _stage(module)
        if stage is None or stage == "node.ops":
            continue
        for target in targets:
            other = _stage(target)
            if other is None or other in CORE or other == stage:
                continue
            if stage in CORE or other == "node.ops" or STAGES.index(other) < STAGES.index(stage):
                wrong.append(f"{module} imports {target}")
    assert not wrong, wrong


def test_no_module_imports_itself_through_a_cycle() -> None:
    """Tarjan's strongly connected components of the import graph: each must be a single module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = low[module] = len(index)
        stack.append(module)
        for target in GRAPH[module]:
            if target not in index:
                visit(target)
                low[module] = min(low[module], low[target])
            elif target in stack:
                low[module] = min(low[module], index[target])
        if low[module] == index[module]:
            component = [stack.pop()]
            while component[-1] != module:
                component.append(stack.pop())
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert not cycles, cycles


def test_the_graph_is_read_from_every_module() -> None:
    """The checks above see real edges: e.g. the job runner imports the result contract."""
    assert len(MODULES) > 60
    assert "dicom_sr.findings" in GRAPH["node.jobs.runner"]
    assert "dicom_sr.findings" in GRAPH["inference.pipelines.lung_qct"]
