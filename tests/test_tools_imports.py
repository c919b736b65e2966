"""Commands import the library only: no module under tools/ imports another
command (pymailsys.tools.*) or a daemon (pymailsys.daemons.*). What commands
share lives in the library (pymailsys.cli, pymailsys.submission); a command
that needs another's behaviour runs it, as Postfix's sendmail runs postqueue."""

from __future__ import annotations

import ast
from pathlib import Path

TOOLS = Path(__file__).resolve().parent.parent / "tools"


def forbidden_imports(source: str) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                names = [f"pymailsys.tools.{node.module or ''}"]  # relative: a sibling tool
            else:
                names = [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        found += [n for n in names
                  if n.startswith(("pymailsys.tools", "pymailsys.daemons"))]
    return found


def test_the_check_sees_a_tool_import() -> None:
    assert forbidden_imports("from pymailsys.tools import postqueue\n")
    assert forbidden_imports("import pymailsys.daemons.pickup\n")
    assert forbidden_imports("from . import command\n")
    assert not forbidden_imports("from pymailsys import cli\nimport os\n")


def test_no_tool_imports_another_tool_or_a_daemon() -> None:
    wrong = {path.name: bad for path in sorted(TOOLS.glob("*.py"))
             if (bad := forbidden_imports(path.read_text()))}
    assert not wrong, f"tools importing tools or daemons: {wrong}"
