"""Entry point: ``python3 -m pymailsys.daemons.virtual`` (as master.cf's virtual command)."""

from pymailsys.daemons.virtual import main

main()
