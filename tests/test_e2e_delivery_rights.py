"""End to end: whose rights local and virtual deliver with, and what they hand over (root only).

Real instances (harness.Instance) with throw-away accounts whose homes lie
under the instance directory (test_e2e_forward's ``make_user``); each test
sends over SMTP and checks the log, the files a command wrote and the files
on disk.
"""

from __future__ import annotations

import os
import pwd
import re
from pathlib import Path

import pytest
from harness import Instance, wait_until
from test_e2e_forward import BODY, inst, make_user, write_forward  # noqa: F401  (fixtures)
from test_e2e_virtual import MESSAGE, _virtual

pytestmark = pytest.mark.root


def _descriptors(listing: Path) -> dict[int, str]:
    """``ls -l /proc/self/fd`` output: descriptor -> what it refers to."""
    out = {}
    for line in listing.read_text().splitlines():
        m = re.search(r" (\d+) -> (.*)$", line)
        if m:
            out[int(m.group(1))] = m.group(2)
    return out


def test_a_users_command_holds_no_descriptor_of_local(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """A .forward command runs as the user with its standard input, output and error
    only: not local's listening socket (the user could take qmgr's delivery requests
    and answer them), master's status and flow pipes, nor local's open tables."""
    alice, home = make_user()
    write_forward(home, f'"|cat >/dev/null; exec ls -l /proc/self/fd > {home}/fds"\n')
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  r"\(delivered to command: ")
    wait_until(lambda: (home / "fds").exists(), 10, what="the command's listing")
    fds = _descriptors(home / "fds")
    assert fds[1] == f"{home}/fds"
    # 0 and 2: local's pipes to the command; 3: ls's own listing of /proc/self/fd
    assert set(fds) == {0, 1, 2, 3}, fds


def test_alias_rules_that_copy_the_address_are_skipped(inst: Instance) -> None:  # noqa: F811
    """Postfix opens alias_maps with DICT_FLAG_NO_REGSUB: a pcre or regexp rule whose
    result uses $1 is skipped with a warning, so that a sender's address never becomes
    part of a command (here as default_privs, through /bin/sh) or a file name. The
    table's other rules still work; the recipient it would have matched is unknown."""
    shared = inst.base / "shared"
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    rules = inst.write("etc/aliases.pcre",
                       f'/^(.+)-run$/ "|cat >/dev/null; echo $1 > {shared}/ran"\n'
                       f'/^list$/ "|cat > {shared}/list"\n'
                       f'/^(.+)-save$/ {shared}/$1\n')
    inst.set(alias_maps=f"hash:{inst.config_dir / 'aliases'}, pcre:{rules}",
             local_recipient_maps="")  # smtpd asks pattern tables the full address only
    inst.start()
    # sh -c would run "touch {shared}/pwned"; the file name would leave shared/
    for rcpt in (f"x;touch {shared}/pwned;-run", "../../etc/x-save"):
        qid = inst.send("sender@example.org", f'"{rcpt}"@localhost', BODY)
        inst.wait_log(rf"{qid}: to=<\"?{re.escape(rcpt)}\"?@localhost>, relay=local, .*dsn=5\.1\.1, "
                      rf"status=bounced \(unknown user: \"{re.escape(rcpt)}\"\)")
    for line in (1, 3):
        inst.wait_log(rf"postfix/local\[\d+\]: warning: pcre map {re.escape(str(rules))}, "
                      rf"line {line}: regular expression substitution is not allowed: "
                      r"skipping this rule")
    qid = inst.send("sender@example.org", "list@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<list@localhost>, relay=local, .*status=sent "
                  r"\(delivered to command: ")
    wait_until(lambda: (shared / "list").exists(), 10, what="the list command's output")
    assert sorted(p.name for p in shared.iterdir()) == ["list"]


