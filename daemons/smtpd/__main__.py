"""Entry point: ``python3 -m pymailsys.daemons.smtpd`` (as master.cf's smtpd command)."""

from pymailsys.daemons.smtpd import main

main()
