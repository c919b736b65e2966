"""postconf, run as a command: show, defaults, expansion, edits, master.cf."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from pymailsys.config import params

POSTCONF = [sys.executable, "-m", "pymailsys.tools.postconf"]


def postconf(conf, *args, env=None):
    return subprocess.run([*POSTCONF, "-c", str(conf), *args], capture_output=True, text=True,
                          timeout=60, env=env)


@pytest.fixture
def conf(tmp_path):
    (tmp_path / "main.cf").write_text(
        "# head\nmyhostname = mx.example.com\nmydomain = $myhostname\n"
        "foo = bar\nrelayhost = [relay]:25 # not a comment\n\n#tail\n")
    return tmp_path


def test_queries_and_unknown(conf):
    p = postconf(conf, "mydomain", "nosuch", "relayhost")
    assert p.returncode == 0
    assert p.stdout == "mydomain = $myhostname\nrelayhost = [relay]:25 # not a comment\n"
    assert "postconf: warning: nosuch: unknown parameter" in p.stderr
    assert f"postconf: warning: {conf}/main.cf: unused parameter: foo=bar" in p.stderr


def test_expand_and_values_only(conf):
    assert postconf(conf, "-x", "mydomain").stdout == "mydomain = mx.example.com\n"
    assert postconf(conf, "-h", "mydomain").stdout == "$myhostname\n"
    assert postconf(conf, "-xh", "myorigin").stdout == "mx.example.com\n"
    assert postconf(conf, "-H", "mydomain").stdout == "mydomain\n"
    assert postconf(conf, "relay_transport", "recipient_delimiter").stdout == (
        "relay_transport = relay\nrecipient_delimiter =\n")


def test_nondefault(conf):
    p = postconf(conf, "-n")
    assert p.stdout == (f"config_directory = {conf}\nmydomain = $myhostname\n"
                        "myhostname = mx.example.com\nrelayhost = [relay]:25 # not a comment\n")


def test_all_sorted(conf):
    lines = postconf(conf).stdout.splitlines()
    names = [line.split(" =")[0] for line in lines]
    assert names == sorted(names)
    assert set(params.PARAMS) <= set(names)
    assert "myhostname = mx.example.com" in lines


def test_mail_config_env(conf):
    env = dict(os.environ, MAIL_CONFIG=str(conf))
    p = subprocess.run([*POSTCONF, "-h", "myhostname"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert p.stdout == "mx.example.com\n"


def test_defaults(conf):
    p = postconf(conf, "-d", "myhostname", "myorigin", "relayhost")
    lines = p.stdout.splitlines()
    assert lines[1:] == ["myorigin = $myhostname", "relayhost ="]
    assert lines[0].startswith("myhostname = ") and "." in lines[0]
    assert postconf(conf, "-d", "-n").returncode == 1


@pytest.mark.skipif(not os.path.exists("/usr/sbin/postconf"), reason="no Debian postconf")
def test_defaults_layout_matches_postfix(tmp_path):
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "master.cf").write_text("")
    ours = postconf(tmp_path, "-d").stdout.splitlines()
    theirs = subprocess.run(["/usr/sbin/postconf", "-c", str(tmp_path), "-d"],
                            capture_output=True, text=True, timeout=60).stdout.splitlines()
    theirs_by_name = {line.split(" =")[0]: line for line in theirs}
    # Same "name = value" / "name =" layout, same order; same text where the
    # default is meant to be Postfix's (these differ on purpose).
    different = {"config_directory", "queue_directory", "data_directory", "daemon_directory",
                 "mail_version", "compatibility_level", "alias_maps", "import_environment",
                 "mynetworks", "myhostname", "mydomain", "smtpd_forbid_bare_newline",
                 "smtpd_forbid_unauth_pipelining", "smtpd_hard_error_limit",
                 "smtpd_junk_command_limit", "smtpd_timeout", "smtpd_starttls_timeout"}
    shared = [line for line in ours if line.split(" =")[0] in theirs_by_name]
    assert len(shared) > 100
    for line in shared:
        name = line.split(" =")[0]
        if name not in different:
            assert line == theirs_by_name[name]


def test_edit_replaces_and_appends(conf):
    main_cf = conf / "main.cf"
    main_cf.write_text("# head\nfoo = a\n  b\nbar=1\n\n#tail\nfoo = again\n")
    os.chmod(main_cf, 0o640)
    assert postconf(conf, "-e", "foo=new", "relayhost = [x]:25").returncode == 0
    assert main_cf.read_text() == ("# head\nfoo = new\nbar=1\n\n#tail\nfoo = new\n"
                                   "relayhost = [x]:25\n")
    assert (os.stat(main_cf).st_mode & 0o777) == 0o640
    assert postconf(conf, "bar=2", "relayhost=").returncode == 0  # -e implied
    assert main_cf.read_text() == ("# head\nfoo = new\nbar = 2\n\n#tail\nfoo = new\n"
                                   "relayhost = \n")
    p = postconf(conf, "-e", "nonsense")
    assert (p.returncode, p.stderr) == (
        1, "postconf: fatal: missing '=' after attribute name: \"nonsense\"\n")
    assert [f for f in os.listdir(conf) if f.startswith(".main.cf")] == []


def test_remove_and_comment_out(conf):
    main_cf = conf / "main.cf"
    main_cf.write_text("# head\nfoo = a\n  b\nbar=1\nbaz = 2\n")
    postconf(conf, "-#", "foo", "baz")
    assert main_cf.read_text() == "# head\n#foo = a\n#  b\nbar=1\n#baz = 2\n"
    postconf(conf, "-X", "bar")
    assert main_cf.read_text() == "# head\n#foo = a\n#  b\n#baz = 2\n"


def test_table_types(conf):
    types = postconf(conf, "-m").stdout.split()
    for t in ("hash", "btree", "lmdb", "regexp", "pcre", "cidr", "texthash", "inline",
              "static", "unionmap", "pipemap", "proxy", "unix"):
        assert t in types
    assert types == sorted(types)


MASTER_CF = """smtp      inet  n       -       y       -       -       smtpd
  -o syslog_name=postfix/x
  -o { smtpd_foo = a b }
  -o { smtpd_bar = c }
