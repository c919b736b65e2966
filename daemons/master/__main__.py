"""Entry point: ``python3 -m pymailsys.daemons.master`` (as ``postfix start`` runs it)."""

import sys

from pymailsys.daemons.master import main

sys.exit(main())
