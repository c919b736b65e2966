"""smtpd end to end: a real instance (master, smtpd, cleanup, qmgr, local), real clients."""

from __future__ import annotations

import smtplib
import socket
import subprocess
import time
import uuid

import pytest
from conftest import local_account, require_tool
from harness import ME, Instance


def maildir_messages(inst: Instance, count: int, timeout: float = 60) -> list[bytes]:
    """The messages in our Maildir once there are at least count of them."""
    new = inst.mail_dir / ME / "new"
    deadline = time.monotonic() + timeout
    while True:
        msgs = [p.read_bytes() for p in sorted(new.iterdir())] if new.is_dir() else []
        if len(msgs) >= count:
            return msgs
        assert time.monotonic() < deadline, f"timed out waiting for {count} messages"
        time.sleep(0.05)


def session(inst: Instance, steps: list[bytes]) -> list[str]:
    """Send each step, wait for its complete reply; the replies, in order."""
    out = []
    with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
        f = s.makefile("rb")

        def reply() -> str:
            lines: list[str] = []
            while True:
                line = f.readline()
                if not line:
                    return "\n".join(lines + ["<EOF>"])
                lines.append(line.decode().rstrip("\r\n"))
                if line[3:4] == b" ":
                    return "\n".join(lines)

        out.append(reply())
        for step in steps:
            s.sendall(step)
            out.append(reply())
    return out


@pytest.mark.accounts
@pytest.mark.root
def test_an_account_added_or_removed_is_seen_at_the_next_rcpt(new_instance) -> None:  # type: ignore[no-untyped-def]
    """local_recipient_maps (unix:passwd.byname): each RCPT sees /etc/passwd as it is
    then, in the same session: useradd lets the next RCPT in, userdel refuses it."""
    inst = new_instance()
    inst.start()
    name = "pmt" + uuid.uuid4().hex[:8]
    unknown = (550, f"5.1.1 <{name}@localhost>: Recipient address rejected: "
                    "User unknown in local recipient table".encode())
    with inst.smtp() as c:
        c.ehlo()
        c.mail("alice@example.org")
        assert c.rcpt(f"{name}@localhost") == unknown
        with local_account(name):
            assert c.rcpt(f"{name}@localhost")[0] == 250
            subprocess.run(["userdel", name], check=True)
            assert c.rcpt(f"{name}@localhost") == unknown


def test_unknown_user_and_relay_control(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={"mynetworks": "192.0.2.0/24"})  # the client 127.0.0.1 is outside
    inst.start()
    with inst.smtp() as c:
        c.ehlo()
        c.mail("alice@example.org")
        assert c.rcpt("nosuchuser@localhost") == (
            550, b"5.1.1 <nosuchuser@localhost>: Recipient address rejected: "
                 b"User unknown in local recipient table")
        assert c.rcpt("bob@foreign.example") == (454, b"4.7.1 <bob@foreign.example>: "
                                                      b"Relay access denied")
        assert c.rcpt(f"{ME}@localhost")[0] == 250
    inst.wait_log(r"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 454 4\.7\.1 "
                  r"<bob@foreign\.example>: Relay access denied; from=<alice@example\.org> "
                  r"to=<bob@foreign\.example> proto=ESMTP helo=<client\.example>")
    inst.set(smtpd_relay_restrictions="permit_mynetworks, reject_unauth_destination")
    inst.postfix("reload")
    deadline = time.monotonic() + 30
    while True:  # old smtpd processes may serve a connection or two until they notice
        with inst.smtp() as c:
            c.ehlo()
            c.mail("alice@example.org")
            code, text = c.rcpt("bob@foreign.example")
        if code == 554 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert (code, text) == (554, b"5.7.1 <bob@foreign.example>: Relay access denied")