pickup    unix  n       -       y       60      1       pickup
relay     unix  -       -       y       -       -       smtp -o smtp_fallback_relay=
#x
submission inet n - y 60? 0 smtpd {a b}
"""

# What Debian's postconf 3.7 prints for MASTER_CF.
MASTER_M = """\
smtp       inet  n       -       y       -       -       smtpd -o syslog_name=postfix/x -o {smtpd_foo=a b} -o smtpd_bar=c
pickup     unix  n       -       y       60      1       pickup
relay      unix  -       -       y       -       -       smtp -o smtp_fallback_relay=
submission inet  n       -       y       60?     0       smtpd a b
"""
MASTER_MF = """\
smtp       inet  n       -       y       -       -       smtpd
    -o syslog_name=postfix/x
    -o {smtpd_foo=a b}
    -o smtpd_bar=c
pickup     unix  n       -       y       60      1       pickup
relay      unix  -       -       y       -       -       smtp
    -o smtp_fallback_relay=
submission inet  n       -       y       60?     0       smtpd a b
"""


def test_master_cf(conf):
    (conf / "master.cf").write_text(MASTER_CF)
    assert postconf(conf, "-M").stdout == MASTER_M
    assert postconf(conf, "-Mf").stdout == MASTER_MF
    p = postconf(conf, "-M", "smtp", "pickup/unix", "nosuch")
    assert p.stdout == "".join(MASTER_M.splitlines(True)[:2])
    assert 'postconf: warning: unmatched request: "nosuch"' in p.stderr


@pytest.mark.skipif(not os.path.exists("/usr/sbin/postconf"), reason="no Debian postconf")
def test_master_cf_matches_postfix(tmp_path):
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "master.cf").write_text(MASTER_CF)
    for flags in ("-M", "-Mf"):
        theirs = subprocess.run(["/usr/sbin/postconf", "-c", str(tmp_path), flags],
                                capture_output=True, text=True, timeout=60).stdout
        assert postconf(tmp_path, flags).stdout == theirs


def test_malformed_master_cf_is_fatal(conf):
    (conf / "master.cf").write_text("smtp inet n - y - - smtpd\nfoo bar n - - - - x\n")
    p = postconf(conf, "-M")
    assert p.returncode == 1
    assert f'file {conf}/master.cf: line 2: invalid type field "bar"' in p.stderr


def test_malformed_main_cf(tmp_path):
    (tmp_path / "main.cf").write_text("good = 1\nthis line is bad\n")
    p = postconf(tmp_path, "-n")
    assert p.returncode == 1
    assert f"{tmp_path}/main.cf, line 2" in p.stderr


def test_values_print_with_one_space_between_words(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Debian's postconf 3.7 prints "mydestination = one, two three four" for this file
    (tmp_path / "main.cf").write_text("mydestination = one,\n\ttwo   three\n# comment\n   four\n")
    out = postconf(tmp_path, "-n", "mydestination")
    assert out.stdout == "mydestination = one, two three four\n"


DEBIAN_POSTCONF = "/usr/sbin/postconf"
have_debian_postconf = pytest.mark.skipif(not os.path.exists(DEBIAN_POSTCONF),
                                          reason="no Debian postconf")


def debian_postconf(conf, *args: str) -> subprocess.CompletedProcess:
    """Debian's postconf (its messages start ``postconf:``, as when run from $PATH)."""
    proc = subprocess.run([DEBIAN_POSTCONF, "-c", str(conf), *args], capture_output=True,
                          text=True, timeout=60)
    proc.stderr = proc.stderr.replace(f"{DEBIAN_POSTCONF}: ", "postconf: ")
    return proc


