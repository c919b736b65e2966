"""Benchmark: the mail system with a very large deferred queue (issue #15 item 3).

Usage: python3 tests/bench/queue_scale.py [--messages 100000] [--active-limit 20000]
                                          [--phases mailq,flush,requeue,delete,pickup]

Starts a throw-away instance (tests/harness.py), writes N single-recipient
queue files straight into deferred/ with the library's queue-file writer
(hashed per hash_queue_depth, each with a defer log as qmgr writes it, their
next try a day away so that qmgr leaves them alone), syncs them to disk (a real
backlog built over days is not dirty in the page cache; ``--dirty`` skips
this), then measures, one phase after the other:

- mailq: ``postqueue -p`` through showq: time to the first line and to the
  last, the count line, and the peak resident memory (VmHWM) of postqueue
  (from wait4) and of showq (/proc/PID/status);
- flush: ``postqueue -f`` with every message for a destination whose port
  refuses connections (dead after one failed cohort, the rest deferred
  untried): the time until every message has been through qmgr and is back
  in deferred/ (or how many were by ``--flush-seconds``), qmgr's CPU time
  and VmHWM, and the latency of one local message submitted over SMTP while
  the flush runs; with ``--pyspy DIR``, py-spy samples qmgr during the flush
  (DIR/qmgr-N.raw) and the functions with the most self time are printed;
- requeue: ``postsuper -r ALL`` with the mail system stopped (so pickup does
  not re-inject a million messages): time and VmHWM;
- delete: ``postsuper -d ALL``: time, VmHWM and its ``Deleted:`` line;
- rmrf: ``rm -rf`` of deferred/ and defer/ instead (the disk's unlink rate, to
  compare with delete on a queue built the same way);
- pickup: N maildrop files written (as sendmail's postdrop does) while the mail
  system is stopped, then started: the time until maildrop/ is empty and
  pickup's VmHWM. The messages go to hold/ (a header_checks HOLD) so that the
  figure is pickup's and cleanup's, not the deliveries'.

Prints one line per figure, with CPU seconds beside wall-clock time (on a
shared machine the CPU time is the steadier figure), split into user and
system time (tests/bench/proc_cpu.py): what grows with the queue in the
kernel (directory size: lookups, renames, unlinks) shows as system time,
what grows in Python's structures as user time. Timing and memory only; nothing here is a
pass/fail test. Disk: about 5 kB (two inodes) per message.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.insert(0, str(TESTS / "bench"))

from harness import ME, Instance, wait_until  # noqa: E402
from proc_cpu import cpu_seconds  # noqa: E402
from profile_daemons import ensure_py_spy, format_profile, parse_raw  # noqa: E402
from qf_helpers import queue_files  # noqa: E402

from pymailsys.queue import maildrop  # noqa: E402
from pymailsys.queue import spool as queue  # noqa: E402

REASON = "connect to 127.0.0.1[127.0.0.1]:1: Connection refused"


def refused_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there: connections are refused at once
    return port


def vm(pid: int, field: str) -> int:
    """A /proc/PID/status field in kB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def cpu_text(user: float, system: float, n: int = 0) -> str:
    """CPU seconds split into user (Python-side work) and system (the kernel: directory
    lookups, renames, unlinks), per message too when ``n`` is given."""
    text = f"CPU {user + system:.1f} s (user {user:.1f} s, system {system:.1f} s"
    if n:
        text += f"; {(user + system) / n * 1e3:.3f} ms/message = {user / n * 1e3:.3f} user " \
                f"+ {system / n * 1e3:.3f} system"
    return text + ")"


class LogTail:
    """Counts a pattern in the new part of the mail log (no re-reading of old lines)."""

    def __init__(self, inst: Instance, pattern: str) -> None:
        self.path = inst.log_path
        self.rx = re.compile(pattern.encode())
        self.offset = self.path.stat().st_size if self.path.exists() else 0
        self.rest = b""
        self.count = 0

    def poll(self) -> int:
        with open(self.path, "rb") as f:
            f.seek(self.offset)
            data = f.read(64 << 20)
        self.offset += len(data)
        lines = (self.rest + data).split(b"\n")
        self.rest = lines.pop()
        self.count += sum(1 for line in lines if self.rx.search(line))
        return self.count


