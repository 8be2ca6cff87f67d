"""The import graph of seqstate has no cycle: each module can be read after the ones it uses.

Every ``import`` counts, including the lazy ones inside functions (they still tie the two
modules together); only ``if TYPE_CHECKING:`` blocks, which never run, are left out. An edge
goes to the module named in the statement (``from seqstate.a import b`` is an edge to
``seqstate.a.b`` when that is a module, else to ``seqstate.a``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import seqstate

ROOT = Path(seqstate.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph() -> dict[str, set[str]]:
    modules = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        tree = ast.parse(path.read_text(), str(path))
        type_only = {
            id(inner)
            for block in ast.walk(tree)
            if isinstance(block, ast.If) and ast.unparse(block.test).endswith("TYPE_CHECKING")
            for statement in block.body
            for inner in ast.walk(statement)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    child = f"{base}.{alias.name}"
                    targets.append(child if child in modules else base)
            graph[name].update(t for t in targets if t in modules and t != name)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as a path [a, b, ..., a], or None."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack: list[tuple[str, list[str]]] = [(start, sorted(graph[start]))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, pending = stack[-1]
            if not pending:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
                continue
            child = pending.pop()
            if child in on_path:
                return [*path[path.index(child) :], child]
            if child not in done:
                stack.append((child, sorted(graph[child])))
                path.append(child)
                on_path.add(child)
    return None


def test_the_graph_sees_real_edges() -> None:
    graph = import_graph()
    assert "seqstate.train.replica" in graph["seqstate.train.distributed"]
    assert "seqstate.train.distributed" in graph["seqstate.train.fitting"]  # lazy import


def test_find_cycle_finds_a_planted_cycle() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_seqstate_modules_import_each_other_without_a_cycle() -> None:
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# Which layer may not import which: lower layers never import higher ones, and the server
# never imports training code (it serves a saved run; training belongs to another process).
FORBIDDEN: dict[str, set[str]] = {
    "core": {"lanes", "train", "inference", "recipe", "cli", "serve", "interop"},
    "lanes": {"train", "inference", "recipe", "cli", "serve", "interop"},
    "train": {"inference", "recipe", "cli", "serve", "interop"},
    "inference": {"train", "recipe", "cli", "serve", "interop"},
    "recipe": {"cli", "serve"},
    "interop": {"train", "cli", "serve"},
    "serve": {"train", "cli"},
}


def _layer(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    return sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if _layer(target) in FORBIDDEN.get(_layer(module), set())
    )


def test_layer_rule_catches_a_planted_edge() -> None:
    assert layer_violations({"seqstate.core.state": {"seqstate.recipe.table"}}) == [
        "seqstate.core.state -> seqstate.recipe.table"
    ]
    assert layer_violations({"seqstate.recipe.table": {"seqstate.core.state"}}) == []


def test_lower_layers_never_import_higher_ones() -> None:
    assert layer_violations(import_graph()) == []


def private_imports(root: Path) -> list[str]:
    """``from seqstate.x import _name`` anywhere in the package (its own modules' names only)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("seqstate"):
                found += [
                    f"{path.relative_to(root)}: from {node.module} import {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_")
                    and not alias.name.startswith("__")
                    and node.module != "seqstate"  # a package's own private submodule
                ]
    return found


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(ROOT) == []


def test_private_import_rule_catches_a_planted_import(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("from seqstate.core.layers import _Hidden\n")
    (tmp_path / "b.py").write_text("from seqstate import _aliases\nfrom seqstate.x import y\n")
    assert private_imports(tmp_path) == ["a.py: from seqstate.core.layers import _Hidden"]


def test_the_top_level_shows_the_layers() -> None:
    top = sorted(
        p.name for p in ROOT.iterdir() if p.suffix == ".py" or (p / "__init__.py").exists()
    )
    assert len(top) <= 20, top
    for layer in ("core", "lanes", "train", "inference", "recipe", "cli", "serve", "interop"):
        assert layer in top


def test_the_layer_strategies_use_only_the_declared_kernels() -> None:
    """core/timeline.py and core/split.py reach a layer only through LayerKernels' members."""
    from seqstate.core.kernels import LayerKernels

    declared = set(LayerKernels.__annotations__) | {
        name for name in vars(LayerKernels) if not name.startswith("_")
    }
    for module in ("timeline", "split"):
        tree = ast.parse((ROOT / "core" / f"{module}.py").read_text())
        used = {
            node.attr
            for node in ast.walk(tree)
            if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id == "rnn"
        }
        assert used, module  # the strategies name their layer `rnn`
        assert used <= declared, (module, sorted(used - declared))
