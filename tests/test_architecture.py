"""The layering that docs/ARCHITECTURE.md declares, checked against every import.

Reads the source of the library (pymailsys/), the daemons (daemons/, installed as
pymailsys.daemons) and the commands (tools/, installed as pymailsys.tools) with
``ast``, and fails when
- a library module imports a package or module of a higher layer than its own
  (the ``layers`` block of docs/ARCHITECTURE.md, lowest first), or a daemon or a tool;
- the library's modules form a circle of imports;
- the block names a layer that does not exist, or the library has a top-level
  package or module the block does not place;
- a daemon imports another daemon or a tool; a tool imports a daemon or another tool.
Imports under ``if TYPE_CHECKING:`` do not count; imports inside functions do.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
ROOTS = {"pymailsys": REPO / "pymailsys", "pymailsys.daemons": REPO / "daemons",
         "pymailsys.tools": REPO / "tools"}


def declared_layers() -> list[list[str]]:
    text = (REPO / "docs" / "ARCHITECTURE.md").read_text()
    m = re.search(r"^```layers\n(.*?)^```", text, re.M | re.S)
    assert m, "docs/ARCHITECTURE.md has no ```layers block"
    return [line.split() for line in m.group(1).splitlines() if line.strip()]


def source_modules() -> dict[str, Path]:
    """Every module by its installed dotted name."""
    found: dict[str, Path] = {}
    for prefix, root in ROOTS.items():
        for path in sorted(root.rglob("*.py")):
            rel = path.relative_to(root).with_suffix("")
            parts = list(rel.parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join([prefix, *parts])
            if prefix == "pymailsys" and name.startswith(("pymailsys.daemons", "pymailsys.tools")):
                continue
            found[name] = path
    return found


def _type_checking_block(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
            and node.test.id == "TYPE_CHECKING")


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The pymailsys modules that module ``name`` imports (the most specific module named)."""
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _type_checking_block(node):
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                out.add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                candidate = f"{base}.{alias.name}"
                out.add(candidate if candidate in modules else base)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return {target for target in out if target == "pymailsys" or target.startswith("pymailsys.")}


def unit_of(module: str) -> str:
    """The layer unit of a library module: its top-level package or module under pymailsys."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "pymailsys"


def owner(module: str) -> str:
    """'library', or the daemon / tool a module belongs to ('daemons.smtpd', 'tools.sendmail')."""
    parts = module.split(".")
    if len(parts) > 2 and parts[1] in ("daemons", "tools"):
        return f"{parts[1]}.{parts[2]}"
    if len(parts) == 2 and parts[1] in ("daemons", "tools"):
        return parts[1]
    return "library"


MODULES = source_modules()
GRAPH = {name: imports_of(name, path, MODULES) for name, path in MODULES.items()}


def test_layers_block_matches_the_library() -> None:
    declared = [unit for layer in declared_layers() for unit in layer]
    assert len(declared) == len(set(declared)), f"a unit is placed twice: {declared}"
    present = {unit_of(m) for m in MODULES if owner(m) == "library"}
    assert not present - set(declared), (
        f"not placed in docs/ARCHITECTURE.md's layers block: {sorted(present - set(declared))}")
    assert not set(declared) - present, (
        f"the layers block names what does not exist: {sorted(set(declared) - present)}")


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    rank = {unit: i for i, layer in enumerate(declared_layers()) for unit in layer}
    wrong = []
    for module, targets in graph.items():
        if owner(module) != "library":
            continue
        for target in targets:
            if owner(target) != "library":
                wrong.append(f"{module} imports {target} (the library imports no daemon or tool)")
            elif rank[unit_of(target)] > rank[unit_of(module)]:
                wrong.append(f"{module} (layer {unit_of(module)}) imports {target} "
                             f"(higher layer {unit_of(target)})")
    return sorted(wrong)


def test_library_imports_only_its_own_layer_or_below() -> None:
    wrong = layer_violations(GRAPH)
    assert not wrong, "\n".join(wrong)


def import_circles(graph: dict[str, set[str]]) -> list[str]:
    library = {m: {t for t in ts if owner(t) == "library"}
               for m, ts in graph.items() if owner(m) == "library"}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []
    circles: list[str] = []

    def walk(module: str) -> None:
        state[module] = 1
        path.append(module)
        for target in sorted(library.get(module, ())):
            if target == module:
                continue
            if state.get(target) == 1:
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                walk(target)
        path.pop()
        state[module] = 2

    for module in sorted(library):
        if module not in state:
            walk(module)
    return circles


def test_library_modules_form_no_circle() -> None:
    circles = import_circles(GRAPH)
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_a_circle_is_found() -> None:
    graph = {"pymailsys.maps": {"pymailsys.maps.cidr"}, "pymailsys.maps.cidr": {"pymailsys.maps"},
             "pymailsys.log": set()}
    assert import_circles(graph) == ["pymailsys.maps -> pymailsys.maps.cidr -> pymailsys.maps"]


def test_daemons_import_no_other_daemon_and_no_tool() -> None:
    wrong = []
    for module, targets in GRAPH.items():
        me = owner(module)
        if not me.startswith("daemons"):
            continue
        for target in targets:
            other = owner(target)
            if other.startswith("tools") or (other.startswith("daemons.") and other != me):
                wrong.append(f"{module} imports {target}")
    assert not wrong, "\n".join(sorted(wrong))


def test_the_checker_sees_an_upward_import(tmp_path: Path) -> None:
    """A relative import from queue/ up into smtp/ and an import of a daemon are caught."""
    probe = tmp_path / "spool.py"
    probe.write_text("def f():\n    from ..smtp import restrictions\n"
                     "from pymailsys.daemons import qmgr\n"
                     "from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    from pymailsys import server\n")
    found = imports_of("pymailsys.queue.spool", probe, MODULES)
    assert found == {"pymailsys.smtp.restrictions", "pymailsys.daemons.qmgr"}
    wrong = layer_violations({"pymailsys.queue.spool": found})
    assert len(wrong) == 2 and any("higher layer smtp" in w for w in wrong)
