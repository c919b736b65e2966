"""Debian's Postfix as a scratch instance: a receiving MTA, or a reference to compare with.

``PostfixPeer(port)`` writes a configuration of its own (``postconf -c DIR`` sees it)
under a new directory in /tmp: its own queue_directory and data_directory, smtpd on
127.0.0.1:port only, no chroot, its log in DIR/maillog (postlogd, ``log_path``), local
mail in DIR/mail/ (mail_spool_directory). As a receiving MTA (the default settings) it
delivers the domains remote.example and other.example by Postfix's virtual(8) into one
Maildir, DIR/vmail/mail/, with Return-Path: and Delivered-To: carrying the envelope;
``settings`` replace those (``{"myhostname": ..., "relayhost": ...}``), and ``aliases``
become its alias table. ``start`` runs ``postfix -c DIR start`` and waits for the
greeting; with ``tls_key_cert`` it offers STARTTLS with that key and certificate.
``stop`` runs ``postfix -c DIR stop`` and removes the directory. It needs root
(Postfix's master), as CI runs.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from harness import wait_until

DOMAINS = ("remote.example", "other.example")

_MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
relay unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""


class PostfixPeer:
    def __init__(self, port: int, tls_key_cert: tuple[Path, Path] | None = None,
                 settings: dict[str, str] | None = None, aliases: str | None = None) -> None:
        self.port = port
        self.dir = Path(tempfile.mkdtemp(prefix="postfix-peer-", dir="/tmp"))
        os.chmod(self.dir, 0o755)
        self.etc = self.dir / "etc"
        self.etc.mkdir()
        self.vmail = self.dir / "vmail"
        self.vmail.mkdir()
        owner = pwd.getpwnam("postfix")
        os.chown(self.vmail, owner.pw_uid, owner.pw_gid)
        grp.getgrnam("postdrop")  # Debian's postfix package made it
        (self.dir / "spool").mkdir()  # postfix start makes what is below it
        (self.dir / "data").mkdir()
        os.chown(self.dir / "data", owner.pw_uid, owner.pw_gid)
        (self.dir / "mail").mkdir()
        os.chmod(self.dir / "mail", 0o1777)
        self.log_path = self.dir / "maillog"
        if settings is None:  # a receiving MTA for remote.example and other.example
            settings = {
                "myhostname": "peer.example",
                "mydestination": "",
                "mynetworks": "127.0.0.0/8",
                "virtual_mailbox_domains": ", ".join(DOMAINS),
                "virtual_mailbox_base": str(self.vmail),
                "virtual_mailbox_maps": "static:mail/",
                "virtual_uid_maps": f"static:{owner.pw_uid}",
                "virtual_gid_maps": f"static:{owner.pw_gid}",
                "smtputf8_enable": "yes",
            }
        self.myhostname = settings.get("myhostname", "peer.example")
        tables = f"hash:{self.etc}/aliases" if aliases is not None else ""
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.dir / "spool"),
            "data_directory": str(self.dir / "data"),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "maillog_file": str(self.log_path),
            "maillog_file_prefixes": str(self.dir),
            "mail_spool_directory": str(self.dir / "mail") + "/",
            "alias_maps": tables,
            "alias_database": tables,
            **settings,
        }
        if tls_key_cert is not None:  # STARTTLS offered (smtpd_tls_security_level = may)
            key, cert = (str(shutil.copy(p, self.etc)) for p in tls_key_cert)
            main_cf.update(smtpd_tls_security_level="may", smtpd_tls_key_file=key,
                           smtpd_tls_cert_file=cert, smtpd_tls_loglevel="1")
        (self.etc / "main.cf").write_text("".join(f"{k} = {v}\n" for k, v in main_cf.items()))
        (self.etc / "master.cf").write_text(_MASTER_CF.format(port=port))
        if aliases is not None:
            (self.etc / "aliases").write_text(aliases)
            subprocess.run(["/usr/sbin/postalias", "-c", str(self.etc), f"{self.etc}/aliases"],
                           check=True, timeout=60)

    def postfix(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(["/usr/sbin/postfix", "-c", str(self.etc), *args],
                              capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        done = self.postfix("start")
        if done.returncode != 0:
            raise RuntimeError(f"postfix start: {done.stderr}{done.stdout}")
        wait_until(self._greets, 30, what="Debian's Postfix listening")
        self.wait_log(r"postfix/smtpd\[\d+\]: disconnect from")  # the probe is in the log

    def _greets(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
                return s.recv(100).startswith(f"220 {self.myhostname}".encode())
        except OSError:
            return False

    def stop(self) -> None:
        self.postfix("stop")
        pid_file = self.dir / "spool" / "pid" / "master.pid"
        wait_until(lambda: not pid_file.exists() or not _alive(pid_file), 30,
                   what="Postfix's master gone")
        shutil.rmtree(self.dir, ignore_errors=True)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def queue_empty(self) -> bool:
        spool = self.dir / "spool"
        return not any(files for queue in ("incoming", "active", "deferred", "maildrop")
                       for _, _, files in os.walk(spool / queue))

    def wait_log(self, pattern: str, count: int = 1) -> list[str]:
        def found() -> list[str]:
            lines = re.findall(rf"^.*{pattern}.*$", self.log(), re.M)
            return lines if len(lines) >= count else []
        return wait_until(found, 60, what=f"Postfix log line /{pattern}/")

    def messages(self) -> list[bytes]:
        new = self.vmail / "mail" / "new"
        return [p.read_bytes() for p in sorted(new.iterdir())] if new.exists() else []


def _alive(pid_file: Path) -> bool:
    try:
        os.kill(int(pid_file.read_text().split()[0]), 0)
    except (OSError, ValueError, IndexError):
        return False
    return True