def timed(inst: Instance, argv: list[str]) -> tuple[float, float | None, str, bytes, bytes]:
    """Run one of our commands: (seconds, seconds to the first output line or None,
    "VmHWM N kB, CPU S s", the last 200 bytes of stdout, stderr)."""
    # through /usr/bin/time: a child of this process would count its parent's pages,
    # shared until exec, in its own peak
    usage_file = inst.base / "usage"
    cmd = ["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage_file),
           sys.executable, "-m", f"pymailsys.tools.{argv[0]}", "-c", str(inst.config_dir),
           *argv[1:]]
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd="/")
    # buffered (Popen's default bufsize), hence read1
    assert isinstance(proc.stdout, io.BufferedReader) and proc.stderr is not None
    first = None
    tail = b""
    while True:
        chunk = proc.stdout.read1(1 << 16)
        if not chunk:
            break
        if first is None and b"\n" in chunk:
            first = time.monotonic() - t0
        tail = (tail + chunk)[-200:]
    err = proc.stderr.read()
    proc.wait()
    took = time.monotonic() - t0
    hwm, user, system = usage_file.read_text().split()[-3:]
    return took, first, f"VmHWM {hwm} kB, {cpu_text(float(user), float(system))}", tail, err


def count_files(inst: Instance, queue: str) -> int:
    return sum(len(files) for _d, _s, files in os.walk(inst.queue_dir / queue))


def phase_mailq(inst: Instance, n: int) -> None:
    took, first, usage, tail, err = timed(inst, ["postqueue", "-p"])
    count = re.findall(rb"-- \d+ Kbytes in \d+ Requests?\.", tail)
    showq = inst.daemons().get("showq", [])
    showq_use = (f"VmHWM {vm(showq[0], 'VmHWM')} kB, {cpu_text(*cpu_seconds(showq[0]))}"
                 if showq else "gone")
    print(f"mailq {n}: first line {first if first is None else round(first, 3)} s, "
          f"total {took:.1f} s; postqueue {usage}; showq {showq_use}; "
          f"{count[-1].decode() if count else tail[-80:]!r} {err[-200:]!r}", flush=True)


