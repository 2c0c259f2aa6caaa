"""The import rule of docs/ARCHITECTURE.md, checked on the source: imports go one way.

front ends (cli, api, demo) -> tasks (pipeline, curation) -> components (models, data, features, diffusion,
scoring, metrics, thresholds, render) -> foundations (config, registry, errors, files, progress). ``runs`` (run
folders) sits between tasks and components: tasks use it, components never do.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "oddframe"
FRONT = {"cli", "api", "demo"}
TASKS = {"pipeline", "curation"}
PIPELINE_TASKS = {"train", "calibrate", "detect", "evaluate", "watch"}


def _modules() -> list[tuple[str, Path]]:
    return [(".".join(p.relative_to(SRC).with_suffix("").parts), p) for p in sorted(SRC.rglob("*.py"))]


def _imports(path: Path) -> set[str]:
    """Every ``oddframe.*`` module a file imports (top-level and deferred imports alike)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("oddframe"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)  # `from oddframe import api`
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("oddframe"))
    return {m.removeprefix("oddframe").lstrip(".") for m in found}


def _top(module: str) -> str:
    return module.split(".")[0]


def _existing(name: str) -> bool:
    parts = name.split(".")
    return (SRC.joinpath(*parts).with_suffix(".py")).is_file() or (SRC.joinpath(*parts) / "__init__.py").is_file()


@pytest.mark.parametrize("module,path", _modules(), ids=[m for m, _ in _modules()])
def test_imports_go_one_way(module: str, path: Path) -> None:
    layer = _top(module)
    imported = {m for m in _imports(path) if m and _existing(m)}
    if layer in FRONT:
        return
    bad = {m for m in imported if _top(m) in FRONT}
    if layer not in TASKS:
        bad |= {m for m in imported if _top(m) in TASKS}
    if layer not in TASKS and layer != "runs":
        bad |= {m for m in imported if _top(m) == "runs"}
    assert not bad, f"{module} imports {sorted(bad)}, which sit above it (docs/ARCHITECTURE.md)"


@pytest.mark.parametrize("task", sorted(PIPELINE_TASKS))
def test_a_task_never_imports_a_sibling_task(task: str) -> None:
    imported = _imports(SRC / "pipeline" / f"{task}.py")
    siblings = {f"pipeline.{t}" for t in PIPELINE_TASKS - {task}}
    assert not imported & siblings, f"pipeline.{task} imports {sorted(imported & siblings)}: share via engine/outputs"


def test_pipeline_and_curation_stay_apart() -> None:
    for module, path in _modules():
        layer = _top(module)
        if layer in TASKS:
            other = (TASKS - {layer}).pop()
            assert not {m for m in _imports(path) if _top(m) == other}, f"{module} imports {other}"


def test_the_rule_sees_a_violation(tmp_path: Path) -> None:
    """The checker itself: a component importing a task is caught."""
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from oddframe.pipeline.detect import detect\n")
    assert "pipeline.detect" in _imports(bad)


def test_bench_uses_only_the_public_task_functions() -> None:
    """bench orchestrates the other tasks through what they return: no private helper of a sibling, and no sibling
    imports bench."""
    tree = ast.parse((SRC / "pipeline" / "bench.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {f"oddframe.pipeline.{t}" for t in PIPELINE_TASKS}:
            assert all(not a.name.startswith("_") for a in node.names), f"bench imports a private name of {node.module}"
    for task in PIPELINE_TASKS:
        assert "pipeline.bench" not in _imports(SRC / "pipeline" / f"{task}.py")


def test_archive_uses_only_the_public_detect_task() -> None:
    """archive runs detect through its public names only, and no task imports archive."""
    tree = ast.parse((SRC / "pipeline" / "archive.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in {f"oddframe.pipeline.{t}" for t in PIPELINE_TASKS}:
            assert node.module == "oddframe.pipeline.detect", f"archive imports {node.module}"
            assert all(not a.name.startswith("_") for a in node.names), "archive imports a private name of detect"
    for task in PIPELINE_TASKS:
        assert "pipeline.archive" not in _imports(SRC / "pipeline" / f"{task}.py")
