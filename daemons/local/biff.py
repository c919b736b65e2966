"""biff: tell the local comsat service that a mailbox has new mail (Postfix's biff_notify).

Takes the account's login name and the offset at which the new message starts in
its mbox file; promises, with ``biff = yes`` (Postfix's default), one UDP
datagram ``NAME@OFFSET`` and a null byte to the ``biff`` service (512/udp) on
``localhost``, the first address of a family in inet_protocols, as Postfix's
local sends it after each mailbox file delivery (not Maildir, files or
commands). Nothing is waited for and no answer is read: a comsat that does not
run costs one datagram. A name or service that cannot be looked up, or a send
that fails, is a warning in Postfix's words, never a failed delivery. The
address and socket are made once, at the first notice.
"""

from __future__ import annotations

import socket
from typing import Any

from pymailsys import log
from pymailsys.config import Config

HOST, SERVICE = "localhost", "biff"
_FAMILIES = {"ipv4": socket.AF_INET, "ipv6": socket.AF_INET6}


class Biff:
    def __init__(self, config: Config) -> None:
        self.enabled = config.get_bool("biff")
        protocols = {p.lower() for p in config.get_list("inet_protocols")}
        self.families = set(_FAMILIES.values()) if "all" in protocols else {
            _FAMILIES[p] for p in protocols if p in _FAMILIES}
        self.address: tuple[int, tuple[Any, ...]] | None = None  # (family, sockaddr), once known
        self.sock: socket.socket | None = None
        self.looked_up = False

    def notify(self, user: str, offset: int) -> None:
        if not self.enabled:
            return
        if not self.looked_up:
            self.looked_up = True
            try:
                found = socket.getaddrinfo(HOST, SERVICE, type=socket.SOCK_DGRAM)
            except (OSError, UnicodeError) as e:
                log.warning(f"lookup failed for host '{HOST}' or service '{SERVICE}': {e}")
                return
            for family, _, _, _, sockaddr in found:
                if family in self.families:
                    self.address = (family, sockaddr)
                    break
        if self.address is None:
            return
        text = f"{user}@{offset}\0".encode("utf-8", "surrogateescape")
        try:
            if self.sock is None:
                self.sock = socket.socket(self.address[0], socket.SOCK_DGRAM)
            self.sock.sendto(text, self.address[1])
        except OSError as e:
            log.warning(f"biff_notify: {e.strerror}")
