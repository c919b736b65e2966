"""The one server skeleton every daemon stands on.

A daemon module supplies a program name and callbacks, then calls ``run``. The
skeleton owns the plumbing, as Postfix's single/multi/trigger servers do:

* arguments from master: ``-c config_dir``, ``-n service_name``, ``-t
  transport_type`` (inet, unix, fifo, pass), ``-o name=value`` (repeatable),
  ``-u`` (unprivileged: drop to mail_owner when started as root), ``-s count``
  (number of listening descriptors, default 1), ``-v``, ``-l``/``-z`` (accepted);
* configuration (main.cf as master checked it, plus the ``-o`` overrides) and
  logging; a setting the
  daemon cannot honour without weakening security (``validate.refusals``,
  e.g. smtpd with ``smtpd_milters = inet:...``) is fatal before the
  service takes a client, so master throttles it and the rest runs on;
* the privilege drop: started as root with ``-u``, the process becomes
  mail_owner with supplementary groups cleared (never root after that);
  without ``-u`` (local, virtual) it stays root and switches per delivery;
  started as non-root it stays that user;
* the accept loop on the descriptors master handed over: fd 6 and up are the
  listeners, fd 5 is the status pipe (the child writes ``A`` when it can take a
  client and ``B`` when it cannot), fd 4 is the lifeline (end of file there
  means master is gone or reloading: stop accepting, finish, exit);
* once started (configuration, tables, ``on_start``) it freezes the
  collector's view of what exists (``gc.freeze``), so that collections walk
  only what serving clients creates;
* client_limit: the process takes at most this many clients at once; at the
  limit it stops accepting (so master starts another process for the next one)
  and reports ``B``. A client counts from the moment it is accepted.
* clients_are_processes (smtpd: Postfix's serves one client per process, so
  master.cf's maxproc limits its clients): the service's process limit
  (master's ``-l``, ``-p N``) is this process's client limit too, and at
  that limit it stops accepting but stays available (``A``), so that master
  starts no second process and a new client waits in the listen queue, as with
  Postfix at its process limit; it logs Postfix's ``service "NAME" (NAME) has
  reached its process limit "N": new clients may experience noticeable delays``
  at most once per 1000 s (``warn_process_limit``). maxproc 0 (``-z``) leaves
  client_limit as it is. ``ctx.process_limit`` is that limit for every
  service (0: none): one whose Postfix counterpart runs a process per request
  while its own clients keep connections open between requests (cleanup: a
  message per Postfix process; smtpd and pickup keep their connections) applies
  it to its requests in progress itself, since counting its connections
  would let idle ones hold every place.
* going away (lifeline end of file, max_use, max_idle): stop accepting, close
  the listeners, finish the clients being served and exit. Trigger
  connections are closed at once; attribute-protocol services pass
  ``ctx.stopping`` to ``pymailsys.ipc.attr.serve_pipelined``, which closes a
  connection once its requests are answered, so an idle connection from
  another process never keeps a stopping server alive (its client
  reconnects, to a process of the new generation; on a connection that
  opened with the hello the server says goodbye first, so that a request
  written at that moment is neither lost nor failed: ``pymailsys.ipc.attr``).
* max_use: a one-client-at-a-time server (client_limit 1) exits after
  serving max_use clients; one that passes ``uses_are_requests`` (local,
  virtual: qmgr keeps one connection to them where Postfix's qmgr connects
  once per delivery) counts the requests it answered instead, each
  ``ctx.request_served()``, and goes away after the max_use-th: its client
  sends what it queued behind that request to another process, so a
  delivery agent restarts every max_use deliveries as Postfix's does.
  Event-driven servers that take many clients at once (smtpd, cleanup) are
  long-lived and ignore it, as Postfix's long-lived daemons do: restarting a
  Python process every 100 SMTP connections would cost more CPU than the mail
  itself (``validate.MAX_USE_IGNORED``: ``postfix check`` warns about a
  max_use set for them). max_idle (seconds without a client before exiting, unless
  ``resident``) applies to all; SIGTERM exits now.
* a client that goes away is no error: a reply written to its closed
  connection (asyncio drops it; uvloop raises RuntimeError) ends its service
  quietly, as a reset does; any other exception in a client's service is
  logged, with its traceback, and the process serves on;
* a lookup table whose file was replaced since the process opened it
  (``maps.changed_table``, checked every second): ``table hash:/path has
  changed -- restarting``, then the same graceful going away, as Postfix's
  daemons do, so the next process starts with the new table.

Stream services get ``serve(reader, writer, ctx)`` once per client; one
whose connection needs a protocol object of its own (smtpd: an
aiosmtpd.smtp.SMTP that STARTTLS re-wires onto the TLS transport) passes
``protocol(reader, ctx)``, which builds it around the reader, and finds it in
``serve`` as ``writer.transport.get_protocol()``; ``tls(ctx)``, if given and
not None, is (SSL context, handshake timeout) for TLS from the first byte
(smtpd's smtps wrapper mode): ``serve`` gets the client once the handshake
is done, and a failed one is logged and ends the connection. The protocol
object may take part: ``await protocol.before_tls(sock)`` reads what comes
in plaintext before the handshake (smtpd: a PROXY header; False ends the
connection), ``await protocol.tls_failed(peer, local, error)`` logs a failed
handshake its own way; a service that
hands the connection to another program untouched (spawn) gets
``serve_connection(sock, ctx)`` instead, before anything is read from it. Trigger
services (``on_trigger``) get every byte written to their socket or FIFO
(``W`` wake-up, ``I`` scan incoming, ...) as ``on_trigger(ctx, data)``. A
stream service that also takes master's wake-up on its socket passes
``trigger_by_size`` (flush) to tell the two apart as Postfix's
flush_request_receive does: a connection whose first write is at most
``SHORT_REQUEST`` bytes (``W``, perhaps NUL-terminated) is a trigger, handed
to ``on_trigger`` and closed; a longer one is a client's request stream,
handed to ``serve``. The first write must come within ipc_timeout. A
trigger counts only from the mail system (``peer_is_mail_system``): any
other local user's is logged with its uid and dropped. (pickup
tells them apart itself, by its first byte, after its per-user connection
limit.)

Run by hand (no fd 6), a daemon can listen on a path or host:port given with
``-L`` for tests and debugging; with no master to start the next process,
it takes every client and ignores max_use.
"""

