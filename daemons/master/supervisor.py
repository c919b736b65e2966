"""The master's event loop: demand-started children, wake-ups, exits, signals, stop.

Contract: ``Master(config_dir, init_fd).run()`` initializes (configuration,
log, chdir to queue_directory, the pid file lock, listeners), reports ``ok``
or ``fatal: ...`` on ``init_fd`` when given (``master -w``), then serves
until SIGTERM/SIGINT and returns the exit status.

Demand: master watches a service's listener only while the service has no
available child of the current generation, is below its process limit
(maxproc, 0 = unlimited) and is not throttled; when the listener becomes
readable it starts one child, which counts as available until it reports
otherwise. At the limit it logs ``service "NAME" (NAME) has reached its
process limit "N": new clients may experience noticeable delays`` at most
once per 1000 s.

Wake-ups: a service with wakeup N > 0 gets a ``W`` trigger every N seconds
(connect + write for sockets, a write to the FIFO), the first one at
start-up; when its last process exits it is triggered (and so restarted) at
once, but after a failure (exit status, signal) only once per
``service_throttle_time``: a process that fails again within that time is
replaced at the next wake-up or client, as Postfix's master starts one only
then, so that a daemon that fails soon after it started (qmgr on a setting
it reads only when mail comes) never turns into a fork loop. ``N?``
services are woken only after they have been used. A wake-up
never blocks master, and connects with mail_owner's rights, as the
listeners are made.

pickup runs on demand: its wake-up (whose only use is a scan of maildrop/)
is sent only when maildrop/ holds an entry, which master looks for with
mail_owner's rights; sendmail, postdrop and ``postqueue -f`` reach pickup
through its socket, which starts it like any other service, and an idle
pickup exits after max_idle. Postfix keeps its pickup running (about 1 MB);
ours would hold 9 MB for nothing while no local submission arrives.

Exits: ``warning: process PATH pid N exit status S`` or ``... killed by
signal S`` (PATH is ``$daemon_directory/COMMAND``, as Postfix shows it); a
child that fails before it ever reported its status gives ``warning: PATH:
bad command startup -- throttling`` and no new process of that service for
``service_throttle_time``. While an inet service is throttled and has no
child to take clients, master accepts and closes its connections at once, so
that a network client (an SMTP client waiting for a banner) sees a closed
connection and tries again later instead of waiting in silence. Internal
(unix) clients keep waiting in the backlog: qmgr would otherwise defer mail
for a whole backoff period over a local that was restarting.

Signals arrive through a wake-up pipe (``signal.set_wakeup_fd``) and are
handled in the loop, never in a handler: SIGHUP reloads, SIGTERM and SIGINT
stop (terminate all children, wait up to 3 s, kill what is left).

Children are forked from master (``forking``): at the end of its
initialization (before ``ok`` goes to ``-w``) master preloads the library
and freezes its objects, and freezes them again after every reload; the
loop stays single-threaded, as a fork needs.

Reload starts a new generation: the old lifeline is closed, so every child
of the old generation stops accepting, finishes what it holds and exits
(qmgr at once, leaving active/ to the new qmgr); listeners stay with master.
A child of the old generation still running ``OLD_GENERATION_GRACE`` (60 s)
after the reload gets SIGTERM, and SIGKILL 3 s later. The environment variable
``PYMAILSYS_OLD_GENERATION_GRACE`` (seconds) replaces the 60 s for the test
harness alone, so that a test of this ending need not wait a minute; Postfix has
no such parameter (its old children leave when their clients do), so main.cf has none. The process limit
counts old children too, so a singleton such as qmgr (maxproc 1) starts
anew only when the old one has gone.
"""

from __future__ import annotations

import math
import os
import selectors
import signal
import socket
import time
import traceback
from collections.abc import Callable
from typing import NoReturn

from pymailsys.daemons.master import children, forking
from pymailsys.daemons.master.children import Child, Service
from pymailsys.daemons.master.listeners import endpoint_owner
from pymailsys.daemons.master.reload import (
    Services,
    build_services,
    keep_running_copy,
    load_configuration,
)
from pymailsys.daemons.master.stderr_relay import StderrRelay, readable

