"""Entry point: ``python3 -m pymailsys.daemons.smtp`` (as master.cf's smtp command)."""

from pymailsys.daemons.smtp import main

main()
