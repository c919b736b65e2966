"""A policy server of the tests' own: it records every request and answers one action.

``with PolicyRecorder() as policy:`` listens on a free loopback port
(``policy.spec`` is ``inet:127.0.0.1:PORT`` for check_policy_service);
``policy.requests`` holds each request as a dict, in arrival order;
``policy.action`` is what it answers (``dunno`` unless changed).
``PolicyRecorder(path=P)`` listens on the Unix socket P instead (mode 0666, so that
smtpd reaches it as mail_owner; ``policy.spec`` is then P, a name without a colon).
"""

from __future__ import annotations

import os
import socketserver
import threading
from typing import Any

from harness import wait_until


class PolicyRecorder:
    def __init__(self, action: str = "dunno", path: str | None = None) -> None:
        self.action = action
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                request: dict[str, str] = {}
                for _ in range(10000):  # bounded: a request has a few dozen lines
                    line = self.rfile.readline(8192)
                    if not line:
                        return
                    text = line.decode("utf-8", "replace").rstrip("\n")
                    if text:
                        name, _, value = text.partition("=")
                        request[name] = value
                        continue
                    recorder.requests.append(request)
                    request = {}
                    self.wfile.write(f"action={recorder.action}\n\n".encode())
                    self.wfile.flush()

        self.server: socketserver.ThreadingTCPServer | socketserver.ThreadingUnixStreamServer
        if path is None:
            self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
            self.spec = f"inet:127.0.0.1:{self.server.server_address[1]}"
        else:
            self.server = socketserver.ThreadingUnixStreamServer(path, Handler)
            os.chmod(path, 0o666)
            self.spec = path
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> PolicyRecorder:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def wait(self, count: int) -> list[dict[str, str]]:
        """The first ``count`` requests, once they have come."""
        wait_until(lambda: len(self.requests) >= count, 30, what=f"{count} policy requests")
        return self.requests[:count]

    def at(self, state: str) -> list[dict[str, str]]:
        """The requests made at one protocol_state (RCPT, DATA, END-OF-MESSAGE, ...)."""
        return [r for r in self.requests if r.get("protocol_state") == state]
