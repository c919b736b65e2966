"""Client connection and rate limits, counted by the anvil daemon for every smtpd process.

The test client is 127.0.0.1, inside mynetworks: limits apply to it only with
smtpd_client_event_limit_exceptions set empty, as a remote client's would.
"""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

from harness import ME, Instance, wait_until

NOT_EXEMPT = {"smtpd_client_event_limit_exceptions": ""}


@contextmanager
def connection(inst: Instance) -> Iterator[tuple[socket.socket, str]]:
    """A connected client and the server's first reply line (greeting or refusal)."""
    with socket.create_connection(("127.0.0.1", inst.port), timeout=30) as s:
        yield s, s.makefile("rb").readline().decode().rstrip("\r\n")


def greeting(inst: Instance) -> str:
    with connection(inst) as (_, first):
        return first


def commands(inst: Instance, lines: list[str]) -> list[str]:
    """One session: each line's one-line reply (EHLO is not used)."""
    out = []
    with connection(inst) as (s, first):
        assert first.startswith("220 ")
        f = s.makefile("rb")
        for line in lines:
            s.sendall(line.encode() + b"\r\n")
            out.append(f.readline().decode().rstrip("\r\n"))
    return out


def test_connection_count_limit_across_the_service(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={**NOT_EXEMPT, "smtpd_client_connection_count_limit": "2"})
    inst.start()
    with ExitStack() as held:
        for _ in range(2):
            _, first = held.enter_context(connection(inst))
            assert first.startswith("220 ")
        hostname = first.split()[1]
        assert greeting(inst) == \
            f"421 4.7.0 {hostname} Error: too many connections from 127.0.0.1"
    inst.wait_log(r"warning: Connection concurrency limit exceeded: 3 from "
                  r"localhost\[127\.0\.0\.1\] for service 127\.0\.0\.1:\d+$")
    inst.wait_log(r"disconnect from localhost\[127\.0\.0\.1\] commands=0/0$")
    # the two held sessions have ended: their count is given back
    wait_until(lambda: greeting(inst).startswith("220 "), 30, what="a free connection slot")


def test_counts_outlive_an_smtpd_process_and_a_killed_one_gives_its_back(
        new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={**NOT_EXEMPT, "smtpd_client_connection_count_limit": "2",
                                  "smtpd_client_connection_rate_limit": "5"})
    inst.start()  # its readiness probe is connection 1 of the rate
    with ExitStack() as held:
        for _ in range(2):
            assert held.enter_context(connection(inst))[1].startswith("220 ")
        [smtpd] = inst.daemons()["smtpd"]
        os.kill(smtpd, signal.SIGKILL)  # no disconnect reaches anvil: its socket closes
        wait_until(lambda: smtpd not in inst.daemons().get("smtpd", []), 30, what="smtpd gone")
    # The count went back to 0 (else this would be refused). The rate did not: the
    # readiness probe and the two held connections count, so of at most 5 per
    # minute fewer than 3 are left; a new smtpd process counting on its own would
    # allow 5 more.
    accepted = 0
    for _ in range(6):
        first = greeting(inst)
        if not first.startswith("220 "):
            break
        accepted += 1
    assert first.endswith("Error: too many connections from 127.0.0.1"), first
    assert 1 <= accepted < 3
    inst.wait_log(r"warning: Connection rate limit exceeded: 6 from localhost\[127\.0\.0\.1\] "
                  r"for service 127\.0\.0\.1:\d+$")


