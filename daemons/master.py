"""master: the resident supervisor that runs every service of master.cf.

NAME
    master - pymailsys master process

SYNOPSIS
    python3 -m pymailsys.daemons.master [-c config_dir] [-d|-s] [-t] [-w] [-v]

DESCRIPTION
    master reads main.cf and master.cf (``pymailsys.config.master_cf``), creates the
    listening endpoint of every service and starts service processes on
    demand, as Postfix's master does.

    Listeners: an inet service ``host:port`` binds that address; a bare
    ``port`` binds every address of ``inet_interfaces`` (``all`` = 0.0.0.0 and
    ::, ``loopback-only`` = 127.0.0.1 and ::1), limited by ``inet_protocols``.
    unix and pass services are Unix stream sockets ``public/NAME`` or
    ``private/NAME`` under queue_directory, mode 0666 (the directory is the
    gate); unix-dgram the same with datagram sockets; fifo services are FIFOs
    mode 0622 opened O_RDWR|O_NONBLOCK.

    Children: a service's command names a Python module:
    ``pymailsys.daemons.COMMAND`` (a ``-`` in the command becomes ``_``, so
    ``trivial-rewrite`` is ``pymailsys.daemons.trivial_rewrite``). A command
    containing a dot is taken as a full module name, for daemons that live
    outside pymailsys (third-party services, test fixtures). A service whose
    module cannot be found is logged with a warning and left out (no
    listener is created), so a stock Postfix master.cf with tlsmgr, anvil,
    scache or pipe services starts. A child runs as::

        python3 -m MODULE -c CONFIG_DIR -n SERVICE -t TYPE [-u] [-l|-z]
                [-s COUNT] ARGS-FROM-MASTER.CF

    with fd 4 the read end of the generation's lifeline pipe (master keeps
    the write end; end of file there tells the child to finish and exit),
    fd 5 the write end of the child's status pipe (``A`` available, ``B``
    busy), fds 6 and up its listeners, fds 0 and 1 /dev/null and fd 2 a pipe
    whose lines master logs (a Python traceback before the daemon's own
    logging is set up is not lost). Every other descriptor is closed. The
    environment is filtered by ``import_environment``; ``PYTHON*`` and
    ``PYMAILSYS_*`` variables are kept so that the interpreter runs the same
    code; ``GENERATION`` is set as Postfix does.

    Each child gets a status pipe of its own (the child cannot tell): the
    one-byte status protocol carries no process ID, and a private pipe is
    what lets master know exactly which child is available, even after one
    was killed halfway.

    Demand: master watches a service's listener only while the service has
    no available child, is below its process limit (maxproc, 0 = unlimited)
    and is not throttled; when the listener becomes readable it starts one
    child, which counts as available until it reports otherwise. At the limit
    it logs ``service "NAME" (NAME) has reached its process limit "N": new
    clients may experience noticeable delays`` at most once per 1000 s.

    Wake-ups: a service with wakeup N > 0 gets a ``W`` trigger every N
    seconds (connect + write for sockets, a write to the FIFO), the first one
    at start-up, so pickup and qmgr start at once; when their last process
    exits they are triggered (and so restarted) at once. ``N?`` services are
    woken only after they have been used.

    Exits: ``warning: process PATH pid N exit status S`` or ``... killed by
    signal S`` (PATH is ``$daemon_directory/COMMAND``, as Postfix shows it);
    a child that fails before it ever reported its status gives
    ``warning: PATH: bad command startup -- throttling`` and no new process
    of that service for ``service_throttle_time``.

    Signals: SIGHUP reloads (main.cf and master.cf re-read, the old lifeline
    closed so old children exit when idle, listeners created or closed as
    the services changed, children of removed services terminated; a broken
    new configuration is logged and the old one kept); SIGTERM (and SIGINT)
    logs ``terminating on signal 15``, terminates all children, waits up to
    3 s, kills what is left and exits 0.

    The pid file ``queue_directory/pid/master.pid`` (``pymailsys.pidfile``)
    holds the pid right aligned in 32 columns plus a newline and stays
    flock()ed exclusively while master runs; ``master -t`` exits 0 when the file is absent or not
    locked (master not running), 1 otherwise.

OPTIONS
    -c dir   configuration directory (else $MAIL_CONFIG, else the default)
    -d, -s   stay in the foreground (start-fg)
    -w       detach with python-daemon and wait until the master has
             initialized; exit 0 on success, 1 with the reason on stderr
    -t       test mode, see above
    -v       accepted, ignored

SECURITY
    Started as root, master stays root (it binds privileged ports and makes
    the sockets); children with unpriv ``y`` drop to mail_owner themselves
    (``-u``). Started as another user, everything runs as that user and
    master logs one warning saying so.

CONFIGURATION PARAMETERS
    queue_directory, process_id_directory, daemon_directory,
    default_process_limit, service_throttle_time, inet_interfaces,
    inet_protocols, import_environment, maillog_file, syslog_name.
"""

