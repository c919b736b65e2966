"""pflogsumm counts the same traffic alike on pymailsys and on Debian's Postfix (root only).

The same aliases (a nested alias postmaster -> root -> an admin account, a
list with local members, a duplicate, an unknown user and a remote address),
the same accounts (one with a .forward to another local account) and the same
SMTP traffic (including a recipient smtpd rejects) go through a scratch
Debian Postfix (its own config_directory, queue_directory and maillog_file,
``postfix -c DIR start`` on a free loopback port) and through a pymailsys
instance; remote mail goes to smtp-sink as the relayhost of both. pflogsumm's
Grand Totals (received, delivered, forwarded, deferred, bounced, rejected)
must be equal.
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import smtplib
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from harness import IS_ROOT, Instance, free_port, wait_until
from postfix_peer import PostfixPeer

pytestmark = pytest.mark.root

COUNTS = ("received", "delivered", "forwarded", "deferred", "bounced", "rejected")
BODY = b"Subject: pflogsumm comparison\r\n\r\nhello\r\n"
@pytest.fixture
def accounts() -> Iterator[dict[str, str]]:
    """admin and fwd (whose .forward sends to admin), with homes under a temp directory."""
    if not IS_ROOT:
        pytest.skip("needs root (accounts, Debian's Postfix)")
    homes = Path(tempfile.mkdtemp(prefix="pflogsumm-homes-"))
    os.chmod(homes, 0o755)
    names = {"admin": "pma" + uuid.uuid4().hex[:8], "fwd": "pmf" + uuid.uuid4().hex[:8]}
    for name in names.values():
        home = homes / name
        subprocess.run(["useradd", "--home-dir", str(home), "--shell", "/bin/sh", name],
                       check=True)
        pw = pwd.getpwnam(name)
        home.mkdir()
        os.chown(home, pw.pw_uid, pw.pw_gid)
        os.chmod(home, 0o755)
    forward = homes / names["fwd"] / ".forward"
    forward.write_text(f"{names['admin']}@localhost\n")
    pw = pwd.getpwnam(names["fwd"])
    os.chown(forward, pw.pw_uid, pw.pw_gid)
    yield names
    for name in names.values():
        subprocess.run(["userdel", name], check=False)
    shutil.rmtree(homes, ignore_errors=True)


@pytest.fixture
def sink_port() -> Iterator[int]:
    port = free_port()
    proc = subprocess.Popen([require_tool("/usr/sbin/smtp-sink"), "-u", "nobody",
                             f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until(lambda: _answers(port), 10, what="smtp-sink listening")
        yield port
    finally:
        proc.kill()
        proc.wait()


def _answers(port: int) -> bool:
    try:
        smtplib.SMTP("127.0.0.1", port, timeout=5).quit()
    except OSError:
        return False
    return True


def send_traffic(port: int, names: dict[str, str]) -> None:
    admin, fwd = names["admin"], names["fwd"]
    sender = f"{admin}@localhost"  # notices come back to a local mailbox
    for rcpt in ("postmaster@localhost", "list@localhost", f"{fwd}@localhost",
                 f"{admin}@localhost"):
        with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example") as client:
            client.sendmail(sender, [rcpt], BODY)
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.example") as client:
        client.ehlo()
        client.mail(sender)
        code, _ = client.rcpt("nosuchuser@localhost")
        assert code == 550


def grand_totals(log_path: Path) -> dict[str, int]:
    out = subprocess.run([require_tool("/usr/sbin/pflogsumm"), str(log_path)],
                         capture_output=True, text=True, check=True).stdout
    totals = out.split("Grand Totals", 1)[1].split("Per-", 1)[0]
    counts = {}
    for name in COUNTS:
        m = re.search(rf"^\s*(\d+)\s+{name}\b", totals, re.M)
        assert m, (name, totals)
        counts[name] = int(m.group(1))
    return counts


def test_pflogsumm_counts_equal_debian_postfix(new_instance, accounts, sink_port) -> None:  # type: ignore[no-untyped-def]
    require_tool("/usr/sbin/postfix")
    admin = accounts["admin"]
    aliases = (f"postmaster: root\nroot: {admin}\n"
               f"list: {admin}, root, nosuchuser, far@remote.example\n")
    settings = {"myhostname": "mx.test.example", "mydestination": "$myhostname, localhost",
                "relayhost": f"[127.0.0.1]:{sink_port}", "smtputf8_enable": "no"}
    postfix = PostfixPeer(free_port(), settings=settings, aliases=aliases)
    try:
        postfix.start()
        send_traffic(postfix.port, accounts)
        wait_until(lambda: postfix.queue_empty() and "sender non-delivery" in postfix.log(),
                   60, what="Debian's Postfix queue empty")
        wait_until(postfix.queue_empty, 30, what="Debian's Postfix queue empty")
        expected = grand_totals(postfix.log_path)
        postfix_log = postfix.log()
    finally:
        postfix.stop()
    print(f"Debian Postfix: {expected}")
    assert expected["forwarded"] == 2 and expected["bounced"] == 1, expected

    inst: Instance = new_instance(maildir=True)
    inst.set(**settings)
    inst.write("etc/aliases", aliases)
    inst.tool("newaliases", check=True)
    inst.start()
    send_traffic(inst.port, accounts)
    wait_until(lambda: inst.queue_empty() and "sender non-delivery" in inst.log(), 60,
               what="pymailsys queue empty")
    wait_until(inst.queue_empty, 30, what="pymailsys queue empty")
    inst.stop()
    got = grand_totals(inst.log_path)
    assert got == expected, (got, expected, postfix_log, inst.log())