MYNETWORKS_CASES = [
    (),
    ("-o", "mynetworks_style=subnet"),
    ("-o", "mynetworks_style=class"),
    ("-o", "inet_interfaces=127.0.0.1"),
    ("-o", "inet_interfaces=loopback-only"),
    ("-o", "inet_protocols=ipv4"),
]


@pytest.mark.parametrize("options", MYNETWORKS_CASES)
def test_mynetworks_is_computed_from_mynetworks_style(tmp_path, options) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n"
                                      "smtpd_client_event_limit_exceptions = $mynetworks, 192.0.2.99\n")
    (tmp_path / "master.cf").write_text("")
    mine = postconf(tmp_path, *options, "mynetworks")
    assert mine.returncode == 0, mine.stderr
    value = mine.stdout.partition(" = ")[2].strip()
    if "inet_interfaces=127.0.0.1" in options:
        assert value == "127.0.0.1/32"
    elif not options:
        assert "127.0.0.1/32" in value.split()
    else:
        assert value  # never empty on a host with a loopback interface
    # $mynetworks expands to the same value wherever it is used
    expanded = postconf(tmp_path, *options, "-x", "-h",
                        "smtpd_client_event_limit_exceptions").stdout.strip()
    assert expanded == f"{value}, 192.0.2.99"
    assert postconf(tmp_path, *options, "-x", "-h", "smtpd_forbid_bare_newline_exclusions"
                    ).stdout.strip() == value


@have_debian_postconf
@pytest.mark.parametrize("options", MYNETWORKS_CASES)
def test_mynetworks_matches_postfix(tmp_path, options) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text("compatibility_level = 3.6\n")
    (tmp_path / "master.cf").write_text("")
    theirs = debian_postconf(tmp_path, *options, "mynetworks")
    assert postconf(tmp_path, *options, "mynetworks").stdout == theirs.stdout


