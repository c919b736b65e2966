"""handoff - give a local submission to the mail system, as sendmail does.

``hand_off(config, sub, uid)`` submits live over public/pickup
(``protocol``); when nobody listens there, pickup does not take the
connection within CONNECT_TIMEOUT, the connection fails, or pickup answers
"try later" (EX_TEMPFAIL, also when this user holds too many connections),
it writes a maildrop file instead
(``queue.maildrop.write_maildrop``, owned by the caller) and wakes pickup.
It returns the queue ID (or the maildrop file name) and raises ``Refused``
with a sysexits.h status and the reason for the user when the message was
not taken: pickup refused it, local_login_sender_maps refuses the sender,
or the maildrop file cannot be written.

SECURITY
    Runs with the caller's privileges only. The local_login_sender_maps
    check before a maildrop write is a courtesy; pickup checks again from
    the file owner.
"""

from __future__ import annotations

import os

from pymailsys import log, maps
from pymailsys.config import Config
from pymailsys.ipc import attr, trigger
from pymailsys.queue import spool as queue
from pymailsys.queue.maildrop import Submission, write_maildrop
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


def submit_stream(path: str, sub: Submission, timeout: float = 3600.0) -> attr.AttrList:
    """Submit over public/pickup; SystemDown when nobody listens there or takes the
    connection within CONNECT_TIMEOUT (pickup saturated)."""
    try:
        client = attr.SyncAttrClient(path, timeout=timeout, connect_timeout=CONNECT_TIMEOUT)
    except (FileNotFoundError, ConnectionRefusedError, PermissionError, NotADirectoryError,
            TimeoutError) as e:
        raise SystemDown(str(e)) from e
    with client:
        client.sock.sendall(SUBMIT_MAGIC)
        return client.request(to_attrs(sub))


def hand_off(config: Config, sub: Submission, uid: int) -> str:
    """Live submission over public/pickup, else a maildrop file; the queue ID."""
    spool = queue.Spool.from_config(config)
    path = spool.public(config.get("pickup_service_name"))
    try:
        reply = submit_stream(path, sub, config.get_time("ipc_timeout"))
    except SystemDown:
        reply = None
    except (attr.ProtocolError, OSError) as e:
        log.warning(f"submission to {path} failed: {e}; using the maildrop queue")
        reply = None
    if reply is not None:
        status = reply.number("status", os.EX_SOFTWARE)
        if status == 0:
            return reply.text("queue_id")
        if status != os.EX_TEMPFAIL:
            raise Refused(status, reply.text("reason"))
    return drop(config, spool, sub, uid)


def drop(config: Config, spool: queue.Spool, sub: Submission, uid: int) -> str:
    """Write ``sub`` to maildrop/ and wake pickup; the file's queue ID."""
    try:
        if not login_sender_ok(config, uid, sub.sender):
            raise Refused(os.EX_NOPERM, f"not authorized to use sender='{sub.sender}'")
    except maps.TableError:
        pass  # pickup decides when the table answers again
    try:
        queue_id = write_maildrop(spool, sub, config.get_int("line_length_limit"))
    except OSError as e:
        raise Refused(os.EX_TEMPFAIL, f"error writing queue file: {e.strerror or e}") from e
    trigger.send_trigger(spool.public(config.get("pickup_service_name")), trigger.WAKEUP)
    return queue_id
