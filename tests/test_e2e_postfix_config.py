"""An administrator's Debian Postfix main.cf and master.cf start unchanged and deliver.

Debian's files (chroot y, tlsmgr, TLS parameters we do not use yet, services we have
not built) are taken as they are; only the paths of the throw-away instance and the
SMTP port are set after them.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from harness import ME, Instance

DEBIAN = Path("/usr/share/postfix")
MASTER_CF = Path("/etc/postfix/master.cf")


def test_debian_main_cf_and_master_cf_start_and_deliver(new_instance) -> None:  # type: ignore[no-untyped-def]
    sources = [DEBIAN / "main.cf.debian", DEBIAN / "main.cf.tls", MASTER_CF]
    missing = [str(p) for p in sources if not p.exists()]
    if missing:
        pytest.fail(f"Debian's postfix package is needed (scripts/check installs it): {missing}")
    inst: Instance = new_instance(maildir=True)
    ours = (inst.config_dir / "main.cf").read_text()
    debian_main = (DEBIAN / "main.cf.debian").read_text() + (DEBIAN / "main.cf.tls").read_text()
    debian_main += ("myhostname = mail.example.org\n"
                    "alias_maps = hash:/etc/aliases\nalias_database = hash:/etc/aliases\n"
                    "mydestination = $myhostname, localhost.localdomain, localhost\n"
                    "relayhost =\nmynetworks = 127.0.0.0/8 [::ffff:127.0.0.0]/104 [::1]/128\n"
                    "mailbox_size_limit = 0\nrecipient_delimiter = +\n"
                    "inet_interfaces = all\ninet_protocols = all\n")
    # Debian's settings first; the instance's paths and addresses after them win
    (inst.config_dir / "main.cf").write_text(debian_main + ours)
    master = MASTER_CF.read_text()
    master, n = re.subn(r"(?m)^smtp(\s+inet\s)", rf"127.0.0.1:{inst.port}\1", master)
    assert n == 1
    (inst.config_dir / "master.cf").write_text(master)
    inst.start()
    queue_id = inst.send("alice@example.org", f"{ME}+box@localhost", b"Subject: debian\r\n\r\nhi\r\n")
    (delivered,) = inst.wait_maildir(1)
    assert b"\nSubject: debian\n" in delivered and delivered.endswith(b"\n\nhi\n")
    inst.wait_log(rf"{queue_id}: to=<{ME}\+box@localhost>, .*status=sent")
    assert "fatal:" not in inst.log()
    # chroot is not applied yet: said once, naming the services
    inst.wait_log(r"postfix/master\[\d+\]: warning: \S+/master\.cf: the chroot column is not "
                  r"supported yet; these services run without chroot: .*\bcleanup/unix\b")
    assert inst.postfix("status").returncode == 0


def test_myorigin_names_a_file_as_in_debians_main_cf(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Debian's main.cf says ``myorigin = /etc/mailname``: Debian's Postfix takes the
    file's first line, blanks trimmed, and stops (fatal) when it is missing or
    empty (checked against Debian's Postfix 3.7); pymailsys took the file name for
    the domain (mail from <bob@/etc/mailname>)."""
    inst: Instance = new_instance(maildir=True)
    mailname = inst.write("etc/mailname", "  Origin.Example  \nsecond\n")
    inst.set(myorigin=str(mailname))
    inst.start()
    with inst.smtp() as c:
        c.sendmail("bob", [f"{ME}@localhost"], b"Subject: origin\r\n\r\nhi\r\n")
    (message,) = inst.wait_maildir(1)
    assert message.startswith(b"Return-Path: <bob@Origin.Example>\n"), message[:200]
    inst.stop()
    mailname.unlink()
    result = inst.postfix("check", check=False)
    assert result.returncode == 1
    assert f"{mailname}: cannot open file: No such file or directory" in result.stderr, \
        result.stderr
    mailname.write_text("\n")
    result = inst.postfix("check", check=False)
    assert result.returncode == 1
    assert f"myorigin file {mailname} is empty" in result.stderr, result.stderr
