"""End to end: a command that local runs for mail submitted with SMTP AUTH sees
SASL_METHOD and SASL_USERNAME, as Postfix's local exports them (local(8) EXTERNAL
COMMAND DELIVERY): smtpd hands them to cleanup, cleanup records them in the queue
file, local reads them there. Uses test_smtpd_sasl's stock submission service with
Dovecot's auth server (root only, as that fixture).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from harness import Instance
from test_smtpd_sasl import PASSWORD, submission, swaks  # noqa: F401

pytestmark = pytest.mark.root


def test_command_environment_has_the_sasl_login(submission) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    inst: Instance
    inst, port, _ = submission
    out = Path(tempfile.mkdtemp(prefix="local-sasl-env-"))
    os.chmod(out, 0o1777)  # the alias command writes as default_privs
    try:
        # before the first delivery: no local process has read the aliases yet
        inst.write("etc/aliases", f"envtest: \"|/bin/sh -c 'env > {out}/env'\"\n")
        inst.tool("newaliases", check=True)
        result = swaks(port, "--tls", "--auth", "PLAIN", "--auth-user", "alice",
                       "--auth-password", PASSWORD, "--to", "envtest@localhost",
                       "--header", "Subject: authenticated")
        assert result.returncode == 0, result.stdout + result.stderr
        inst.wait_log(r"\w+: to=<envtest@localhost>, relay=local, .*status=sent")
        env = dict(entry.split("=", 1) for entry in (out / "env").read_text().splitlines()
                   if "=" in entry)
        assert (env["SASL_METHOD"], env["SASL_USERNAME"]) == ("PLAIN", "alice")
        assert "SASL_SENDER" not in env  # no AUTH= in MAIL FROM
        assert env["CLIENT_ADDRESS"] == "127.0.0.1"
    finally:
        shutil.rmtree(out, ignore_errors=True)
