"""The house's layering, read from the source with `ast` (ARCHITECTURE.md): science is pure and
never imports the store, the executor, results or the CLI; nothing outside `lambda_hat/store/`
imports the store's modules (the package `lambda_hat.store` is its one door); and no two of
lambda_hat's modules import each other at module level, directly or round a longer cycle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "lambda_hat"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(path: Path, module_level_only: bool = False) -> list[tuple[str, int]]:
    """(imported lambda_hat module, line) of every import in the file (with `module_level_only`,
    only those that run when the module is imported: not in functions, not under TYPE_CHECKING).
    `from lambda_hat.x import y` counts as importing `lambda_hat.x.y` when that is a module."""
    tree = ast.parse(path.read_text(), str(path))
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found: list[tuple[str, int]] = []

    def visit(node: ast.AST, top: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and module_level_only:
                continue
            if isinstance(child, ast.If) and module_level_only and "TYPE_CHECKING" in ast.unparse(child.test):
                continue
            if isinstance(child, ast.Import):
                found.extend((a.name, child.lineno) for a in child.names if a.name.startswith("lambda_hat"))
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join(package.split(".")[: len(package.split(".")) - child.level + 1] + ([base] if base else []))
                if base.startswith("lambda_hat"):
                    for a in child.names:
                        found.append((f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base, child.lineno))
            visit(child, top)

    visit(tree, True)
    return found


def test_the_scan_sees_the_imports_it_should():
    """The scanner itself: it finds a module-level import, a function-level one, and skips the latter
    when asked (else every rule below could pass by seeing nothing)."""
    found = dict(imports(MODULES["lambda_hat.execute.driver"]))
    assert "lambda_hat.planner" in found and "lambda_hat.execute.apps" in found
    top = dict(imports(MODULES["lambda_hat.execute.driver"], module_level_only=True))
    assert "lambda_hat.planner" in top and "lambda_hat.execute.apps" not in top


@pytest.mark.parametrize("name", [n for n in MODULES if n.startswith("lambda_hat.science")])
def test_science_imports_no_store_executor_results_or_cli(name):
    banned = ("lambda_hat.store", "lambda_hat.execute", "lambda_hat.results", "lambda_hat.cli", "lambda_hat.promote")
    bad = [(m, line) for m, line in imports(MODULES[name]) if m.startswith(banned)]
    assert not bad, f"{MODULES[name]}: imports {bad}"


@pytest.mark.parametrize("name", [n for n in MODULES if not n.startswith("lambda_hat.store")])
def test_nothing_outside_the_store_imports_its_modules(name):
    bad = [(m, line) for m, line in imports(MODULES[name]) if m.startswith("lambda_hat.store.")]
    assert not bad, f"{MODULES[name]}: imports the store's internals {bad}; use `from lambda_hat.store import ...`"


def test_the_store_never_imports_results_cli_or_the_executor():
    for name in (n for n in MODULES if n.startswith("lambda_hat.store")):
        bad = [(m, line) for m, line in imports(MODULES[name])
               if m.startswith(("lambda_hat.results", "lambda_hat.cli", "lambda_hat.execute", "lambda_hat.promote"))]
        assert not bad, f"{MODULES[name]}: imports {bad}"


def test_no_import_cycles_at_module_level():
    graph = {name: {m for m, _ in imports(path, module_level_only=True) if m in MODULES and m != name}
             for name, path in MODULES.items()}
    # A package's __init__ that a submodule imports is not a cycle by itself: Python runs it first.
    cycles, state = [], {}

    def walk(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycle = stack[stack.index(nxt):] + [nxt]
                if not all(a.startswith(b + ".") or b.startswith(a + ".") for a, b in zip(cycle, cycle[1:])):
                    cycles.append(" -> ".join(cycle))
            elif nxt not in state:
                walk(nxt, stack)
        stack.pop()
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            walk(name, [])
    assert not cycles, "import cycles at module level:\n" + "\n".join(cycles)
