"""A network namespace of a test's own, with its own resolv.conf (root only).

``Netns()`` creates the namespace and /etc/netns/NAME/resolv.conf (``ip netns
exec`` mounts it over /etc/resolv.conf, so whatever runs inside asks the DNS
server the test starts there, on 127.0.0.1), and brings its loopback up.
``run``/``spawn`` run a command inside; ``close`` kills what was spawned and
removes the namespace and its /etc/netns directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import uuid

from harness import PYTHON


class Netns:
    def __init__(self) -> None:
        self.name = f"pms-{uuid.uuid4().hex[:8]}"
        self.procs: list[subprocess.Popen[bytes]] = []
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        self.etc = f"/etc/netns/{self.name}"
        os.makedirs(self.etc)
        with open(f"{self.etc}/resolv.conf", "w") as f:
            f.write("nameserver 127.0.0.1\noptions timeout:1 attempts:1\n")
        self.run(["ip", "link", "set", "lo", "up"])

    def argv(self, argv: list[str]) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv: list[str], **kwargs: object) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), check=True, **kwargs)  # type: ignore[call-overload, no-any-return]

    def spawn(self, argv: list[str]) -> subprocess.Popen[bytes]:
        proc = subprocess.Popen(self.argv(argv), stdout=subprocess.DEVNULL)
        self.procs.append(proc)
        return proc

    def listening(self, addr: str, port: int) -> bool:
        probe = (f"import socket; s = socket.create_connection(('{addr}', {port}), 2); "
                 f"s.settimeout(5); assert s.recv(3)")
        return subprocess.run(self.argv([PYTHON, "-c", probe]), capture_output=True).returncode == 0

    def close(self) -> None:
        for proc in self.procs:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
        subprocess.run(["ip", "netns", "del", self.name], check=False)
        shutil.rmtree(self.etc, ignore_errors=True)
