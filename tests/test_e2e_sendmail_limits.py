"""Input limits of the local submission commands against a running instance: what postdrop
and sendmail do with more than message_size_limit on standard input (exit status, stderr,
nothing left in maildrop/, memory that does not grow with the input), compared with what
Debian's Postfix 3.7 does with the same input."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path

import pytest
from harness import ME, PYTHON, Instance, wait_until

from pymailsys.queue import maildrop
from pymailsys.queue import records as r

pytestmark = pytest.mark.root

LIMIT = 1_000_000  # message_size_limit
ADDRESS_SPACE = 96 << 20  # RLIMIT_AS of the command: well below the input's size
INPUT_SIZE = 100 << 20


def _limited() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _run(inst: Instance, argv: list[str], stdin: Path | bytes) -> subprocess.CompletedProcess:
    """A command on ``stdin`` (a file, or bytes through a pipe), its address space limited."""
    if isinstance(stdin, Path):
        with open(stdin, "rb") as f:
            return subprocess.run([PYTHON, *argv], stdin=f, capture_output=True, timeout=120,
                                  preexec_fn=_limited, cwd="/")
    return subprocess.run([PYTHON, *argv], input=stdin, capture_output=True, timeout=120,
                          preexec_fn=_limited, cwd="/")


def _records(subject: str, lines: list[bytes]) -> bytes:
    sub = maildrop.Submission(sender="root", recipients=[f"{ME}@localhost"],
                              lines=[f"Subject: {subject}".encode(), b"", *lines])
    return sub.to_records()


def _delivered(inst: Instance, subject: str) -> bytes:
    def hit() -> bytes:
        found = [m for m in inst.maildir_messages() if f"\nSubject: {subject}\n".encode() in m]
        return found[0] if found else b""

    return wait_until(hit, 60, what=f"the message {subject!r} in the Maildir")


def test_postdrop_input_over_message_size_limit(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """postdrop read all of its standard input into memory before it looked at it: 100 MB
    in a 96 MB address space ended in a MemoryError traceback (and with room enough, in
    ``fatal: root(0): message file too big``, exit 75). It now writes the records into the
    maildrop file as they come, a block at a time, the file no larger than
    message_size_limit, as Postfix's postdrop (its file size limit): over it, the input
    is read to its end, then ``postdrop: warning: uid=0: File too large``, exit 4 (what
    Debian's Postfix 3.7 prints and exits with), and no file is left in maildrop/."""
    inst: Instance = new_instance(maildir=True, settings={"message_size_limit": str(LIMIT)})
    inst.start()
    postdrop = ["-m", "pymailsys.tools.postdrop", "-c", str(inst.config_dir)]

    big = tmp_path / "big"
    line = b"a" * 99
    with open(big, "wb") as f:
        head = _records("big", [])
        f.write(head[:head.index(r.encode_record(r.REC_TYPE_XTRA, b""))])
        block = r.encode_record(r.REC_TYPE_NORM, line) * 10_000
        while f.tell() < INPUT_SIZE:
            f.write(block)
        f.write(maildrop.Submission(sender="root").extracted_records())
    done = _run(inst, postdrop, big)
    assert (done.returncode, done.stderr) == (4, b"postdrop: warning: uid=0: File too large\n")
    assert inst.queue_ids("maildrop") == []

    # under the limit, the records go to the mail system as they were given, a last
    # line without its end (L records only) ended; in a file, then live over pickup
    for_real = _records("small", [line] * 100)
    xtra = for_real.index(r.encode_record(r.REC_TYPE_XTRA, b""))
    unended = for_real[:xtra] + r.encode_record(r.REC_TYPE_CONT, b"no end") + for_real[xtra:]
    done = _run(inst, postdrop, unended)
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    msg = _delivered(inst, "small")
    assert msg.endswith(b"\n\n" + (line + b"\n") * 100 + b"no end\n"), msg[-300:]
    assert "using the maildrop queue" not in inst.log()  # the live submission took it

    # cut short (no E record) or empty: Postfix's messages and statuses, no file left
    done = _run(inst, postdrop, for_real[:-20])
    assert done.returncode == 1, done.stderr
    assert done.stderr.startswith(b"postdrop: fatal: uid=0: malformed input"), done.stderr
    done = _run(inst, postdrop, b"")
    assert (done.returncode, done.stderr) == (0, b"")
    assert inst.queue_ids("maildrop") == []

    # with the system down the file stays for pickup, which takes it once the system runs
    inst.stop()
    done = _run(inst, postdrop, _records("down", [line]))
    assert (done.returncode, done.stderr) == (0, b""), done.stderr
    assert len(inst.queue_ids("maildrop")) == 1
    inst.start()
    assert _delivered(inst, "down").endswith(b"\n\n" + line + b"\n")


def test_sendmail_input_over_message_size_limit(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """sendmail with more than message_size_limit on standard input: as Debian's Postfix
    3.7, ``sendmail: fatal: root(0): message file too big`` and exit 75, no file left in
    maildrop/; its memory stays small (100 MB of input in a 96 MB address space)."""
    inst: Instance = new_instance(maildir=True, settings={"message_size_limit": str(LIMIT)})
    inst.start()
    big = tmp_path / "big"
    with open(big, "wb") as f:
        f.write(b"Subject: big\n\n")
        block = b"a" * 99 + b"\n"
        while f.tell() < INPUT_SIZE:
            f.write(block * 10_000)
    for args in ([f"{ME}@localhost"], ["-t"]):
        done = _run(inst, ["-m", "pymailsys.tools.sendmail", "-C", str(inst.config_dir), *args],
                    big)
        assert (done.returncode, done.stderr) == (
            75, b"sendmail: fatal: root(0): message file too big\n"), done.stderr
        assert inst.queue_ids("maildrop") == []


def test_sendmail_t_stops_at_the_recipient_limit(new_instance, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """sendmail -t kept every address of every To: header before it counted them: a
    message of message_size_limit bytes (the default, 10 MB) of short addresses is
    millions of them, more memory than a 96 MB address space holds (a MemoryError
    traceback). It stops at the recipient limit (``maildrop.MAX_RECIPIENTS``) now, as
    the header that goes over it ends: ``too many recipients``, exit 75, no file left."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    many = tmp_path / "many"
    header = b"To: " + b",".join([b"a@b"] * 20_000) + b"\n"  # 80 kB, under header_size_limit
    with open(many, "wb") as f:
        while f.tell() < 10_000_000:
            f.write(header)
        f.write(b"Subject: many\n\nbody\n")
    done = _run(inst, ["-m", "pymailsys.tools.sendmail", "-C", str(inst.config_dir), "-t"], many)
    assert (done.returncode, done.stderr) == (
        75, b"sendmail: fatal: root(0): too many recipients\n"), done.stderr[-500:]
    assert inst.queue_ids("maildrop") == []
