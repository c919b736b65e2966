"""postdrop - Postfix mail posting utility (the record-stream form of sendmail).

SYNOPSIS
    postdrop [-rv] [-c config_dir]

DESCRIPTION
    Reads one message in queue-file record form on standard input (what
    Postfix's sendmail pipes into postdrop: envelope A F S R records, M,
    content N/L records, X, extracted R records, E), checks it as pickup
    does (``queue.maildrop.parse_maildrop``: allowed record types only, bounded
    lengths, a sender and at least one recipient), and hands it to the mail
    system exactly as sendmail does: live over public/pickup, else as a
    maildrop file. No setgid privileges are involved; pickup takes the
    submitter's uid from the kernel or from the file owner.

DIAGNOSTICS
    ``postdrop: fatal: uid=N: malformed input`` and exit 1, as Postfix;
    ``User NAME(N) is not allowed to submit mail`` (exit 1).

CONFIGURATION PARAMETERS
    authorized_submit_users, local_login_sender_maps, line_length_limit.
"""

from __future__ import annotations

import os
import sys

import click

from pymailsys import cli, log
from pymailsys import config as config_mod
from pymailsys.queue import maildrop
from pymailsys.submission import access, handoff


@click.command(context_settings={"help_option_names": []})
@click.option("-c", "config_dir")
@click.option("-r", "record_protocol", is_flag=True)
@click.option("-v", "verbose", count=True)
def command(config_dir: str | None, record_protocol: bool, verbose: int) -> None:
    try:
        cfg = config_mod.load(config_dir)
        log.init(cfg, "postdrop", stderr=True)
    except (config_mod.ConfigError, OSError) as e:
        log.fatal(str(e))
    uid = os.getuid()
    refused = access.user_acl(cfg, "authorized_submit_users", uid)
    if refused is not None:
        log.fatal(f"User {refused}({uid}) is not allowed to submit mail")
    data = sys.stdin.buffer.read()
    if not data:
        sys.exit(0)  # request canceled
    try:
        sub = maildrop.parse_maildrop(data, max(cfg.get_int("line_length_limit"), 2048))
    except maildrop.SubmissionError as e:
        log.fatal(f"uid={uid}: malformed input: {e}")
    if not sub.all_recipients():
        log.fatal(f"uid={uid}: malformed input: no recipients")
    try:
        handoff.hand_off(cfg, sub, uid)
    except handoff.Refused as e:
        log.fatal(f"{sub.sender}({uid}): {e.reason}", e.status)


def main(argv: list[str] | None = None) -> int:
    return cli.run(command, "postdrop", "usage: postdrop [-rv] [-c config_dir]", argv)


if __name__ == "__main__":
    sys.exit(main())