from __future__ import annotations

import errno
import getopt
import importlib.util
import os
import select
import selectors
import signal
import socket
import stat
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import NoReturn

from pymailsys import MAIL_VERSION, log, pidfile
from pymailsys import config as config_mod
from pymailsys.config import Config, ConfigError, master_cf
from pymailsys.config.master_cf import ServiceEntry
from pymailsys.queue import setup as spool_setup

PROGRAM = "master"
LIFELINE_FD = 4
STATUS_FD = 5
LISTEN_FD = 6
LIMIT_WARNING_INTERVAL = 1000.0
STOP_GRACE = 3.0


class StartupError(Exception):
    """A fatal problem while master initializes (reported to ``-w`` waiters)."""


def module_for(command: str) -> str:
    """The Python module that implements a master.cf command."""
    base = os.path.basename(command)
    if "." in base:
        return base
    return "pymailsys.daemons." + base.replace("-", "_")


def module_exists(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


# ---------------------------------------------------------------------------
# listeners

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


# ---------------------------------------------------------------------------
# services and children

@dataclass
class Service:
    entry: ServiceEntry
    module: str
    maxproc: int
    spec: tuple
    listeners: list[Listener] = field(default_factory=list)
    children: dict[int, Child] = field(default_factory=dict)
    throttle_until: float = 0.0
    next_wakeup: float | None = None
    used: bool = False
    watching: bool = False
    last_limit_warning: float = -LIMIT_WARNING_INTERVAL

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def program_path(self) -> str:
        return self.entry.command

    def at_limit(self) -> bool:
        return self.maxproc > 0 and len(self.children) >= self.maxproc


@dataclass
class Child:
    pid: int
    service: Service
    generation: int
    status_fd: int
    available: bool = True
    reported: bool = False


class Master:
    """One running master: configuration, listeners, children, event loop."""

    def __init__(self, config_dir: str | None, init_fd: int | None = None) -> None:
        self.config_dir = os.path.abspath(config_mod.resolve_config_dir(config_dir))
        self.init_fd = init_fd
        self.cfg: Config | None = None
        self.services: dict[tuple[str, str], Service] = {}
        self.children: dict[int, Child] = {}
        self.sel = selectors.DefaultSelector()
        self.generation = 0
        self.lifeline_r = -1
        self.lifeline_w = -1
        self.stderr_r = -1
        self.stderr_w = -1
        self.stderr_buf = b""
        self.devnull = -1
        self.pid_fd = -1
        self.wake_r = -1
        self.wake_w = -1
        self.terminating = False
        self.daemon_directory = ""

    # -- start-up ------------------------------------------------------------
    def fatal(self, text: str) -> NoReturn:
        raise StartupError(text)

    def load(self) -> tuple[Config, list[ServiceEntry]]:
        cfg = config_mod.load(self.config_dir)
        entries = master_cf.parse_file(os.path.join(self.config_dir, "master.cf"))
        return cfg, entries

    def initialize(self) -> None:
        log.init_stderr_only(PROGRAM)
        try:
            cfg, entries = self.load()
            log.init(cfg, PROGRAM)
        except ConfigError as e:
            self.fatal(str(e))
        except OSError as e:
            self.fatal(f"open log file: {e.strerror}")
        self.cfg = cfg
        self.daemon_directory = cfg.get("daemon_directory")
        queue_directory = cfg.get("queue_directory")
        try:
            os.chdir(queue_directory)
        except OSError as e:
            self.fatal(f"chdir {queue_directory}: {e.strerror}")
        self.lock_pid_file(cfg)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.stderr_r, self.stderr_w = os.pipe()
        os.set_blocking(self.stderr_r, False)
        self.sel.register(self.stderr_r, selectors.EVENT_READ, self.on_child_stderr)
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self.on_signal_pipe)
        for sig in (signal.SIGHUP, signal.SIGTERM, signal.SIGINT, signal.SIGCHLD):
            signal.signal(sig, _ignore_signal)
        signal.set_wakeup_fd(self.wake_w, warn_on_full_buffer=False)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)
        self.new_generation()
        try:
            self.services = self.build_services(cfg, entries, {}, fatal=True)
        except (ConfigError, OSError) as e:
            self.fatal(str(e) if isinstance(e, ConfigError) else (e.strerror or str(e)))
        log.info(f"daemon started -- version {MAIL_VERSION}, configuration {self.config_dir}")
        if os.geteuid() != 0:
            user = spool_setup.user_name(os.geteuid())
            log.warning(f"not running as root: all services run as user {user} "
                        f"(uid {os.geteuid()}); mail_owner and the unpriv column have no effect")

    def lock_pid_file(self, cfg: Config) -> None:
        rel = os.path.join(cfg.get("process_id_directory"), "master.pid")
        try:
            self.pid_fd = pidfile.lock(rel, os.getpid())
        except pidfile.PidFileError as e:
            self.fatal(str(e))

    def new_generation(self) -> None:
        if self.lifeline_w >= 0:
            os.close(self.lifeline_w)
            os.close(self.lifeline_r)
        self.generation += 1
        self.lifeline_r, self.lifeline_w = os.pipe()

    def build_services(self, cfg: Config, entries: list[ServiceEntry],
                       old: dict[tuple[str, str], Service], fatal: bool) -> dict[tuple[str, str], Service]:
        """Services for entries, reusing old listeners whose address did not change."""
        default_limit = cfg.get_int("default_process_limit")
        queue_directory = cfg.get("queue_directory")
        wanted: list[tuple[ServiceEntry, str, int, tuple]] = []
        for entry in entries:
            module = module_for(entry.command)
            if not module_exists(module):
                log.warning(f"{entry.where()}: service {entry.name}/{entry.type}: "
                            f"no daemon module {module} -- service disabled")
                continue
            maxproc = default_limit if entry.maxproc is None else entry.maxproc
            try:
                if entry.type == "inet":
                    spec: tuple = ("inet", entry.name, tuple(inet_bind_addresses(entry, cfg)))
                else:
                    spec = (entry.type, entry.socket_name(queue_directory))
            except ConfigError as e:
                if fatal:
                    raise
                log.error(f"{e} -- service {entry.name}/{entry.type} disabled")
                continue
            wanted.append((entry, module, maxproc, spec))
        chrooted = [f"{e.name}/{e.type}" for e, _m, _p, _s in wanted if e.chroot]
        if chrooted:
            log.warning(f"{os.path.join(cfg.config_dir, 'master.cf')}: the chroot column is not "
                        f"supported yet; these services run without chroot: {', '.join(chrooted)}")
        # Close the listeners that are not carried over, before binding new ones.
        keep_specs = {spec for _e, _m, _p, spec in wanted}
        for svc in old.values():
            if svc.spec not in keep_specs:
                self.close_listeners(svc)
        reusable = {svc.spec: svc for svc in old.values() if svc.listeners}
        new: dict[tuple[str, str], Service] = {}
        now = time.monotonic()
        for entry, module, maxproc, spec in wanted:
            svc = Service(entry, module, maxproc, spec)
            prev = reusable.pop(spec, None)
            if prev is not None:
                self.unwatch(prev)
                svc.listeners, prev.listeners = prev.listeners, []
            else:
                try:
                    svc.listeners = make_listeners(entry, cfg, maxproc)
                except (ConfigError, OSError) as e:
                    text = str(e) if isinstance(e, ConfigError) else (e.strerror or str(e))
                    if fatal:
                        for s in new.values():
                            self.close_listeners(s)
                        raise ConfigError(text) from None
                    log.error(f"{text} -- service {entry.name}/{entry.type} disabled")
                    continue
            same = old.get(entry.key)
            if same is not None:
                svc.children = same.children
                same.children = {}
                for child in svc.children.values():
                    child.service = svc
                svc.used = same.used
            if entry.wakeup > 0:
                svc.next_wakeup = now + entry.wakeup if entry.wakeup_after_use else now
            new[entry.key] = svc
        for svc in reusable.values():
            self.close_listeners(svc)
        return new

    def close_listeners(self, svc: Service) -> None:
        self.unwatch(svc)
        for lst in svc.listeners:
            lst.close()
        svc.listeners = []

    # -- the loop ----------------------------------------------------------------
    def run(self) -> int:
        try:
            self.initialize()
        except StartupError as e:
            self.report_init(f"fatal: {e}")
            log.fatal(str(e))
        except Exception as e:
            self.report_init(f"fatal: {e!r}")
            _log_traceback()
            log.fatal(f"initialization failed: {e!r}")
        self.report_init("ok")
        while not self.terminating:
            try:
                self.step()
            except Exception:  # a bug must not take the whole mail system down
                _log_traceback()
                time.sleep(0.1)
        return self.shutdown()

    def step(self) -> None:
        """One turn of the loop: wait for an event or a timer, then handle it."""
        self.update_watches()
        timeout = self.next_timeout()
        try:
            events = self.sel.select(timeout)
        except InterruptedError:
            events = []
        for key, _mask in events:
            callback: Callable[[], None] = key.data
            callback()
        self.reap()
        self.run_timers()

    def report_init(self, text: str) -> None:
        if self.init_fd is None:
            return
        try:
            os.write(self.init_fd, text.encode("utf-8", "replace"))
            os.close(self.init_fd)
        except OSError:
            pass
        self.init_fd = None

    def current(self, svc: Service) -> list[Child]:
        return [c for c in svc.children.values() if c.generation == self.generation]

    def update_watches(self) -> None:
        now = time.monotonic()
        for svc in self.services.values():
            avail = any(c.available for c in self.current(svc))
            want = (bool(svc.listeners) and not avail and not svc.at_limit()
                    and now >= svc.throttle_until)
            if want and not svc.watching:
                for lst in svc.listeners:
                    self.sel.register(lst.fd, selectors.EVENT_READ,
                                      lambda s=svc: self.on_listener(s))
                svc.watching = True
            elif not want and svc.watching:
                self.unwatch(svc)
            settled = all(c.generation == self.generation for c in svc.children.values())
            if (not avail and svc.at_limit() and settled
                    and now - svc.last_limit_warning >= LIMIT_WARNING_INTERVAL):
                if _readable([lst.fd for lst in svc.listeners]):
                    svc.last_limit_warning = now
                    log.warning(f'service "{svc.name}" ({svc.name}) has reached its process limit '
                                f'"{svc.maxproc}": new clients may experience noticeable delays')

    def unwatch(self, svc: Service) -> None:
        if not svc.watching:
            return
        for lst in svc.listeners:
            try:
                self.sel.unregister(lst.fd)
            except (KeyError, ValueError):
                pass
        svc.watching = False

    def next_timeout(self) -> float | None:
        now = time.monotonic()
        times = []
        for svc in self.services.values():
            if svc.next_wakeup is not None:
                times.append(svc.next_wakeup)
            if svc.throttle_until > now:
                times.append(svc.throttle_until)
        if not times:
            return None
        return max(0.0, min(times) - now)

    def run_timers(self) -> None:
        now = time.monotonic()
        for svc in self.services.values():
            if svc.next_wakeup is None or svc.next_wakeup > now:
                continue
            svc.next_wakeup = now + svc.entry.wakeup
            if svc.entry.wakeup_after_use and not svc.used:
                continue
            self.wakeup(svc)

    def wakeup(self, svc: Service) -> None:
        """Send a W trigger without ever blocking master."""
        if not svc.listeners:
            return
        lst = svc.listeners[0]
        try:
            if svc.entry.type == "fifo":
                os.write(lst.fd, b"W")
            elif svc.entry.type == "unix-dgram" and lst.path:
                with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
                    s.setblocking(False)
                    s.sendto(b"W", lst.path)
            elif svc.entry.type in ("unix", "pass") and lst.path:
                with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                    s.setblocking(False)
                    s.connect(lst.path)
                    s.send(b"W")
        except OSError:
            pass  # backlog or buffer full: the service has work queued anyway

    # -- events --------------------------------------------------------------
    def on_listener(self, svc: Service) -> None:
        if (svc is not self.services.get(svc.entry.key) or svc.at_limit()
                or any(c.available for c in self.current(svc))
                or time.monotonic() < svc.throttle_until):
            self.unwatch(svc)
            return
        self.spawn(svc)

    def spawn(self, svc: Service) -> None:
        assert self.cfg is not None
        entry = svc.entry
        argv = [sys.executable, "-m", svc.module, "-c", self.config_dir,
                "-n", entry.name, "-t", entry.type]
        if entry.unpriv:
            argv.append("-u")
        if svc.maxproc == 1:
            argv.append("-l")
        elif svc.maxproc == 0:
            argv.append("-z")
        if len(svc.listeners) > 1:
            argv += ["-s", str(len(svc.listeners))]
        argv += entry.args
        status_r, status_w = os.pipe()
        targets = [(self.devnull, 0), (self.devnull, 1), (self.stderr_w, 2),
                   (self.lifeline_r, LIFELINE_FD), (status_w, STATUS_FD)]
        targets += [(lst.fd, LISTEN_FD + i) for i, lst in enumerate(svc.listeners)]
        base = max(max(src for src, _ in targets), LISTEN_FD + len(svc.listeners)) + 1
        actions: list[tuple] = []
        for i, (src, _dst) in enumerate(targets):
            actions.append((os.POSIX_SPAWN_DUP2, src, base + i))
        for i, (_src, dst) in enumerate(targets):
            actions.append((os.POSIX_SPAWN_DUP2, base + i, dst))
        for i in range(len(targets)):
            actions.append((os.POSIX_SPAWN_CLOSE, base + i))
        try:
            pid = os.posix_spawn(sys.executable, argv, self.child_env(), file_actions=actions,
                                 setsigdef=(signal.SIGPIPE, signal.SIGHUP, signal.SIGTERM,
                                            signal.SIGINT, signal.SIGCHLD),
                                 setsigmask=())
        except OSError as e:
            os.close(status_r)
            os.close(status_w)
            log.warning(f"{self.path_of(svc)}: fork: {e.strerror} -- throttling")
            self.throttle(svc)
            return
        os.close(status_w)
        os.set_blocking(status_r, False)
        child = Child(pid, svc, self.generation, status_r)
        svc.children[pid] = child
        svc.used = True
        self.children[pid] = child
        self.sel.register(status_r, selectors.EVENT_READ, lambda c=child: self.on_status(c))
        self.unwatch(svc)

    def child_env(self) -> dict[str, str]:
        assert self.cfg is not None
        env: dict[str, str] = {}
        for item in self.cfg.get_list("import_environment"):
            name, sep, value = item.partition("=")
            if sep:
                env[name] = value
            elif name in os.environ:
                env[name] = os.environ[name]
        for name, value in os.environ.items():
            if name.startswith(("PYTHON", "PYMAILSYS_")):
                env[name] = value
        env["MAIL_CONFIG"] = self.config_dir
        env["GENERATION"] = f"{self.generation:o}"
        return env

    def path_of(self, svc: Service) -> str:
        return os.path.join(self.daemon_directory, svc.entry.command)

    def throttle(self, svc: Service) -> None:
        assert self.cfg is not None
        try:
            delay = self.cfg.get_time("service_throttle_time")
        except ConfigError:
            delay = 60
        svc.throttle_until = time.monotonic() + delay
        self.unwatch(svc)

    def on_status(self, child: Child) -> None:
        try:
            data = os.read(child.status_fd, 256)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self.close_status(child)
            return
        for byte in data:
            if byte == ord("A"):
                child.available = True
                child.reported = True
            elif byte == ord("B"):
                child.available = False
                child.reported = True

    def close_status(self, child: Child) -> None:
        if child.status_fd < 0:
            return
        try:
            self.sel.unregister(child.status_fd)
        except (KeyError, ValueError):
            pass
        os.close(child.status_fd)
        child.status_fd = -1

    def on_child_stderr(self) -> None:
        try:
            data = os.read(self.stderr_r, 65536)
        except BlockingIOError:
            return
        self.stderr_buf += data
        *lines, self.stderr_buf = self.stderr_buf.split(b"\n")
        if len(self.stderr_buf) > 4096:
            lines.append(self.stderr_buf)
            self.stderr_buf = b""
        for line in lines:
            text = line.decode("utf-8", "replace").rstrip()
            if text:
                log.warning(f"daemon stderr: {text}")

    def on_signal_pipe(self) -> None:
        try:
            data = os.read(self.wake_r, 512)
        except BlockingIOError:
            return
        for signum in data:
            if signum in (signal.SIGTERM, signal.SIGINT):
                if not self.terminating:
                    log.info(f"terminating on signal {signum}")
                self.terminating = True
            elif signum == signal.SIGHUP:
                self.reload()
            # SIGCHLD: reap() runs after every event

    def reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.pop(pid, None)
            if child is None:
                continue
            self.on_status(child)  # the last status bytes, if any
            self.close_status(child)
            svc = child.service
            svc.children.pop(pid, None)
            path = self.path_of(svc)
            failed = False
            if os.WIFEXITED(status) and os.WEXITSTATUS(status) != 0:
                log.warning(f"process {path} pid {pid} exit status {os.WEXITSTATUS(status)}")
                failed = True
            elif os.WIFSIGNALED(status):
                if not self.terminating:
                    log.warning(f"process {path} pid {pid} killed by signal {os.WTERMSIG(status)}")
                failed = True
            if self.terminating or svc is not self.services.get(svc.entry.key):
                continue
            if failed and not child.reported:
                log.warning(f"{path}: bad command startup -- throttling")
                self.throttle(svc)
            if (svc.entry.wakeup > 0 and not svc.entry.wakeup_after_use
                    and not self.current(svc)):
                svc.next_wakeup = time.monotonic()

    # -- reload and stop -----------------------------------------------------
    def reload(self) -> None:
        try:
            cfg, entries = self.load()
        except (ConfigError, OSError) as e:
            log.error(f"{e} -- configuration not reloaded")
            return
        try:
            log.init(cfg, PROGRAM)
        except OSError as e:
            log.error(f"open log file: {e.strerror}")
        self.cfg = cfg
        self.daemon_directory = cfg.get("daemon_directory")
        log.info(f"reload -- version {MAIL_VERSION}, configuration {self.config_dir}")
        self.new_generation()
        old = self.services
        try:
            new = self.build_services(cfg, entries, old, fatal=False)
        except (ConfigError, OSError) as e:
            log.error(f"{e} -- configuration not reloaded")
            return
        for key, svc in old.items():
            if key not in new:
                for pid in list(svc.children):
                    _kill(pid, signal.SIGTERM)
        self.services = new

    def shutdown(self) -> int:
        for svc in self.services.values():
            self.unwatch(svc)
        if self.lifeline_w >= 0:
            os.close(self.lifeline_w)
            self.lifeline_w = -1
        for pid in list(self.children):
            _kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE
        while self.children and time.monotonic() < deadline:
            self.reap()
            if self.children:
                time.sleep(0.05)
        for pid in list(self.children):
            _kill(pid, signal.SIGKILL)
        end = time.monotonic() + 1.0
        while self.children and time.monotonic() < end:
            self.reap()
            if self.children:
                time.sleep(0.02)
        self.on_child_stderr_final()
        return 0

    def on_child_stderr_final(self) -> None:
        try:
            while _readable([self.stderr_r]):
                before = len(self.stderr_buf)
                self.on_child_stderr()
                if len(self.stderr_buf) == before and not _readable([self.stderr_r]):
                    break
        except OSError:
            pass