def test_vrfy_is_told_what_rcpt_would_be(new_instance) -> None:  # type: ignore[no-untyped-def]
    """VRFY runs the restrictions RCPT TO runs (Postfix's smtpd_check_rcpt): the client,
    relay and recipient lists, then the unlisted-recipient check; a bare postmaster passes."""
    inst = new_instance(settings={
        "mynetworks": "192.0.2.0/24",  # the client 127.0.0.1 is outside
        "smtpd_recipient_restrictions": "check_recipient_access inline:{{blocked@localhost="
                                        "REJECT no probing}}, reject"})
    inst.start()
    replies = session(inst, [b"EHLO client.example\r\n", b"VRFY bob@foreign.example\r\n",
                             b"VRFY blocked@localhost\r\n", b"VRFY postmaster\r\n",
                             b"QUIT\r\n"])
    assert replies[2:5] == [
        "454 4.7.1 <bob@foreign.example>: Relay access denied",
        "554 5.7.1 <blocked@localhost>: Recipient address rejected: no probing",
        "252 2.0.0 postmaster"]
    inst.wait_log(r"NOQUEUE: reject: VRFY from localhost\[127\.0\.0\.1\]: 554 5\.7\.1 "
                  r"<blocked@localhost>: Recipient address rejected: no probing; "
                  r"to=<blocked@localhost> proto=ESMTP helo=<client\.example>")
    inst.set(smtpd_recipient_restrictions="", smtpd_client_restrictions="reject")
    inst.postfix("reload")
    deadline = time.monotonic() + 30
    while True:  # old smtpd processes may serve a connection or two until they notice
        replies = session(inst, [b"EHLO client.example\r\n", b"VRFY " + ME.encode()
                                 + b"@localhost\r\n", b"QUIT\r\n"])
        if not replies[2].startswith("252") or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    # smtpd_delay_reject: the client list is applied at VRFY too
    assert replies[2] == "554 5.7.1 <localhost[127.0.0.1]>: Client host rejected: Access denied"


def test_inside_mynetworks_relays(instance: Instance) -> None:
    with instance.smtp() as c:
        c.ehlo()
        c.mail("alice@example.org")
        assert c.rcpt("bob@foreign.example") == (250, b"2.1.5 Ok")


def test_smtplib_delivery_and_logs(instance: Instance) -> None:
    queue_id = instance.send("alice@example.org", f"{ME}@localhost",
                             b"Subject: hello\r\n\r\n.leading dot\r\n8bit \xc3\xa9\r\n")
    msgs = maildir_messages(instance, 1)
    assert b"\n.leading dot\n8bit \xc3\xa9\n" in msgs[0]
    instance.wait_log(rf"smtpd\[\d+\]: {queue_id}: client=localhost\[127\.0\.0\.1\]")
    instance.wait_log(r"smtpd\[\d+\]: connect from localhost\[127\.0\.0\.1\]")
    instance.wait_log(r"smtpd\[\d+\]: disconnect from localhost\[127\.0\.0\.1\] ehlo=1 mail=1 "
                      r"rcpt=1 data=1 quit=1 commands=5")


def test_smuggling_never_makes_a_second_message(instance: Instance) -> None:
    for n, fake_end in enumerate([b"\n.\n", b"\r.\n", b"\n.\r\n", b"\r\n.\r"]):
        replies = session(instance, [
            b"EHLO client.example\r\n", b"MAIL FROM:<alice@example.org>\r\n",
            f"RCPT TO:<{ME}@localhost>\r\n".encode(), b"DATA\r\n",
            f"Subject: first {n}\r\n\r\nbody".encode() + fake_end +
            f"MAIL FROM:<evil@example.net>\r\nRCPT TO:<{ME}@localhost>\r\nDATA\r\n"
            f"Subject: smuggled {n}\r\n\r\nsecond\r\n.\r\n".encode(),
            b"QUIT\r\n"])
        assert replies[4].startswith("354 "), replies
        assert replies[5].startswith("250 2.0.0 Ok: queued as "), replies
        assert replies[6] == "221 2.0.0 Bye"
    maildir_messages(instance, 4)
    time.sleep(1)
    msgs = maildir_messages(instance, 4)
    assert len(msgs) == 4
    assert all(b"Subject: smuggled" not in m.split(b"\n\n", 1)[0] for m in msgs)
    assert "evil@example.net" not in "\n".join(
        line for line in instance.log().splitlines() if "qmgr" in line)


