"""master.cf parsing: Postfix's columns, defaults, continuation, -o forms, errors."""

from __future__ import annotations

import os

import pytest

from pymailsys import instance
from pymailsys.config import ConfigError, master_cf

HEADER = "# service type  private unpriv  chroot  wakeup  maxproc command + args\n"


def parse(text: str) -> list[master_cf.ServiceEntry]:
    return master_cf.parse_text(text, "/etc/pymailsys/master.cf")


def test_columns_and_defaults() -> None:
    [smtp, pickup, local] = parse(HEADER + (
        "smtp      inet  n       -       y       -       -       smtpd\n"
        "pickup    unix  n       -       n       60      1       pickup\n"
        "local     unix  -       n       n       -       -       local\n"))
    assert (smtp.name, smtp.type, smtp.private, smtp.unpriv, smtp.chroot) == ("smtp", "inet", False, True, True)
    assert (smtp.wakeup, smtp.maxproc, smtp.command, smtp.args) == (0, None, "smtpd", [])
    assert (pickup.private, pickup.wakeup, pickup.maxproc) == (False, 60, 1)
    assert (local.private, local.unpriv, local.chroot) == (True, False, False)
    assert local.line == 4 and local.path == "/etc/pymailsys/master.cf"


def test_wakeup_after_use_and_unlimited() -> None:
    [e] = parse("flush unix n - n 1000? 0 flush\n")
    assert (e.wakeup, e.wakeup_after_use, e.maxproc) == (1000, True, 0)


def test_comments_blank_lines_and_continuation() -> None:
    text = ("\n# a comment\n"
            "relay     unix  -       -       n       -       -       smtp\n"
            "        -o syslog_name=postfix/$service_name\n"
            "#       -o smtp_helo_timeout=5\n"
            "   -o smtp_connect_timeout=5\n"
            "\n"
            "showq     unix  n       -       n       -       -       showq\n")
    relay, showq = parse(text)
    assert relay.args == ["-o", "syslog_name=postfix/$service_name", "-o", "smtp_connect_timeout=5"]
    assert relay.overrides() == [("syslog_name", "postfix/$service_name"),
                                 ("smtp_connect_timeout", "5")]
    assert showq.line == 8


def test_later_entry_with_same_name_and_type_wins() -> None:
    entries = parse("smtp inet n - n - - smtpd\n"
                    "smtp unix - - n - - smtp\n"
                    "smtp inet n - n - 5 smtpd -v\n")
    assert [(e.name, e.type) for e in entries] == [("smtp", "unix"), ("smtp", "inet")]
    assert entries[1].maxproc == 5 and entries[1].args == ["-v"]


def test_braced_option_values_and_grouped_arguments() -> None:
    [e] = parse("submission inet n - n - - smtpd\n"
                "  -o { smtpd_client_restrictions = permit_mynetworks, reject }\n"
                "  -o smtpd_tls_security_level=encrypt { a  b } c\n")
    assert e.args == ["-o", "smtpd_client_restrictions=permit_mynetworks, reject",
                      "-o", "smtpd_tls_security_level=encrypt", "a  b", "c"]
    assert e.overrides()[0] == ("smtpd_client_restrictions", "permit_mynetworks, reject")


def test_pipe_arguments_keep_dollar_braces() -> None:
    [e] = parse("maildrop  unix  -       n       n       -       -       pipe\n"
                "  flags=DRXhu user=vmail argv=/usr/bin/maildrop -d ${recipient}\n")
    assert e.args == ["flags=DRXhu", "user=vmail", "argv=/usr/bin/maildrop", "-d", "${recipient}"]


def test_inet_addresses_and_socket_paths() -> None:
    entries = parse("2525 inet n - n - - smtpd\n"
                    "127.0.0.1:smtp inet n - n - - smtpd\n"
                    "[::1]:25 inet n - n - - smtpd\n"
                    "cleanup unix n - n - 0 cleanup\n"
                    "local unix - n n - - local\n"
                    "inetpriv inet y - n - - smtpd\n")
    assert entries[0].inet_address() == (None, "2525")
    assert entries[1].inet_address() == ("127.0.0.1", "smtp")
    assert entries[2].inet_address() == ("::1", "25")
    assert entries[3].socket_name("/q") == "/q/public/cleanup"
    assert entries[4].socket_name("/q") == "/q/private/local"
    assert entries[5].private is False  # inet services are never private


@pytest.mark.parametrize("line, message", [
    ("foo bar n - - - - x", 'line 2: invalid type field "bar"'),
    ("foo unix n x - - - x", 'line 2: invalid unprivileged field "x"'),
    ("foo unix maybe - - - - x", 'line 2: invalid private field "maybe"'),
    ("foo unix n - - - ", "line 2: bad field count"),
    ("foo unix n - - 5x - x", 'line 2: invalid wakeup field "5x"'),
    ("foo unix n - - - -1 x", 'line 2: invalid process_limit field "-1"'),
    ("foo unix n - - - - x -o novalue", "line 2: -o option requires name=value"),
    ("foo unix n - - - - x { open", "line 2: missing '}'"),
])
def test_malformed_entries_name_file_and_line(line: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse("smtp inet n - n - - smtpd\n" + line + "\n")
    assert "file /etc/pymailsys/master.cf: " + message in str(info.value)


def test_missing_file_is_a_config_error(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ConfigError, match="master.cf"):
        master_cf.parse_file(str(tmp_path / "master.cf"))


def test_stock_master_cf_files_parse() -> None:
    shipped = master_cf.parse_text(instance.shipped("master.cf"), "conf/master.cf")
    names = [(e.name, e.type) for e in shipped]
    for key in [("smtp", "inet"), ("pickup", "unix"), ("cleanup", "unix"), ("qmgr", "unix"),
                ("showq", "unix"), ("local", "unix"), ("bounce", "unix"), ("defer", "unix"),
                ("trace", "unix"), ("virtual", "unix"), ("smtp", "unix"), ("relay", "unix")]:
        assert key in names
    by_key = {e.key: e for e in shipped}
    assert (by_key["pickup", "unix"].wakeup, by_key["pickup", "unix"].maxproc) == (60, 1)
    assert by_key["cleanup", "unix"].maxproc == 0
    assert (by_key["qmgr", "unix"].wakeup, by_key["qmgr", "unix"].maxproc) == (300, 1)
    assert by_key["local", "unix"].unpriv is False
    assert not any(e.chroot for e in shipped)
    debian = "/usr/share/postfix/master.cf.dist"
    if os.path.exists(debian):
        assert len(master_cf.parse_file(debian)) == len(shipped)


def test_instance_master_cf_moves_smtp_to_host_and_port() -> None:
    entries = master_cf.parse_text(instance.master_cf_text("127.0.0.1", 2626), "x")
    inet = [e for e in entries if e.type == "inet"]
    assert [e.name for e in inet] == ["127.0.0.1:2626"]
    assert inet[0].command == "smtpd"
