"""The shape of the package, asserted over its source: an acyclic import graph, a commands wing that no library
module imports, argparse only in the commands wing, and ``modlisa train --help`` documenting every field."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

from modlisa.config import TrainingConfig

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "modlisa"


def _module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool, modules: frozenset[str] = frozenset()) -> set[str]:
    """Every module imported anywhere in ``tree`` (function bodies too; ``TYPE_CHECKING`` blocks not).

    ``from pkg import name`` imports ``pkg.name`` when that is one of ``modules``, else ``pkg`` itself.
    """
    found: set[str] = set()
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
                base = ".".join([*anchor, *([base] if base else [])])
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names)
        stack.extend(ast.iter_child_nodes(node))
    return found


# Imports made inside function bodies that would close a cycle, each with its reason; the cycle check leaves them
# out and ``test_deferred_edges_stay_in_function_bodies`` checks they never move to module level.
DEFERRED_EDGES = {
    ("modlisa.model.lisa", "modlisa.weights.hub"):
        "ModifiedLISA.from_pretrained / save_pretrained delegate to the export loader, which builds models "
        "through the factory (which imports the model class)",
}


def _module_level_imports(path: Path) -> set[str]:
    """Modules named by import statements at the top level of ``path`` (not in functions or classes)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def import_graph(deferred_ok: bool = False) -> dict[str, set[str]]:
    """module -> the modlisa modules it imports (``deferred_ok``: without the declared ``DEFERRED_EDGES``)."""
    sources = {_module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in sources.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        imported = _imports(tree, name, path.name == "__init__.py", frozenset(sources))
        graph[name] = {m for m in imported if m in sources and m != name
                       and not (deferred_ok and (name, m) in DEFERRED_EDGES)}
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules, or None (iterative DFS with colours)."""
    colour = dict.fromkeys(graph, 0)
    for root in sorted(graph):
        if colour[root]:
            continue
        path, iters = [root], [iter(sorted(graph[root]))]
        colour[root] = 1
        while path:
            nxt = next(iters[-1], None)
            if nxt is None:
                colour[path.pop()] = 2
                iters.pop()
            elif colour[nxt] == 1:
                return [*path[path.index(nxt):], nxt]
            elif colour[nxt] == 0:
                colour[nxt] = 1
                path.append(nxt)
                iters.append(iter(sorted(graph[nxt])))
    return None


def test_cycle_finder_finds_a_planted_cycle() -> None:
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph(deferred_ok=True)
    assert len(graph) > 50  # the walk found the package
    cycle = _cycle(graph)
    assert cycle is None, " -> ".join(cycle)


def test_deferred_edges_stay_in_function_bodies() -> None:
    full = import_graph()
    for (module, imported), reason in DEFERRED_EDGES.items():
        assert reason and imported in full[module], f"{module} no longer imports {imported}: drop the entry"
        path = PACKAGE.joinpath(*module.split(".")[1:]).with_suffix(".py")
        assert imported not in _module_level_imports(path), f"{module} imports {imported} at module level"


def test_no_library_module_imports_the_commands_wing() -> None:
    offenders = {m: sorted(d for d in deps if d == "modlisa.cli" or d.startswith("modlisa.cli."))
                 for m, deps in import_graph().items() if not (m == "modlisa.cli" or m.startswith("modlisa.cli."))}
    assert not {m: d for m, d in offenders.items() if d}


def test_argparse_lives_only_in_the_commands_wing() -> None:
    users = sorted(_module_name(p) for p in PACKAGE.rglob("*.py")
                   if "argparse" in _imports(ast.parse(p.read_text(encoding="utf-8")), _module_name(p), False))
    assert users, "the commands wing parses arguments with argparse"
    assert all(m.startswith("modlisa.cli") for m in users), users


def test_train_help_documents_every_field() -> None:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    result = subprocess.run([sys.executable, "-m", "modlisa.cli", "train", "--help"], capture_output=True,
                            text=True, env=env, timeout=120, check=True)
    text = " ".join(result.stdout.split())
    for f in fields(TrainingConfig):
        doc = " ".join(f.metadata["help"].split())
        assert f"--{f.name} " in text, f.name
        assert doc in text, f"{f.name}: {doc!r} not in --help"