from __future__ import annotations

import asyncio
import gc
import getopt
import os
import signal
import socket
import stat
import struct
import sys
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

from pymailsys import config as config_mod
from pymailsys import log, maps, privileges
from pymailsys.config import validate
from pymailsys.ipc.master_status import (
    LIFELINE_FD,
    LIMIT_WARNING_INTERVAL,
    LISTEN_FD,
    STATUS_AVAILABLE,
    STATUS_BUSY,
    STATUS_FD,
)
from pymailsys.queue.spool import Spool
from pymailsys.submission.access import trusted_peer

if TYPE_CHECKING:
    import ssl

_INHERITED: set[int] = set()  # of LIFELINE_FD, STATUS_FD: those master handed over


@dataclass
class Context:
    """What a service callback may use: configuration, spool, identity, stop signal."""

    config: config_mod.Config
    spool: Spool
    program: str
    service: str
    transport: str
    args: list[str]
    verbose: bool = False
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    terminated: bool = False  # SIGTERM: on_stop must not linger (master kills in 3 s)
    state: dict = field(default_factory=dict)
    process_limit: int = 0  # master.cf's maxproc as master passed it (-l, -p N); 0: none
    limit_warned: float = float("-inf")  # when warn_process_limit last logged
    # uses_are_requests: call after answering a request (max_use counts them)
    request_served: Callable[[], None] = field(default=lambda: None)


def warn_process_limit(ctx: Context) -> None:
    """Master's process-limit warning, from the process that holds the service's
    whole limit, at most once per LIMIT_WARNING_INTERVAL."""
    now = time.monotonic()
    if not ctx.process_limit or ctx.stopping.is_set() \
            or now - ctx.limit_warned < LIMIT_WARNING_INTERVAL:
        return
    ctx.limit_warned = now
    name = ctx.service
    log.warning(f'service "{name}" ({name}) has reached its process limit '
                f'"{ctx.process_limit}": new clients may experience noticeable delays')


_Request = TypeVar("_Request")
_Reply = TypeVar("_Reply")


def counting_requests(handler: Callable[[_Request], Awaitable[_Reply]],
                      ctx: Context) -> Callable[[_Request], Coroutine[Any, Any, _Reply]]:
    """handler, telling the skeleton of each request it answered (``uses_are_requests``:
    max_use counts them)."""
    async def handle(request: _Request) -> _Reply:
        reply = await handler(request)
        ctx.request_served()
        return reply

    return handle


