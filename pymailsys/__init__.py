"""pymailsys: a Postfix-compatible mail system in Python.

The ``pymailsys`` package is the shared library (configuration, queue files,
lookup tables, the internal protocol, logging, privileges, mailbox formats).
Daemons live in ``pymailsys.daemons`` and commands in ``pymailsys.tools``;
this library imports neither.
"""

__version__ = "0.1.0"
MAIL_VERSION = "3.7.11-pymailsys-" + __version__