def _log_traceback() -> None:
    import traceback

    for line in traceback.format_exc().splitlines():
        log.error(line)


def _readable(fds: list[int]) -> bool:
    if not fds:
        return False
    try:
        ready, _, _ = select.select(fds, [], [], 0)
    except (OSError, ValueError):
        return False
    return bool(ready)


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level no-op: set_wakeup_fd delivers the signal number to the loop."""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ---------------------------------------------------------------------------
# command line

def start_detached(config_dir: str | None) -> int:
    """``master -w``: daemonize with python-daemon, wait for the initialization status."""
    import daemon

    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        rc = 1
        try:
            os.close(read_fd)
            os.setsid()
            context = daemon.DaemonContext(detach_process=False, files_preserve=[write_fd],
                                           umask=0o022, working_directory="/",
                                           signal_map={}, prevent_core=False)
            context.open()
            rc = Master(config_dir, init_fd=write_fd).run()
        except SystemExit as e:
            rc = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: B036 -- the daemon child must never return to the caller
            rc = 1
        os._exit(rc)
    os.close(write_fd)
    chunks = []
    while True:
        try:
            data = os.read(read_fd, 4096)
        except InterruptedError:
            continue
        if not data:
            break
        chunks.append(data)
    os.close(read_fd)
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass
    status = b"".join(chunks).decode("utf-8", "replace")
    if status == "ok":
        return 0
    text = status or "fatal: master process terminated during initialization"
    sys.stderr.write(f"{_tag()}: {text}\n")
    return 1


def _tag() -> str:
    try:
        return f"{config_mod.load().get('syslog_name') or 'postfix'}/{PROGRAM}"
    except (ConfigError, OSError):
        return f"postfix/{PROGRAM}"


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    try:
        opts, rest = getopt.getopt(args, "c:dDe:istvw")
    except getopt.GetoptError as e:
        sys.stderr.write(f"postfix/master: fatal: {e}\n")
        return 1
    flags = dict(opts)
    if rest:
        sys.stderr.write("postfix/master: fatal: usage: master [-c config_dir] [-d] [-s] [-t] [-w] [-v]\n")
        return 1
    config_dir = flags.get("-c")
    if config_dir:
        os.environ["MAIL_CONFIG"] = config_dir
    if "-t" in flags:
        try:
            cfg = config_mod.load(config_dir)
        except ConfigError as e:
            sys.stderr.write(f"postfix/master: fatal: {e}\n")
            return 1
        return 0 if pidfile.master_pid(cfg) is None else 1
    if "-w" in flags:
        return start_detached(config_dir)
    return Master(config_dir).run()


if __name__ == "__main__":
    sys.exit(main())
