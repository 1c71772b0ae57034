"""The house's layout: no package imports another's private modules, and the modules of one
package (Python) or one Rust module folder import each other without a cycle."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PY = ROOT / "python"


def _module(path: Path) -> str:
    parts = list(path.relative_to(PY).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _package(path: Path) -> str:
    name = _module(path)
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, dotted name) of every cpx import that runs (function-level ones too, not those
    under `if TYPE_CHECKING:`); `from m import n` gives `m.n`."""
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.extend((node.lineno, f"{node.module}.{a.name}") for a in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(), str(path)))
    return [(line, name) for line, name in found if name.split(".")[0] == "cpx"]


def _sources() -> list[Path]:
    return sorted(PY.rglob("*.py"))


def _owner_of_private(name: str) -> str | None:
    """The package whose room a private name (`cpx.a._b...`) belongs to, or None if public."""
    parts = name.split(".")
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("_") and not part.startswith("__"):
            head = ".".join(parts[:i])
            # `_b` is a private module of package `head`, or a private name of module `head`
            # (then its room is the package that holds `head`).
            return head if (PY / Path(*parts[:i])).is_dir() else head.rpartition(".")[0]
    return None


def test_no_package_imports_another_packages_private_modules():
    bad = []
    for path in _sources():
        here = _module(path)
        for line, name in _imports(path):
            owner = _owner_of_private(name)
            if owner is not None and not (here == owner or here.startswith(owner + ".")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
    assert bad == []


def _resolve(name: str) -> str | None:
    """The module file an imported dotted name lives in (`cpx.a.b.f` -> `cpx.a.b`)."""
    parts = name.split(".")
    while parts:
        base = PY / Path(*parts)
        if base.with_suffix(".py").is_file() or (base / "__init__.py").is_file():
            return ".".join(parts)
        parts.pop()
    return None


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def dfs(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := dfs(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := dfs(node)):
            return found
    return None


def test_python_packages_have_no_import_cycle():
    # Edges between the modules of one package; its __init__ (which re-exports) is left out.
    graphs: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    for path in _sources():
        if path.name == "__init__.py":
            continue
        here, package = _module(path), _package(path)
        for _, name in _imports(path):
            target = _resolve(name)
            if target and target != here and target.rpartition(".")[0] == package and target != package:
                graphs[package][here].add(target)
    cycles = {p: c for p, g in graphs.items() if (c := _cycle(g))}
    assert cycles == {}
    assert "cpx.stages" in graphs  # the walk found the stage modules' imports


_RUST_USE = re.compile(r"\b(?:super|crate(?:::\w+)*)::(\w+)")


def test_rust_modules_have_no_use_cycle():
    cycles = {}
    folders = [d for d in (ROOT / "rust").glob("*/src/**") if d.is_dir()]
    assert folders
    for folder in folders:
        mods = {p.stem for p in folder.glob("*.rs")} - {"mod", "lib", "main"}
        graph = {}
        for m in mods:
            text = (folder / f"{m}.rs").read_text()
            # Unit tests (`mod tests`, at the file's end) may use anything.
            text = text.split("#[cfg(test)]")[0]
            graph[m] = {u for u in _RUST_USE.findall(text) if u in mods and u != m}
        if found := _cycle(graph):
            cycles[str(folder.relative_to(ROOT))] = found
    assert cycles == {}