def test_message_and_recipient_rate_limits(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={**NOT_EXEMPT, "smtpd_client_message_rate_limit": "2",
                                  "smtpd_client_recipient_rate_limit": "3"})
    inst.start()
    replies = commands(inst, [
        "HELO client.example", "MAIL FROM:<a@example.org>", f"RCPT TO:<{ME}@localhost>",
        "RSET", "MAIL FROM:<a@example.org>", f"RCPT TO:<{ME}@localhost>", f"VRFY {ME}",
        f"RCPT TO:<{ME}@localhost>", "RSET", "MAIL FROM:<a@example.org>", "QUIT"])
    assert replies[1] == replies[4] == "250 2.1.0 Ok"
    assert replies[2] == replies[5] == "250 2.1.5 Ok"
    assert replies[6].startswith("252 ")
    assert replies[7] == "450 4.7.1 Error: too many recipients from 127.0.0.1"
    assert replies[9] == "450 4.7.1 Error: too much mail from 127.0.0.1"
    inst.wait_log(r"warning: Recipient address rate limit exceeded: 4 from "
                  r"localhost\[127\.0\.0\.1\] for service 127\.0\.0\.1:\d+$")
    inst.wait_log(r"warning: Message delivery request rate limit exceeded: 3 from "
                  r"localhost\[127\.0\.0\.1\] for service 127\.0\.0\.1:\d+$")
    inst.stop()  # anvil logs its peaks as it exits
    inst.wait_log(r"postfix/anvil\[\d+\]: statistics: max message rate 3/60s for "
                  r"\(127\.0\.0\.1:\d+:127\.0\.0\.1\) at \w{3} [ \d]\d \d\d:\d\d:\d\d$")
    inst.wait_log(r"postfix/anvil\[\d+\]: statistics: max recipient rate 4/60s for ")
    inst.wait_log(r"postfix/anvil\[\d+\]: statistics: max connection count 1 for ")
    inst.wait_log(r"postfix/anvil\[\d+\]: statistics: max cache size 1 at ")


def test_mynetworks_clients_are_exempt_by_default(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst = new_instance(settings={"smtpd_client_connection_count_limit": "1"})
    inst.start()
    with ExitStack() as held:
        for _ in range(3):
            assert held.enter_context(connection(inst))[1].startswith("220 ")
    assert "limit exceeded" not in inst.log()


def test_anvil_refuses_what_it_does_not_know(new_instance) -> None:  # type: ignore[no-untyped-def]
    from pymailsys.ipc import attr

    inst = new_instance(settings=NOT_EXEMPT)
    inst.start()
    with connection(inst) as (_, first):  # an smtpd session makes master start anvil
        assert first.startswith("220 ")
        path = str(inst.queue_dir / "private" / "anvil")
        with attr.SyncAttrClient(path) as anvil:
            assert anvil.request({"request": "bogus", "ident": "x"}).number("status") == -1
            assert anvil.request({"request": "connect", "ident": "x" * 5000}).number(
                "status") == -1
            reply = anvil.request({"request": "lookup", "ident": f"127.0.0.1:{inst.port}"
                                                                 f":127.0.0.1"})
            assert (reply.number("status"), reply.number("count")) == (0, 1)
    inst.wait_log(r'postfix/anvil\[\d+\]: warning: unrecognized request: "bogus", ignored')


def test_sendmail_bs_is_not_counted(new_instance) -> None:  # type: ignore[no-untyped-def]
    """smtpd -S (sendmail -bs) serves the local user on standard input: no anvil, as Postfix."""
    from test_sendmail_bs import StdioSmtp, bs_argv

    inst = new_instance(settings={**NOT_EXEMPT, "smtpd_client_connection_rate_limit": "1"})
    inst.start()
    for _ in range(3):
        smtp = StdioSmtp(bs_argv(inst, None))
        assert smtp.reply().startswith("220 ")
        assert smtp.send("QUIT") == "221 2.0.0 Bye"
        assert smtp.close() == 0
    assert "limit exceeded" not in inst.log() and "problem talking" not in inst.log()


def test_a_reload_with_an_old_session_open_greets_new_clients(new_instance) -> None:  # type: ignore[no-untyped-def]
    """anvil is one process: a session of the old generation that stays open after a
    reload must not keep the old anvil running, or the new smtpd waits for the new anvil
    and new clients for their greeting until that session ends (Postfix's anvil exits
    at once when master reloads; smtpd reconnects)."""
    inst = new_instance(settings=NOT_EXEMPT)
    inst.start()
    with connection(inst) as (held, first):
        assert first.startswith("220 ")
        [old_anvil] = wait_until(lambda: inst.daemons().get("anvil", []), what="anvil to start")
        inst.postfix("reload")
        inst.wait_log(r"postfix/master\[\d+\]: reload")
        with socket.create_connection(("127.0.0.1", inst.port), timeout=15) as new:
            assert new.makefile("rb").readline().startswith(b"220 ")
        wait_until(lambda: not os.path.exists(f"/proc/{old_anvil}"), 15,
                   what="the old anvil to exit")
        held.sendall(b"NOOP\r\n")  # the old session goes on
        assert held.makefile("rb").readline().startswith(b"250 ")
