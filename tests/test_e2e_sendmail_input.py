"""sendmail as programs call it, against a running instance: the delivered bytes, the exit
status and stderr, compared with what Debian's Postfix 3.7 sendmail does with the same input."""

from __future__ import annotations

import re

import pytest
from harness import ME, Instance, wait_until

pytestmark = pytest.mark.root

USAGE = 75  # sendmail's exit status for a usage error, as Debian's Postfix 3.7


def _delivered(inst: Instance, marker: bytes) -> bytes:
    """The one delivered message holding ``marker`` (a bounce notice quoting it aside)."""
    def hit() -> bytes:
        found = [m for m in inst.maildir_messages()
                 if marker in m and not m.startswith(b"Return-Path: <>")]
        return found[0] if found else b""

    return wait_until(hit, 60, what=f"a message with {marker!r} in the Maildir")


def _after_received(msg: bytes) -> bytes:
    """What follows our Received: header (the message as sendmail's input made it)."""
    m = re.search(rb"^Received: .*\n(?:[ \t].*\n)*", msg, re.M)
    assert m, msg[:300]
    return msg[m.end():]


NO_SEPARATOR = [  # input, and what follows Message-Id and Date in the delivered message
    (b"no headers at all (nohdr)\njust body\n",
     b"\n\nno headers at all (nohdr)\njust body\n"),
    (b"Subject: noblank\nthis is not a header line (noblank)\nmore\n",
     b"\n\nthis is not a header line (noblank)\nmore\n"),
    (b" leading space line (leadsp)\nSubject: x\n\nbody\n",
     b"\n\n leading space line (leadsp)\nSubject: x\n\nbody\n"),
]


@pytest.mark.parametrize("checks", [False, True], ids=["plain", "header_checks"])
def test_a_header_block_ended_by_a_text_line_gets_an_empty_line(new_instance, checks) -> None:  # type: ignore[no-untyped-def]
    """A message whose headers are not followed by an empty line (or that has none): the
    first line that is no header starts the body, and Postfix's cleanup puts an empty line
    before it. The line used to follow the added From: header directly, in the header
    block, where a mail reader takes it for a broken header (or drops it)."""
    inst: Instance = new_instance(maildir=True)
    if checks:  # the MIME-aware path of cleanup
        table = inst.write("etc/header_checks", "/^X-Never:/ IGNORE\n")
        inst.set(header_checks=f"regexp:{table}")
    inst.start()
    for given, _tail in NO_SEPARATOR:
        r = inst.tool("sendmail", f"{ME}@localhost", input=given)
        assert r.returncode == 0 and r.stderr == b"", r.stderr
    for given, tail in NO_SEPARATOR:
        marker = re.search(rb"\((\w+)\)", given)
        assert marker
        msg = _after_received(_delivered(inst, marker.group(0)))
        # as Postfix: Message-Id, Date, From added, an empty line, then the line
        if given.startswith(b"Subject:"):
            assert msg.startswith(b"Subject: noblank\n"), msg
        added = re.search(rb"^From: \S+ <\S+>\n", msg, re.M)
        assert added, msg
        assert msg[added.end() - 1:] == tail, msg


