"""pymailsys: a Postfix-compatible mail system in Python.

The ``pymailsys`` package is the shared library (configuration, queue files,
lookup tables, the internal protocol, logging, privileges, mailbox formats).
Daemons live in ``pymailsys.daemons`` and commands in ``pymailsys.tools``;
this library imports neither.

``module_argv`` is the one way a pymailsys process starts another one.
"""

import sys

__version__ = "0.1.0"
MAIL_VERSION = "3.7.11-pymailsys-" + __version__


def module_argv(module: str, *args: str) -> list[str]:
    """The command that runs a module in a new interpreter: ``python -P -m MODULE ARGS``.

    ``-P`` (safe path) keeps the working directory off ``sys.path``: a folder
    named ``pymailsys`` where an administrator runs ``postfix start`` must
    never shadow the installed package in root's processes.
    """
    return [sys.executable, "-P", "-m", module, *args]
