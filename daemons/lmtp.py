"""lmtp - the LMTP delivery agent.

NAME
    lmtp - deliver mail to mailbox stores over LMTP

SYNOPSIS
    python3 -m pymailsys.daemons.lmtp [generic daemon options]
    (master.cf: ``lmtp unix - - n - - lmtp``; main.cf e.g.
    ``mailbox_transport = lmtp:unix:/run/dovecot/lmtp``)

DESCRIPTION
    Postfix installs one binary as both smtp(8) and lmtp(8) and lets its
    name choose the protocol; here both run ``pymailsys.delivery.smtp_agent``
    and this module runs it under the name ``lmtp``: LHLO, one reply per
    recipient after the end of data, nexthops ``unix:/path``,
    ``inet:host:port`` or ``host`` (port lmtp_tcp_port, no MX lookup).

SECURITY
    Runs as mail_owner (``-u``); see ``pymailsys.delivery.smtp_agent``.

CONFIGURATION PARAMETERS
    The lmtp_* parameters listed in ``pymailsys.delivery.smtp_agent``.
"""

from __future__ import annotations

from pymailsys import server
from pymailsys.delivery import smtp_agent

PROGRAM = "lmtp"


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=smtp_agent.serve, on_start=smtp_agent.start,
               on_stop=smtp_agent.stop, argv=argv)


if __name__ == "__main__":
    main()