def test_options_end_at_the_first_recipient(new_instance) -> None:  # type: ignore[no-untyped-def]
    """As Postfix's sendmail (GETOPT with "+"): what follows the first recipient is a
    recipient too, never an option. ``-i`` after the recipient used to turn the dot rule
    off, and ``-f`` there to change the sender: a program that puts an address it was
    given after its own options could be made to run sendmail with other options."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    r = inst.tool("sendmail", f"{ME}@localhost", "-i", "-fmallory@example.com",
                  input=b"Subject: order (argorder)\n\nkept\n.\nnot read\n")
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    msg = _delivered(inst, b"(argorder)")
    assert msg.startswith(f"Return-Path: <{ME}@".encode()), msg[:200]
    assert msg.endswith(b"\nkept\n") and b"not read" not in msg, msg
    # the two arguments are recipients, refused later as Postfix does (bad address syntax)
    for arg in ("-i", "-fmallory@example.com"):
        inst.wait_log(rf"to=<{re.escape(arg)}(@\S+)?>, .*status=bounced \(bad address syntax\)")


# PHP's mail() writes To: and Subject: with LF, the caller's headers and body with CRLF
MIXED = b"To: %s@localhost\nSubject: mixed (%s)\nX-Mailer: php\r\n\r\nbody\r\nline2\r\n"


def test_line_endings_are_fixed_on_every_line_by_default(new_instance) -> None:  # type: ignore[no-untyped-def]
    """sendmail_fix_line_endings = always (Postfix's default): the CR before each LF goes,
    whatever the first line ends with. Only the first line decided (Postfix's "strict"),
    so the CRLF lines of a mail() message kept their CR: the empty line after the headers
    became a header continuation and every body line got a trailing blank."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    r = inst.tool("sendmail", "-t", input=MIXED % (ME.encode(), b"always"))
    assert r.returncode == 0 and r.stderr == b"", r.stderr
    msg = _after_received(_delivered(inst, b"(always)"))
    assert msg.startswith(f"To: {ME}@localhost\nSubject: mixed (always)\nX-Mailer: php\n".encode())
    assert re.search(rb"\nFrom: \S+ <\S+>\n\nbody\nline2\n\Z", msg), msg
    assert b"\r" not in msg

    # strict and never are obeyed: the CRs stay (cleanup turns a stray CR into a blank)
    for value in ("strict", "never"):
        inst.set(sendmail_fix_line_endings=value)
        r = inst.tool("sendmail", f"{ME}@localhost",
                      input=f"Subject: fix ({value})\n\nbody\r\n".encode())
        assert r.returncode == 0, r.stderr
        assert _delivered(inst, f"({value})".encode()).endswith(b"\n\nbody \n")
    inst.set(sendmail_fix_line_endings="sometimes")
    r = inst.tool("sendmail", f"{ME}@localhost", input=b"Subject: x\n\nbody\n")
    assert r.returncode == USAGE
    assert r.stderr == b"sendmail: fatal: invalid sendmail_fix_line_endings value: sometimes\n"


# sendmail's -q forms and what Debian's Postfix 3.7 sendmail says to each (with no message)
QUEUE_FORMS = [
    # -q alone takes no value: what follows is a recipient (was "-qx is not implemented")
    (["-q", "x@example.com"], "flush queue mode requires no recipient"),
    # -I, -b and -q change the mode in the order given: the last one counts
    (["-q", "-qRexample.com"], "-qR can be used only in delivery mode"),
    (["-qRexample.com", "-q"], "-qR can be used only in delivery mode"),
    (["-q", "-bm"], "root(0): Recipient addresses must be specified on the command line"
                    " or via the -t option"),
    (["-qR", "example.com"], "specify: -qRsitename"),
    (["-qIABC", "x@example.com"], "flush queue_id requires no recipient"),
    (["-qSexample.com"], "-qS is not implemented"),
    (["-bp", "-qRexample.com"], "-qR can be used only in delivery mode"),
]


def test_queue_run_forms_as_postfix(new_instance) -> None:  # type: ignore[no-untyped-def]
    """``sendmail -q`` took the next argument as its value (``-q x@example.com`` was "-qx is
    not implemented"), only the last -q counted (``-q -qRsite`` flushed the site, ``-qRsite
    -q`` the whole queue), and -q and -b were read apart (``-q -bm`` flushed the queue).
    As Postfix's sendmail now: -q alone is the flush mode and nothing else, the mode
    options count in their order, an interval (-q1h) given with anything ends sendmail
    quietly. The messages are Debian's Postfix 3.7 sendmail's, word for word."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    for args, says in QUEUE_FORMS:
        r = inst.tool("sendmail", *args, input=b"")
        assert (r.returncode, r.stderr) == (USAGE, f"sendmail: fatal: {says}\n".encode()), args
    for args in (["-q1h", "-qRexample.com"], ["-q30m", "x@example.com"], ["-q", "--"]):
        r = inst.tool("sendmail", *args, input=b"")
        assert (r.returncode, r.stdout, r.stderr) == (0, b"", b""), (args, r.stderr)
    # -q as the value of an option is that value: the sender here, not a queue flush
    r = inst.tool("sendmail", "-F", "-q", f"{ME}@localhost", input=b"Subject: (qname)\n\nb\n")
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    assert b"\nFrom: -q <" in _delivered(inst, b"(qname)")


def test_the_old_verp_option_is_refused_as_verp(new_instance) -> None:  # type: ignore[no-untyped-def]
    """``-V`` with two characters is Postfix 2.2's VERP request, which Postfix's sendmail
    takes as -XV (with a warning). It was taken as a DSN envelope ID here: the mail went
    without VERP and nobody was told. VERP is not implemented, so it is refused now as
    -XV is, after Postfix's warning; a longer -V value is still the envelope ID."""
    inst: Instance = new_instance(maildir=True)
    inst.start()
    for args, given in ((["-V", "+="], "-V"), (["-V+="], "-V+=")):
        r = inst.tool("sendmail", *args, f"{ME}@localhost", input=b"Subject: (verp)\n\nb\n")
        assert (r.returncode, r.stderr) == (USAGE, (
            f"sendmail: warning: option {given} is deprecated with Postfix 2.3; "
            f"specify -X{given[1:]} instead\n"
            "sendmail: fatal: unsupported: -XV\n").encode()), r.stderr
    r = inst.tool("sendmail", "-V", "envid42", "-N", "success", f"{ME}@localhost",
                  input=b"Subject: (envid)\n\nb\n")
    assert (r.returncode, r.stderr) == (0, b""), r.stderr
    _delivered(inst, b"(envid)")
    assert b"(verp)" not in b"".join(inst.maildir_messages())
