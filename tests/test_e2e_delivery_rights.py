"""End to end: whose rights local and virtual deliver with, and what they hand over (root only).

Real instances (harness.Instance) with throw-away accounts whose homes lie
under the instance directory (test_e2e_forward's ``make_user``); each test
sends over SMTP and checks the log, the files a command wrote and the files
on disk.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import Instance, wait_until
from test_e2e_forward import BODY, inst, make_user, write_forward  # noqa: F401  (fixtures)

pytestmark = pytest.mark.root


def _descriptors(listing: Path) -> dict[int, str]:
    """``ls -l /proc/self/fd`` output: descriptor -> what it refers to."""
    out = {}
    for line in listing.read_text().splitlines():
        m = re.search(r" (\d+) -> (.*)$", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def test_a_users_command_holds_no_descriptor_of_local(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A .forward command runs as the user with its standard input, output and error
    only: not local's listening socket (the user could take qmgr's delivery requests
    and answer them), master's status and flow pipes, nor local's open tables."""
    alice, home = make_user()
    write_forward(home, f'"|cat >/dev/null; exec ls -l /proc/self/fd > {home}/fds"\n')
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  r"\(delivered to command: ")
    wait_until(lambda: (home / "fds").exists(), 10, what="the command's listing")
    fds = _descriptors(home / "fds")
    assert fds[1] == f"{home}/fds"
    # 0 and 2: local's pipes to the command; 3: ls's own listing of /proc/self/fd
    assert set(fds) == {0, 1, 2, 3}, fds
