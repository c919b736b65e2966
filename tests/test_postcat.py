"""postcat: byte-identical to Debian's postcat on the same queue files; -q searches the queues."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require_tool
from qf_helpers import make_spool, queue_file, tool

from pymailsys.queue.queue_file import QueueFileBuilder

DEBIAN_POSTCAT = "/usr/sbin/postcat"


def build_sample(path: Path) -> None:
    b = QueueFileBuilder(1795594109.25)
    b.content_filter("scan:[127.0.0.1]:10025")  # L: content_filter outside the content
    b.attr("rewrite_context", "local")
    b.full_name("Joe User")
    b.sender("joe@example.org")
    b.attr("log_client_name", "localhost")
    b.recipient("bob@example.net", orig="Bob@example.net", notify=6,
                dsn_orcpt="rfc822;bob@example.net")
    b.recipient("carol@example.net")
    for line in [b"Subject: test", b"From: joe@example.org", b"X-Long: " + b"a" * 5000,
                 b" folded", b"", b"body line", b"b" * 3000, b"\xe9t\xe9", b"."]:
        b.line(line)
    b.content_filter("smtp:[127.0.0.1]:10026", extracted=True)
    b.extracted_attr("encoding", "7bit")
    path.write_bytes(b.build())


@pytest.mark.parametrize("flags", [[], ["-e"], ["-h"], ["-b"], ["-bh"], ["-eb"], ["-o"], ["-d"],
                                   ["-eo"], ["-v"], ["-hv"], ["-bo"]])
def test_output_matches_debian_postcat(tmp_path: Path, flags: list[str]) -> None:
    debian = require_tool(DEBIAN_POSTCAT)
    pf = tmp_path / "pf"
    pf.mkdir()
    (pf / "main.cf").write_text("")
    sample = tmp_path / "qf"
    build_sample(sample)
    import subprocess

    theirs = subprocess.run([debian, "-c", str(pf), *flags, str(sample)], capture_output=True)
    ours = tool("postcat", "-c", str(pf), *flags, str(sample))
    assert ours.returncode == theirs.returncode == 0
    assert ours.stdout == theirs.stdout


def test_q_finds_message_in_its_queue(tmp_path: Path) -> None:
    etc, spool = make_spool(tmp_path)
    qid = queue_file(spool, "deferred", "alice@example.org", ["bob@example.net"],
                     [b"Subject: hello", b"", b"the text"])
    out = tool("postcat", "-c", str(etc), "-q", qid)
    assert out.returncode == 0, out.stderr
    text = out.stdout.decode()
    assert f"*** ENVELOPE RECORDS deferred/{qid[0]}/{qid} ***" in text
    assert "sender: alice@example.org" in text
    assert "recipient: bob@example.net" in text
    assert "the text" in text
    missing = tool("postcat", "-c", str(etc), "-q", "ABCDEF123")
    assert missing.returncode == 1
    assert b"postcat: fatal: open queue file ABCDEF123: No such file or directory" in missing.stderr


def test_foreign_input_is_refused_with_a_warning(tmp_path: Path) -> None:
    (tmp_path / "main.cf").write_text("")
    junk = tmp_path / "junk"
    junk.write_bytes(b"hello world\n")
    out = tool("postcat", "-c", str(tmp_path), str(junk))
    assert out.stdout == b""
    assert b"input is not a valid queue file" in out.stderr