def phase_flush(inst: Instance, n: int, limit: float, pyspy: Path | None = None) -> None:
    qmgr = inst.daemons()["qmgr"][0]
    spy = None
    if pyspy is not None:
        pyspy.mkdir(parents=True, exist_ok=True)
        raw = pyspy / f"qmgr-{n}.raw"
        spy = subprocess.Popen([ensure_py_spy(), "record", "-p", str(qmgr), "-r", "200",
                                "--nonblocking", "--format", "raw", "-o", str(raw)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"qmgr before the flush: VmHWM {vm(qmgr, 'VmHWM')} kB, VmRSS {vm(qmgr, 'VmRSS')} kB",
          flush=True)
    user0, system0 = cpu_seconds(qmgr)
    back = LogTail(inst, r"postfix/qmgr\[\d+\]: \w+: to=<d\d+@dead\.example>.*status=deferred|"
                         r"postfix/smtp\[\d+\]: \w+: to=<d\d+@dead\.example>.*status=deferred")
    t0 = time.monotonic()
    inst.tool("postqueue", "-f", check=True)
    wait_until(lambda: back.poll() >= min(n, 1000), 3600, interval=0.5, what="the flush under way")
    sent = time.monotonic()
    before = len(inst.maildir_messages())
    inst.send("alice@example.org", f"{ME}@localhost", b"Subject: healthy\r\n\r\nx\r\n")
    wait_until(lambda: len(inst.maildir_messages()) > before, 3600, interval=0.1,
               what="the healthy message")
    healthy = time.monotonic() - sent
    print(f"flush {n}: healthy local message delivered {healthy:.2f} s after submission "
          f"({back.count} messages back in deferred/ by then)", flush=True)
    end = t0 + limit
    while back.poll() < n and time.monotonic() < end:
        time.sleep(2)
    took = time.monotonic() - t0
    user, system = cpu_seconds(qmgr)
    if spy is not None:
        spy.send_signal(signal.SIGINT)
        spy.wait(60)
        print(format_profile(parse_raw(raw.read_text(errors="replace")), 15, 200), flush=True)
    print(f"flush {n}: {back.count} messages through qmgr in {took:.1f} s "
          f"({back.count / took:.0f}/s, qmgr {cpu_text(user - user0, system - system0, back.count)}); "
          f"qmgr VmHWM {vm(qmgr, 'VmHWM')} kB, VmRSS {vm(qmgr, 'VmRSS')} kB", flush=True)


def phase_postsuper(inst: Instance, n: int, flag: str, what: str) -> None:
    took, _first, usage, _out, err = timed(inst, ["postsuper", flag, "ALL"])
    said = re.findall(rb"postsuper: \w[\w ]*: \d+ messages?", err)
    print(f"postsuper {flag} ALL {n}: {took:.1f} s, {usage}; "
          f"{said[-1].decode() if said else err[-200:]!r}", flush=True)


def phase_rmrf(inst: Instance, n: int) -> None:
    usage_file = inst.base / "usage"
    t0 = time.monotonic()
    subprocess.run(["/usr/bin/time", "-f", "%M %U %S", "-o", str(usage_file), "rm", "-rf",
                    str(inst.queue_dir / "deferred"), str(inst.queue_dir / "defer")], check=True)
    took = time.monotonic() - t0
    hwm, user, system = usage_file.read_text().split()[-3:]
    print(f"rm -rf deferred defer {n}: {took:.1f} s, VmHWM {hwm} kB, "
          f"{cpu_text(float(user), float(system))}", flush=True)


def phase_pickup(inst: Instance, n: int) -> None:
    (inst.base / "hold.regexp").write_text("/^Subject: dropped/ HOLD\n")
    inst.set(header_checks=f"regexp:{inst.base / 'hold.regexp'}")
    inst.postfix("check")
    spool = queue.Spool(str(inst.queue_dir))
    t0 = time.monotonic()
    child = os.fork()
    if child == 0:
        os.umask(0o022)
        for i in range(n):  # maildrop.write_maildrop without its fsync: test data
            sub = maildrop.Submission(sender="alice", recipients=[f"m{i}@example.org"],
                                      lines=[b"Subject: dropped", b"", b"x" * 60])
            _qid, _path, fd = spool.create_queue_file(queue.MAILDROP, queue.MAILDROP_WRITING)
            os.write(fd, sub.to_records())
            os.fchmod(fd, queue.MAILDROP_COMPLETE)
            os.close(fd)
        os._exit(0)
    if os.waitpid(child, 0)[1] != 0:
        raise SystemExit("writing the maildrop files failed")
    print(f"wrote {n} maildrop files in {time.monotonic() - t0:.1f} s", flush=True)
    picked = LogTail(inst, r"postfix/pickup\[\d+\]: \w+: uid=\d+ from=<alice>")
    t0 = time.monotonic()
    inst.start(wait_smtp=False)
    pickup = wait_until(lambda: inst.daemons().get("pickup", [0])[0], 60, what="pickup")
    wait_until(lambda: picked.poll() >= n, 24 * 3600, interval=1, what="maildrop/ picked up")
    took = time.monotonic() - t0
    print(f"pickup {n}: maildrop/ empty after {took:.1f} s ({n / took:.0f}/s, pickup "
          f"{cpu_text(*cpu_seconds(pickup), n)}); pickup VmHWM {vm(pickup, 'VmHWM')} kB, "
          f"VmRSS {vm(pickup, 'VmRSS')} kB; {count_files(inst, 'hold')} in hold/", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--active-limit", type=int, default=20_000)
    ap.add_argument("--phases", default="mailq,flush,requeue,delete")
    ap.add_argument("--base", help="instance directory (default: a new one in /tmp)")
    ap.add_argument("--dirty", action="store_true",
                    help="start before the queue files are on disk (no sync)")
    ap.add_argument("--pyspy", type=Path, help="sample qmgr with py-spy during the flush, into DIR")
    ap.add_argument("--flush-seconds", type=float, default=24 * 3600,
                    help="stop waiting for the flush after this long (a partial figure)")
    args = ap.parse_args()
    phases = args.phases.split(",")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))  # clean up the instance on kill
    n = args.messages
    inst = Instance(args.base)
    try:
        inst.set(transport_maps=f"inline:{{ dead.example=smtp:[127.0.0.1]:{refused_port()} }}",
                 qmgr_message_active_limit=str(args.active_limit), queue_run_delay="3600s")
        inst.postfix("check")
        t0 = time.monotonic()
        now = time.time()
        backlog = n if set(phases) - {"pickup"} else 0
        child = os.fork()  # keeps the list of a million queue IDs out of this process
        if child == 0:
            queue_files(inst.queue_dir, "deferred", "alice@example.org",
                        (f"d{i}@dead.example" for i in range(backlog)),
                        [b"Subject: backlog", b"", b"x" * 60], arrival=now - 3600,
                        mtime=now + 86400, reason=REASON)
            os._exit(0)
        if os.waitpid(child, 0)[1] != 0:
            raise SystemExit("writing the queue files failed")
        print(f"wrote {backlog} queue files and defer logs in {time.monotonic() - t0:.1f} s", flush=True)
        if not args.dirty:
            t0 = time.monotonic()
            os.sync()
            print(f"synced them to disk in {time.monotonic() - t0:.1f} s", flush=True)
        inst.start()
        qmgr = inst.daemons()["qmgr"][0]
        print(f"qmgr idle: VmHWM {vm(qmgr, 'VmHWM')} kB, VmRSS {vm(qmgr, 'VmRSS')} kB", flush=True)
        if "mailq" in phases:
            phase_mailq(inst, n)
        if "flush" in phases:
            phase_flush(inst, n, args.flush_seconds, args.pyspy)
        inst.stop()
        if "requeue" in phases:
            phase_postsuper(inst, n, "-r", "Requeued")
        if "delete" in phases:
            phase_postsuper(inst, n, "-d", "Deleted")
        if "rmrf" in phases:
            phase_rmrf(inst, n)
        if "pickup" in phases:
            phase_pickup(inst, n)
    finally:
        inst.cleanup()


if __name__ == "__main__":
    main()