def test_swaks(instance: Instance) -> None:
    swaks = require_tool("swaks")
    result = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(instance.port),
                             "--from", "alice@example.org", "--to", f"{ME}@localhost",
                             "--helo", "swaks.example", "--pipeline",
                             "--body", "hello from swaks"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "<-  250 2.0.0 Ok: queued as" in result.stdout
    msgs = maildir_messages(instance, 1)
    assert b"hello from swaks" in msgs[0]
    result = subprocess.run([swaks, "--server", "127.0.0.1", "--port", str(instance.port),
                             "--from", "alice@example.org", "--to", "nosuchuser@localhost",
                             "--helo", "swaks.example"], capture_output=True, text=True,
                            timeout=60)
    assert ("<** 550 5.1.1 <nosuchuser@localhost>: Recipient address rejected: User unknown "
            "in local recipient table") in result.stdout


def test_pipelined_smtplib_session_many_messages(instance: Instance) -> None:
    with smtplib.SMTP("127.0.0.1", instance.port, local_hostname="client.example") as c:
        for i in range(5):
            c.sendmail("alice@example.org", [f"{ME}@localhost"], f"Subject: m{i}\r\n\r\nx\r\n")
    assert len(maildir_messages(instance, 5)) == 5


def test_maxproc_limits_smtp_sessions_as_postfix_processes(new_instance) -> None:  # type: ignore[no-untyped-def]
    """master.cf's maxproc for smtpd (2 here) is how many SMTP sessions run at once, as
    Postfix's one session per smtpd process: a third client waits in the listen queue,
    without a banner, until a session ends, and the limit is logged as Postfix's master
    logs it. One smtpd process serves them: master starts no second one."""
    import re

    inst = new_instance()
    master_cf = inst.config_dir / "master.cf"
    text, n = re.subn(rf"(?m)^(127\.0\.0\.1:{inst.port}\s+inet(?:\s+\S+){{4}}\s+)-(\s+smtpd)",
                      r"\g<1>2\2", master_cf.read_text())
    assert n == 1
    master_cf.write_text(text)
    inst.start()

    def connect() -> socket.socket:
        return socket.create_connection(("127.0.0.1", inst.port), timeout=30)

    first, second = connect(), connect()
    try:
        for s in (first, second):
            assert s.recv(512).startswith(b"220 ")
        with connect() as third:
            third.settimeout(2)
            try:
                early = third.recv(512)
            except TimeoutError:
                early = b""
            assert early == b"", early  # no banner while two sessions run
            inst.wait_log(r'warning: service "127\.0\.0\.1:\d+" \(127\.0\.0\.1:\d+\) has '
                          r'reached its process limit "2": new clients may experience '
                          r'noticeable delays')
            first.sendall(b"QUIT\r\n")
            assert first.recv(512).startswith(b"221 ")
            third.settimeout(30)
            assert third.recv(512).startswith(b"220 ")  # the next session, once one ended
            third.sendall(b"QUIT\r\n")
    finally:
        first.close()
        second.close()
    smtpd = subprocess.run(["pgrep", "-f", f"smtpd -c {inst.config_dir} "], capture_output=True,
                           text=True).stdout.split()
    assert len(smtpd) == 1, smtpd


def test_cleanup_maxproc_counts_messages_not_the_connections_clients_keep(new_instance) -> None:  # type: ignore[no-untyped-def]
    """master.cf's maxproc for cleanup (1 here) is how many messages it takes at once, as
    Postfix's one message per cleanup process. smtpd keeps its connection to cleanup
    open between messages: counted as a client it would hold the only place for good,
    and a local submission (pickup's connection) would wait for ever."""
    import re

    inst = new_instance()
    master_cf = inst.config_dir / "master.cf"
    text, n = re.subn(r"(?m)^(cleanup\s+unix(?:\s+\S+){4}\s+)0(\s+cleanup)", r"\g<1>1\2",
                      master_cf.read_text())
    assert n == 1
    master_cf.write_text(text)
    inst.start()
    inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: over smtp\r\n\r\nx\r\n")
    local = f"To: {ME}@localhost\nSubject: from sendmail\n\ny\n"
    assert inst.tool("sendmail", "-t", input=local, timeout=30).returncode == 0
    inst.send(f"{ME}@localhost", f"{ME}@localhost", b"Subject: again\r\n\r\nz\r\n")
    subjects = sorted(re.search(rb"\nSubject: ([^\r\n]*)", m).group(1)  # type: ignore[union-attr]
                      for m in maildir_messages(inst, 3, timeout=30))
    assert subjects == [b"again", b"from sendmail", b"over smtp"]
