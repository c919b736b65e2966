"""pymailsys.config.validate: every value checked against the parameter table.

Each kind of parameter gets a bad value and Postfix's complaint naming the file
and line; unimplemented parameters set to a non-default value warn; settings a
service cannot honour make that service (and only it) refuse to run. The table
itself stays honest: a declared parameter that no code reads is marked not
implemented.
"""

from __future__ import annotations

import pathlib
import re

import pytest

from pymailsys import config, maps
from pymailsys.config import master_cf, params, validate

ROOT = pathlib.Path(__file__).resolve().parent.parent


def problems(tmp_path: pathlib.Path, main: str, master: str = "") -> list[validate.Problem]:
    (tmp_path / "main.cf").write_text(main)
    (tmp_path / "master.cf").write_text(master)
    cfg = config.load(str(tmp_path))
    return validate.check(cfg, master_cf.parse_file(str(tmp_path / "master.cf")), maps.REGISTRY)


def texts(found: list[validate.Problem], fatal: bool) -> list[str]:
    return [str(p) for p in found if p.fatal == fatal]


def test_defaults_are_valid(tmp_path):
    assert problems(tmp_path, "") == []


@pytest.mark.parametrize("line, complaint", [
    ("message_size_limit = 10M", "bad numerical configuration: message_size_limit = 10M"),
    ("smtpd_recipient_limit = 1_000", "bad numerical configuration: smtpd_recipient_limit = 1_000"),
    ("max_use = 0", "invalid max_use parameter value 0 < 1"),
    ("hopcount_limit = -3", "invalid hopcount_limit parameter value -3 < 0"),
    ("max_idle = 10x", "parameter max_idle: bad time value or unit: 10x"),
    ("smtpd_delay_reject = maybe", "bad boolean configuration: smtpd_delay_reject = maybe"),
    ("mynetworks_style = subnett", 'unknown mynetworks mask style value "subnett" in "subnett"'),
    ("inet_protocols = ipv4, ipv5", 'unknown inet_protocols value "ipv5" in "ipv4, ipv5"'),
    ("smtpd_tls_security_level = mandatory",
     'unknown smtpd_tls_security_level value "mandatory" in "mandatory"'),
    ("smtp_tls_security_level = dane-maybe",
     'unknown smtp_tls_security_level value "dane-maybe" in "dane-maybe"'),
    ("mailbox_delivery_lock = fcntl, lockf", 'unknown mailbox_delivery_lock value "lockf" in "fcntl, lockf"'),
    ("virtual_mailbox_lock = lockf", 'unknown virtual_mailbox_lock value "lockf" in "lockf"'),
    ("virtual_minimum_uid = 0", "invalid virtual_minimum_uid parameter value 0 < 1"),
    ("syslog_facility = mial", 'unknown syslog_facility value "mial" in "mial"'),
    ("compatibility_level = three", 'malformed compatibility level syntax: "three"'),
    ("alias_maps = hash:/etc/aliases, bdb:/etc/aliases", "unsupported dictionary type: bdb"),
    ("transport_maps = /etc/transport",
     'open dictionary: expecting "type:name" form instead of "/etc/transport"'),
    ("default_database_type = dbm", "unsupported dictionary type: dbm"),
])
def test_each_kind_names_file_line_and_value(tmp_path, line, complaint):
    found = problems(tmp_path, f"myhostname = mx.example.com\n{line}\n")
    assert texts(found, True) == [f"{tmp_path}/main.cf, line 2: {complaint}"]


def test_a_value_is_checked_after_expansion(tmp_path):
    found = problems(tmp_path, "limit = 10M\nmessage_size_limit = $limit\n")
    assert texts(found, True) == [
        f"{tmp_path}/main.cf, line 2: bad numerical configuration: message_size_limit = 10M"]


def test_a_default_that_repeats_an_explicit_error_is_not_reported_twice(tmp_path):
    # local_recipient_maps defaults to "proxy:unix:passwd.byname $alias_maps"
    found = problems(tmp_path, "alias_maps = nosuch:/etc/aliases\n")
    assert texts(found, True) == [f"{tmp_path}/main.cf, line 1: unsupported dictionary type: nosuch"]


def test_proxy_tables_and_known_types_pass(tmp_path):
    found = problems(tmp_path, "local_recipient_maps = proxy:unix:passwd.byname, "
                               "texthash:/x, inline:{a=b, c=d}, {static:{x y}}\nvirtual_alias_maps = pcre:/v\n")
    assert texts(found, True) == []


def test_maillog_file_must_match_a_prefix(tmp_path):
    found = problems(tmp_path, "maillog_file_prefixes = /var, /dev/stdout\nmaillog_file = /tmp/log\n")
    assert texts(found, True) == [f"{tmp_path}/main.cf, line 2: maillog_file value '/tmp/log' does "
                                  "not match any prefix in maillog_file_prefixes"]


def test_master_cf_overrides_are_checked_where_they_are_written(tmp_path):
    master = ("smtp inet n - n - - smtpd\n"
              "submission inet n - n - - smtpd\n  -o smtpd_recipient_limit=lots\n"
              "  -o biff=no\n  -o my_own_name=anything\n")
    found = problems(tmp_path, "", master)
    where = f"file {tmp_path}/master.cf: line 2"
    assert texts(found, True) == [f"{where}: bad numerical configuration: smtpd_recipient_limit = lots"]
    assert texts(found, False) == [f"{where}: parameter biff is not implemented yet: ignored"]


