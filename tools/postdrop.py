"""postdrop - Postfix mail posting utility (the record-stream form of sendmail).

SYNOPSIS
    postdrop [-rv] [-c config_dir]

DESCRIPTION
    Reads one message in queue-file record form on standard input (what
    Postfix's sendmail pipes into postdrop: envelope A F S R records, M,
    content N/L records, X, extracted R records, E) straight into a new
    maildrop file (mode 0644 while written), a block at a time: memory does
    not grow with the input. The file may be no larger than
    message_size_limit, as Postfix's postdrop limits it. Then the file is
    checked as pickup reads it (``queue.maildrop.parse_maildrop``: allowed
    record types only, bounded lengths, a sender and at least one recipient)
    and handed to the mail system exactly as sendmail does it: live over
    public/pickup, else completed for pickup. No setgid privileges are
    involved; pickup takes the submitter's uid from the kernel or from the
    file owner. An input that is refused leaves no file behind.

DIAGNOSTICS
    ``postdrop: fatal: uid=N: malformed input`` and exit 1, as Postfix;
    ``postdrop: warning: uid=N: File too large`` and exit 4 (Postfix's
    CLEANUP_STAT_SIZE) for an input over message_size_limit, read to its end
    first; ``User NAME(N) is not allowed to submit mail`` (exit 1).

CONFIGURATION PARAMETERS
    authorized_submit_users, local_login_sender_maps, line_length_limit,
    message_size_limit.
"""

from __future__ import annotations

import os
import sys
from typing import BinaryIO

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
    try:
        drop = handoff.create(cfg)
    except handoff.Refused as e:
        log.fatal(f"uid={uid}: {e.reason}", e.status)
    try:
        sub = copy_input(sys.stdin.buffer, drop, uid)
    except BaseException:
        drop.discard()
        raise
    try:
        handoff.hand_off_file(cfg, drop, sub, uid)
    except handoff.Refused as e:
        log.fatal(f"{sub.sender}({uid}): {e.reason}", e.status)


CLEANUP_STAT_SIZE = 4  # Postfix's postdrop exits with the cleanup status of a full file


def copy_input(stream: BinaryIO, drop: maildrop.MaildropFile, uid: int) -> maildrop.Submission:
    """Standard input into ``drop`` as it comes, then checked: the submission. Exits
    (the caller removes the file) on empty input (a request canceled, status 0), on
    input over the file's size limit (once it is all read, as Postfix's postdrop) and on
    malformed input."""
    got = 0
    try:
        while data := stream.read(maildrop.BLOCK):
            drop.records(data)
            got += len(data)
    except maildrop.TooBig as e:
        while stream.read(maildrop.BLOCK):
            pass
        log.warning(f"uid={uid}: {e}")
        sys.exit(CLEANUP_STAT_SIZE)
    except OSError as e:
        log.fatal(f"uid={uid}: error writing queue file: {e.strerror or e}", os.EX_TEMPFAIL)
    if not got:
        sys.exit(0)  # request canceled
    try:
        sub = drop.check()
    except maildrop.SubmissionError as e:
        log.fatal(f"uid={uid}: malformed input: {e}")
    except OSError as e:
        log.fatal(f"uid={uid}: error writing queue file: {e.strerror or e}", os.EX_TEMPFAIL)
    if not sub.all_recipients():
        log.fatal(f"uid={uid}: malformed input: no recipients")
    return sub


def main(argv: list[str] | None = None) -> int:
    return cli.run(command, "postdrop", "usage: postdrop [-rv] [-c config_dir]", argv)


if __name__ == "__main__":
    sys.exit(main())
