"""Helpers for the queue-administration tests: a spool with hand-built queue files."""

from __future__ import annotations

import os
import pwd
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

from pymailsys.queue import records, status_log
from pymailsys.queue import spool as queue
from pymailsys.queue.queue_file import QueueFileBuilder, mark_done, read_envelope_bytes

PYTHON = sys.executable


def make_spool(base: Path, **settings: str) -> tuple[Path, Path]:
    """(config_dir, queue_dir) with every queue directory and a main.cf.

    As root the queue directories belong to mail_owner (as in a real spool: the
    queue tools work there as mail_owner) and ``queue_file`` hands it its files."""
    etc = base / "etc"
    spool = base / "spool"
    etc.mkdir(parents=True, exist_ok=True)
    for d in queue.SPOOL_DIRS:
        (spool / d.name).mkdir(parents=True, exist_ok=True)
        os.chmod(spool / d.name, d.mode)
    if os.geteuid() == 0:
        owner = pwd.getpwnam(settings.get("mail_owner", "postfix"))
        for d in queue.SPOOL_DIRS:
            if d.owner == "mail_owner":
                os.chown(spool / d.name, owner.pw_uid, owner.pw_gid)
    lines = [f"queue_directory = {spool}", f"maillog_file = {base / 'maillog'}"]
    lines += [f"{k} = {v}" for k, v in settings.items()]
    (etc / "main.cf").write_text("\n".join(lines) + "\n")
    return etc, spool


def queue_file(spool: Path, qname: str, sender: str, rcpts: list[str], body: list[bytes],
               arrival: float = 1795594109.5, done: int = 0, queue_id: str | None = None) -> str:
    """Write one complete queue file in qname; returns its queue ID."""
    sp = queue.Spool(str(spool))
    b = QueueFileBuilder(arrival)
    b.attr("rewrite_context", "local")
    b.sender(sender)
    for r in rcpts:
        b.recipient(r)
    for line in body:
        b.line(line)
    data = b.build()
    qid, path, fd = sp.create_queue_file(qname)
    if queue_id:
        os.rename(path, sp.path(qname, queue_id))
        qid, path = queue_id, sp.path(qname, queue_id)
    os.write(fd, data)
    env = read_envelope_bytes(data)
    for rc in env.recipients[:done]:
        mark_done(fd, rc.offset)
    os.fchmod(fd, queue.MODE_COMPLETE)
    os.close(fd)
    os.utime(path, (arrival, arrival))
    match_owner(spool, qname)
    return qid


def queue_files(spool: Path, qname: str, sender: str, rcpts: Iterable[str], body: list[bytes],
                arrival: float, mtime: float | None = None, reason: str = "") -> list[str]:
    """Write one complete single-recipient queue file per recipient in qname, quickly
    (a big backlog); mtime (the next try, in deferred/) defaults to arrival. With a
    ``reason`` each message gets a defer log entry for its recipient, as qmgr writes
    it (not fsynced: test data)."""
    sp = queue.Spool(str(spool))
    out = []
    for rcpt in rcpts:
        b = QueueFileBuilder(arrival)
        b.attr("rewrite_context", "local")
        b.sender(sender)
        b.recipient(rcpt)
        for line in body:
            b.line(line)
        qid, path, fd = sp.create_queue_file(qname)
        os.write(fd, b.build())
        os.fchmod(fd, queue.MODE_COMPLETE)
        os.close(fd)
        when = arrival if mtime is None else mtime
        os.utime(path, (when, when))
        if reason:
            status_log.append_queue(sp, queue.DEFER, qid, status_log.Entry(
                recipient=rcpt, status="4.4.1", action="delayed", reason=reason,
                original_recipient=rcpt), sync=False)
        out.append(qid)
    match_owner(spool, qname)
    if reason:
        match_owner(spool, queue.DEFER)
    return out


def match_owner(spool: Path, qname: str) -> None:
    """As root: everything under spool/qname belongs to that directory's owner."""
    if os.geteuid() != 0:
        return
    top = os.stat(spool / qname)
    for dirpath, dirnames, filenames in os.walk(spool / qname):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), top.st_uid, top.st_gid)


