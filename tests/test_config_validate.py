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
import shutil
import subprocess

import pytest

from pymailsys import config, maps
from pymailsys.config import master_cf, params, postfix_names, validate

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
    ("line_length_limit = 100", "invalid line_length_limit parameter value 100 < 512"),
    ("smtpd_sasl_response_limit = 1000",
     "invalid smtpd_sasl_response_limit parameter value 1000 < 12288"),
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
              "  -o ipc_idle=10s\n  -o my_own_name=anything\n")
    found = problems(tmp_path, "", master)
    where = f"file {tmp_path}/master.cf: line 2"
    assert texts(found, True) == [f"{where}: bad numerical configuration: smtpd_recipient_limit = lots"]
    assert texts(found, False) == [
        f"{tmp_path}/master.cf: unused parameter: my_own_name=anything",  # Postfix's postconf
        f"{where}: parameter ipc_idle is not implemented yet: ignored"]


def test_unimplemented_parameters_warn_only_when_changed(tmp_path):
    found = problems(tmp_path, "mailq_path = /usr/bin/mailq\nnotify_classes = resource,software\n"
                               "command_directory = /opt/sbin\nipc_idle = 5s\n"
                               "daemon_timeout = 100s\n")
    assert found == [  # in the table's order
        validate.Problem(False, "parameter command_directory is not implemented yet: ignored",
                         f"{tmp_path}/main.cf, line 3"),
        validate.Problem(False, "parameter daemon_timeout is not implemented yet: ignored",
                         f"{tmp_path}/main.cf, line 5"),
    ]


def test_a_value_only_some_programs_act_on_warns(tmp_path):
    """notify_classes = protocol: smtpd sends the postmaster its transcript, the smtp and
    lmtp clients (Postfix's do) not yet."""
    found = problems(tmp_path, "notify_classes = resource, software, protocol, data\n")
    assert texts(found, False) == [
        f"{tmp_path}/main.cf, line 1: parameter notify_classes: protocol, data is not "
        "implemented yet for the smtp and lmtp clients (no transcript of their sessions): "
        "ignored there"]
    assert problems(tmp_path, "notify_classes = bounce, delay, policy\n") == []


