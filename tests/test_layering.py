"""The engine's layering: no import cycles (counting imports inside functions and under
TYPE_CHECKING, and a submodule's implicit import of its package), gradio only under grpo_box/ui,
and the light modules the app starts with import without torch, datasets or transformers."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

from helpers import ENV, ROOT

PACKAGE = ROOT / "grpo_box"
LIGHT = ("config", "presets", "runs", "job", "memory", "locks", "choices", "validation", "hardware", "catalog")
HEAVY = ("torch", "datasets", "transformers", "trl", "unsloth", "gradio", "math_verify")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path, module: str, known: set[str]) -> set[str]:
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            found |= {f"{target}.{a.name}" if f"{target}.{a.name}" in known else target for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
    edges = set()
    for name in found:  # importing a.b.c runs a/__init__ and a/b/__init__ first
        parts = name.split(".")
        edges |= {".".join(parts[:k]) for k in range(2, len(parts) + 1)}
    return {e for e in edges if e in known and e != module and not module.startswith(e + ".")}


def import_graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {m: _imports(p, m, set(files)) for m, p in files.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_has_no_import_cycles():
    graph = import_graph()
    assert "grpo_box.prompts" in graph["grpo_box.validation"]  # the graph sees real edges
    assert cycles(graph) == []


def test_only_the_ui_package_imports_gradio():
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if "ui" in path.relative_to(PACKAGE).parts[:1]:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] in ("gradio", "gradio_client")]
    assert offenders == []


def test_light_modules_import_without_torch_or_datasets():
    code = (f"import importlib, json, sys\nfor m in {LIGHT!r}: importlib.import_module('grpo_box.' + m)\n"
            f"print(json.dumps(sorted(k for k in {HEAVY!r} if k in sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=ROOT, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