def test_unimplemented_parameters_warn_only_when_changed(tmp_path):
    found = problems(tmp_path, "mailq_path = /usr/bin/mailq\nnotify_classes = resource,software\n"
                               "biff = no\nipc_idle = 5s\n"
                               "daemon_timeout = 100s\n")
    assert found == [  # in the table's order
        validate.Problem(False, "parameter daemon_timeout is not implemented yet: ignored",
                         f"{tmp_path}/main.cf, line 5"),
        validate.Problem(False, "parameter biff is not implemented yet: ignored",
                         f"{tmp_path}/main.cf, line 3"),
    ]


@pytest.mark.parametrize("setting, program", [
    ("smtpd_tls_req_ccert = yes", "smtpd"),
    ("smtpd_milters = inet:127.0.0.1:8891", "smtpd"),
    ("non_smtpd_milters = inet:127.0.0.1:8891", "pickup"),
    ("smtp_tls_security_level = dane-only", "smtp"),
    ("lmtp_tls_security_level = fingerprint", "lmtp"),
    ("smtp_enforce_tls = yes", "smtp"),
])
def test_settings_that_weaken_security_make_their_service_refuse(tmp_path, setting, program):
    found = problems(tmp_path, setting + "\n")
    name, _, value = (part.strip() for part in setting.partition("="))
    assert texts(found, True) == []
    assert texts(found, False) == [f"{tmp_path}/main.cf, line 1: {name} = {value} is not "
                                   f"supported yet: service {program} will refuse to run"]
    cfg = config.load(str(tmp_path))
    assert validate.refusals(cfg, program) == [f"{name} = {value} is not supported yet: refusing to run"]
    others = {"smtpd", "pickup", "smtp", "cleanup", "qmgr", "local"} - {program}
    assert all(validate.refusals(cfg, other) == [] for other in others)


def test_opportunistic_tls_is_only_a_warning(tmp_path):
    found = problems(tmp_path, "smtpd_tls_security_level = may\nsmtp_tls_security_level = may\n")
    assert texts(found, True) == []
    assert [p.text for p in found] == []  # both do may (and smtpd encrypt)
    assert validate.refusals(config.load(str(tmp_path)), "smtpd") == []


def test_an_override_refuses_only_its_service(tmp_path):
    (tmp_path / "main.cf").write_text("")
    cfg = config.load(str(tmp_path))
    assert validate.refusals(cfg, "smtpd") == []
    submission = cfg.with_overrides({"smtpd_milters": "inet:127.0.0.1:8891"})
    assert validate.refusals(submission, "smtpd") == [
        "smtpd_milters = inet:127.0.0.1:8891 is not supported yet: refusing to run"]


def _code_text() -> str:
    out = []
    for directory in ("pymailsys", "daemons", "tools"):
        for path in sorted((ROOT / directory).rglob("*.py")):
            if path.name != "params.py":
                out.append(path.read_text(encoding="utf-8", errors="replace"))
    return "\n".join(out)


def test_the_table_marks_what_no_code_reads_as_not_implemented():
    code = _code_text()
    defaults = " ".join(p.default for p in params.PARAMS.values())
    unread = []
    for param in params.PARAMS.values():
        # read by name, by its per-transport tail (qmgr's "<transport>_destination_..."),
        # through another default's $name, or computed (mail_version)
        tail = param.name.split("_", 1)[-1]
        quoted = re.search(rf"[\"']({re.escape(param.name)}|{re.escape(tail)})[\"']", code)
        referenced = re.search(rf"\$\{{?{re.escape(param.name)}\b", defaults)
        computed = params.system_default(param.name) is not None
        if param.implemented and not (quoted or referenced or computed):
            unread.append(param.name)
    assert unread == [], ("declared as implemented but read nowhere (mark them _todo in "
                          f"pymailsys/config/params.py): {unread}")


def test_what_the_code_reads_is_not_marked_unimplemented():
    """The other direction: a parameter some daemon, tool or library module reads by name
    is not marked _todo, or start, check and reload would warn that it is ignored."""
    code = "\n".join(path.read_text(encoding="utf-8", errors="replace")
                     for directory in ("pymailsys", "daemons", "tools")
                     for path in sorted((ROOT / directory).rglob("*.py"))
                     if "config" not in path.relative_to(ROOT).parts[:2])
    read = [param.name for param in params.PARAMS.values()
            if not param.implemented
            and re.search(rf"get(_\w+)?\(\s*[\"']{re.escape(param.name)}[\"']", code)]
    assert read == [], f"read by the code but marked _todo in pymailsys/config/params.py: {read}"


def test_a_name_set_again_warns_overriding_earlier_entry(tmp_path):
    found = problems(tmp_path, "myhostname = a.example\nrelayhost =\nmyhostname = b.example\n")
    assert texts(found, False) == [
        f"{tmp_path}/main.cf, line 3: overriding earlier entry: myhostname=a.example"]
    assert texts(found, True) == []