def defer_reason(spool: Path, queue_id: str, rcpt: str, reason: str) -> None:
    status_log.append_queue(queue.Spool(str(spool)), queue.DEFER, queue_id, status_log.Entry(
        recipient=rcpt, status="4.4.1", action="delayed", reason=reason, original_recipient=rcpt))
    match_owner(spool, queue.DEFER)


def tool(name: str, *args: str, input: bytes | None = None,
         user: str | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    argv = [PYTHON, "-m", f"pymailsys.tools.{name}", *args]
    if name == "mailq":
        argv = [PYTHON, "-c", "import sys; from pymailsys.tools.sendmail import mailq_main as m; "
                "sys.exit(m())", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    full_env = dict(os.environ)
    full_env.pop("MAIL_CONFIG", None)
    if env:
        full_env.update(env)
    return subprocess.run(argv, input=input, capture_output=True, env=full_env, cwd="/",
                          timeout=60)


def postfix_edited(data: bytes, header: bytes, new_headers: list[bytes],
                   added_rcpts: list[str]) -> bytes:
    """``data`` (a queue or maildrop file) laid out as Postfix's cleanup leaves a queue
    file after a milter added recipients and replaced a header (cleanup_milter.c): a p
    record before M jumps to the R records appended after E, and a p record there jumps
    back to M; the first N record that is ``header`` is overwritten by a p record to
    its replacement (``new_headers``, appended too) and a p record there jumps back to
    the record after it; a p 0 placeholder and w padding stand before X. What a
    requeued Postfix queue file (``postsuper -r``) brings to pickup."""
    recs = list(records.iter_records(data))
    types = [t for _offset, t, _payload in recs]
    m_index = types.index(records.REC_TYPE_MESG)
    h_index = next(i for i, (_o, t, p) in enumerate(recs)
                   if i > m_index and t == records.REC_TYPE_NORM and p == header)
    x_index = types.index(records.REC_TYPE_XTRA)

    def ptr(target: int) -> bytes:
        return records.encode_record(records.REC_TYPE_PTR, b"%15d" % target)

    def put(first: int, stop: int) -> None:
        for _offset, rtype, payload in recs[first:stop]:
            out.extend(records.encode_record(rtype, payload))

    out = bytearray()
    put(0, m_index)
    env_ptr = len(out)
    out += ptr(0)
    m_offset = len(out)
    put(m_index, h_index)
    h_offset = len(out)
    put(h_index, h_index + 1)
    after_header = len(out)
    assert after_header - h_offset >= len(ptr(0)), "header too short to hold a pointer"
    put(h_index + 1, x_index)
    out += ptr(0) + records.encode_record(records.REC_TYPE_DTXT, b"")
    put(x_index, len(recs))
    rcpts_at = len(out)
    for rcpt in added_rcpts:
        out += records.encode_record(records.REC_TYPE_RCPT, rcpt.encode())
    out += ptr(m_offset)
    headers_at = len(out)
    for line in new_headers:
        out += records.text_records(line)
    out += ptr(after_header)
    out[env_ptr:env_ptr + len(ptr(0))] = ptr(rcpts_at)
    out[h_offset:h_offset + len(ptr(0))] = ptr(headers_at)
    return bytes(out)


def pointer_loop(lines: int, length: int = 2000) -> bytes:
    """The audit's file: an envelope, M, long L records, then a p record back to the
    first L record (each pass replays them all), X, E."""
    out = [records.encode_record(records.REC_TYPE_TIME, b"0 0"),
           records.encode_record(records.REC_TYPE_FROM, b"attacker"),
           records.encode_record(records.REC_TYPE_RCPT, b"victim@localhost"),
           records.encode_record(records.REC_TYPE_MESG, b"")]
    start = sum(map(len, out))
    out += [records.encode_record(records.REC_TYPE_CONT, b"A" * length)] * lines
    out += [records.encode_record(records.REC_TYPE_PTR, b"%15d" % start),
            records.encode_record(records.REC_TYPE_XTRA, b""),
            records.encode_record(records.REC_TYPE_END, b"")]
    return b"".join(out)
