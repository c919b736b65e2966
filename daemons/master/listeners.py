"""Listening endpoints: the sockets and FIFOs master creates for master.cf services.

Contract: ``make_listeners(entry, cfg, maxproc)`` returns the open listeners of
one service or raises ConfigError (a bad address) or OSError (bind failed),
closing what it opened. An inet service ``host:port`` binds that address; a
bare ``port`` binds every address of ``inet_interfaces`` (``all`` = 0.0.0.0
and ::, ``loopback-only`` = 127.0.0.1 and ::1), limited by ``inet_protocols``.
unix and pass services are Unix stream sockets ``public/NAME`` or
``private/NAME`` under queue_directory, mode 0666 (the directory is the gate);
unix-dgram the same with datagram sockets; fifo services are FIFOs mode 0622
opened O_RDWR|O_NONBLOCK|O_NOFOLLOW and fstat-checked (a FIFO, ours).

SECURITY: public/ and private/ belong to mail_owner, so master (root) removes,
creates and sets up sockets and FIFOs there with mail_owner's effective uid
and gid, as Postfix's master does: a link mail_owner plants there gets no
more than mail_owner's rights. Whatever is at a socket's path is removed
(not followed) and made anew; a socket gets its mode from the umask at bind
time, never through a chmod by name. ``inet_bind_addresses`` is what a service would bind,
so that reload can tell whether a listener can be carried over.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

from pymailsys import log, privileges
from pymailsys.config import Config, ConfigError
from pymailsys.config.master_cf import ServiceEntry


@dataclass
class Listener:
    """One listening endpoint owned by master."""

    fd: int
    desc: str
    obj: socket.socket | None = None
    path: str | None = None  # unix/fifo path

    def close(self) -> None:
        if self.obj is not None:
            self.obj.close()
        else:
            os.close(self.fd)


def _port_number(port: str) -> int:
    if port.isdigit():
        return int(port)
    try:
        return socket.getservbyname(port, "tcp")
    except OSError:
        raise ConfigError(f"unknown service: {port}/tcp") from None


def inet_bind_addresses(entry: ServiceEntry, cfg: Config) -> list[tuple[int, str]]:
    """(family, address) pairs an inet service binds."""
    host, _port = entry.inet_address()
    protocols = [p.lower() for p in cfg.get_list("inet_protocols")] or ["all"]
    want4 = "all" in protocols or "ipv4" in protocols
    want6 = "all" in protocols or "ipv6" in protocols
    if host is not None:
        hosts = [cfg.expand(host)]
    else:
        interfaces = [i.lower() for i in cfg.get_list("inet_interfaces")] or ["all"]
        if "all" in interfaces:
            out: list[tuple[int, str]] = []
            if want4:
                out.append((socket.AF_INET, "0.0.0.0"))
            if want6:
                out.append((socket.AF_INET6, "::"))
            return out
        hosts = []
        for i in cfg.get_list("inet_interfaces"):
            if i.lower() == "loopback-only":
                hosts.extend(["127.0.0.1", "::1"])
            else:
                hosts.append(i.strip("[]"))
    out2: list[tuple[int, str]] = []
    for h in hosts:
        h = h.strip("[]")
        try:
            infos = socket.getaddrinfo(h, None, 0, socket.SOCK_STREAM, 0,
                                       socket.AI_PASSIVE)
        except socket.gaierror as e:
            raise ConfigError(f"{entry.where()}: host not found: {h}: {e.strerror}") from None
        for family, _t, _p, _c, sockaddr in infos:
            if (family == socket.AF_INET and want4) or (family == socket.AF_INET6 and want6):
                item = (int(family), str(sockaddr[0]))
                if item not in out2:
                    out2.append(item)
    return out2


def _backlog(maxproc: int, cfg: Config) -> int:
    return max(maxproc, cfg.get_int("default_process_limit"), 100)


def make_listeners(entry: ServiceEntry, cfg: Config, maxproc: int) -> list[Listener]:
    """Create the listeners of one service; raises ConfigError or OSError."""
    backlog = _backlog(maxproc, cfg)
    if entry.type == "inet":
        _host, port = entry.inet_address()
        number = _port_number(cfg.expand(port))
        out: list[Listener] = []
        all_protocols = "all" in [p.lower() for p in cfg.get_list("inet_protocols")]
        try:
            for family, addr in inet_bind_addresses(entry, cfg):
                try:
                    sock = socket.socket(family, socket.SOCK_STREAM)
                except OSError as e:
                    if family == socket.AF_INET6 and all_protocols:
                        log.warning(f"inet_protocols: IPv6 support is disabled: {e.strerror}")
                        continue
                    raise
                try:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    sock.bind((addr, number))
                    sock.listen(backlog)
                    sock.setblocking(False)
                except OSError as e:
                    sock.close()
                    if (family == socket.AF_INET6 and all_protocols
                            and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT)):
                        log.warning(f"bind {addr} port {number}: {e.strerror} -- skipped")
                        continue
                    raise OSError(e.errno, f"bind {addr} port {number}: {e.strerror}") from None
                out.append(Listener(sock.fileno(), f"{addr}:{number}", obj=sock))
        except BaseException:
            for lst in out:
                lst.close()
            raise
        if not out:
            raise ConfigError(f"{entry.where()}: service {entry.name}: no addresses to listen on")
        return out
    path = entry.socket_name(cfg.get("queue_directory"))
    owner = endpoint_owner(cfg)
    # public/ and private/ belong to mail_owner: work there with its rights only,
    # so that a link planted there cannot steer root (no threads run in master)
    with privileges.as_user(owner.uid, owner.gid):
        if entry.type == "fifo":
            return [_make_fifo(path)]
        return [_make_unix_socket(path, entry.type, backlog)]


def endpoint_owner(cfg: Config) -> privileges.UserIds:
    """Whose rights master uses in public/ and private/: mail_owner when root, else itself."""
    if not privileges.running_as_root():
        return privileges.current_user()
    try:
        return privileges.mail_owner(cfg)
    except privileges.PrivilegeError as e:
        raise ConfigError(str(e)) from None


def _unlink(path: str) -> None:
    try:
        os.unlink(path)  # never follows a link: removes the link itself
    except FileNotFoundError:
        pass


def _make_fifo(path: str) -> Listener:
    """A new FIFO at path, opened without following links and checked to be ours."""
    try:
        _unlink(path)
        os.mkfifo(path, 0o600)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as e:
        raise OSError(e.errno, f"open fifo {path}: {e.strerror}") from None
    st = os.fstat(fd)
    if not stat.S_ISFIFO(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        raise OSError(errno.EPERM, f"open fifo {path}: not a FIFO of ours -- replaced while "
                                   f"being created")
    os.fchmod(fd, 0o622)
    return Listener(fd, path, path=path)


def _make_unix_socket(path: str, kind_name: str, backlog: int) -> Listener:
    """A new Unix socket at path, mode 0666 from the start (no chmod by name)."""
    kind = socket.SOCK_DGRAM if kind_name == "unix-dgram" else socket.SOCK_STREAM
    _unlink(path)
    sock = socket.socket(socket.AF_UNIX, kind)
    old_umask = os.umask(0o111)
    try:
        sock.bind(path)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"bind {path}: {e.strerror}") from None
    finally:
        os.umask(old_umask)
    return Listener(sock.fileno(), path, obj=sock, path=path)
