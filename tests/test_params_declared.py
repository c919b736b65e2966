"""Every parameter name the code reads is declared in pymailsys/params.py.

Scans pymailsys/, daemons/ and tools/ for string literals passed to a
configuration object's ``get``/``get_int``/``get_bool``/``get_time``/
``get_size``/``get_list``/``raw``/``is_set`` (a receiver named ``config``,
``cfg`` or ``conf``, possibly as an attribute such as ``self.config``) and to
``Maps(<config>, "name")``. Names built at run time (variables) are skipped.
"""

from __future__ import annotations

import pathlib
import re

from pymailsys.config import params

ROOT = pathlib.Path(__file__).resolve().parent.parent
SOURCE_DIRS = ("pymailsys", "daemons", "tools")

_GET_RE = re.compile(
    r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)*(?:config|cfg|conf|main_cf|configuration)\s*\.\s*"
    r"(?:get|get_int|get_bool|get_time|get_size|get_list|raw|is_set)\s*\(\s*"
    r"[\"']([A-Za-z0-9_]+)[\"']")
_MAPS_RE = re.compile(r"\bMaps\(\s*[A-Za-z_][A-Za-z0-9_.]*\s*,\s*[\"']([A-Za-z0-9_]+)[\"']")
_SELFTEST = re.compile(r"^\s*#")


def names_read() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for directory in SOURCE_DIRS:
        for path in sorted((ROOT / directory).rglob("*.py")):
            text = path.read_text(encoding="utf-8", errors="replace")
            for lineno, line in enumerate(text.splitlines(), 1):
                if _SELFTEST.match(line):
                    continue
                for m in (*_GET_RE.finditer(line), *_MAPS_RE.finditer(line)):
                    where = f"{path.relative_to(ROOT)}:{lineno}"
                    found.setdefault(m.group(1), []).append(where)
    return found


def test_scanner_sees_the_code():
    found = names_read()
    # A few names the library itself certainly reads: the scan works.
    assert "syslog_name" in found
    assert len(found) > 20


def test_every_parameter_read_is_declared():
    undeclared = {name: where for name, where in names_read().items()
                  if name not in params.PARAMS}
    assert not undeclared, "parameters read but not declared in pymailsys/params.py:\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in sorted(undeclared.items()))
