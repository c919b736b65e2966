"""mailbox_transport (or mailbox_transport_maps, or fallback_transport_maps for a user that
is no account) = lmtp:unix:... to Dovecot's LMTP server; the message read back over IMAP.

The test runs its own Dovecot (Debian's dovecot-lmtpd and dovecot-imapd) from
a configuration under a temporary directory: an LMTP listener on a Unix
socket there, IMAP on a free loopback port, a static user database storing
every user's mail as Maildir under the directory. Root only: Dovecot's
master runs as root and drops to its own users.
"""

from __future__ import annotations

import email
import email.policy
import imaplib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import require_tool
from harness import ME, Instance, free_port, stop_process, wait_until

pytestmark = pytest.mark.root

PASSWORD = "secret"


class Dovecot:
    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="dovecot-"))
        os.chmod(self.dir, 0o755)
        self.lmtp = self.dir / "lmtp"
        self.imap_port = free_port()
        (self.dir / "mail").mkdir()
        shutil.chown(self.dir / "mail", "nobody", "nogroup")
        self.conf = self.dir / "dovecot.conf"
        self.conf.write_text(f"""
base_dir = {self.dir}/run
state_dir = {self.dir}/state
log_path = {self.dir}/dovecot.log
protocols = imap lmtp
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
mail_location = maildir:{self.dir}/mail/%n
first_valid_uid = 1
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={self.dir}/mail/%n
}}
service lmtp {{
  unix_listener {self.lmtp} {{
    mode = 0666
  }}
}}
service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {self.imap_port}
  }}
}}
service stats {{
  unix_listener stats-reader {{
    mode = 0600
  }}
  unix_listener stats-writer {{
    mode = 0600
  }}
}}
""")
        self.proc = subprocess.Popen([require_tool("/usr/sbin/dovecot"), "-F", "-c",
                                      str(self.conf)], stdout=subprocess.DEVNULL)
        wait_until(self.lmtp.exists, 30, what="Dovecot's LMTP socket")

    def log(self) -> str:
        try:
            return (self.dir / "dovecot.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        stop_process(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def dovecot() -> Iterator[Dovecot]:
    d = Dovecot()
    yield d
    d.stop()


@pytest.mark.parametrize("setting", ["mailbox_transport", "mailbox_transport_maps",
                                     "fallback_transport_maps"])
def test_mailbox_transport_lmtp_to_dovecot_read_back_over_imap(new_instance, dovecot,  # type: ignore[no-untyped-def]
                                                               setting: str) -> None:
    inst: Instance = new_instance()
    transport = f"lmtp:unix:{dovecot.lmtp}"
    user = ME
    if setting == "mailbox_transport":
        inst.set(mailbox_transport=transport)
    elif setting == "mailbox_transport_maps":  # the user name is the key
        inst.set(mailbox_transport_maps=f"inline:{{ {ME}={transport} }}")
    else:  # a user that is no account: smtpd must let it through
        user = "ghost"
        inst.set(fallback_transport_maps=f"inline:{{ ghost={transport} }}",
                 local_recipient_maps="")
    inst.start()
    rcpt = f"{user}@localhost"
    body = "Grüße über LMTP\r\n".encode()
    queue_id = inst.send("alice@example.org", rcpt,
                         b"Subject: into the store\r\nMessage-ID: <dc1@example.org>\r\n\r\n" + body)
    inst.wait_log(rf"postfix/lmtp\[\d+\]: {queue_id}: to=<{rcpt}>, relay=\S+"
                  rf"\[{dovecot.lmtp}\], delay=.*dsn=2\.0\.0, status=sent \(250 2\.0\.0 <{rcpt}> "
                  rf"\S+ Saved\)")

    def fetched() -> bytes:
        with imaplib.IMAP4("127.0.0.1", dovecot.imap_port) as imap:
            imap.login(user, PASSWORD)
            imap.select("INBOX")
            _typ, data = imap.search(None, "ALL")
            ids = data[0].split()
            if not ids:
                return b""
            _typ, parts = imap.fetch(ids[0], "(RFC822)")
            envelope_and_message = parts[0]  # (b'1 (RFC822 {size}', the message)
            assert isinstance(envelope_and_message, tuple)
            return envelope_and_message[1]

    raw = wait_until(fetched, 30, what="the message in Dovecot's INBOX")
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["Subject"] == "into the store"
    assert msg["Message-ID"] == "<dc1@example.org>"
    assert raw.endswith(body)
