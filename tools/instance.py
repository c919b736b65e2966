"""instance: create an embedded pymailsys instance (configuration + spool under one directory).

SYNOPSIS
    python3 -m pymailsys.tools.instance create DIR [--port 2525] [--host 127.0.0.1] [--maildir]

DESCRIPTION
    Writes DIR/etc/main.cf, DIR/etc/master.cf (smtp on HOST:PORT) and
    DIR/etc/aliases (see ``pymailsys.instance.create``) and prints each path
    it wrote, one per line, then how to start the instance. Exit 0 on
    success, 1 with ``instance: fatal: ...`` on standard error otherwise.
    Run as a non-root user, the instance runs entirely as that user.

SECURITY
    Never writes through a symbolic link below DIR; run as root, refuses
    (``instance: fatal: PATH: why``) a DIR, DIR/etc or directory on the way
    that another account owns or can write (``pymailsys.instance``).
"""

from __future__ import annotations

import os
import sys

import click

from pymailsys import instance


@click.group()
def main() -> None:
    """Embedded pymailsys instances."""


@main.command()
@click.argument("directory")
@click.option("--port", default=2525, show_default=True, type=int, help="SMTP port")
@click.option("--host", default="127.0.0.1", show_default=True, help="SMTP listen address")
@click.option("--maildir", is_flag=True, help="deliver to Maildirs (default: mbox files)")
def create(directory: str, port: int, host: str, maildir: bool) -> None:
    """Write an instance's configuration under DIRECTORY."""
    try:
        made = instance.create(directory, port=port, host=host, maildir=maildir)
    except OSError as e:
        click.echo(f"instance: fatal: {e.filename or directory}: {e.strerror}", err=True)
        sys.exit(1)
    for path in made:
        click.echo(path)
    etc = os.path.join(os.path.abspath(directory), "etc")
    click.echo(f"start it with: postfix -c {etc} start")


if __name__ == "__main__":
    main()
