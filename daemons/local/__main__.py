"""Entry point: ``python3 -m pymailsys.daemons.local`` (as master.cf's local command)."""

from pymailsys.daemons.local import main

main()
