"""cli - the command-line plumbing every command shares.

SYNOPSIS
    from pymailsys import cli
    def main(argv=None) -> int:
        return cli.run(command, "postcat", USAGE, argv)

DESCRIPTION
    ``run`` sends messages to standard error as PROGRAM (no configuration is
    loaded yet), calls the click command with ``argv`` (default
    ``sys.argv[1:]``) and ``obj``, and returns its exit status: 0 when it
    returns, the status of a ``click`` exit. A command-line syntax error is
    ``PROGRAM: fatal: USAGE`` and exit ``status`` (1, or EX_USAGE for
    commands that use sendmail's exit codes), as Postfix's commands print it.
"""

from __future__ import annotations

import sys

import click

from pymailsys import log


def run(cli: click.Command, program: str, usage: str, argv: list[str] | None = None, *,
        status: int = 1, obj: object = None) -> int:
    """Run ``cli`` as PROGRAM; a usage error is fatal with ``usage`` and ``status``."""
    log.init_stderr_only(program)
    try:
        cli.main(args=sys.argv[1:] if argv is None else argv, prog_name=program,
                 standalone_mode=False, obj=obj)
    except click.UsageError:
        log.fatal(usage, status)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    return 0
