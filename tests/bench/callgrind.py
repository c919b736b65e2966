"""Instruction counts of a process running under valgrind's callgrind.

``instructions(base, pid)``: callgrind's count of instructions since the last
``callgrind_control --zero`` of that process, dumped now into ``base`` (its
``--callgrind-out-file`` directory). The benchmarks that offer ``--callgrind``
(cleanup_rate, qmgr_rate, smtpd_cpu) share it.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def instructions(base: Path, pid: int) -> int:
    """callgrind's count of instructions since the last --zero (dumped now)."""
    before = set(base.glob(f"callgrind.{pid}*"))
    subprocess.run(["callgrind_control", "--dump", str(pid)], check=True, capture_output=True,
                   timeout=120)
    (dump,) = set(base.glob(f"callgrind.{pid}*")) - before
    for line in dump.read_text(errors="replace").splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise RuntimeError(f"no totals in {dump}")
