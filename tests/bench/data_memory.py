#!/usr/bin/env python3
"""Memory of a pymailsys instance with many sessions inside DATA, and of one huge message.

Usage (from the repository, with pymailsys installed in the running Python):

    python3 tests/bench/data_memory.py [--sessions 20] [--size 9.5]    # MB sent per session
    python3 tests/bench/data_memory.py --sessions 200 --size 0.002
    python3 tests/bench/data_memory.py --lines 2500000                   # one 10 MB message

With --sessions: a throw-away instance (tests/harness.py) is started, warmed up
with one message, and that many SMTP sessions each send MAIL, RCPT, DATA and
then --size MB of content without the final dot; once every session has sent
its share, RSS and PSS (/proc/PID/smaps_rollup) are summed over the instance's
processes and shown for smtpd alone; then the sessions hang up.

With --lines: one message of that many short lines (4 bytes each) is delivered
to a Maildir, and the peak memory (VmHWM) of cleanup and local is shown, next
to their peak after the warm-up message. Timing and memory only; nothing here
is a pass/fail test.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from harness import ME, Instance  # noqa: E402

MB = 1 << 20


def _status(pid: int, field: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _rollup(pid: int) -> tuple[int, int]:
    rss = pss = 0
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Rss:"):
                    rss = int(line.split()[1]) * 1024
                elif line.startswith("Pss:"):
                    pss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return rss, pss


def _memory(inst: Instance) -> str:
    daemons = inst.daemons()
    total = [_rollup(pid) for pid in inst.pids()]
    smtpd = [_rollup(pid) for pid in daemons.get("smtpd", [])]
    return (f"instance ({len(total)} processes): RSS {sum(r for r, _ in total) / MB:.1f} MB, "
            f"PSS {sum(p for _, p in total) / MB:.1f} MB; smtpd ({len(smtpd)}): "
            f"RSS {sum(r for r, _ in smtpd) / MB:.1f} MB, PSS {sum(p for _, p in smtpd) / MB:.1f} MB")


def _reply(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n") or data.split(b"\r\n")[-2][3:4] == b"-":
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def sessions_in_data(inst: Instance, count: int, size: int) -> None:
    print(f"idle after warm-up: {_memory(inst)}")
    socks = []
    line = b"x" * 76 + b"\r\n"
    block = line * (65536 // len(line))
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", inst.port), timeout=300)
        _reply(s)
        for cmd in (b"EHLO client.example\r\n", f"MAIL FROM:<{ME}@localhost>\r\n".encode(),
                    f"RCPT TO:<{ME}@localhost>\r\n".encode(), b"DATA\r\n"):
            s.sendall(cmd)
            _reply(s)
        socks.append(s)
    s_head = b"Subject: memory\r\n\r\n"
    for s in socks:
        s.sendall(s_head)
    sent = 0
    while sent < size:  # round robin, so that every session is mid-DATA at once
        piece = block[:min(len(block), size - sent)]
        for s in socks:
            s.sendall(piece)
        sent += len(piece)
    time.sleep(2)  # let the daemons take in what was sent
    print(f"{count} sessions inside DATA, {size / MB:.3f} MB sent each: {_memory(inst)}")
    for s in socks:
        s.close()


def one_huge_message(inst: Instance, lines: int) -> None:
    names = ("smtpd", "cleanup", "local")

    def peaks() -> str:
        daemons = inst.daemons()
        return ", ".join(f"{n} {max((_status(p, 'VmHWM') for p in daemons.get(n, [])), default=0) / MB:.1f} MB"
                         for n in names)

    print(f"peak (VmHWM) after the warm-up message: {peaks()}")
    body = b"".join(b"%02d\r\n" % (i % 100) for i in range(lines))
    start = time.monotonic()
    inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: lines\r\n\r\n" + body)
    inst.wait_maildir(2, timeout=3600)
    print(f"{lines} lines ({len(body) / MB:.1f} MB) delivered in {time.monotonic() - start:.1f} s; "
          f"peak (VmHWM): {peaks()}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sessions", type=int, default=0)
    ap.add_argument("--size", type=float, default=9.5, help="MB of DATA per session")
    ap.add_argument("--lines", type=int, default=0)
    args = ap.parse_args()
    inst = Instance(maildir=True, settings={"message_size_limit": str(40 * MB),
                                            "smtpd_timeout": "600s"})
    try:
        inst.start()
        inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: warm up\r\n\r\nhi\r\n")
        inst.wait_maildir(1)
        if args.sessions:
            sessions_in_data(inst, args.sessions, int(args.size * MB))
        if args.lines:
            one_huge_message(inst, args.lines)
    finally:
        inst.cleanup()


if __name__ == "__main__":
    main()
