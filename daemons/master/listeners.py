"""Listening endpoints: the sockets and FIFOs master creates for master.cf services.

Contract: ``make_listeners(entry, cfg, maxproc)`` returns the open listeners of
one service or raises ConfigError (a bad address) or OSError (bind failed),
closing what it opened. An inet service ``host:port`` binds that address; a
bare ``port`` binds every address of ``inet_interfaces`` (``all`` = 0.0.0.0
and ::, ``loopback-only`` = 127.0.0.1 and ::1), limited by ``inet_protocols``.
unix and pass services are Unix stream sockets ``public/NAME`` or
``private/NAME`` under queue_directory, mode 0666 (the directory is the gate);
unix-dgram the same with datagram sockets; fifo services are FIFOs mode 0622
opened O_RDWR|O_NONBLOCK. ``inet_bind_addresses`` is what a service would bind,
so that reload can tell whether a listener can be carried over.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from dataclasses import dataclass

from pymailsys import log
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
    if entry.type == "fifo":
        try:
            st = os.lstat(path)
            if not stat.S_ISFIFO(st.st_mode):
                os.unlink(path)
        except FileNotFoundError:
            pass
        if not os.path.exists(path):
            os.mkfifo(path, 0o622)
        os.chmod(path, 0o622)
        fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)
        return [Listener(fd, path, path=path)]
    kind = socket.SOCK_DGRAM if entry.type == "unix-dgram" else socket.SOCK_STREAM
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    sock = socket.socket(socket.AF_UNIX, kind)
    try:
        sock.bind(path)
        os.chmod(path, 0o666)
        if kind == socket.SOCK_STREAM:
            sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise OSError(e.errno, f"bind {path}: {e.strerror}") from None
    return [Listener(sock.fileno(), path, obj=sock, path=path)]