from pymailsys import MAIL_VERSION, log, pidfile, privileges
from pymailsys import config as config_mod
from pymailsys.config import Config, ConfigError
from pymailsys.ipc.master_status import LIMIT_WARNING_INTERVAL
from pymailsys.queue import spool

PROGRAM = "master"
STOP_GRACE = 3.0
OLD_GENERATION_GRACE = 60.0


def old_generation_grace() -> float:
    """OLD_GENERATION_GRACE, or the test harness's PYMAILSYS_OLD_GENERATION_GRACE (a
    number of seconds above 0); ValueError names a value that is not."""
    text = os.environ.get("PYMAILSYS_OLD_GENERATION_GRACE")
    if text is None:
        return OLD_GENERATION_GRACE
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise ValueError(f"bad PYMAILSYS_OLD_GENERATION_GRACE value: {text!r} "
                         f"(want a number of seconds above 0)")
    return seconds


class StartupError(Exception):
    """A fatal problem while master initializes (reported to ``-w`` waiters)."""


class Master:
    """One running master: configuration, listeners, children, event loop."""

    def __init__(self, config_dir: str | None, init_fd: int | None = None) -> None:
        self.config_dir = os.path.abspath(config_mod.resolve_config_dir(config_dir))
        self.init_fd = init_fd
        self.cfg: Config | None = None
        self.owner: privileges.UserIds | None = None  # whose rights in public/, private/
        self.services: Services = {}
        self.children: dict[int, Child] = {}
        self.sel = selectors.DefaultSelector()
        self.generation = 0
        self.lifeline_r = -1
        self.lifeline_w = -1
        self.stderr: StderrRelay | None = None
        self.devnull = -1
        self.pid_fd = -1
        self.wake_r = -1
        self.wake_w = -1
        self.terminating = False
        self.daemon_directory = ""
        self.running_copy = ""  # the checked main.cf children read (keep_running_copy)
        self.turning_away: set[tuple[str, str]] = set()  # throttled services whose clients are closed
        self.old_generation_grace = OLD_GENERATION_GRACE

    # -- start-up ------------------------------------------------------------
    def fatal(self, text: str) -> NoReturn:
        raise StartupError(text)

    def initialize(self) -> None:
        log.init_stderr_only(PROGRAM)
        try:
            self.old_generation_grace = old_generation_grace()
        except ValueError as e:
            self.fatal(str(e))
        try:
            cfg, entries, text = load_configuration(self.config_dir)
            log.init(cfg, PROGRAM)
        except ConfigError as e:
            self.fatal(str(e))
        except OSError as e:
            self.fatal(f"open log file: {e.strerror}")
        self.cfg = cfg
        try:
            self.owner = endpoint_owner(cfg)
        except ConfigError as e:
            self.fatal(str(e))
        self.daemon_directory = cfg.get("daemon_directory")
        queue_directory = cfg.get("queue_directory")
        try:
            os.chdir(queue_directory)
        except OSError as e:
            self.fatal(f"chdir {queue_directory}: {e.strerror}")
        self.lock_pid_file(cfg)
        self.running_copy = keep_running_copy(cfg, text)
        self.devnull = os.open(os.devnull, os.O_RDWR)
        self.stderr = StderrRelay()
        self.sel.register(self.stderr.read_fd, selectors.EVENT_READ, self.stderr.on_readable)
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
            self.services = build_services(cfg, entries, {}, True, self.unwatch)
        except (ConfigError, OSError) as e:
            self.fatal(str(e) if isinstance(e, ConfigError) else (e.strerror or str(e)))
        log.info(f"daemon started -- version {MAIL_VERSION}, configuration {self.config_dir}")
        if os.geteuid() != 0:
            user = privileges.user_name(os.geteuid())
            log.warning(f"not running as root: all services run as user {user} "
                        f"(uid {os.geteuid()}); mail_owner and the unpriv column have no effect")
        forking.preload()

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
            turn_away = (bool(svc.listeners) and not avail and now < svc.throttle_until
                         and svc.entry.type == "inet")
            if turn_away and svc.entry.key not in self.turning_away:
                self.unwatch(svc)
                for lst in svc.listeners:
                    self.sel.register(lst.fd, selectors.EVENT_READ,
                                      lambda s=svc: self.turn_away(s))
                self.turning_away.add(svc.entry.key)
            elif not turn_away and svc.entry.key in self.turning_away:
                self.unwatch(svc)
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
                if readable([lst.fd for lst in svc.listeners]):
                    svc.last_limit_warning = now
                    log.warning(f'service "{svc.name}" ({svc.name}) has reached its process limit '
                                f'"{svc.maxproc}": new clients may experience noticeable delays')

    def unwatch(self, svc: Service) -> None:
        if not svc.watching and svc.entry.key not in self.turning_away:
            return
        self.turning_away.discard(svc.entry.key)
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
        times += [c.deadline for c in self.children.values() if c.deadline is not None]
        if not times:
            return None
        return max(0.0, min(times) - now)

    def run_timers(self) -> None:
        now = time.monotonic()
        for child in list(self.children.values()):
            if child.deadline is not None and child.deadline <= now:
                self.end_old_child(child, now)
        for svc in self.services.values():
            if svc.next_wakeup is None or svc.next_wakeup > now:
                continue
            svc.next_wakeup = now + svc.entry.wakeup
            if svc.entry.wakeup_after_use and not svc.used:
                continue
            self.wakeup(svc)

    def end_old_child(self, child: Child, now: float) -> None:
        """A child of an old generation outstayed its grace: SIGTERM, then SIGKILL."""
        if child.terminated:
            _kill(child.pid, signal.SIGKILL)
            child.deadline = None
            return
        log.warning(f"process {self.path_of(child.service)} pid {child.pid} still running "
                    f"{self.old_generation_grace:.0f}s after reload -- terminating")
        _kill(child.pid, signal.SIGTERM)
        child.terminated = True
        child.deadline = now + STOP_GRACE

    def wakeup(self, svc: Service) -> None:
        """Send a W trigger without ever blocking master."""
        if not svc.listeners or (svc.module == children.PICKUP and not self.maildrop_waiting()):
            return
        lst = svc.listeners[0]
        if svc.entry.type == "fifo":
            try:
                os.write(lst.fd, b"W")
            except OSError:
                pass  # buffer full: the service has work queued anyway
            return
        assert self.owner is not None
        with privileges.as_user(self.owner.uid, self.owner.gid):  # no link steers root
            _wake_socket(svc.entry.type, lst.path)

    def maildrop_waiting(self) -> bool:
        """True when maildrop/ holds an entry, or cannot be read (pickup will say why)."""
        assert self.owner is not None
        try:
            with (privileges.as_user(self.owner.uid, self.owner.gid),
                  os.scandir(spool.MAILDROP) as entries):
                return next(entries, None) is not None
        except (OSError, privileges.PrivilegeError):
            return True

    # -- events --------------------------------------------------------------
    def on_listener(self, svc: Service) -> None:
        if (svc is not self.services.get(svc.entry.key) or svc.at_limit()
                or any(c.available for c in self.current(svc))
                or time.monotonic() < svc.throttle_until):
            self.unwatch(svc)
            return
        self.spawn(svc)

    def spawn(self, svc: Service) -> None:
        assert self.cfg is not None and self.stderr is not None
        argv = children.child_argv(svc, self.config_dir)
        env = children.child_env(self.cfg, self.config_dir, self.generation)
        env.pop(config_mod.RUNNING_COPY_ENV, None)
        if self.running_copy:
            env[config_mod.RUNNING_COPY_ENV] = self.running_copy
        try:
            pid, status_r = children.spawn(svc, argv, env, devnull=self.devnull,
                                           stderr_w=self.stderr.write_fd,
                                           lifeline_r=self.lifeline_r)
        except OSError as e:
            log.warning(f"{self.path_of(svc)}: fork: {e.strerror} -- throttling")
            self.throttle(svc)
            return
        child = Child(pid, svc, self.generation, status_r)
        svc.children[pid] = child
        svc.used = True
        self.children[pid] = child
        self.sel.register(status_r, selectors.EVENT_READ, lambda c=child: self.on_status(c))
        self.unwatch(svc)

    def turn_away(self, svc: Service) -> None:
        """Close the waiting connections of a throttled service (its children cannot start)."""
        for lst in svc.listeners:
            with socket.socket(fileno=os.dup(lst.fd)) as sock:
                for _ in range(64):
                    try:
                        conn, _addr = sock.accept()
                    except OSError:  # nothing waiting (the listener is non-blocking)
                        break
                    conn.close()

    def path_of(self, svc: Service) -> str:
        return os.path.join(self.daemon_directory, svc.entry.command)

    def throttle_time(self) -> float:
        assert self.cfg is not None
        try:
            return self.cfg.get_time("service_throttle_time")
        except ConfigError:
            return 60

    def throttle(self, svc: Service) -> None:
        svc.throttle_until = time.monotonic() + self.throttle_time()
        self.unwatch(svc)

    def on_status(self, child: Child) -> None:
        if child.status_fd >= 0 and not child.read_status():
            self.close_status(child)

    def close_status(self, child: Child) -> None:
        if child.status_fd < 0:
            return
        try:
            self.sel.unregister(child.status_fd)
        except (KeyError, ValueError):
            pass
        os.close(child.status_fd)
        child.status_fd = -1

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
                now = time.monotonic()
                if not failed:
                    svc.next_wakeup = now
                elif now - svc.failure_restart >= self.throttle_time():
                    svc.failure_restart = now
                    svc.next_wakeup = now

    # -- reload and stop -----------------------------------------------------
    def reload(self) -> None:
        try:
            cfg, entries, text = load_configuration(self.config_dir)
        except (ConfigError, OSError) as e:
            log.error(f"{e} -- configuration not reloaded")
            return
        try:
            owner = endpoint_owner(cfg)
        except ConfigError as e:
            log.error(f"{e} -- configuration not reloaded")
            return
        try:
            log.init(cfg, PROGRAM)
        except OSError as e:
            log.error(f"open log file: {e.strerror}")
        self.cfg = cfg
        self.owner = owner
        self.running_copy = keep_running_copy(cfg, text)
        self.daemon_directory = cfg.get("daemon_directory")
        log.info(f"reload -- version {MAIL_VERSION}, configuration {self.config_dir}")
        self.new_generation()
        old = self.services
        try:
            new = build_services(cfg, entries, old, False, self.unwatch)
        except (ConfigError, OSError) as e:
            log.error(f"{e} -- configuration not reloaded")
            return
        for key, svc in old.items():
            if key not in new:
                for pid in list(svc.children):
                    _kill(pid, signal.SIGTERM)
        self.services = new
        deadline = time.monotonic() + self.old_generation_grace
        for child in self.children.values():
            if child.generation < self.generation and child.deadline is None:
                child.deadline = deadline
        forking.refreeze()

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
        if self.stderr is not None:
            self.stderr.drain()
        return 0


def _log_traceback() -> None:
    for line in traceback.format_exc().splitlines():
        log.error(line)


def _wake_socket(kind: str, path: str | None) -> None:
    """Connect and write ``W`` (stream) or send it (datagram), never blocking."""
    if not path:
        return
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM if kind == "unix-dgram"
                           else socket.SOCK_STREAM) as s:
            s.setblocking(False)
            if kind == "unix-dgram":
                s.sendto(b"W", path)
            else:
                s.connect(path)
                s.send(b"W")
    except OSError:
        pass  # backlog or buffer full: the service has work queued anyway


def _ignore_signal(signum: int, frame: object) -> None:
    """Python-level no-op: set_wakeup_fd delivers the signal number to the loop."""


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass
