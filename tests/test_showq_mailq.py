"""mailq / postqueue -p and -j, and the showq daemon: Postfix's layout byte for byte."""

from __future__ import annotations

import json
import os
import pwd
import re
import subprocess
import time
from pathlib import Path

import pytest
from conftest import require_tool
from harness import IS_ROOT, Instance, free_port, wait_until
from qf_helpers import defer_reason, make_spool, queue_file, tool

from pymailsys.log import printable
from pymailsys.queue import spool as queue
from pymailsys.queue import status_log
from pymailsys.queue.listing import format_json, format_text, scan_queue

ARRIVAL = 1795594109.5


def populated(tmp_path: Path) -> tuple[Path, Path, dict[str, str]]:
    etc, spool = make_spool(tmp_path)
    ids = {
        "active": queue_file(spool, "active", "alice@example.org", ["bob@example.net"],
                             [b"Subject: a", b"", b"x" * 900]),
        "deferred": queue_file(spool, "deferred", "", ["c1@example.net", "c2@example.net",
                                                       "c3@example.net"],
                               [b"Subject: d", b"", b"y" * 3000], done=0),
        "hold": queue_file(spool, "hold", "held@example.org", ["h@example.net"],
                           [b"Subject: h", b"", b"z"]),
        "incoming": queue_file(spool, "incoming", "in@example.org", ["done@example.net",
                                                                     "todo@example.net"],
                               [b"Subject: i", b"", b"i"], done=1),
    }
    defer_reason(spool, ids["deferred"], "c1@example.net",
                 "connect to example.net[192.0.2.1]:25: Connection refused")
    defer_reason(spool, ids["deferred"], "c2@example.net",
                 "connect to example.net[192.0.2.1]:25: Connection refused")
    return etc, spool, ids


def test_layout(tmp_path: Path) -> None:
    etc, spool, ids = populated(tmp_path)
    text = format_text(scan_queue(queue.Spool(str(spool))))
    stamp = time.asctime(time.localtime(int(ARRIVAL)))[:20]
    lines = text.splitlines()
    assert lines[0] == "-Queue ID-  --Size-- ----Arrival Time---- -Sender/Recipient-------"
    # Postfix's order: maildrop, active, incoming, deferred, hold
    assert lines[1].startswith(f"{ids['active'] + '*':<11} ")
    assert lines[1].endswith(f"{stamp} alice@example.org")
    blocks = text.split("\n\n")
    assert blocks[1].startswith(ids["incoming"] + " ")
    assert "done@example.net" not in blocks[1] and "todo@example.net" in blocks[1]
    deferred = blocks[2].splitlines()
    assert deferred[0].endswith(" MAILER-DAEMON")
    reason = "(connect to example.net[192.0.2.1]:25: Connection refused)"
    assert deferred[1] == " " * (78 - len(reason)) + reason
    assert deferred[2] == " " * 41 + "c1@example.net"
    assert deferred[3] == " " * 41 + "c2@example.net"
    assert deferred[4] == " " * 58 + "(reason unavailable)"
    assert deferred[5] == " " * 41 + "c3@example.net"
    assert blocks[3].startswith(ids["hold"] + "!")
    assert text.endswith(" Requests.\n")
    assert text.splitlines()[-1].startswith("-- ")


def test_empty_queue(tmp_path: Path) -> None:
    """With the system down, root lists the queue directly; any other user is refused,
    as Postfix's postqueue refuses (only the superuser may bypass showq)."""
    etc, _spool = make_spool(tmp_path)
    out = tool("postqueue", "-c", str(etc), "-p")
    if IS_ROOT:
        assert out.returncode == 0
        assert out.stdout == b"Mail queue is empty\n"
        assert (b"postqueue: warning: Mail system is down -- accessing queue directly "
                b"(Connect to the Postfix showq service: No such file or directory)") in out.stderr
    else:
        assert out.returncode == 69
        assert out.stdout == b""
        assert b"postqueue: fatal: Queue report unavailable - mail system is down" in out.stderr


def debian_postqueue(tmp_path: Path, spool: Path, *args: str) -> subprocess.CompletedProcess:
    """Debian's postqueue (its showq as postfix, reading the spool directly) on the spool."""
    debian = require_tool("/usr/sbin/postqueue")
    require_tool("/usr/lib/postfix/sbin/showq")
    os.chmod(tmp_path, 0o755)
    pf = tmp_path / "pf"
    pf.mkdir(exist_ok=True)
    (pf / "main.cf").write_text(f"queue_directory = {spool}\n")
    pw = pwd.getpwnam("postfix")
    for dirpath, _dirs, files in os.walk(spool):
        os.chown(dirpath, pw.pw_uid, -1)
        for f in files:
            os.chown(os.path.join(dirpath, f), pw.pw_uid, -1)
    return subprocess.run([debian, "-c", str(pf), *args], capture_output=True)


@pytest.mark.root
def test_direct_listing_matches_debian_postqueue(tmp_path: Path) -> None:
    """Debian's postqueue reads the same spool (showq as postfix) and prints the same bytes."""
    etc, spool, _ids = populated(tmp_path)
    theirs = debian_postqueue(tmp_path, spool, "-p")
    ours = tool("postqueue", "-c", str(etc), "-p")
    assert theirs.returncode == ours.returncode == 0
    assert ours.stdout == theirs.stdout
    mailq = tool("mailq", "-C", str(etc))
    assert mailq.stdout == theirs.stdout


@pytest.mark.root
def test_json_listing_matches_debian_postqueue(tmp_path: Path) -> None:
    """postqueue -j prints the fields and bytes of Debian's (Postfix 3.7: no orig_address,
    which came with Postfix 3.11), forced expiry included."""
    etc, spool, ids = populated(tmp_path)
    assert tool("postsuper", "-c", str(etc), "-e", ids["deferred"]).returncode == 0
    theirs = debian_postqueue(tmp_path, spool, "-j")
    ours = tool("postqueue", "-c", str(etc), "-j")
    assert theirs.returncode == ours.returncode == 0
    assert b'"forced_expire": true' in ours.stdout
    assert ours.stdout == theirs.stdout


@pytest.mark.root
def test_quoted_addresses_match_debian_postqueue(tmp_path: Path) -> None:
    """Local parts that need quoting (space, quote, backslash, CR, dots, a source route)
    are listed as Debian's postqueue lists them (rfc822.quote_822_local, made printable)."""
    etc, spool = make_spool(tmp_path)
    queue_file(spool, "active", "john doe@example.org",
               ['a"b@example.net', "a\\b@example.net", "a\rb@example.net", ".x.@example.net",
                "@r1,@r2:j d@example.net", "plain@example.net"],
               [b"Subject: q", b"", b"q"])
    theirs = debian_postqueue(tmp_path, spool, "-p")
    ours = tool("postqueue", "-c", str(etc), "-p")
    assert theirs.returncode == ours.returncode == 0
    assert b'"john doe"@example.org' in ours.stdout
    assert ours.stdout == theirs.stdout


def test_json_lines(tmp_path: Path) -> None:
    etc, _spool, ids = populated(tmp_path)
    out = tool("postqueue", "-c", str(etc), "-j")
    if not IS_ROOT:
        pytest.skip("direct access needs root")
    objs = [json.loads(line) for line in out.stdout.decode().splitlines()]
    assert [o["queue_name"] for o in objs] == ["active", "incoming", "deferred", "hold"]
    d = objs[2]
    assert d["queue_id"] == ids["deferred"] and d["sender"] == "MAILER-DAEMON"
    assert d["arrival_time"] == int(ARRIVAL) and d["forced_expire"] is False
    assert d["recipients"][0] == {
        "address": "c1@example.net",
        "delay_reason": "connect to example.net[192.0.2.1]:25: Connection refused"}
    assert d["recipients"][2] == {"address": "c3@example.net"}


CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f]")  # any control character but LF
BAD_SENDER = "a\x1b]0;pwned\x07@example.com"  # an xterm title escape
SPACE_RCPT = "john doe@example.net"  # internal form of "john doe"@example.net
ESC_RCPT = "esc\x1b[2J@example.net"  # clears an administrator's screen


def test_deferred_recipients_shown_once_quoted_and_printable(tmp_path: Path) -> None:
    """Security: a recipient from the defer log is listed once, in the form the queue
    file's recipient is listed in (quoted, unprintable characters '?'), with its
    reason made printable too: no envelope address and no remote server's reply
    reaches the administrator's terminal with its escapes. JSON carries what mailq
    shows, as Postfix's postqueue -j does (showq's strings are made printable first)."""
    _etc, spool = make_spool(tmp_path)
    qid = queue_file(spool, "deferred", BAD_SENDER, [SPACE_RCPT, ESC_RCPT, "plain@example.net"],
                     [b"Subject: d", b"", b"d"])
    reason = "host mx.example.net said: 450 \x1b[31mtry later\x07"
    defer_reason(spool, qid, SPACE_RCPT, reason)
    defer_reason(spool, qid, ESC_RCPT, reason)
    text = format_text(scan_queue(queue.Spool(str(spool))))
    assert not CONTROL.search(text)
    lines = text.splitlines()
    assert lines[1].startswith(qid + " ") and lines[1].endswith(' "a?]0;pwned?"@example.com')
    shown = "(host mx.example.net said: 450 ?[31mtry later?)"
    assert lines[2:] == [
        " " * (78 - len(shown)) + shown,
        " " * 41 + '"john doe"@example.net',
        " " * 41 + '"esc?[2J"@example.net',
        " " * 58 + "(reason unavailable)",
        " " * 41 + "plain@example.net",
        "",
        "-- 0 Kbytes in 1 Request.",
    ]
    raw = format_json(scan_queue(queue.Spool(str(spool))))
    assert not CONTROL.search(raw)
    obj = json.loads(raw)
    assert obj["sender"] == '"a?]0;pwned?"@example.com'
    why = "host mx.example.net said: 450 ?[31mtry later?"
    assert obj["recipients"] == [
        {"address": '"john doe"@example.net', "delay_reason": why},
        {"address": '"esc?[2J"@example.net', "delay_reason": why},
        {"address": "plain@example.net"},
    ]


def test_deferred_quoted_recipient_listed_once(tmp_path: Path) -> None:
    """A deferred recipient whose local part needs quoting (no control character) is
    listed once, with its reason: the defer log's entry and the queue file's
    recipient are the same recipient (Postfix's showq duplicate filter)."""
    _etc, spool = make_spool(tmp_path)
    qid = queue_file(spool, "deferred", "alice@example.org", [SPACE_RCPT], [b"S: d", b"", b"d"])
    defer_reason(spool, qid, SPACE_RCPT, "try later")
    lines = format_text(scan_queue(queue.Spool(str(spool)))).splitlines()
    assert lines[2:4] == [" " * 67 + "(try later)", " " * 41 + '"john doe"@example.net']
    assert lines[4:] == ["", "-- 0 Kbytes in 1 Request."]


@pytest.mark.root
def test_mailq_lists_each_deferred_recipient_once(new_instance, throwaway_user) -> None:  # type: ignore[no-untyped-def]
    """End to end: sendmail refuses a local part with ESC (75, nothing queued); mail
    to a quoted local part and a plain one, deferred (a relayhost that nothing
    listens on), is listed by a user's mailq (through showq) with each recipient
    once, quoted, under the deferral reason of the defer log, and no raw control
    byte anywhere (escapes in the defer log itself: the test above)."""
    inst: Instance = new_instance()
    inst.set(relayhost=f"[127.0.0.1]:{free_port()}")
    inst.start(wait_smtp=False)
    open_public(inst)
    refused = inst.tool("sendmail", "-f", "alice@example.org", ESC_RCPT,
                        input="Subject: d\n\nd\n")
    assert refused.returncode == 75, refused.stderr
    sent = inst.tool("sendmail", "-f", "alice@example.org", '"john doe"@example.net',
                     "plain@example.net", input="Subject: d\n\nd\n")
    assert sent.returncode == 0, sent.stderr
    spool = queue.Spool(str(inst.queue_dir))

    def deferred() -> list[status_log.Entry]:
        logs = [spool.path(queue.DEFER, qid) for qid in spool.scan(queue.DEFER)]
        entries = status_log.read(logs[0]) if logs else []
        return entries if len(entries) == 2 else []

    entries = wait_until(deferred, 60, what="both recipients in the defer log")
    assert sorted(e.recipient for e in entries) == [SPACE_RCPT, "plain@example.net"]
    assert entries[0].reason == entries[1].reason
    reason = f"({printable(entries[0].reason)})"
    out = inst.tool("mailq", user=throwaway_user)
    assert out.returncode == 0, out.stderr
    assert not CONTROL.search(out.stdout)
    lines = out.stdout.splitlines()
    assert lines[1].endswith(" alice@example.org")
    assert lines[2] == " " * (78 - len(reason)) + reason
    assert sorted(lines[3:5]) == [" " * 41 + '"john doe"@example.net',
                                  " " * 41 + "plain@example.net"]
    assert lines[5:] == ["", "-- 0 Kbytes in 1 Request."]
    j = inst.tool("postqueue", "-j", user=throwaway_user)
    assert j.returncode == 0, j.stderr
    assert not CONTROL.search(j.stdout.rstrip("\n"))
    rcpts = json.loads(j.stdout)["recipients"]
    assert sorted(rc["address"] for rc in rcpts) == ['"john doe"@example.net',
                                                     "plain@example.net"]
    assert [rc["delay_reason"] for rc in rcpts] == [reason[1:-1]] * 2


def test_usage_and_down_for_users(tmp_path: Path) -> None:
    etc, _spool = make_spool(tmp_path)
    out = tool("postqueue", "-c", str(etc))
    assert out.returncode == 64
    assert b"postqueue: fatal: usage: postqueue -f | postqueue -i queueid" in out.stderr
    out = tool("postqueue", "-c", str(etc), "-f")
    assert out.returncode == 69
    assert b"Cannot flush mail queue - mail system is down" in out.stderr


@pytest.mark.root
def test_mailq_same_for_root_and_user_through_showq(new_instance, throwaway_user) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance(maildir=True)
    inst.start(wait_smtp=False)
    open_public(inst)
    wait_until(lambda: (inst.queue_dir / "public" / "showq").exists(), 30, what="showq socket")
    spool = inst.queue_dir
    qid = queue_file(spool, "hold", "alice@example.org", ["bob@example.net"], [b"S: x", b"", b"y"])
    owner = os.stat(spool / "incoming").st_uid
    os.chown(spool / "hold" / qid, owner, -1)
    root = inst.tool("mailq")
    user = inst.tool("mailq", user=throwaway_user)
    assert root.returncode == 0, root.stderr
    assert user.returncode == 0, user.stderr
    assert root.stdout == user.stdout
    assert f"{qid}!" in root.stdout
    assert root.stderr == ""  # through showq, not the direct fallback
    j = inst.tool("postqueue", "-j", user=throwaway_user)
    assert json.loads(j.stdout.splitlines()[0])["queue_id"] == qid
    inst.stop()
    down = inst.tool("mailq", user=throwaway_user)
    assert down.returncode == 69
    assert "Queue report unavailable - mail system is down" in down.stderr


def open_public(inst: Instance) -> None:
    """Let users reach public/ (design.md: sendmail and mailq work without setgid)."""
    os.chmod(inst.queue_dir / "public", 0o711)
    os.chmod(inst.queue_dir, 0o755)