def test_virtual_rules_that_copy_the_address_are_skipped(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix opens virtual_mailbox_maps (and the uid and gid tables) with
    DICT_FLAG_NO_REGSUB: a rule that builds the mailbox path from the address is
    skipped with a warning, so "../../escape"@example.com cannot choose a path outside
    virtual_mailbox_base; the address is then unknown to virtual."""
    vinst, base = _virtual(new_instance)
    vinst.stop()
    rules = vinst.write("etc/vmailbox.pcre", "/^alice@example\\.com$/ example.com/alice/\n"
                                            "/^(.+)@example\\.com$/ example.com/$1/\n")
    vinst.set(virtual_mailbox_maps=f"pcre:{rules}")
    vinst.start()
    os.chmod(vinst.base, 0o777)  # the mapped uid could make the escaping Maildir here
    qid = vinst.send("carol@example.org", '"../../escape"@example.com', MESSAGE)
    vinst.wait_log(rf"{qid}: to=<\"\.\./\.\./escape\"@example\.com>, relay=virtual, .*dsn=5\.1\.1, "
                  r"status=bounced \(unknown user: \"\.\./\.\./escape@example\.com\"\)")
    vinst.wait_log(rf"postfix/virtual\[\d+\]: warning: pcre map {re.escape(str(rules))}, line 2: "
                  r"regular expression substitution is not allowed: skipping this rule")
    qid = vinst.send("carol@example.org", "alice@example.com", MESSAGE)
    vinst.wait_log(rf"{qid}: to=<alice@example\.com>, relay=virtual, .*status=sent "
                  r"\(delivered to maildir\)")
    assert not (vinst.base / "escape").exists()
    assert sorted(p.name for p in base.iterdir()) == ["example.com"]


def test_virtual_owner_ids_and_paths_are_checked_as_postfix(new_instance) -> None:  # type: ignore[no-untyped-def]
    """Postfix's virtual takes an owner id only as a whole decimal number below
    (uid_t) -1 (sane_strtoul; "5000abc" was read as 5000), and refuses a mailbox name
    that climbs out of virtual_mailbox_base with /../: each defers, 4.3.5, with
    Postfix's warning, and nothing is written."""
    vinst, base = _virtual(new_instance)
    vinst.stop()
    names = ("dotdot", "trail", "huge", "minus", "gtrail")
    mailboxes = vinst.write("etc/vmailbox", "".join(
        f"{n}@example.com example.com/{n}/\n" for n in names if n != "dotdot")
        + "dotdot@example.com example.com/../../outside/\nalice@example.com example.com/alice/\n")
    uids = vinst.write("etc/vuids", "trail@example.com 5000abc\nhuge@example.com 4294967296\n"
                                    "minus@example.com -4294962296\n@example.com 5000\n")
    gids = vinst.write("etc/vgids", "gtrail@example.com 5000x\n@example.com 5000\n")
    vinst.set(virtual_mailbox_maps=f"texthash:{mailboxes}", virtual_uid_maps=f"texthash:{uids}",
              virtual_gid_maps=f"texthash:{gids}")
    vinst.start()
    warnings = {"dotdot": "bad mailbox path example.com/../../outside/ in virtual_mailbox_maps",
                "trail": "bad uid 5000abc in virtual_uid_maps",
                "huge": "bad uid 4294967296 in virtual_uid_maps",
                "minus": "bad uid -4294962296 in virtual_uid_maps",
                "gtrail": "bad gid 5000x in virtual_gid_maps"}
    for name in names:
        qid = vinst.send("carol@example.org", f"{name}@example.com", MESSAGE)
        vinst.wait_log(rf"postfix/virtual\[\d+\]: warning: recipient {name}@example\.com: "
                       rf"{re.escape(warnings[name])}$")
        vinst.wait_log(rf"{qid}: to=<{name}@example\.com>, relay=virtual, .*dsn=4\.3\.5, "
                       r"status=deferred \(mail system configuration error\)")
    qid = vinst.send("carol@example.org", "alice@example.com", MESSAGE)
    vinst.wait_log(rf"{qid}: to=<alice@example\.com>, relay=virtual, .*status=sent")
    assert not (vinst.base / "outside").exists()
    assert sorted(p.name for p in (base / "example.com").iterdir()) == ["alice"]


def test_mail_is_never_appended_to_an_executable_file(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Postfix's deliver_file refuses a /file destination with an execute bit (5.7.1
    "file is executable"): a message appended to a script runs as whoever runs it.
    The script is left as it was; a plain file beside it takes the mail."""
    alice, home = make_user()
    script = home / "hook.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o750)
    os.chown(script, pwd.getpwnam(alice).pw_uid, -1)
    write_forward(home, f"{script}\n")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*dsn=5\.7\.1, status=bounced "
                  rf"\(cannot append message to file {re.escape(str(script))}: file is executable\)")
    assert script.read_text() == "#!/bin/sh\necho hello\n"
    script.chmod(0o640)
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  rf"\(delivered to file: {re.escape(str(script))}\)")
    assert script.read_text().endswith("\nhello\n\n")


def test_home_mailbox_is_always_below_the_home_directory(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """Postfix appends home_mailbox to the home directory whatever it starts with
    ("$HOME/" + "/Mailbox"): a leading slash never makes every user's mail go to one
    file outside the homes (os.path.join dropped the home directory)."""
    alice, home = make_user()
    inst.set(home_mailbox="/Mailbox")
    inst.start()
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, relay=local, .*status=sent "
                  r"\(delivered to mailbox\)")
    box = home / "Mailbox"
    assert box.read_bytes().startswith(b"From sender@example.org  ")
    assert box.stat().st_uid == pwd.getpwnam(alice).pw_uid
    assert not Path("/Mailbox").exists()


def test_maildir_links_into_another_users_maildir_get_nothing(inst: Instance, make_user) -> None:  # type: ignore[no-untyped-def]  # noqa: F811
    """home_mailbox Maildirs are written with the recipient's ids only: a user whose
    Maildir/tmp and Maildir/new lead into another user's Maildir, or whose Maildir
    itself is a link to it, gets a failed delivery, and the other Maildir is untouched."""
    alice, alice_home = make_user()
    bob, bob_home = make_user()
    inst.set(home_mailbox="Maildir/")
    inst.start()
    qid = inst.send("sender@example.org", f"{bob}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{bob}@localhost>, .*status=sent \(delivered to maildir\)")
    bobs = bob_home / "Maildir"
    before = sorted(str(p.relative_to(bobs)) for p in bobs.rglob("*"))
    alices = alice_home / "Maildir"
    alices.mkdir()
    (alices / "cur").mkdir()
    (alices / "tmp").symlink_to(bobs / "tmp")
    (alices / "new").symlink_to(bobs / "new")
    for path in (alices, alices / "cur", alices / "tmp", alices / "new"):
        os.lchown(path, pwd.getpwnam(alice).pw_uid, -1)
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=bounced \(maildir delivery "
                  rf"failed: create maildir file {re.escape(str(alices))}/tmp/\S+: Permission denied\)")
    for path in (alices / "tmp", alices / "new", alices / "cur", alices):
        path.unlink() if path.is_symlink() else path.rmdir()
    alices.symlink_to(bobs)
    os.lchown(alices, pwd.getpwnam(alice).pw_uid, -1)
    qid = inst.send("sender@example.org", f"{alice}@localhost", BODY)
    inst.wait_log(rf"{qid}: to=<{alice}@localhost>, .*status=bounced \(maildir delivery failed")
    assert sorted(str(p.relative_to(bobs)) for p in bobs.rglob("*")) == before