def test_duplicate_main_cf_line_warns_overriding_earlier_entry(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text("myhostname = a.example\nfoo = 1\nmyhostname = b.example\n"
                                      "  continued\nmyhostname=c\n")
    p = postconf(tmp_path, "-n", "myhostname")
    assert p.stdout == "myhostname = c\n"
    main_cf = tmp_path / "main.cf"
    assert (f"postconf: warning: {main_cf}, line 3: overriding earlier entry: "
            f"myhostname=a.example\n") in p.stderr
    assert (f"postconf: warning: {main_cf}, line 5: overriding earlier entry: "
            f"myhostname=b.example  continued\n") in p.stderr


@have_debian_postconf
def test_duplicate_warning_matches_postfix(tmp_path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text("myhostname = a.example\nmyhostname = b.example\n")
    (tmp_path / "master.cf").write_text("")
    theirs = [line for line in debian_postconf(tmp_path, "-n").stderr.splitlines()
              if "overriding" in line]
    mine = [line for line in postconf(tmp_path, "-n").stderr.splitlines() if "overriding" in line]
    assert mine == theirs[:len(mine)] and mine


SERVICE_PARAMS_MASTER_CF = """\
smtp      inet  n       -       y       -       -       smtpd
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
submission inet n       -       y       -       -       smtpd
  -o syslog_name=postfix/submission
  -o smtpd_tls_security_level=encrypt
  -o { smtpd_client_restrictions = permit_sasl_authenticated, reject }
  -o milter_macro_daemon_name=ORIGINATING
"""

SERVICE_PARAMS = """\
relay/unix/syslog_name = postfix/$service_name
submission/inet/milter_macro_daemon_name = ORIGINATING
submission/inet/smtpd_client_restrictions = permit_sasl_authenticated, reject
submission/inet/smtpd_tls_security_level = encrypt
submission/inet/syslog_name = postfix/submission
"""

SERVICE_PARAM_QUERIES = [
    ("-P",), ("-P", "submission/inet"), ("-P", "submission/inet/syslog_name"),
    ("-P", "relay/unix", "nosuch"), ("-Ph", "submission/inet/syslog_name"),
    ("-PH", "submission/inet"), ("-Px", "relay/unix"),
]


def test_service_parameters(conf) -> None:  # type: ignore[no-untyped-def]
    (conf / "master.cf").write_text(SERVICE_PARAMS_MASTER_CF)
    assert postconf(conf, "-P").stdout == SERVICE_PARAMS
    assert postconf(conf, "-P", "relay").stdout == SERVICE_PARAMS.splitlines(True)[0]
    assert postconf(conf, "-Px", "relay/unix").stdout == "relay/unix/syslog_name = postfix/relay\n"
    assert postconf(conf, "-Ph", "submission/inet/syslog_name").stdout == "postfix/submission\n"
    p = postconf(conf, "-P", "nosuch")
    assert p.stdout == "" and 'postconf: warning: unmatched request: "nosuch"' in p.stderr


@have_debian_postconf
@pytest.mark.parametrize("args", SERVICE_PARAM_QUERIES)
def test_service_parameters_match_postfix(tmp_path, args) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "main.cf").write_text("")
    (tmp_path / "master.cf").write_text(SERVICE_PARAMS_MASTER_CF)
    theirs = debian_postconf(tmp_path, *args)
    mine = postconf(tmp_path, *args)
    assert (mine.stdout, mine.stderr) == (theirs.stdout, theirs.stderr)


POSTFIX_KNOWS = ("luser_relay = admin\nauthorized_verp_clients = 10.0.0.1\n"
                 "relay_destination_rate_delay = 1s\nmy_class = permit\n"
                 "smtpd_restriction_classes = my_class\nmine = x\nrelayhost = $mine\n"
                 "relay_time_limit = 10\nnosuch_destination_rate_delay = 1s\nstray = y\n")
RELAY_MASTER_CF = "relay unix - - n - - smtp\nsmtp inet n - n - - smtpd\n"


def _unused(stderr: str) -> list[str]:
    return sorted(line for line in stderr.splitlines() if "unused parameter" in line)


def test_unused_only_for_names_postfix_does_not_know_either(tmp_path):
    (tmp_path / "main.cf").write_text(POSTFIX_KNOWS)
    (tmp_path / "master.cf").write_text(RELAY_MASTER_CF)
    p = postconf(tmp_path, "-n")
    assert _unused(p.stderr) == [
        f"postconf: warning: {tmp_path}/main.cf: unused parameter: {setting}"
        for setting in ("nosuch_destination_rate_delay=1s", "relay_time_limit=10", "stray=y")]
    assert "luser_relay = admin\n" in p.stdout and "stray" not in p.stdout
    q = postconf(tmp_path, "-d", "luser_relay", "smtp_send_xforward_command")
    assert q.stdout == "luser_relay =\nsmtp_send_xforward_command = no\n"


def _ours_and_postfix_n(tmp_path: Path, main_cf: str, master_cf: str) -> tuple[
        subprocess.CompletedProcess, subprocess.CompletedProcess]:
    """``postconf -n`` of ours and of Debian's Postfix on the same main.cf and master.cf."""
    (tmp_path / "main.cf").write_text(main_cf)
    (tmp_path / "master.cf").write_text(master_cf)
    theirs = subprocess.run(["postconf", "-c", str(tmp_path), "-n"], capture_output=True,
                            text=True, timeout=60)
    return postconf(tmp_path, "-n"), theirs


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Debian's postfix is not installed")
def test_unused_and_nondefault_as_postfix_says(tmp_path):
    ours, theirs = _ours_and_postfix_n(tmp_path, POSTFIX_KNOWS, RELAY_MASTER_CF)
    assert ours.stdout == theirs.stdout
    assert _unused(ours.stderr) == _unused(theirs.stderr)


MUA_MAIN_CF = "mua_client_restrictions = permit_sasl_authenticated, reject\n"
MUA_MASTER_CF = ("submission inet n - n - - smtpd\n"
                 "  -o smtpd_client_restrictions=$mua_client_restrictions\n"
                 "  -o smtpd_tls_securty_level=encrypt\n  -o my_own=1\n")


def test_unused_master_cf_overrides_and_names_master_cf_refers_to(tmp_path):
    """A -o name nothing knows is an unused parameter of master.cf; a main.cf name that
    only master.cf refers to is the administrator's own (Postfix 3.7's postconf)."""
    (tmp_path / "main.cf").write_text(MUA_MAIN_CF)
    (tmp_path / "master.cf").write_text(MUA_MASTER_CF)
    p = postconf(tmp_path, "-n")
    assert _unused(p.stderr) == [
        f"postconf: warning: {tmp_path}/master.cf: unused parameter: {setting}"
        for setting in ("my_own=1", "smtpd_tls_securty_level=encrypt")]


@pytest.mark.skipif(shutil.which("postconf") is None, reason="Debian's postfix is not installed")
def test_unused_master_cf_overrides_as_postfix_says(tmp_path):
    ours, theirs = _ours_and_postfix_n(tmp_path, MUA_MAIN_CF, MUA_MASTER_CF)
    assert _unused(ours.stderr) == _unused(theirs.stderr)


@pytest.mark.parametrize("args", [
    ("-e", "relayhost=x\nmynetworks=0.0.0.0/0"),
    ("relayhost=x", "mynetworks=\n0.0.0.0/0"),   # -e implied
    ("-e", "relay\nhost=x"),
    ("-X", "foo\nmynetworks"),
    ("-#", "foo\nbar"),
])
def test_edit_refuses_multi_line_input(tmp_path, args) -> None:  # type: ignore[no-untyped-def]
    # Postfix 3.7: "postconf: fatal: -e, -X, or -# accepts no multi-line input", exit 1
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("myhostname = x\nfoo = 1\n")
    p = postconf(tmp_path, *args)
    assert (p.returncode, p.stderr) == (
        1, "postconf: fatal: -e, -X, or -# accepts no multi-line input\n")
    assert main_cf.read_text() == "myhostname = x\nfoo = 1\n"
    assert sorted(os.listdir(tmp_path)) == ["main.cf"]


def test_edit_keeps_a_carriage_return_as_text(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Postfix accepts a CR: it writes "relayhost = x\rmynetworks=y", one line
    main_cf = tmp_path / "main.cf"
    main_cf.write_bytes(b"myhostname = x\n")
    assert postconf(tmp_path, "-e", "relayhost=x\rmynetworks=y").returncode == 0
    assert main_cf.read_bytes() == b"myhostname = x\nrelayhost = x\rmynetworks=y\n"


def test_edit_splits_main_cf_at_newline_only(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Postfix's edit keeps every other byte: CRLF line ends, and comments holding
    # characters that str.splitlines() also breaks at (\v \f \x1c-\x1e \x85 U+2028 U+2029 \r)
    main_cf = tmp_path / "main.cf"
    body = ("# c1\x0bx\x0cy\x1cz\x1d\x1e" "\u0085" "w\u2028v\u2029u\rt\n"
            "relayhost = 1\r\nmyhostname = 2\r\n  more\r\n#tail\u2028\n").encode() + b"# latin1 \xe9\n"
    main_cf.write_bytes(body)
    assert postconf(tmp_path, "-e", "relayhost=9").returncode == 0
    assert main_cf.read_bytes() == body.replace(b"relayhost = 1\r\n", b"relayhost = 9\n")
    assert postconf(tmp_path, "-X", "myhostname").returncode == 0
    assert main_cf.read_bytes() == body.replace(b"relayhost = 1\r\n", b"relayhost = 9\n").replace(
        b"myhostname = 2\r\n  more\r\n", b"")
    p = postconf(tmp_path, "-n", "relayhost")
    assert (p.returncode, p.stdout) == (0, "relayhost = 9\n")


@pytest.mark.parametrize("arg, reason", [
    ("=nothing", 'missing attribute name: "=nothing"'),
    ("  = x", 'missing attribute name: "= x"'),
    ("a b=c", 'missing \'=\' after attribute name: "a b=c"'),
    ("a\tb=c", 'missing \'=\' after attribute name: "a?b=c"'),
])
def test_edit_refuses_what_postfix_cannot_split(tmp_path, arg, reason) -> None:  # type: ignore[no-untyped-def]
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("myhostname = x\n")
    p = postconf(tmp_path, "-e", arg)
    assert (p.returncode, p.stderr) == (1, f"postconf: fatal: {reason}\n")
    assert main_cf.read_text() == "myhostname = x\n"


def test_parameter_names_are_postfix_names(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Postfix: a name is anything up to white space or "=" (an unused parameter,
    # not an error); pymailsys writes it and loads the file it wrote
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("myhostname = x\n")
    assert postconf(tmp_path, "-e", "my-param=x", "a.b = y").returncode == 0
    assert main_cf.read_text() == "myhostname = x\nmy-param = x\na.b = y\n"
    p = postconf(tmp_path, "-n")
    assert p.returncode == 0, p.stderr
    assert f"postconf: warning: {main_cf}: unused parameter: my-param=x\n" in p.stderr
    main_cf.write_text("myhostname = x\n=v\n")
    p = postconf(tmp_path, "-n")
    assert (p.returncode, p.stderr) == (
        1, f'postconf: fatal: {main_cf}, line 2: missing attribute name: "=v"\n')
    main_cf.write_text("myhostname = x\nbroken line = 1\n")
    p = postconf(tmp_path, "-n")
    assert (p.returncode, p.stderr) == (
        1, f"postconf: fatal: {main_cf}, line 2: missing '=' after attribute name: "
           f'"broken line = 1"\n')


def test_edit_repairs_a_main_cf_that_does_not_load(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Postfix edits a malformed main.cf (exit 0); the line "broken line" sets "broken",
    # and continuation lines go with their line across comments and empty lines
    main_cf = tmp_path / "main.cf"
    main_cf.write_text("myhostname = x\nbroken line\nfoo = a\n# c\n  b\n\n  c2\nbar=1\n")
    assert postconf(tmp_path, "-n").returncode == 1
    p = postconf(tmp_path, "-e", "foo=new")
    assert (p.returncode, p.stderr) == (0, "")
    assert main_cf.read_text() == "myhostname = x\nbroken line\nfoo = new\n# c\n\nbar=1\n"
    p = postconf(tmp_path, "-X", "broken")
    assert (p.returncode, p.stderr) == (0, "")
    assert main_cf.read_text() == "myhostname = x\nfoo = new\n# c\n\nbar=1\n"
    assert postconf(tmp_path, "-n", "myhostname").stdout == "myhostname = x\n"
    main_cf.write_text("=v\nfoo = 1\n  more\n")
    assert postconf(tmp_path, "-#", "foo").returncode == 0
    assert main_cf.read_text() == "=v\n#foo = 1\n#  more\n"


def test_edit_that_cannot_be_written_is_fatal(tmp_path) -> None:  # type: ignore[no-untyped-def]
    # Postfix: "postconf: fatal: open DIR/main.cf.tmp: No such file or directory", exit 1
    missing = tmp_path / "nosuch"
    p = postconf(missing, "-e", "relayhost=x")
    assert p.returncode == 1
    assert p.stderr == (f"postconf: fatal: open {missing}/.main.cf.XXXXXXXX: "
                        "No such file or directory\n")
    assert not missing.exists()


def test_edit_in_a_read_only_directory_is_fatal(python_user) -> None:  # type: ignore[no-untyped-def]
    # Postfix: "postconf: fatal: open DIR/main.cf.tmp: Permission denied", exit 1;
    # main.cf untouched, no temporary file, no traceback
    conf = tempfile.mkdtemp(prefix="postconf-ro.")  # reachable by python_user, unlike tmp_path
    try:
        main_cf = os.path.join(conf, "main.cf")
        with open(main_cf, "w") as f:
            f.write("myhostname = x\n")
        os.chmod(main_cf, 0o666)  # writable in place, yet no new file can be made beside it
        os.chmod(conf, 0o555)
        for args in (("-e", "relayhost=x"), ("-X", "myhostname"), ("-#", "myhostname")):
            p = subprocess.run(["runuser", "-u", python_user, "--", *POSTCONF, "-c", conf, *args],
                               capture_output=True, text=True, timeout=60, cwd="/")
            assert (p.returncode, p.stderr) == (
                1, f"postconf: fatal: open {conf}/.main.cf.XXXXXXXX: Permission denied\n")
            assert os.listdir(conf) == ["main.cf"]
            with open(main_cf) as f:
                assert f.read() == "myhostname = x\n"
    finally:
        shutil.rmtree(conf)
