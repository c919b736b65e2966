"""The harness keeps the evidence of a failed test: a deliberately failing test against
an Instance, run by pytest in a subprocess with this suite's conftest, reports its
instance's maillog tail, queue and Maildir; a passing test reports nothing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

FAILING = '''
from harness import ME


def test_deliberately_failing(instance):
    instance.send("alice@example.org", f"{ME}@localhost",
                  b"Subject: kept as evidence\\r\\n\\r\\nbody\\r\\n")
    instance.wait_maildir(1)
    instance.wait_log(r": removed")
    raise AssertionError("deliberately")


def test_passing(instance):
    pass
'''


def test_a_failed_test_reports_its_instance_log_queue_and_maildir(tmp_path: Path) -> None:
    (tmp_path / "test_failing.py").write_text(FAILING)
    tests = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        filter(None, [tests, os.environ.get("PYTHONPATH")])))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "conftest", "-p", "no:cacheprovider",
         "--rootdir", str(tmp_path), str(tmp_path / "test_failing.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300)
    out = result.stdout
    assert "1 failed, 1 passed" in out, out + result.stderr
    assert out.count("pymailsys evidence (call)") == 1  # the failing test's only
    evidence = out.split("pymailsys evidence (call)", 1)[1]
    assert re.search(r"postfix/local\[\d+\]: \w+: to=<\S+>, .*status=sent \(delivered to maildir\)",
                     evidence)
    assert re.search(r"postfix/qmgr\[\d+\]: \w+: removed", evidence)
    assert "== queue " in evidence
    assert "/new: 1 files" in evidence
    assert "Return-Path: <alice@example.org>" in evidence
    assert "Subject: kept as evidence" in evidence
    log_path = re.search(r"== maillog (\S+)", evidence)
    assert log_path is not None
    assert not Path(log_path.group(1)).exists()  # still removed after the report