Serve = Callable[[asyncio.StreamReader, asyncio.StreamWriter, Context], Awaitable[None]]
ServeConnection = Callable[[socket.socket, Context], Awaitable[None]]
STREAM_LIMIT = 1 << 16  # a client connection's read buffer: reading pauses past twice this
SHORT_REQUEST = 2  # a trigger on a stream service's socket: W, or W and a NUL
ProtocolFactory = Callable[[asyncio.StreamReader, Context], asyncio.StreamReaderProtocol]
AcceptTLS = Callable[[Context], "tuple[ssl.SSLContext, float] | None"]
Trigger = Callable[[Context, bytes], Awaitable[None]]
Hook = Callable[[Context], Awaitable[None]]


def parse_args(argv: list[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    opts, rest = getopt.getopt(argv, "c:n:t:o:us:vlzp:DSL:")
    flags: dict[str, str] = {}
    overrides: dict[str, str] = {}
    for opt, value in opts:
        if opt == "-o":
            name, sep, val = value.partition("=")
            if not sep:
                raise getopt.GetoptError(f"-o {value}: expected name=value")
            overrides[name.strip()] = val.strip()
        else:
            flags[opt] = value
    return flags, overrides, rest


_BACKGROUND: set[asyncio.Future[object]] = set()


def background(coro: Awaitable[object],
               loop: asyncio.AbstractEventLoop | None = None) -> asyncio.Future[object]:
    """Run coro as a task that is not garbage-collected before it ends.

    The event loop keeps only weak references to tasks: a task nobody holds
    may vanish mid-way. Fire-and-forget work goes through here. ``loop``, the
    running loop, when the caller has it: asking for it costs a getpid() call.
    """
    task = asyncio.ensure_future(coro) if loop is None \
        else loop.create_task(coro)  # type: ignore[arg-type]
    _BACKGROUND.add(task)
    task.add_done_callback(_BACKGROUND.discard)
    return task


async def read_triggers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        ctx: Context, handle: Callable[[bytes], Awaitable[None]]) -> None:
    """Triggers until the client hangs up, or until we stop: a trigger
    connection (cleanup keeps one open to qmgr) never keeps us alive."""
    async def close_on_stop() -> None:
        await ctx.stopping.wait()
        writer.close()

    closer = background(close_on_stop())
    try:
        while data := await reader.read(1024):
            await handle(data)
    finally:
        closer.cancel()


def peer_uid(sock: socket.socket) -> int:
    """The uid of the process at the other end of a Unix stream socket (SO_PEERCRED)."""
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def peer_is_mail_system(peer: asyncio.StreamWriter | socket.socket,
                        config: config_mod.Config) -> bool:
    """True when a Unix-socket client runs as root or mail_owner (or as us, unprivileged).

    public/ is open to every local user (sendmail needs no setgid), so a service
    there that trusts what it is told (cleanup: origin, uid) must check this.
    """
    sock = peer.get_extra_info("socket") if isinstance(peer, asyncio.StreamWriter) else peer
    if sock is None or sock.family != socket.AF_UNIX:
        return True
    return trusted_peer(config, peer_uid(sock))


def drop_privileges(config: config_mod.Config) -> None:
    """Become mail_owner (groups cleared) when root; fatal when that is impossible."""
    if os.geteuid() != 0:
        return
    try:
        owner = privileges.mail_owner(config)
    except privileges.PrivilegeError as e:
        log.fatal(str(e))
    os.setgroups([])
    os.setgid(owner.gid)
    os.setuid(owner.uid)


def _fd_open(fd: int) -> bool:
    try:
        os.fstat(fd)
        return True
    except OSError:
        return False


def _accepted_class(listener: socket.socket) -> type[socket.socket]:
    """The class of the connections a listener accepts: socket.socket with the
    listener's family and type as plain class attributes. socket.socket's
    ``family`` and ``type`` properties convert the numbers to enums at every read,
    and accepting a connection and handing it to the event loop reads them five
    times (25 k instructions, 2.5 % of smtpd's cost per message)."""
    return type("AcceptedSocket", (socket.socket,), {
        "__slots__": (), "family": listener.family, "type": listener.type,
        "__module__": __name__})


class _Runner:
    def __init__(self, ctx: Context, serve: Serve | None, on_trigger: Trigger | None,
                 resident: bool, client_limit: int,
                 serve_connection: ServeConnection | None = None,
                 protocol: ProtocolFactory | None = None, tls: AcceptTLS | None = None,
                 trigger_by_size: bool = False, process_limit: int = 0,
                 uses_are_requests: bool = False) -> None:
        self.ctx = ctx
        self.process_limit = process_limit  # clients_are_processes: the service's maxproc
        self.serve = serve
        self.trigger_by_size = trigger_by_size
        self.serve_connection = serve_connection
        self.protocol = protocol
        self.tls = tls
        self.on_trigger = on_trigger
        self.resident = resident
        self.client_limit = client_limit
        self.active = 0
        self.uses = 0
        self.max_use = ctx.config.get_int("max_use")
        self.max_idle = ctx.config.get_time("max_idle")
        self.loop = asyncio.get_running_loop()
        self.idle_since = self.loop.time()
        self.status_fd = STATUS_FD if STATUS_FD in _INHERITED else None
        self.last_status = b""
        self.listen_socks: list[socket.socket] = []
        # per listener: the class of its connections (_accepted_class), family, type, proto
        self._accepted_as: dict[socket.socket, tuple[type[socket.socket], int, int, int]] = {}
        self.accepting = False
        self.fifo_fds: list[int] = []
        self.done = asyncio.Event()
        # Event-driven daemons that serve many clients at once are long-lived, like
        # Postfix's qmgr: max_use recycles only one-client-at-a-time servers.
        self.recycle = not resident and client_limit == 1 and self.max_use > 0 \
            and not uses_are_requests
        if uses_are_requests and not resident and self.max_use > 0:
            ctx.request_served = self.request_served

    def request_served(self) -> None:
        """uses_are_requests: one more request answered; the max_use-th is the last."""
        self.uses += 1
        if self.uses >= self.max_use:
            self.begin_stop()

    def report(self) -> None:
        if self.status_fd is None:
            return
        full = self.active >= self.client_limit and not self.process_limit
        busy = full or self.ctx.stopping.is_set()
        status = STATUS_BUSY if busy else STATUS_AVAILABLE
        if status != self.last_status:
            try:
                os.write(self.status_fd, status)
                self.last_status = status
            except OSError:
                self.status_fd = None

    # accepting ------------------------------------------------------------
    def start_accepting(self) -> None:
        if self.accepting or self.ctx.stopping.is_set():
            return
        loop = asyncio.get_running_loop()
        for sock in self.listen_socks:
            loop.add_reader(sock.fileno(), self.accept, sock)
        self.accepting = True

    def pause_accepting(self) -> None:
        if not self.accepting:
            return
        loop = asyncio.get_running_loop()
        for sock in self.listen_socks:
            loop.remove_reader(sock.fileno())
        self.accepting = False

    def accept(self, sock: socket.socket) -> None:
        """Take a new client while below client_limit; it counts as active at once.

        One per call, as Postfix's servers take one per wake-up: the listener stays
        readable while more wait, and the loop calls again. Trying for a second one
        at once finds none at nearly every connection of a server that is not
        loaded, and that BlockingIOError costs some 7,000 instructions."""
        made = self._accepted_as.get(sock)
        if made is None:
            made = self._accepted_as[sock] = (
                _accepted_class(sock), int(sock.family), int(sock.type), sock.proto)
        accepted, family, kind, proto = made
        if not self._full():
            try:
                # Not sock.accept(): see _accepted_class.
                fd, _addr = sock._accept()  # type: ignore[attr-defined]
            except (BlockingIOError, InterruptedError):  # another process took it
                fd = None
            except OSError as e:
                log.warning(f"{self.ctx.program}: accept: {e.strerror}")
                fd = None
            if fd is not None:
                # left blocking for now: serve_socket makes it non-blocking, or the
                # event loop does when it takes it over (an ioctl fewer per connection)
                conn = accepted(family, kind, proto, fileno=fd)
                self.active += 1
                if self.recycle:
                    self.uses += 1
                background(self.serve_socket(conn), self.loop)
                if self.recycle and self.uses >= self.max_use:
                    self.begin_stop()
                else:
                    self._full()
        self.report()

    def _full(self) -> bool:
        """Stopping, or at client_limit: accepting pauses (and a process limit is
        warned about)."""
        if self.ctx.stopping.is_set() or self.active >= self.client_limit:
            self.pause_accepting()
            if self.process_limit:
                warn_process_limit(self.ctx)
            return True
        return False

    async def serve_socket(self, conn: socket.socket) -> None:
        loop = self.loop
        tls = self.tls(self.ctx) if self.tls is not None else None
        if self.serve_connection is not None or self.trigger_by_size or tls is not None:
            conn.setblocking(False)  # else connect_accepted_socket makes it so
        if self.serve_connection is not None:
            try:
                await self.serve_connection(conn, self.ctx)
            except Exception as e:  # a bug in one client's handling: log it, keep serving
                log.error(f"{self.ctx.program}: unexpected error: {e!r}")
            finally:
                conn.close()
                self.client_done()
            return
        if self.trigger_by_size:
            trigger = await self._short_request(conn)
            if trigger is not None:
                try:
                    if trigger and self._trigger_allowed(conn):
                        await self._trigger(trigger)
                except Exception as e:  # a bug in handling one trigger: log it, keep serving
                    log.error(f"{self.ctx.program}: unexpected error: {e!r}")
                finally:
                    conn.close()
                    self.client_done()
                return
        # The transport stops reading once 2 * limit bytes wait unread: what a client
        # sends ahead stays bounded per connection (smtpd DATA, cleanup's content).
        reader = asyncio.StreamReader(limit=STREAM_LIMIT, loop=loop)
        if self.protocol is not None:
            protocol = self.protocol(reader, self.ctx)
        else:
            protocol = asyncio.StreamReaderProtocol(reader, loop=loop)
        before_tls = getattr(protocol, "before_tls", None)
        tls_failed = getattr(protocol, "tls_failed", None)
        try:
            if tls is None:
                transport, _ = await loop.connect_accepted_socket(lambda: protocol, sock=conn)
            else:
                peer, local = conn.getpeername(), conn.getsockname()
                if before_tls is not None and not await before_tls(conn):
                    raise ConnectionAbortedError("nothing usable before the TLS handshake")
                try:
                    transport, _ = await loop.connect_accepted_socket(
                        lambda: protocol, sock=conn, ssl=tls[0], ssl_handshake_timeout=tls[1])
                except (OSError, asyncio.IncompleteReadError) as e:
                    if tls_failed is None:
                        raise
                    await tls_failed(peer, local, e)
                    raise ConnectionAbortedError("logged") from None
        except (OSError, asyncio.IncompleteReadError) as e:
            if tls is not None and tls_failed is None and before_tls is None:
                log.info(f"SSL_accept error from [{peer[0]}]: {getattr(e, 'strerror', None) or e}")
            conn.close()
            self.client_done()
            return
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        await self.on_client(reader, writer)

    def client_done(self) -> None:
        self.active -= 1
        if self.active == 0:
            self.idle_since = self.loop.time()  # not get_running_loop(): a getpid() call
        if self.ctx.stopping.is_set():
            if self.active <= 0:
                self.done.set()
        elif self.active < self.client_limit:
            self.start_accepting()
        self.report()

    async def on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.serve is not None:
                await self.serve(reader, writer, self.ctx)
            else:
                await self._read_triggers(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        except RuntimeError as e:
            if not writer.transport.is_closing():
                self._unexpected(e)
            # else uvloop: a reply written after the client went away
        except Exception as e:  # a bug in one client's handling: log it, keep serving others
            self._unexpected(e)
        finally:
            if not writer.is_closing():
                writer.close()
            self.client_done()

    def _unexpected(self, e: Exception) -> None:
        log.error(f"{self.ctx.program}: unexpected error: {e!r}")
        for line in traceback.format_exception(e):
            for part in line.rstrip("\n").splitlines():
                log.error(part)

    async def _short_request(self, conn: socket.socket) -> bytes | None:
        """The trigger bytes when the client's first write is a short one, else None
        (the bytes stay unread for ``serve``); b"" when it sent nothing in time."""
        loop = asyncio.get_running_loop()
        readable: asyncio.Future[None] = loop.create_future()

        def ready() -> None:
            if not readable.done():
                readable.set_result(None)

        loop.add_reader(conn.fileno(), ready)
        try:
            await asyncio.wait_for(readable, self.ctx.config.get_time("ipc_timeout"))
            if len(conn.recv(SHORT_REQUEST + 1, socket.MSG_PEEK)) > SHORT_REQUEST:
                return None
            return conn.recv(SHORT_REQUEST)
        except TimeoutError:
            log.warning(f"{self.ctx.program}: timeout while waiting for data from a client")
            return b""
        except OSError:
            return b""
        finally:
            loop.remove_reader(conn.fileno())

    def _trigger_allowed(self, conn: socket.socket) -> bool:
        """A trigger on a stream service's socket is master's wake-up: the mail
        system's to send, not any local user's (public/ is open to all)."""
        if peer_is_mail_system(conn, self.ctx.config):
            return True
        log.warning(f"uid={peer_uid(conn)}: {self.ctx.service}: wake-up request refused: "
                    "only the mail system may send it")
        return False

    async def _read_triggers(self, reader: asyncio.StreamReader,
                             writer: asyncio.StreamWriter) -> None:
        await read_triggers(reader, writer, self.ctx, self._trigger)

    async def _trigger(self, data: bytes) -> None:
        if self.on_trigger is not None:
            await self.on_trigger(self.ctx, data)

    def on_fifo(self, fd: int) -> None:
        try:
            data = os.read(fd, 1024)
        except BlockingIOError:
            return
        if data:
            background(self._trigger(data))

    def begin_stop(self) -> None:
        if self.ctx.stopping.is_set():
            return
        self.ctx.stopping.set()
        self.pause_accepting()
        for sock in self.listen_socks:
            sock.close()  # our copy: master and other children keep theirs
        self.listen_socks = []
        loop = asyncio.get_running_loop()
        for fd in self.fifo_fds:
            loop.remove_reader(fd)
        self.report()
        if self.active == 0:
            self.done.set()

    async def idle_watch(self) -> None:
        loop = asyncio.get_running_loop()
        while not self.ctx.stopping.is_set():
            await asyncio.sleep(1.0)
            if (not self.resident and self.active == 0 and self.max_idle
                    and loop.time() - self.idle_since >= self.max_idle):
                self.begin_stop()
            table = maps.changed_table()
            if table is not None:
                log.info(f"table {table} has changed -- restarting")
                self.begin_stop()


def _listener_sockets(flags: dict[str, str], transport: str) -> list[socket.socket | int]:
    count = int(flags.get("-s", "1"))
    out: list[socket.socket | int] = []
    if "-L" in flags:
        where = flags["-L"]
        if transport == "inet":
            host, _, port = where.rpartition(":")
            sock = socket.create_server((host.strip("[]") or "127.0.0.1", int(port)), reuse_port=False)
        else:
            try:
                os.unlink(where)
            except FileNotFoundError:
                pass
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            old_umask = os.umask(0o111)  # mode 0666 as master makes them: the directory
            try:  # is the gate (local connects to cleanup with mail_owner's rights)
                sock.bind(where)
            finally:
                os.umask(old_umask)
            sock.listen(100)
        out.append(sock)
        return out
    for fd in range(LISTEN_FD, LISTEN_FD + count):
        if not _fd_open(fd):
            break
        if stat.S_ISFIFO(os.fstat(fd).st_mode):
            os.set_blocking(fd, False)
            out.append(fd)
        else:
            out.append(socket.socket(fileno=fd))
    return out


def run(program: str, *, serve: Serve | None = None, on_trigger: Trigger | None = None,
        on_start: Hook | None = None, on_stop: Hook | None = None, resident: bool = False,
        client_limit: int = 1000, argv: list[str] | None = None,
        pre_init: Callable[[config_mod.Config], object] | None = None,
        serve_connection: ServeConnection | None = None,
        protocol: ProtocolFactory | None = None, tls: AcceptTLS | None = None,
        trigger_by_size: bool = False, clients_are_processes: bool = False,
        uses_are_requests: bool = False) -> None:
    """Parse master's arguments, set up, and run the service until told to stop.

    ``pre_init(config)`` (Postfix's MAIL_SERVER_PRE_INIT) runs before the
    privilege drop, e.g. to open lookup tables that mail_owner cannot read;
    what it returns is in ``ctx.state["pre_init"]``.
    """
    log.init_stderr_only(program)
    try:
        flags, overrides, rest = parse_args(sys.argv[1:] if argv is None else argv)
    except getopt.GetoptError as e:
        log.fatal(str(e))
    overrides.setdefault("service_name", flags.get("-n", program))
    overrides.setdefault("process_name", program)
    try:
        cfg = config_mod.load(flags.get("-c"), overrides, config_mod.running_text())
        log.init(cfg, program)
        for text in cfg.overridden:
            log.warning(text)
        for text in validate.refusals(cfg, program):
            log.fatal(text)
        maps.configure(cfg)
    except config_mod.ConfigError as e:
        log.fatal(str(e))
    transport = flags.get("-t", "unix")
    service = flags.get("-n", program)
    listeners = _listener_sockets(flags, transport)
    # Decide before the event loop opens descriptors of its own (which may be 4 and 5):
    # run by hand (-L) there is no master, so no lifeline and no status pipe.
    if "-L" not in flags:
        _INHERITED.update(fd for fd in (LIFELINE_FD, STATUS_FD) if _fd_open(fd))
    else:
        # no master to start another process for the next client: take them all,
        # and serve on past max_use
        client_limit = max(client_limit, 1000)
        uses_are_requests = False
    process_limit = 0
    if "-L" not in flags:
        process_limit = 1 if "-l" in flags else int(flags.get("-p", "0") or 0)
    per_client = process_limit if clients_are_processes else 0
    if per_client > 0:
        client_limit = min(client_limit, per_client)
    prepared = pre_init(cfg) if pre_init is not None else None
    _use_fast_loop()  # before the privilege drop: the interpreter's files may be root's alone
    if "-u" in flags:
        drop_privileges(cfg)
    ctx = Context(cfg, Spool.from_config(cfg), program, service, transport, rest,
                  verbose="-v" in flags, process_limit=max(process_limit, 0))
    if pre_init is not None:
        ctx.state["pre_init"] = prepared
    try:
        asyncio.run(_main(ctx, listeners, serve, on_trigger, on_start, on_stop, resident,
                          client_limit, serve_connection, protocol, tls, trigger_by_size,
                          per_client, uses_are_requests))
    except KeyboardInterrupt:
        pass


def _use_fast_loop() -> None:
    if os.environ.get("PYMAILSYS_NO_UVLOOP"):
        return
    try:
        import uvloop  # type: ignore[import-not-found]
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


async def _main(ctx: Context, listeners: list[socket.socket | int], serve: Serve | None,
                on_trigger: Trigger | None, on_start: Hook | None, on_stop: Hook | None,
                resident: bool, client_limit: int,
                serve_connection: ServeConnection | None = None,
                protocol: ProtocolFactory | None = None, tls: AcceptTLS | None = None,
                trigger_by_size: bool = False, process_limit: int = 0,
                uses_are_requests: bool = False) -> None:
    loop = asyncio.get_running_loop()
    ctx.stopping = asyncio.Event()
    runner = _Runner(ctx, serve, on_trigger, resident, client_limit, serve_connection,
                     protocol, tls, trigger_by_size, process_limit, uses_are_requests)
    def terminate() -> None:
        ctx.terminated = True
        runner.begin_stop()
        runner.active = 0
        runner.done.set()

    loop.add_signal_handler(signal.SIGTERM, terminate)
    loop.add_signal_handler(signal.SIGINT, terminate)
    if on_start is not None:
        await on_start(ctx)
    # Started: what exists now (imports, configuration, tables) lives as long as the
    # process; the collector need not walk it again, nor touch pages shared with master.
    gc.freeze()
    for item in listeners:
        if isinstance(item, int):
            runner.fifo_fds.append(item)
            loop.add_reader(item, runner.on_fifo, item)
        else:
            item.setblocking(False)
            runner.listen_socks.append(item)
    runner.start_accepting()
    if LIFELINE_FD in _INHERITED:
        os.set_blocking(LIFELINE_FD, False)

        def lifeline() -> None:
            try:
                if os.read(LIFELINE_FD, 64):
                    return
            except BlockingIOError:
                return
            except OSError:
                pass
            loop.remove_reader(LIFELINE_FD)
            runner.begin_stop()

        loop.add_reader(LIFELINE_FD, lifeline)
    runner.report()
    watcher = asyncio.ensure_future(runner.idle_watch())
    await runner.done.wait()
    if runner.active > 0:
        try:
            await asyncio.wait_for(_drain(runner), timeout=30)
        except TimeoutError:
            pass
    watcher.cancel()
    if on_stop is not None:
        await on_stop(ctx)


async def _drain(runner: _Runner) -> None:
    while runner.active > 0:
        await asyncio.sleep(0.05)
