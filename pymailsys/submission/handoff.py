"""handoff - give a local submission to the mail system, as sendmail does.

A submission is first a file in maildrop/ (``queue.maildrop.MaildropFile``,
mode 0644 while written, owned by the caller), written as the message comes,
so that memory does not grow with the message. ``hand_off_file(config, drop,
sub, uid)`` then submits it live over public/pickup (``protocol``), its content
read back from the file as it is sent, and removes the file once pickup
answered. When nobody listens there, pickup does not take the connection within
CONNECT_TIMEOUT, the connection fails, or pickup answers "try later"
(EX_TEMPFAIL, also when this user holds too many connections), the file is
marked complete (0744, after the fsync) and pickup is woken to take it in.
``hand_off(config, sub, uid, prepend)`` does both for a submission already in memory
(``smtpd -S``, whose Received: header ``prepend`` makes from the queue ID); postdrop
writes its input into ``create``'s file itself. Each returns the queue ID (or the maildrop file's)
and raises ``Refused`` with a sysexits.h status and the reason for the user
when the message was not taken: pickup refused it, local_login_sender_maps
refuses the sender, an envelope value is one pickup would refuse
(``maildrop.check_envelope``: too long, a line break), or the maildrop file cannot
be written. A refused or
failed submission leaves no file behind.

SECURITY
    Runs with the caller's privileges only. The local_login_sender_maps
    check before a maildrop file is completed is a courtesy; pickup checks
    again from the file owner.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from pymailsys import log, maps
from pymailsys.config import Config
from pymailsys.ipc import attr, services, trigger
from pymailsys.queue import spool as queue
from pymailsys.queue.maildrop import (
    MaildropFile,
    Submission,
    SubmissionError,
    TooBig,
    check_envelope,
)
from pymailsys.submission.access import login_sender_ok
from pymailsys.submission.protocol import SUBMIT_MAGIC, to_attrs

CONNECT_TIMEOUT = 5.0  # seconds for pickup to take the connection before maildrop is used


class SystemDown(Exception):
    """The pickup socket is absent or refuses connections."""


class Refused(Exception):
    """The message was not taken: ``status`` (sysexits.h) and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def submit_stream(path: str, sub: Submission, drop: MaildropFile,
                  timeout: float = 3600.0) -> attr.AttrList:
    """Submit over public/pickup, the content read from ``drop``; SystemDown when
    nobody listens there or takes the connection within CONNECT_TIMEOUT (pickup
    saturated)."""
    try:
        client = attr.SyncAttrClient(path, timeout=timeout, connect_timeout=CONNECT_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError,
            TimeoutError) as e:
        raise SystemDown(str(e)) from e
    with client:
        client.sock.sendall(SUBMIT_MAGIC)
        return client.request_with_value(to_attrs(sub), "content", drop.content_size,
                                         drop.content_pieces(services.CONTENT_CHUNK))


def create(config: Config) -> MaildropFile:
    """A new maildrop file for a submission (Refused when it cannot be created)."""
    spool = queue.Spool.from_config(config)
    try:
        return MaildropFile.create(spool, config.get_int("line_length_limit"),
                                   config.get_size("message_size_limit"))
    except OSError as e:
        raise Refused(os.EX_TEMPFAIL, f"error writing queue file: {e.strerror or e}") from e


def hand_off(config: Config, sub: Submission, uid: int,
             prepend: Callable[[str], list[bytes]] | None = None) -> str:
    """A submission in memory: written to maildrop/, then ``hand_off_file``. ``prepend``
    gives lines to put before the content, from the maildrop file's queue ID (smtpd -S's
    Received: header)."""
    drop = create(config)
    try:
        drop.begin(sub)
        for line in [*(prepend(drop.queue_id) if prepend else []), *sub.lines]:
            drop.text(line)
        drop.end(sub)
    except TooBig as e:
        drop.discard()
        raise Refused(os.EX_TEMPFAIL, str(e)) from e
    except OSError as e:
        drop.discard()
        raise Refused(os.EX_TEMPFAIL, f"error writing queue file: {e.strerror or e}") from e
    except BaseException:
        drop.discard()
        raise
    return hand_off_file(config, drop, sub, uid)


def hand_off_file(config: Config, drop: MaildropFile, sub: Submission, uid: int) -> str:
    """Live submission over public/pickup of the ended ``drop``, else the file completed
    for pickup to take; the queue ID. The file is removed unless it was completed."""
    spool = queue.Spool.from_config(config)
    path = spool.public(config.get("pickup_service_name"))
    try:
        try:  # what pickup would refuse is refused now, not found in the file later
            check_envelope(sub, config.get_int("line_length_limit"))
        except SubmissionError as e:
            raise Refused(e.status, f"malformed submission: {e}") from e
        try:
            reply = submit_stream(path, sub, drop, config.get_time("ipc_timeout"))
        except SystemDown:
            reply = None
        except (attr.ProtocolError, OSError) as e:
            log.warning(f"submission to {path} failed: {e}; using the maildrop queue")
            reply = None
        if reply is not None:
            status = reply.number("status", os.EX_SOFTWARE)
            if status == 0:
                drop.discard()
                return reply.text("queue_id")
            if status != os.EX_TEMPFAIL:
                raise Refused(status, reply.text("reason"))
        try:
            if not login_sender_ok(config, uid, sub.sender):
                raise Refused(os.EX_NOPERM, f"not authorized to use sender='{sub.sender}'")
        except maps.TableError:
            pass  # pickup decides when the table answers again
        try:
            drop.complete()
        except OSError as e:
            raise Refused(os.EX_TEMPFAIL, f"error writing queue file: {e.strerror or e}") from e
    except BaseException:
        drop.discard()
        raise
    trigger.send_trigger(path, trigger.WAKEUP)
    return drop.queue_id