@pytest.mark.parametrize("setting, program", [
    ("smtpd_milters = inet:127.0.0.1:8891", "smtpd"),
    ("non_smtpd_milters = inet:127.0.0.1:8891", "pickup"),
    ("smtp_tls_security_level = dane-only", "smtp"),
    ("lmtp_tls_security_level = fingerprint", "lmtp"),
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


# --- Postfix 3.7 parameters the table leaves out (pymailsys.config.postfix_names) -----------

MASTER = ("smtp unix - - n - - smtp\nrelay unix - - n - - smtp\nlocal unix - n n - - local\n"
          "bsmtp unix - n n - - pipe\n  flags=Fq. user=bsmtp argv=/bin/true\n"
          "policy unix - n n - 0 spawn\n  user=nobody argv=/bin/true\n")


def test_postfix_parameters_left_out_warn_naming_file_and_line(tmp_path):
    main = ("sun_mailtool_compatibility = yes\n"      # built-in, not implemented
            "fork_attempts = 3\n"
            "address_verify_map = btree:/x\n"
            "tcp_windowsize = 0\n"                      # Postfix's default: nothing to say
            "disable_dns_lookups = false\n"             # the default, spelled differently
            "authorized_verp_clients = 10.0.0.1\n"      # legacy, in a Postfix default
            "relay_transport_rate_delay = 1s\n"         # service-defined, not implemented
            "relay_initial_destination_concurrency = 2\n"  # service-defined, qmgr reads it
            "policy_time_limit = 10s\n"                 # spawn reads it
            "bsmtp_time_limit = 10s\n"                  # pipe: not implemented
            "relay_time_limit = 10s\n"                  # not a Postfix name for an smtp service
            "my_own = x\nrelayhost = $my_own\n")        # the administrator's own
    found = problems(tmp_path, main, MASTER)
    main_cf = f"{tmp_path}/main.cf"
    assert texts(found, True) == []
    assert texts(found, False) == [
        f"{main_cf}, line {n}: parameter {name} is not implemented yet: ignored"
        for n, name in [(1, "sun_mailtool_compatibility"), (2, "fork_attempts"),
                        (3, "address_verify_map"), (6, "authorized_verp_clients"),
                        (7, "relay_transport_rate_delay"), (10, "bsmtp_time_limit")]] + [
        f"{main_cf}: unused parameter: relay_time_limit=10s"]  # as Postfix's postconf


def test_postfix_parameters_left_out_warn_in_master_cf_overrides(tmp_path):
    found = problems(tmp_path, "", "smtp inet n - n - - smtpd\n  -o smtpd_reject_footer=call us\n"
                                   "  -o smtpd_proxy_timeout=100s\n")
    assert texts(found, False) == [f"file {tmp_path}/master.cf: line 1: parameter "
                                   "smtpd_reject_footer is not implemented yet: ignored"]


@pytest.mark.parametrize("setting, programs", [
    ("smtpd_restriction_classes = friends", ["smtpd"]),
    ("resolve_dequoted_address = no", ["smtpd"]),
    ("smtp_header_checks = regexp:/etc/pymailsys/smtp_header_checks", ["smtp"]),
    ("lmtp_sasl_auth_enable = yes", ["lmtp"]),
    ("smtp_tls_scert_verifydepth = 3", ["smtp"]),
    ("message_strip_characters = \\0", ["cleanup"]),
    ("tls_ssl_options = NO_TICKET", ["smtpd", "smtp", "lmtp"]),
])
def test_postfix_security_settings_left_out_make_their_services_refuse(tmp_path, setting, programs):
    found = problems(tmp_path, setting + "\n")
    name, _, value = (part.strip() for part in setting.partition("="))
    which = f"service {programs[0]}" if len(programs) == 1 else f"services {', '.join(programs)}"
    assert texts(found, False) == [f"{tmp_path}/main.cf, line 1: {name} = {value} is not "
                                   f"supported yet: {which} will refuse to run"]
    cfg = config.load(str(tmp_path))
    for program in programs:
        assert validate.refusals(cfg, program) == [
            f"{name} = {value} is not supported yet: refusing to run"]
    others = {"smtpd", "pickup", "smtp", "lmtp", "cleanup", "qmgr", "local"} - set(programs)
    assert all(validate.refusals(cfg, other) == [] for other in others)


def test_refused_settings_at_their_default_are_fine(tmp_path):
    found = problems(tmp_path, "smtp_tls_scert_verifydepth = 9\nresolve_dequoted_address = yes\n"
                               "smtpd_forbidden_commands = CONNECT, GET, POST, "
                               "regexp:{{/^[^A-Z]/ Bogus}}\n")
    assert found == []


def test_a_setting_master_cannot_honour_stops_the_whole_system(tmp_path):
    found = problems(tmp_path, "master_service_disable = smtp/inet\n")
    assert texts(found, True) == [f"{tmp_path}/main.cf, line 1: master_service_disable = smtp/inet "
                                  "is not supported yet: refusing to run"]


def test_the_table_declares_each_name_once():
    names = [p.name for p in params._TABLE]
    assert sorted(n for n in set(names) if names.count(n) > 1) == []


def test_refused_postfix_parameters_keep_postfix_defaults():
    """What the table declares only to refuse it is Postfix's parameter, with Postfix's default."""
    postfix = postfix_names.builtin()
    wrong = [p.name for p in params.PARAMS.values()
             if p.refuse and (p.name not in postfix or postfix[p.name] != p.default)]
    assert wrong == []


def test_the_postfix_names_file_says_how_it_was_made():
    text = (ROOT / "pymailsys" / "config" / postfix_names.DATA_FILE).read_text()
    assert text.startswith("# Postfix 3.7.")
    assert "postconf -c DIR -d" in text.splitlines()[0]
    table = postfix_names.builtin()
    assert table["luser_relay"] == "" and table["lmtp_assume_final"] == "no"
    assert len(table) > 800


@pytest.mark.skipif(shutil.which("postconf") is None,
                    reason="Debian's postfix is not installed")
def test_the_postfix_names_file_is_what_the_installed_postfix_says():
    version = subprocess.run(["postconf", "-dh", "mail_version"], capture_output=True, text=True,
                             timeout=60).stdout.strip()
    if not version.startswith("3.7."):
        pytest.skip(f"Postfix {version} is installed, the file is of 3.7")
    made = subprocess.run([str(ROOT / "scripts" / "postfix-names")], capture_output=True,
                          text=True, timeout=60, check=True).stdout
    assert made == (ROOT / "pymailsys" / "config" / postfix_names.DATA_FILE).read_text()
