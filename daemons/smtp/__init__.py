"""smtp - the SMTP delivery agent.

NAME
    smtp - deliver mail to other mail servers over SMTP

SYNOPSIS
    python3 -m pymailsys.daemons.smtp [generic daemon options]
    (master.cf: ``smtp unix - - n - - smtp``, ``relay unix - - n - - smtp``)

DESCRIPTION
    The delivery agent for remote destinations: the engine it shares with
    lmtp is ``pymailsys.delivery.smtp_agent`` (routing by MX and A/AAAA,
    the client protocol, the connection cache, the log lines); this module
    runs it on the server skeleton under the name ``smtp``.

SECURITY
    Runs as mail_owner (``-u``); see ``pymailsys.delivery.smtp_agent``.

CONFIGURATION PARAMETERS
    The smtp_* parameters listed in ``pymailsys.delivery.smtp_agent``.
"""

from __future__ import annotations

from pymailsys import server
from pymailsys.delivery import smtp_agent

PROGRAM = "smtp"


def main(argv: list[str] | None = None) -> None:
    server.run(PROGRAM, serve=smtp_agent.serve, on_start=smtp_agent.start,
               on_stop=smtp_agent.stop, argv=argv)
