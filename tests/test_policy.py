"""Policy delegation (check_policy_service) end to end: Debian's postgrey over inet:, a
command run by the spawn service over unix:, and an unreachable server's default action."""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port, listening, wait_until

SENDER = "alice@example.org"

POLICY_SCRIPT = """#!/bin/sh
# A policy server for the spawn service: one reply per request, many requests per connection.
rcpt=
while read -r line; do
    case "$line" in
        recipient=*) rcpt=${line#recipient=} ;;
        "") case "$rcpt" in
                *+no@*) echo "action=REJECT spawned policy says no" ;;
                *) echo "action=DUNNO" ;;
            esac
            echo ;;
    esac
done
"""


@pytest.fixture
def postgrey() -> Iterator[int]:
    """Debian's postgrey on a free loopback port, greylisting for 2 seconds."""
    path = require_tool("/usr/sbin/postgrey")
    dbdir = tempfile.mkdtemp(prefix="pymailsys-postgrey-")
    port = free_port()
    argv = [path, f"--inet=127.0.0.1:{port}", f"--dbdir={dbdir}", "--delay=2"]
    if os.geteuid() == 0:
        shutil.chown(dbdir, "postgrey")
        argv += ["--user=postgrey", "--group=nogroup"]
    else:  # postgrey switches to its own user unless told to stay
        argv += [f"--user={pwd.getpwuid(os.getuid()).pw_name}",
                 f"--group={grp.getgrgid(os.getgid()).gr_name}"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    try:
        wait_until(lambda: listening(port), 30, what="postgrey")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(dbdir, ignore_errors=True)


def test_postgrey_greylists_then_accepts(new_instance, postgrey) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    inst.set(smtpd_recipient_restrictions=f"check_policy_service inet:127.0.0.1:{postgrey}, "
             "permit_mynetworks, reject_unauth_destination")
    inst.start()
    rcpt = f"{ME}@localhost"
    with inst.smtp() as c:
        c.ehlo()
        c.mail(SENDER)
        code, text = c.rcpt(rcpt)
    assert code == 450, (code, text)
    assert text.startswith(f"4.2.0 <{rcpt}>: Recipient address rejected: Greylisted".encode())
    inst.wait_log(rf"NOQUEUE: reject: RCPT from localhost\[127\.0\.0\.1\]: 450 4\.2\.0 <{ME}@"
                  r"localhost>: Recipient address rejected: Greylisted")
    deadline = time.monotonic() + 60
    while True:  # the retry after postgrey's delay gets through
        with inst.smtp() as c:
            c.ehlo()
            c.mail(SENDER)
            code, _ = c.rcpt(rcpt)
            if code == 250:
                assert c.data(b"Subject: greylisted\r\n\r\nat last\r\n")[0] == 250
                break
        assert time.monotonic() < deadline, "postgrey never let the retry through"
        time.sleep(1)
    msg = inst.wait_maildir(1)[0].decode()
    # postgrey's PREPEND action: its header above our Received:
    assert "X-Greylist: delayed " in msg.split("\nReceived: ")[0]


@pytest.mark.root
def test_spawned_policy_server_and_default_action(new_instance) -> None:  # type: ignore[no-untyped-def]
    inst: Instance = new_instance()
    script = inst.write("etc/policy.sh", POLICY_SCRIPT)
    script.chmod(0o755)
    with open(inst.config_dir / "master.cf", "a") as f:
        f.write(f"policy unix - n n - 0 spawn user=nobody argv={script}\n")
    dead = free_port()  # nothing listens there
    # the unreachable server is asked for every recipient the table does not pass
    table = inst.write("etc/access", f"{ME}@localhost OK\n")
    inst.set(smtpd_recipient_restrictions="check_policy_service unix:private/policy, "
             f"check_recipient_access texthash:{table}, check_policy_service "
             f"inet:127.0.0.1:{dead}, permit_mynetworks, reject_unauth_destination",
             smtpd_policy_service_try_limit="1", policy_time_limit="60s")
    inst.start()
    with inst.smtp() as c:
        c.ehlo()
        c.mail(SENDER)
        assert c.rcpt(f"{ME}+no@localhost") == (
            554, f"5.7.1 <{ME}+no@localhost>: Recipient address rejected: spawned policy says "
                 "no".encode())
        assert c.rcpt(f"{ME}@localhost")[0] == 250  # same connection to the policy server
        assert c.rcpt(f"{ME}+dead@localhost") == (
            451, f"4.3.5 <{ME}+dead@localhost>: Recipient address rejected: Server "
                 "configuration problem".encode())
    inst.wait_log(rf"warning: problem talking to server inet:127\.0\.0\.1:{dead}: ")


def test_spawn_command_attributes() -> None:
    from pymailsys.daemons import spawn

    from pymailsys import config
    cfg = config.Config("/nonexistent", {"mail_owner": "postfix"})
    user, argv = spawn.command_attributes(
        ["user=nobody", "argv=/bin/sh", "-c", "{", "echo", "hi", "}", "{x}"], cfg)
    assert user.name == "nobody" and argv == ["/bin/sh", "-c", "echo hi", "x"]
    for words, why in ((["user=root", "argv=/bin/true"], "as root"),
                       (["argv=/bin/true"], "missing user="),
                       (["user=nobody"], "missing argv="),
                       (["user=nobody", "argv=/bin/sh", "{", "x"], "missing '}'"),
                       (["user=nosuchuser-pms", "argv=/bin/true"], "unknown user name")):
        with pytest.raises(ValueError, match=why):
            spawn.command_attributes(words, cfg)
