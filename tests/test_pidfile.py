"""pidfile: Postfix's master.pid format, the lock, and who holds it."""

from __future__ import annotations

import os

import pytest

from pymailsys import pidfile


def test_lock_writes_the_pid_and_holder_reads_it(tmp_path) -> None:  # type: ignore[no-untyped-def]
    path = str(tmp_path / "master.pid")
    assert pidfile.holder(path) is None  # absent
    fd = pidfile.lock(path, 4242)
    try:
        assert open(path).read() == " " * 28 + "4242\n"
        assert pidfile.holder(path) == 4242
        with pytest.raises(pidfile.PidFileError, match="unable to set exclusive lock"):
            pidfile.lock(path, 1)
    finally:
        os.close(fd)
    assert pidfile.holder(path) is None  # left behind, not locked


def test_lock_reports_an_unopenable_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(pidfile.PidFileError, match="cannot open file"):
        pidfile.lock(str(tmp_path / "missing" / "master.pid"), 1)
