#!/usr/bin/env python3
"""smtpd's CPU per message, alone: for A/B comparisons of smtpd changes.

Usage (from the repository, with the venv's python; root for the local account):

    python tests/bench/smtpd_cpu.py [--messages 2000] [--sessions 10] [--size 2048]
                                    [--rounds 3] [--cprofile FILE] [--strace]

It starts a throw-away instance (tests/harness.py ``Instance``: real master,
cleanup, qmgr, local with Maildir delivery), then one more smtpd run by hand
(``-L 127.0.0.1:PORT``, the instance's main.cf) that the load goes to, so
that its process is known and can run under cProfile or strace. Each round
sends --messages with ``smtp-source`` (a new connection per message, as
compare.py) and reads smtpd's user and system CPU from /proc/PID/stat before
and after; it prints ms per message per round and the median.

--cprofile FILE runs that smtpd under cProfile timed by thread CPU time
(slower; for where the CPU goes, not for figures) and prints the top functions by own time.
--strace counts smtpd's system calls per message (``strace -c``).

The figures are smtpd's alone; the rest of the instance still runs, so the
machine's load still shows in them: compare medians of alternate runs.
"""

from __future__ import annotations

import argparse
import pstats
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from callgrind import instructions  # noqa: E402
from harness import ME, PYTHON, Instance, free_port, wait_until  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402

SMTP_SOURCE = "/usr/sbin/smtp-source"
PROFILED = """
import cProfile, runpy, sys, time
out = sys.argv.pop(1)
sys.argv[0] = "smtpd"
profile = cProfile.Profile(time.thread_time)
try:
    profile.runcall(runpy.run_module, "pymailsys.daemons.smtpd", run_name="__main__")
finally:
    profile.dump_stats(out)
"""


def send(port: int, messages: int, sessions: int, size: int) -> None:
    subprocess.run([SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size),
                    "-f", "sender@example.org", "-t", f"{ME}@localhost", "-M", "client.example",
                    f"127.0.0.1:{port}"], check=True, timeout=600, cwd="/")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--messages", type=int, default=2000)
    p.add_argument("--sessions", type=int, default=10)
    p.add_argument("--size", type=int, default=2048)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--cprofile", type=Path)
    p.add_argument("--strace", action="store_true")
    p.add_argument("--callgrind", action="store_true",
                   help="run smtpd under valgrind's callgrind: instructions per message "
                        "(user space; slow, but nearly free of the machine's load)")
    p.add_argument("--callgrind-out", type=Path, metavar="DIR",
                   help="keep callgrind's dumps there (for callgrind_annotate)")
    p.add_argument("--top", type=int, default=30)
    p.add_argument("--latency", type=int, default=0, metavar="N",
                   help="also time each step of N sequential sessions (medians)")
    args = p.parse_args()
    inst = Instance(maildir=True)
    smtpd = None
    try:
        inst.start()
        port = free_port()
        argv = [PYTHON]
        if args.callgrind:
            argv = ["valgrind", "--tool=callgrind", "--quiet",
                    f"--callgrind-out-file={inst.base}/callgrind.%p"] + argv
        if args.cprofile:  # timed by CPU, not wall-clock, time: waits for the CPU do not count
            argv += ["-c", PROFILED, str(args.cprofile)]
        else:
            argv += ["-m", "pymailsys.daemons.smtpd"]
        argv += ["-c", str(inst.config_dir), "-t", "inet",
                 "-L", f"127.0.0.1:{port}", "-o", "max_idle=3600"]
        smtpd = subprocess.Popen(argv, cwd="/")
        wait_until(lambda: _listening(port), 600 if args.callgrind else 30, what="smtpd by hand")
        send(port, 20, 2, args.size)  # warm up
        figures = []
        for round_ in range(args.rounds):
            strace = None
            if args.strace:
                strace_out = inst.base / f"strace-{round_}.txt"
                strace = subprocess.Popen(["strace", "-c", "-f", "-o", str(strace_out),
                                           "-p", str(smtpd.pid)])
                time.sleep(0.5)
            if args.callgrind:
                subprocess.run(["callgrind_control", "--zero", str(smtpd.pid)], check=True,
                               capture_output=True, timeout=120)
            u0, s0 = cpu_seconds(smtpd.pid)
            send(port, args.messages, args.sessions, args.size)
            u1, s1 = cpu_seconds(smtpd.pid)
            if args.callgrind:
                print(f"round {round_ + 1}: smtpd "
                      f"{instructions(inst.base, smtpd.pid) / args.messages / 1e6:.3f} "
                      "M instructions/message (callgrind)", flush=True)
            user, system = 1000 * (u1 - u0) / args.messages, 1000 * (s1 - s0) / args.messages
            figures.append(user + system)
            print(f"round {round_ + 1}: smtpd {user + system:.3f} ms/message "
                  f"(user {user:.3f}, system {system:.3f})", flush=True)
            if strace is not None:
                strace.send_signal(signal.SIGINT)
                strace.wait(30)
                print(_per_message(strace_out.read_text(), args.messages))
        if figures:
            print(f"median: smtpd {statistics.median(figures):.3f} ms/message over "
                  f"{args.rounds} rounds of {args.messages}")
        if args.latency:
            print(latency(port, args.latency, args.size))
    finally:
        if args.callgrind_out:
            args.callgrind_out.mkdir(parents=True, exist_ok=True)
            for dump in inst.base.glob("callgrind.*"):
                shutil.copy(dump, args.callgrind_out)
        if smtpd is not None:
            smtpd.send_signal(signal.SIGTERM)
            try:
                smtpd.wait(30)
            except subprocess.TimeoutExpired:
                smtpd.kill()
        inst.cleanup()
    if args.cprofile:
        pstats.Stats(str(args.cprofile)).sort_stats("tottime").print_stats(args.top)
    return 0


