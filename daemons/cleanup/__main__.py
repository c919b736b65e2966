"""Entry point: ``python3 -m pymailsys.daemons.cleanup`` (as master.cf's cleanup command)."""

from pymailsys.daemons.cleanup import main

main()
