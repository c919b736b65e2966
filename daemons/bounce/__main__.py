"""Entry point: ``python3 -m pymailsys.daemons.bounce`` (as master.cf's bounce command)."""

from pymailsys.daemons.bounce import main

main()