STEPS = (("connect -> 220", None), ("EHLO", b"EHLO client.example\r\n"),
         ("MAIL", b"MAIL FROM:<sender@example.org>\r\n"), ("RCPT", f"RCPT TO:<{ME}@localhost>\r\n".encode()),
         ("DATA -> 354", b"DATA\r\n"), ("end of data -> 250", None), ("QUIT", b"QUIT\r\n"))


def latency(port: int, sessions: int, size: int) -> str:
    """Median milliseconds of each step of a session, one session at a time."""
    body = b"Subject: latency probe\r\n\r\n" + b"x" * 70 + b"\r\n"
    body = body * max(1, size // len(body)) + b".\r\n"
    times: dict[str, list[float]] = {name: [] for name, _ in STEPS}
    totals = []
    for _ in range(sessions):
        t0 = time.perf_counter()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            f = s.makefile("rb")
            start = t0
            for name, command in STEPS:
                if command is not None:
                    start = time.perf_counter()
                    s.sendall(command)
                elif name.startswith("end"):
                    start = time.perf_counter()
                    s.sendall(body)
                while (line := f.readline())[3:4] == b"-":
                    pass
                if not line or line[:1] not in b"23":
                    raise RuntimeError(f"{name}: {line!r}")
                times[name].append(1000 * (time.perf_counter() - start))
        totals.append(1000 * (time.perf_counter() - t0))
    out = [f"latency, median of {sessions} sessions (ms):"]
    out += [f"  {name:<20} {statistics.median(ms):7.3f}" for name, ms in times.items()]
    out.append(f"  {'whole session':<20} {statistics.median(totals):7.3f}")
    return "\n".join(out)


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
            s.settimeout(10)
            return s.recv(512).startswith(b"220")
    except OSError:
        return False


def _per_message(table: str, messages: int) -> str:
    """strace -c's table with a calls-per-message column."""
    out = []
    for line in table.splitlines():
        parts = line.split()
        if len(parts) >= 5 and parts[3].isdigit():
            out.append(f"  {parts[-1]:<16} {int(parts[3]) / messages:6.2f} calls/message")
    return "\n".join(out)


if __name__ == "__main__":
    sys.exit(main())
