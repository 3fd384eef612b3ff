"""The layout in docs/architecture.md holds: no import cycles, no upward imports.

Every ``import`` in ``l2l_jax/`` counts, at module level or inside a function.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "l2l_jax"

#: docs/architecture.md's table: a module may import from lower levels and from its own package.
LEVELS = {
    "version": 0,
    "errors": 0,
    "checks": 1,
    "registry": 1,
    "run_directory": 2,
    "data": 2,
    "optimizers": 2,
    "tasks": 3,
    "meta": 4,
    "pretrained": 3,
    "evaluation": 5,
    "examples": 5,
    "cli": 6,
    "__main__": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The ``l2l_jax`` modules that ``path`` imports (``from x import y`` counts y when y is a module)."""
    is_package = path.name == "__init__.py"
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            submodules = {f"{source}.{a.name}" for a in node.names} & known
            # `from package import module` depends on the module, not on the rest of the package.
            found.update(submodules if len(submodules) == len(node.names) else {source} | submodules)
    return {m for m in found if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {name: imports_of(name, path, set(mods)) for name, path in mods.items()}


def unit(name: str) -> str:
    """The top-level module or package that ``name`` belongs to (``l2l_jax.meta.unroll`` -> ``meta``)."""
    parts = name.split(".")
    return parts[1] if len(parts) > 1 else ""


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(edges.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state:
                cycle = visit(m)
                if cycle:
                    return cycle
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(edges):
        if n not in state:
            cycle = visit(n)
            if cycle:
                return cycle
    return None


def test_every_module_has_a_level():
    units = {unit(n) for n in modules()} - {""}
    assert units <= set(LEVELS), f"add {sorted(units - set(LEVELS))} to LEVELS and docs/architecture.md"


def test_the_architecture_doc_lists_every_top_level_module():
    doc = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    missing = [u for u in LEVELS if u not in ("__main__", "version") and f"`l2l_jax.{u}`" not in doc]
    assert not missing


def test_no_import_cycles():
    # The root package only re-exports; every other module imports its parts directly.
    edges = {n: {m for m in deps if m != "l2l_jax"} for n, deps in graph().items() if n != "l2l_jax"}
    assert find_cycle(edges) is None, " -> ".join(find_cycle(edges) or [])


def test_no_upward_imports():
    upward = []
    for name, deps in graph().items():
        if name == "l2l_jax":
            continue
        for dep in deps:
            if dep == "l2l_jax":
                upward.append(f"{name} imports the root package l2l_jax")
            elif unit(dep) != unit(name) and LEVELS[unit(dep)] >= LEVELS[unit(name)]:
                upward.append(f"{name} (level {LEVELS[unit(name)]}) imports {dep} (level {LEVELS[unit(dep)]})")
    assert not upward, "\n".join(upward)


def test_every_module_opens_with_a_docstring_saying_what_it_owns():
    missing = [n for n, p in modules().items() if not ast.get_docstring(ast.parse(p.read_text()))]
    assert not missing


@pytest.mark.parametrize(
    ("edges", "cycle"),
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, None),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, ["a", "b", "c", "a"]),
        ({"a": {"a"}}, ["a", "a"]),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, cycle):
    assert find_cycle(edges) == cycle


def test_imports_inside_functions_and_from_imports_of_modules_count(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from l2l_jax.meta import training\n    import l2l_jax.tasks.base\n")
    known = {"l2l_jax.meta", "l2l_jax.meta.training", "l2l_jax.tasks.base", "l2l_jax.x"}
    assert imports_of("l2l_jax.x", source, known) == {"l2l_jax.meta.training", "l2l_jax.tasks.base"}


def test_a_from_import_of_a_name_depends_on_its_module(tmp_path):
    source = tmp_path / "m.py"
    source.write_text("from l2l_jax.meta import meta_train, training\n")
    known = {"l2l_jax.meta", "l2l_jax.meta.training", "l2l_jax.x"}
    assert imports_of("l2l_jax.x", source, known) == {"l2l_jax.meta", "l2l_jax.meta.training"}
