"""The layout rules of docs/architecture.md, checked on the source (nothing is imported or run).

Each test names the rule and the modules that break it, so a change that breaks one is told where.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "scoresample"
MAX_LINES = 600
# layers a kernel must never import (front ends, networks, diagnostics, command line)
KERNEL_FORBIDDEN = ("scoresample.bayes", "scoresample.diffusion", "scoresample.train",
                    "scoresample.nn", "scoresample.diagnostics", "scoresample.cli",
                    "scoresample.demo", "scoresample.bench", "flax", "arviz")


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(name: str, path: Path, source: str | None = None):
    """``(target_module, imported_name or None)`` for every import in the file (function-local
    imports included)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text() if source is None else source)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, None
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                yield target, alias.name


def _graph() -> dict[str, set[str]]:
    graph = {name: set() for name in MODULES}
    for name, path in MODULES.items():
        for target, imported in _imports(name, path):
            full = f"{target}.{imported}" if imported else target
            if full in MODULES:
                graph[name].add(full)
            elif target in MODULES:
                graph[name].add(target)
    return graph


def _cycles(graph):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []
    counter = [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def _is_package_edge(a: str, b: str) -> bool:
    # a package's __init__ re-exporting its own submodules is not a circle between layers
    return b.startswith(a + ".") or a.startswith(b + ".")


def test_no_import_circle():
    graph = {a: {b for b in targets if not _is_package_edge(a, b)} for a, targets in _graph().items()}
    assert _cycles(graph) == []


def _private_imports(name, path, source=None):
    return [f"{name} imports {imported} from {target}"
            for target, imported in _imports(name, path, source)
            if target.startswith("scoresample") and imported and imported.startswith("_")
            and not imported.startswith("__")]


def test_no_module_imports_a_private_name_from_another():
    assert [o for name, path in MODULES.items() for o in _private_imports(name, path)] == []


def test_no_module_is_longer_than_the_limit():
    long = {name: n for name, path in MODULES.items()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_build_kernel_is_defined_only_under_kernels():
    outside = [name for name, path in MODULES.items()
               if not name.startswith("scoresample.kernels")
               and any(isinstance(n, ast.FunctionDef) and n.name == "build_kernel"
                       for n in ast.walk(ast.parse(path.read_text())))]
    assert outside == []


@pytest.mark.parametrize("name", sorted(n for n in MODULES if n.startswith("scoresample.kernels")))
def test_kernels_import_no_front_end_network_or_arviz(name):
    bad = sorted({target for target, _ in _imports(name, MODULES[name])
                  if any(target == f or target.startswith(f + ".") for f in KERNEL_FORBIDDEN)})
    assert bad == []


def test_the_checks_see_a_circle_and_a_private_import():
    """Negative controls: the same checks flag a made-up circle and a made-up private import."""
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c"]]
    fake = PACKAGE / "kernels" / "fake.py"
    assert _private_imports("scoresample.kernels.fake", fake,
                            "from ..base import _hidden\nfrom .proposal import public") == [
        "scoresample.kernels.fake imports _hidden from scoresample.base"]
