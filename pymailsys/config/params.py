"""The parameter table: every main.cf parameter pymailsys knows, declared once.

Each entry gives the parameter's name, its built-in default (as ``postconf -d``
prints it, ``$name`` references unexpanded), its kind and a one-line meaning.
Nothing else in the code invents a default: ``Config.get`` refuses a name that
is not declared here (``UnknownParameter``), and a test checks that every name
the code reads is in this table.

A few defaults depend on the machine (``myhostname``, ``mydomain``): they are
computed once, on first use, by ``system_default``.

Kinds: ``str``, ``int``, ``bool`` (yes/no), ``time`` (number with an optional
s/m/h/d/w suffix; the table gives the default unit), ``size`` (bytes), ``list``
(comma and/or whitespace separated), ``enum`` (one of ``choices``), ``maps`` (a
list of ``type:name`` lookup tables), ``type`` (a table type), ``level`` (a compatibility level such as
``3.6``). A ``list`` with ``choices`` takes only those words; ``minimum`` bounds
an ``int``, ``time`` or ``size``. ``pymailsys.config.validate`` checks every
value against its entry.

Honesty: ``implemented=False`` marks a parameter that pymailsys declares (so
that ``postconf`` knows it) but does not act on yet; setting it to anything but
its default draws a warning at ``postfix check``, ``start`` and ``reload``.
``refuse`` lists the values (``*``: any value but the default) that ``service``
(one program or several, space-separated; ``master``: the whole system) cannot
honour without weakening security: that service then refuses to run. The
Postfix 3.7 parameters this table leaves out (``postfix_names``) warn the same
way; the ones among them that filter, restrict, authenticate or encrypt are
declared here, at the end of the table, with ``refuse``.
"""

from __future__ import annotations

import functools
import os
import socket
import sys
from dataclasses import dataclass


@dataclass(frozen=True)
class Param:
    name: str
    default: str
    kind: str = "str"
    doc: str = ""
    unit: str = "s"  # default unit for kind == "time"
    choices: tuple[str, ...] = ()
    minimum: int | None = None
    implemented: bool = True
    refuse: tuple[str, ...] = ()  # values that make ``service`` refuse to run
    service: str = ""


def _p(name: str, default: str, kind: str = "str", doc: str = "", unit: str = "s", *,
       choices: tuple[str, ...] = (), minimum: int | None = None, implemented: bool = True,
       refuse: tuple[str, ...] = (), service: str = "") -> Param:
    return Param(name, default, kind, doc, unit, choices, minimum, implemented, refuse, service)


def _todo(name: str, default: str, kind: str = "str", doc: str = "", unit: str = "s",
          **extra: object) -> Param:
    """A parameter declared but not acted on yet: setting it draws a warning."""
    return _p(name, default, kind, doc, unit, implemented=False, **extra)  # type: ignore[arg-type]


def _refused(service: str, entries: list[tuple[str, str, str, str]]) -> list[Param]:
    """Postfix parameters that service cannot honour yet: any value but the default refuses."""
    return [_todo(name, default, kind, doc, refuse=("*",), service=service)
            for name, default, kind, doc in entries]


def _refused_client(prefix: str) -> list[Param]:
    """The smtp_* (or lmtp_*) client parameters that filter, authenticate or encrypt."""
    suffixes = [
        ("header_checks", "", "maps", "header checks on delivery"),
        ("mime_header_checks", "", "maps", "MIME header checks on delivery"),
        ("nested_header_checks", "", "maps", "attached message header checks on delivery"),
        ("body_checks", "", "maps", "body checks on delivery"),
        ("dns_reply_filter", "", "maps", "DNS replies dropped before they are used"),
        ("sasl_auth_enable", "no", "bool", "SMTP AUTH to the server"),
        ("tls_cert_file", "", "str", "client certificate"),
        ("tls_chain_files", "", "list", "client keys and certificate chains"),
        ("tls_dcert_file", "", "str", "DSA client certificate"),
        ("tls_eccert_file", "", "str", "ECDSA client certificate"),
        ("tls_per_site", "", "maps", "per-site TLS policy (obsolete)"),
        ("tls_scert_verifydepth", "9", "int", "longest server certificate chain"),
        ("tls_trust_anchor_file", "", "str", "trust anchors at verify and secure"),
        ("tls_wrappermode", "no", "bool", "TLS from the first byte"),
        ("tls_block_early_mail_reply", "no", "bool", "refuse replies injected before TLS"),
    ]
    return _refused(prefix, [(f"{prefix}_{suffix}", default, kind, doc)
                             for suffix, default, kind, doc in suffixes])


_TLS_GRADES = ("export", "low", "medium", "high", "null")
_TLS_CLIENT_LEVELS = ("none", "may", "encrypt", "dane", "dane-only", "fingerprint", "verify", "secure")


def _client_tls(prefix: str, secure_match: str) -> list[Param]:
    """The smtp_tls_* (or lmtp_tls_*) parameters of the client TLS policy (pymailsys.smtp.tls)."""
    return [
        _p(f"{prefix}_tls_security_level", "", "enum",
           "none, may, encrypt, verify, secure (dane: may)", choices=("", *_TLS_CLIENT_LEVELS),
           refuse=("dane-only", "fingerprint"), service=prefix),
        _p(f"{prefix}_use_tls", "no", "bool",
           f"obsolete: with {prefix}_tls_security_level empty, yes is level may"),
        _p(f"{prefix}_enforce_tls", "no", "bool",
           f"obsolete: with {prefix}_tls_security_level empty, yes is level verify "
           f"({prefix}_tls_enforce_peername) or encrypt"),
        _p(f"{prefix}_tls_enforce_peername", "yes", "bool",
           f"obsolete: {prefix}_enforce_tls means verify, not encrypt"),
        _p(f"{prefix}_tls_policy_maps", "", "maps",
           "per-nexthop TLS policy: level [match=...] [protocols=...] [ciphers=...]"),
        _p(f"{prefix}_tls_CAfile", "", doc="trusted CA certificates (PEM) for verify and secure"),
        _p(f"{prefix}_tls_CApath", "", doc="directory of trusted CA certificates (c_rehash form)"),
        _p(f"{prefix}_tls_protocols", ">=TLSv1", doc="TLS protocols at level may"),
        _p(f"{prefix}_tls_mandatory_protocols", ">=TLSv1",
           doc="TLS protocols at level encrypt and above"),
        _p(f"{prefix}_tls_ciphers", "medium", "enum", "cipher grade at level may",
           choices=_TLS_GRADES),
        _p(f"{prefix}_tls_mandatory_ciphers", "medium", "enum",
           "cipher grade at level encrypt and above", choices=_TLS_GRADES),
        _p(f"{prefix}_tls_exclude_ciphers", "", "list", "ciphers never used (OpenSSL names)"),
        _p(f"{prefix}_tls_mandatory_exclude_ciphers", "", "list",
           "ciphers not used when TLS is required (encrypt and above)"),
        _p(f"{prefix}_tls_verify_cert_match", "hostname",
           doc="certificate name patterns at level verify"),
        _p(f"{prefix}_tls_secure_cert_match", secure_match,
           doc="certificate name patterns at level secure"),
        _p(f"{prefix}_tls_loglevel", "0", "int", "TLS logging: 0 none, 1 the handshake summary"),
        _p(f"{prefix}_starttls_timeout", "300s", "time",
           "time limit of the TLS handshake after STARTTLS"),
        _p(f"{prefix}_tls_servername", "",
           doc="SNI: none when empty, else hostname (the server's), nexthop, or a name"),
    ]


_TABLE: list[Param] = [
    # identity and locations
    _p("mail_name", "Postfix", doc="mail system name used in the SMTP greeting and Received headers"),
    _p("mail_version", "", doc="version string (computed)"),
    _p("myhostname", "", doc="this host's fully-qualified name (computed from the system)"),
    _p("mydomain", "", doc="this host's domain: myhostname minus its first label (computed)"),
    _p("myorigin", "$myhostname", doc="domain appended to unqualified addresses"),
    _p("mydestination", "$myhostname, localhost.$mydomain, localhost", "list",
       "domains delivered by the local transport"),
    _p("config_directory", "/etc/pymailsys", doc="directory holding main.cf and master.cf"),
    _p("queue_directory", "/var/spool/pymailsys", doc="the spool: queues, sockets, pid files"),
    _p("data_directory", "/var/lib/pymailsys", doc="writable data owned by mail_owner"),
    _p("daemon_directory", "/usr/libexec/pymailsys", doc="kept for compatibility; daemons are Python modules"),
    _todo("command_directory", "/usr/sbin", doc="where the administrative commands live"),
    _todo("sendmail_path", "/usr/sbin/sendmail", doc="the sendmail command"),
    _todo("newaliases_path", "/usr/bin/newaliases", doc="the newaliases command"),
    _todo("mailq_path", "/usr/bin/mailq", doc="the mailq command"),
    _p("compatibility_level", "3.6", "level", doc="backwards-compatibility level (pymailsys starts modern)"),
    _p("process_id_directory", "pid", doc="lock and pid files, relative to queue_directory"),
    _p("import_environment", "MAIL_CONFIG MAIL_DEBUG MAIL_LOGTAG TZ LANG=C", "list",
       "environment variables passed to daemons"),
    # privileges
    _p("mail_owner", "postfix", doc="owner of the spool and of unprivileged daemons"),
    _p("setgid_group", "postdrop", doc="group for submission and queue-listing access"),
    _p("default_privs", "nobody", doc="rights for deliveries to commands and files as no one in particular"),
    _p("authorized_submit_users", "static:anyone", "list", doc="local users allowed to submit with sendmail"),
    _p("authorized_mailq_users", "static:anyone", "list", doc="local users allowed to list the queue"),
    _p("authorized_flush_users", "static:anyone", "list", doc="local users allowed to flush the queue"),
    _p("local_login_sender_maps", "static:*", "maps", doc="which envelope senders a local user may use"),
    # logging
    _p("syslog_name", "${multi_instance_name?{$multi_instance_name}:{postfix}}",
       doc="the first part of the log tag"),
    _p("multi_instance_name", "", doc="instance name"),
    _p("syslog_facility", "mail", "enum", "syslog facility",
       choices=("mail", "daemon", "user", *(f"local{i}" for i in range(8)))),
    _p("maillog_file", "", doc="log to this file instead of syslog"),
    _p("maillog_file_prefixes", "/var, /dev/stdout", "list", "allowed maillog_file prefixes"),
    _p("info_log_address_format", "external", "enum",
       "envelope addresses in log lines: external (local part quoted) or internal",
       choices=("external", "internal")),
    # master
    _p("default_process_limit", "100", "int", "default maxproc for master.cf services", minimum=1),
    _p("max_use", "100", "int", "connections a daemon serves before it exits", minimum=1),
    _p("max_idle", "100s", "time", "seconds an idle daemon waits before it exits"),
    _p("service_throttle_time", "60s", "time", "pause before restarting a service that fails at start"),
    _todo("daemon_timeout", "18000s", "time", "how long a daemon may take for one request"),
    _p("ipc_timeout", "3600s", "time", "time limit on internal communication"),
    _todo("ipc_idle", "5s", "time", "idle time before an internal client disconnects"),
    # network
    _p("inet_interfaces", "all", "list", "addresses the mail system listens on"),
    _p("inet_protocols", "all", "list", "ipv4, ipv6 or all", choices=("ipv4", "ipv6", "all")),
    _p("proxy_interfaces", "", "list", "addresses the system receives mail on through a proxy"),
    # Postfix's proxymap serves only these tables; pymailsys reads tables in-process, so a
    # proxy: table named here is read, any other fails its lookups (maps.configure)
    _p("proxy_read_maps",
       "$local_recipient_maps $mydestination $virtual_alias_maps $virtual_alias_domains "
       "$virtual_mailbox_maps $virtual_mailbox_domains $relay_recipient_maps $relay_domains "
       "$canonical_maps $sender_canonical_maps $recipient_canonical_maps $relocated_maps "
       "$transport_maps $mynetworks $smtpd_sender_login_maps $sender_bcc_maps "
       "$recipient_bcc_maps $smtp_generic_maps $lmtp_generic_maps $alias_maps "
       "$smtpd_client_restrictions $smtpd_helo_restrictions $smtpd_sender_restrictions "
       "$smtpd_relay_restrictions $smtpd_recipient_restrictions "
       "$address_verify_sender_dependent_default_transport_maps "
       "$address_verify_sender_dependent_relayhost_maps $address_verify_transport_maps "
       "$fallback_transport_maps $lmtp_discard_lhlo_keyword_address_maps "
       "$lmtp_pix_workaround_maps $lmtp_sasl_password_maps $lmtp_tls_policy_maps "
       "$mailbox_command_maps $mailbox_transport_maps "
       "$postscreen_discard_ehlo_keyword_address_maps $rbl_reply_maps "
       "$sender_dependent_default_transport_maps $sender_dependent_relayhost_maps "
       "$smtp_discard_ehlo_keyword_address_maps $smtp_pix_workaround_maps "
       "$smtp_sasl_password_maps $smtp_tls_policy_maps "
       "$smtpd_discard_ehlo_keyword_address_maps $smtpd_milter_maps $virtual_gid_maps "
       "$virtual_uid_maps $local_login_sender_maps $postscreen_reject_footer_maps "
       "$smtpd_reject_footer_maps $tls_server_sni_maps $tlsproxy_client_policy_maps "
       "$default_delivery_status_filter $lmtp_delivery_status_filter $lmtp_dns_reply_filter "
       "$lmtp_reply_filter $local_delivery_status_filter $pipe_delivery_status_filter "
       "$postscreen_command_filter $smtp_delivery_status_filter $smtp_dns_reply_filter "
       "$smtp_reply_filter $smtpd_command_filter $smtpd_dns_reply_filter "
       "$virtual_delivery_status_filter $body_checks $header_checks $lmtp_body_checks "
       "$lmtp_header_checks $lmtp_mime_header_checks $lmtp_nested_header_checks "
       "$milter_header_checks $mime_header_checks $nested_header_checks $smtp_body_checks "
       "$smtp_header_checks $smtp_mime_header_checks $smtp_nested_header_checks",
       "list", "the proxy:type:name tables that may be read (the words with proxy:)"),
    _p("mynetworks", "", "list", "trusted client networks (empty: from mynetworks_style)"),
    _p("mynetworks_style", "${{$compatibility_level} <level {2} ? {subnet} : {host}}", "enum",
       "host, subnet or class", choices=("host", "subnet", "class")),
    # queue
    _p("hash_queue_names", "deferred, defer", "list", "queues with hashed subdirectories"),
    _p("hash_queue_depth", "1", "int", "levels of hashed subdirectories", minimum=1),
    _p("enable_long_queue_ids", "no", "bool", "use long, non-repeating queue IDs"),
    _p("queue_run_delay", "300s", "time", "how often qmgr scans the deferred queue"),
    _p("minimal_backoff_time", "300s", "time", "least time between delivery attempts"),
    _p("maximal_backoff_time", "4000s", "time", "most time between delivery attempts"),
    _p("transport_retry_time", "60s", "time",
       "time qmgr leaves alone a transport whose delivery agent failed"),
    _p("maximal_queue_lifetime", "5d", "time", "time a message may stay queued", "d"),
    _p("bounce_queue_lifetime", "5d", "time", "time a bounce may stay queued", "d"),
    _p("delay_warning_time", "0h", "time", "when to warn the sender of delayed mail", "h"),
    _p("defer_transports", "", "list",
       "transports whose mail waits in deferred/ until a flush (postqueue -f, sendmail -q)"),
    _p("qmgr_message_active_limit", "20000", "int", "messages in the active queue", minimum=1),
    _p("default_destination_concurrency_limit", "20", "int", "parallel deliveries per destination"),
    _p("local_destination_concurrency_limit", "2", "int", "parallel local deliveries per recipient"),
    _p("default_destination_recipient_limit", "50", "int", "recipients per delivery request"),
    _p("local_destination_recipient_limit", "1", "int", "recipients per local delivery request"),
    # qmgr's scheduler (pymailsys.queue.scheduler); each also as <transport>_... without
    # "default_" (smtp_recipient_limit, local_initial_destination_concurrency, ...)
    _p("qmgr_message_recipient_limit", "20000", "int", "recipients qmgr holds in memory",
       minimum=1),
    _p("qmgr_message_recipient_minimum", "10", "int",
       "recipients read from a message at a time when memory is full", minimum=1),
    _p("default_recipient_limit", "20000", "int",
       "in-memory recipients per transport before a message's next ones are read", minimum=1),
    _p("initial_destination_concurrency", "5", "int", "starting concurrency per destination",
       minimum=1),
    _p("default_destination_concurrency_positive_feedback", "1",
       doc="window increase per delivery: a number in (0, 1], 1/concurrency or 1/sqrt_concurrency"),
    _p("default_destination_concurrency_negative_feedback", "1",
       doc="window decrease per site failure: a number in (0, 1], 1/concurrency or "
           "1/sqrt_concurrency"),
    _p("default_destination_concurrency_failed_cohort_limit", "1", "int",
       "failed cohorts after which a destination is dead (0: never)"),
    _p("default_destination_rate_delay", "0s", "time",
       "pause between deliveries to one destination (above 0: one delivery at a time)"),
    _p("destination_concurrency_feedback_debug", "no", "bool",
       "log each destination's concurrency window changes"),
    _p("queue_minfree", "0", "size", "free space the queue file system must keep"),
    _p("duplicate_filter_limit", "1000", "int", "recipients remembered for duplicate removal"),
    # resolution
    _p("local_transport", "local:$myhostname", doc="transport for mydestination domains"),
    _p("default_transport", "smtp", doc="transport for all other domains"),
    _p("relay_transport", "relay", doc="transport for relay_domains"),
    _p("fast_flush_domains", "$relay_domains", "list",
       "destinations whose deferred mail the flush service logs (ETRN, postqueue -s)"),
    _p("flush_service_name", "flush", doc="the fast flush service"),
    _p("fast_flush_refresh_time", "12h", "time",
       "make due the mail of a fast flush log not read for this long (master's wake-up of flush)",
       "h", minimum=1),
    _p("fast_flush_purge_time", "7d", "time", "remove an empty fast flush log unwritten this long",
       "d", minimum=1),
    _p("virtual_transport", "virtual", doc="transport for virtual_mailbox_domains"),
    _p("relay_domains", "${{$compatibility_level} <level {2} ? {$mydestination} : {}}", "list",
       "domains this system relays to"),
    _p("relayhost", "", doc="next hop for non-local mail"),
    _p("virtual_alias_domains", "$virtual_alias_maps", "list", "virtual alias domains"),
    _p("virtual_alias_maps", "$virtual_maps", "maps", "virtual alias tables"),
    _p("virtual_maps", "", "maps", "obsolete name of virtual_alias_maps"),
    _p("virtual_mailbox_domains", "$virtual_mailbox_maps", "list", "virtual mailbox domains"),
    _p("virtual_mailbox_maps", "", "maps", "virtual mailbox tables"),
    # the virtual delivery agent
    _p("virtual_mailbox_base", "", doc="directory the virtual_mailbox_maps paths are relative to"),
    _p("virtual_uid_maps", "", "maps", "owner uid of each virtual mailbox"),
    _p("virtual_gid_maps", "", "maps", "owner gid of each virtual mailbox"),
    _p("virtual_minimum_uid", "100", "int", "lowest uid virtual delivers as", minimum=1),
    _p("virtual_mailbox_limit", "51200000", "size", "largest virtual mailbox or maildir file"),
    _p("virtual_mailbox_lock", "fcntl, dotlock", "list", "virtual mbox locking methods",
       choices=("fcntl", "flock", "dotlock")),
    _p("virtual_destination_recipient_limit", "$default_destination_recipient_limit", "int",
       "recipients per virtual delivery request"),
    _p("transport_maps", "", "maps", "per-address transport tables"),
    _p("relocated_maps", "", "maps", "addresses that have moved: mail to them bounces with "
       "'5.1.6 User has moved to VALUE'"),
    _p("content_filter", "",
       doc="transport:nexthop every message smtpd and pickup receive is delivered to first"),
    _p("default_filter_nexthop", "",
       doc="nexthop of a content filter without one (empty: the recipient's domain)"),
    _p("append_dot_mydomain", "${{$compatibility_level} <level {1} ? {yes} : {no}}", "bool",
       "append .$mydomain to user@host"),
    _p("swap_bangpath", "yes", "bool", "rewrite a!b to b@a"),
    _p("allow_percent_hack", "yes", "bool", "rewrite u%d@local to u@d"),
    _p("allow_untrusted_routing", "no", "bool",
       "let an access table's OK pass a recipient that still has @, % or ! routing"),
    _p("helpful_warnings", "yes", "bool",
       "warn about a domain listed in two address classes"),
    _p("recipient_delimiter", "", doc="separator between user and extension"),
    _p("parent_domain_matches_subdomains", "debug_peer_list,fast_flush_domains,mynetworks,"
       "permit_mx_backup_networks,qmqpd_authorized_clients,relay_domains,smtpd_access_maps",
       "list", "tables where a domain also matches its subdomains"),
    _p("default_database_type", "hash", "type", doc="table type when postmap/postalias get none"),
    # smtpd
    _p("smtpd_banner", "$myhostname ESMTP $mail_name", doc="the text after 220 in the greeting"),
    _p("smtpd_relay_restrictions", "${{$compatibility_level} <level {1} ? {} : "
       "{permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination}}", "list",
       "relay control at RCPT TO"),
    _p("smtpd_recipient_restrictions", "", "list", "restrictions at RCPT TO"),
    _p("smtpd_client_restrictions", "", "list", "restrictions on the client"),
    _p("smtpd_helo_restrictions", "", "list", "restrictions on HELO/EHLO"),
    _p("smtpd_sender_restrictions", "", "list", "restrictions at MAIL FROM"),
    _p("smtpd_data_restrictions", "", "list", "restrictions at DATA"),
    _p("smtpd_end_of_data_restrictions", "", "list", "restrictions after the message"),
    _p("smtpd_etrn_restrictions", "", "list", "restrictions on the ETRN command"),
    _p("smtpd_delay_reject", "yes", "bool", "apply client/helo/sender restrictions at RCPT"),
    _p("smtpd_helo_required", "no", "bool", "require HELO/EHLO before MAIL"),
    _p("smtpd_recipient_limit", "1000", "int", "recipients per message", minimum=1),
    _p("smtpd_timeout", "300s", "time", "idle timeout for SMTP clients"),
    _p("smtpd_error_sleep_time", "1s", "time", "pause after an error reply"),
    _p("smtpd_soft_error_limit", "10", "int", "errors before slowing down"),
    _p("smtpd_hard_error_limit", "20", "int", "errors before disconnecting"),
    _p("smtpd_forbid_bare_newline", "normalize", "enum", "how bare LF in DATA is treated",
       choices=("normalize", "yes", "true", "reject", "note", "no", "false")),
    _p("smtpd_forbid_bare_newline_exclusions", "$mynetworks", "list",
       "clients exempt from smtpd_forbid_bare_newline"),
    _p("smtpd_forbid_unauth_pipelining", "yes", "bool", "disconnect on illegal pipelining"),
    _p("smtpd_discard_ehlo_keywords", "", "list", "EHLO keywords not announced"),
    _p("disable_vrfy_command", "no", "bool", "refuse VRFY"),
    _p("smtpd_client_connection_count_limit", "50", "int", "simultaneous connections per client"),
    _p("smtpd_client_connection_rate_limit", "0", "int",
       "connections per client per anvil_rate_time_unit (0: no limit)"),
    _p("smtpd_client_message_rate_limit", "0", "int",
       "MAIL commands per client per anvil_rate_time_unit (0: no limit)"),
    _p("smtpd_client_recipient_rate_limit", "0", "int",
       "RCPT and VRFY commands per client per anvil_rate_time_unit (0: no limit)"),
    _p("smtpd_client_event_limit_exceptions", "${smtpd_client_connection_limit_exceptions:$mynetworks}",
       "list", "clients the smtpd_client_*_limit parameters do not apply to"),
    _p("smtpd_client_connection_limit_exceptions", "", "list",
       "obsolete name of smtpd_client_event_limit_exceptions"),
    _p("anvil_rate_time_unit", "60s", "time", "the time unit of anvil's rate counters"),
    _p("anvil_status_update_time", "600s", "time", "how often anvil logs its peak statistics"),
    _p("message_size_limit", "10240000", "size", "largest message accepted"),
    _p("header_size_limit", "102400", "size", "largest header"),
    _p("header_address_token_limit", "10240", "int",
       "tokens of an address header that cleanup parses; the rest are dropped"),
    _p("cleanup_replace_stray_cr_lf", "yes", "bool",
       "replace stray CR and LF characters in message content with a space"),
    _p("line_length_limit", "2048", "int", "longest line kept whole in a queue file",
       minimum=512),
    _p("sendmail_fix_line_endings", "always", "enum",
       "CRs sendmail removes at line ends: always, strict (when the first line has CRLF), never",
       choices=("always", "strict", "never")),
    _p("hopcount_limit", "50", "int", "Received: headers before a message is refused"),
    _p("local_recipient_maps", "proxy:unix:passwd.byname $alias_maps", "maps",
       "tables of valid local recipients"),
    _p("unknown_local_recipient_reject_code", "550", "int", "reply for unknown local recipients"),
    _p("smtputf8_autodetect_classes", "sendmail, verify", "list",
       "mail origins whose UTF-8 makes cleanup ask for SMTPUTF8 by itself",
       choices=("sendmail", "smtpd", "qmqpd", "forward", "bounce", "notify", "verify", "all")),
    _p("smtputf8_enable", "${{$compatibility_level} <level {1} ? {no} : {yes}}", "bool",
       "announce SMTPUTF8"),
    _p("smtpd_reject_unlisted_recipient", "yes", "bool", "reject unknown recipients in our domains"),
    _p("smtpd_reject_unlisted_sender", "no", "bool", "reject unknown senders in our domains"),
    _p("reject_code", "554", "int", "reply code of the reject restriction"),
    _p("defer_code", "450", "int", "reply code of the defer restriction"),
    _p("relay_domains_reject_code", "554", "int", "reply code for relay access denied"),
    _p("access_map_reject_code", "554", "int", "reply code of REJECT in access tables"),
    _p("access_map_defer_code", "450", "int", "reply code of DEFER in access tables"),
    _p("non_fqdn_reject_code", "504", "int", "reply code for non-FQDN names and addresses"),
    _p("invalid_hostname_reject_code", "501", "int", "reply code for malformed HELO names"),
    _p("unknown_virtual_alias_reject_code", "550", "int", "reply for unknown virtual alias recipients"),
    _p("relay_recipient_maps", "", "maps", "valid recipients in relay_domains (empty: any)"),
    _p("unknown_relay_recipient_reject_code", "550", "int",
       "reply for recipients in relay_domains that relay_recipient_maps does not list"),
    _p("unknown_virtual_mailbox_reject_code", "550", "int",
       "reply for unknown virtual mailbox recipients"),
    _p("smtpd_null_access_lookup_key", "<>", doc="access-table key for the null sender"),
    _p("maps_rbl_reject_code", "554", "int", "reply code when a DNS list matches"),
    _p("smtpd_policy_service_timeout", "100s", "time", "time limit of one policy request"),
    _p("smtpd_policy_service_max_idle", "300s", "time",
       "an unused policy server connection is closed after this"),
    _p("smtpd_policy_service_max_ttl", "1000s", "time",
       "a policy server connection is closed this long after it was opened"),
    _p("smtpd_policy_service_request_limit", "0", "int",
       "requests per policy server connection (0: no limit)"),
    _p("smtpd_policy_service_try_limit", "2", "int", "attempts of one policy request",
       minimum=1),
    _p("smtpd_policy_service_retry_delay", "1s", "time", "pause between policy request attempts"),
    _p("smtpd_policy_service_default_action", "451 4.3.5 Server configuration problem",
       doc="the access(5) action when a policy server cannot be reached"),
    _p("smtpd_policy_service_policy_context", "", doc="sent to policy servers as policy_context"),
    _p("default_rbl_reply", "$rbl_code Service unavailable; $rbl_class [$rbl_what] blocked using "
       "$rbl_domain${rbl_reason?; $rbl_reason}", doc="reply template of the DNS list "
       "restrictions (expanded per reply)"),
    _p("rbl_reply_maps", "", "maps", "reply templates per DNS list domain"),
    _p("unknown_client_reject_code", "450", "int",
       "reply code of reject_unknown_client_hostname and reject_unknown_reverse_client_hostname"),
    _p("unknown_hostname_reject_code", "450", "int", "reply code of reject_unknown_helo_hostname"),
    _p("unknown_address_reject_code", "450", "int",
       "reply code of reject_unknown_sender_domain and reject_unknown_recipient_domain"),
    _p("reject_tempfail_action", "defer_if_permit", "enum",
       "action after a temporary failure of a reject_unknown_* restriction",
       choices=("defer", "defer_if_permit")),
    _p("unknown_address_tempfail_action", "$reject_tempfail_action", "enum",
       "reject_unknown_sender/recipient_domain after a temporary DNS failure",
       choices=("defer", "defer_if_permit")),
    _p("unknown_helo_hostname_tempfail_action", "$reject_tempfail_action", "enum",
       "reject_unknown_helo_hostname after a temporary DNS failure",
       choices=("defer", "defer_if_permit")),
    _p("smtpd_peername_lookup", "yes", "bool", "look up the client name in the DNS"),
    _p("smtpd_recipient_overshoot_limit", "1000", "int", "recipients over the limit before errors count"),
    _p("smtpd_junk_command_limit", "100", "int", "NOOP, VRFY, ETRN, RSET before they count as errors"),
    _p("smtpd_forbidden_commands", "CONNECT GET POST regexp:{{/^[^A-Z]/ Bogus}}", "list",
       "commands that end the session at once (as does a header name)"),
    _p("strict_rfc821_envelopes", "no", "bool", "require <> around MAIL FROM and RCPT TO addresses"),
    _p("smtpd_upstream_proxy_protocol", "", "enum", "PROXY protocol before SMTP: haproxy",
       choices=("", "haproxy")),
    _p("smtpd_upstream_proxy_timeout", "5s", "time", "time limit for the PROXY header"),
    # smtpd SASL (pymailsys.smtp.sasl: Dovecot's auth server)
    _p("smtpd_sasl_auth_enable", "no", "bool", "offer SMTP AUTH"),
    _p("smtpd_sasl_type", "cyrus", doc="SASL implementation: dovecot (cyrus makes smtpd refuse)"),
    _p("smtpd_sasl_path", "smtpd", doc="Dovecot auth socket, absolute or under queue_directory"),
    _p("smtpd_sasl_security_options", "noanonymous", "list",
       "mechanism properties refused before TLS", choices=(
           "noplaintext", "noactive", "nodictionary", "noanonymous", "mutual_auth",
           "forward_secrecy")),
    _p("smtpd_sasl_tls_security_options", "$smtpd_sasl_security_options", "list",
       "mechanism properties refused after STARTTLS", choices=(
           "noplaintext", "noactive", "nodictionary", "noanonymous", "mutual_auth",
           "forward_secrecy")),
    _p("smtpd_sasl_authenticated_header", "no", "bool", "name the SASL login in Received:"),
    _p("smtpd_sasl_response_limit", "12288", "int", "longest AUTH response line",
       minimum=12288),  # Postfix's minimum
    _p("smtpd_sender_login_maps", "", "maps", "the logins that own each sender address"),
    _p("broken_sasl_auth_clients", "no", "bool", "also announce AUTH=mechanisms"),
    _p("smtpd_sasl_service", "smtp", doc="service name passed to the SASL server"),
    _p("smtpd_sasl_local_domain", "", doc="SASL realm (not sent to Dovecot, as in Postfix)"),
    _p("smtpd_sasl_exceptions_networks", "", "list", "clients not offered AUTH in EHLO"),
    _p("smtpd_sasl_mechanism_filter", "!external, static:rest", "list",
       "the server's mechanisms smtpd offers (a string list)"),
    # smtpd TLS (pymailsys.smtp.tls_server)
    _p("smtpd_tls_security_level", "", "enum", "SMTP server TLS: none, may or encrypt",
       choices=("", "none", "may", "encrypt")),
    _p("smtpd_use_tls", "no", "bool", "offer STARTTLS (obsolete: smtpd_tls_security_level = may)"),
    _p("smtpd_enforce_tls", "no", "bool",
       "require STARTTLS (obsolete: smtpd_tls_security_level = encrypt)"),
    _p("smtpd_tls_auth_only", "no", "bool", "offer AUTH only after STARTTLS"),
    _p("smtpd_tls_wrappermode", "no", "bool", "TLS from the first byte (smtps, port 465)"),
    _p("smtpd_tls_cert_file", "", doc="PEM server certificate (and chain)"),
    _p("smtpd_tls_key_file", "$smtpd_tls_cert_file", doc="PEM private key of smtpd_tls_cert_file"),
    _p("smtpd_tls_chain_files", "", "list", "PEM files each holding a key and its certificate chain"),
    _p("smtpd_tls_protocols", ">=TLSv1", doc="TLS protocols smtpd accepts at level may"),
    _p("smtpd_tls_mandatory_protocols", ">=TLSv1",
       doc="TLS protocols smtpd accepts when TLS is required"),
    _p("smtpd_tls_ciphers", "medium", "enum", "cipher grade at level may",
       choices=("high", "medium", "low", "export", "null")),
    _p("smtpd_tls_mandatory_ciphers", "medium", "enum", "cipher grade when TLS is required",
       choices=("high", "medium", "low", "export", "null")),
    _p("smtpd_tls_exclude_ciphers", "", "list", "ciphers smtpd never uses"),
    _p("smtpd_tls_mandatory_exclude_ciphers", "", "list",
       "ciphers smtpd does not use when TLS is required"),
    _p("smtpd_tls_received_header", "no", "bool", "name the TLS protocol and cipher in Received:"),
    _p("smtpd_tls_loglevel", "0", "int", "smtpd TLS logging: 0 none, 1 a summary line"),
    _p("smtpd_starttls_timeout", "300s", "time", "time limit of the TLS handshake"),
    _p("smtpd_tls_ask_ccert", "no", "bool", "ask the client for a certificate"),
    _p("smtpd_tls_req_ccert", "no", "bool",
       "require a trusted client certificate (at smtpd_tls_security_level = encrypt)"),
    _p("smtpd_tls_CAfile", "", doc="PEM CA certificates a client certificate is verified against"),
    _p("smtpd_tls_CApath", "", doc="directory of hashed CA certificates, likewise"),
    _p("smtpd_tls_fingerprint_digest", "${{$compatibility_level} <level {3.6} ? {md5} : {sha256}}",
       "enum", "digest of client certificate fingerprints",
       choices=("md5", "sha1", "sha224", "sha256", "sha384", "sha512")),
    _p("relay_clientcerts", "", "maps", "client certificate fingerprints permit_tls_clientcerts allows"),
    _p("smtpd_tls_session_cache_database", "",
       doc="Postfix's shared TLS session cache: not opened (each smtpd resumes its own sessions)"),
    _p("smtpd_tls_session_cache_timeout", "3600s", "time",
       "how long a TLS session or ticket can be resumed (0: never)"),
    _p("tls_high_cipherlist", "aNULL:-aNULL:HIGH:@STRENGTH", doc="OpenSSL ciphers of grade high"),
    _p("tls_medium_cipherlist", "aNULL:-aNULL:HIGH:MEDIUM:+RC4:@STRENGTH",
       doc="OpenSSL ciphers of grade medium"),
    _p("tls_low_cipherlist", "aNULL:-aNULL:HIGH:MEDIUM:LOW:+RC4:@STRENGTH",
       doc="OpenSSL ciphers of grade low"),
    _p("tls_export_cipherlist", "aNULL:-aNULL:HIGH:MEDIUM:LOW:EXPORT:+RC4:@STRENGTH",
       doc="OpenSSL ciphers of grade export"),
    _p("tls_null_cipherlist", "eNULL:!aNULL", doc="OpenSSL ciphers of grade null"),
    _p("tls_preempt_cipherlist", "no", "bool",
       "a TLS server picks by its own cipher order, not the client's"),
    _p("smtpd_tls_dh1024_param_file", "",
       doc="PEM DH parameters of smtpd's DHE ciphers (empty or auto: OpenSSL's choice)"),
    _todo("smtpd_milters", "", "list", "content filters consulted for SMTP mail", refuse=("*",),
          service="smtpd"),
    _todo("non_smtpd_milters", "", "list", "content filters consulted for sendmail mail",
          refuse=("*",), service="pickup"),
    # cleanup
    _p("always_add_missing_headers", "no", "bool", "add From/Date/Message-ID for remote clients too"),
    _p("local_header_rewrite_clients", "permit_inet_interfaces", "list",
       "clients whose headers are rewritten as local"),
    _p("message_drop_headers", "bcc, content-length, resent-bcc, return-path", "list",
       "headers removed from messages"),
    _p("canonical_maps", "", "maps", "address mapping for envelope and header addresses"),
    _p("sender_canonical_maps", "", "maps", "address mapping for sender addresses"),
    _p("recipient_canonical_maps", "", "maps", "address mapping for recipient addresses"),
    _p("canonical_classes", "envelope_sender, envelope_recipient, header_sender, header_recipient",
       "list", "which addresses canonical mapping applies to",
       choices=("envelope_sender", "envelope_recipient", "header_sender", "header_recipient")),
    _p("masquerade_domains", "", "list", "domains whose subdomains are hidden in addresses"),
    _p("masquerade_exceptions", "", "list", "local parts that are never masqueraded"),
    _p("masquerade_classes", "envelope_sender, header_sender, header_recipient", "list",
       "which addresses masquerading applies to",
       choices=("envelope_sender", "envelope_recipient", "header_sender", "header_recipient")),
    _p("propagate_unmatched_extensions", "canonical, virtual", "list",
       "mappings whose results get the address extension a lookup did not match",
       choices=("canonical", "virtual", "alias", "forward", "include", "generic")),
    _p("virtual_alias_recursion_limit", "1000", "int", "virtual alias expansion depth", minimum=1),
    _p("virtual_alias_expansion_limit", "1000", "int", "addresses one virtual alias expands to",
       minimum=1),
    _p("virtual_alias_address_length_limit", "1000", "int",
       "longest address a virtual alias expands to", minimum=1),
    _p("always_bcc", "", doc="address that receives a copy of every message"),
    _p("sender_bcc_maps", "", "maps", "per-sender BCC addresses"),
    _p("recipient_bcc_maps", "", "maps", "per-recipient BCC addresses"),
    _p("header_checks", "", "maps", "tables of checks for the primary message headers"),
    _p("mime_header_checks", "$header_checks", "maps", "tables of checks for MIME part headers"),
    _p("nested_header_checks", "$header_checks", "maps",
       "tables of checks for the headers of attached messages"),
    _p("body_checks", "", "maps", "tables of checks for body lines"),
    _p("receive_override_options", "", "list",
       "what a receiving service (smtpd, pickup) turns off in cleanup and smtpd",
       choices=("no_unknown_recipient_checks", "no_address_mappings", "no_header_body_checks",
                "no_milters")),
    _p("body_checks_size_limit", "51200", "size", "bytes of each body part body_checks inspect"),
    _p("mime_nesting_limit", "100", "int", "depth of nested multiparts and attached messages"),
    _p("mime_boundary_length_limit", "2048", "int", "bytes of a MIME boundary remembered",
       minimum=1),
    _p("disable_mime_input_processing", "no", "bool",
       "cleanup sees no MIME structure: all after the primary header is body"),
    _p("strict_7bit_headers", "no", "bool", "reject mail with 8-bit data in headers"),
    _p("strict_8bitmime_body", "no", "bool",
       "reject 8-bit body text of a part that does not say 8bit or binary"),
    _p("strict_8bitmime", "no", "bool",
       "both strict_7bit_headers and strict_8bitmime_body"),
    _p("strict_mime_encoding_domain", "no", "bool",
       "reject a multipart or message/* that says an encoding it may not have"),
    _p("detect_8bit_encoding_header", "yes", "bool",
       "a Content-Transfer-Encoding: 8bit or binary header makes the message 8-bit"),
    _p("disable_mime_output_conversion", "no", "bool",
       "send 8-bit content as is to a server without 8BITMIME"),
    _p("append_at_myorigin", "yes", "bool", "append @$myorigin to addresses without a domain"),
    _p("remote_header_rewrite_domain", "", doc="domain appended to incomplete addresses in remote mail"),
    _p("header_from_format", "standard", "enum", "format of the From: header cleanup adds",
       choices=("standard", "obsolete")),
    _p("enable_original_recipient", "yes", "bool", "keep original recipient (O) records"),
    # local
    _p("alias_maps", "hash:/etc/aliases", "maps", "alias tables used by local"),
    _p("alias_database", "hash:/etc/aliases", "maps", "alias tables newaliases builds"),
    _p("home_mailbox", "", doc="mailbox relative to home (/ at the end: Maildir)"),
    _p("mail_spool_directory", "/var/mail", doc="mbox spool (/ at the end: Maildir)"),
    _p("mailbox_command", "", doc="command that delivers to mailboxes"),
    _p("mailbox_transport", "", doc="transport that delivers to mailboxes"),
    _p("mailbox_transport_maps", "", "maps",
       "per-user transport for mailbox delivery (key: the user name), before mailbox_transport"),
    _p("mailbox_command_maps", "", "maps",
       "per-user mailbox command (key: the user name), before mailbox_command"),
    _p("fallback_transport_maps", "", "maps",
       "per-user transport for unknown local users (key: the user name), before "
       "fallback_transport"),
    _p("luser_relay", "", doc="catch-all address for unknown local users ($user, $local, "
       "$extension, $domain, $recipient, $recipient_delimiter expanded per recipient)"),
    _p("forward_path", "$home/.forward${recipient_delimiter}${extension}, $home/.forward", "list",
       ".forward file search path"),
    _p("forward_expansion_filter",
       "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
       doc="characters allowed in $name expansions of forward_path"),
    _p("allow_mail_to_commands", "alias, forward", "list", "where |command destinations are allowed",
       choices=("alias", "forward", "include")),
    _p("allow_mail_to_files", "alias, forward", "list", "where /file destinations are allowed",
       choices=("alias", "forward", "include")),
    _p("mailbox_size_limit", "51200000", "size", "largest mailbox or maildir file"),
    _p("command_time_limit", "1000s", "time", "time limit for command delivery"),
    _p("local_command_shell", "", doc="shell (with its options) that runs every command of "
       "local, e.g. smrsh (empty: /bin/sh -c only for commands with shell magic)"),
    _p("command_expansion_filter",
       "1234567890!@%-_=+:,./abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
       doc="characters allowed in the environment of local's commands (others become _)"),
    _p("mailbox_delivery_lock", "fcntl, dotlock", "list", "mbox locking methods",
       choices=("fcntl", "flock", "dotlock")),
    _p("deliver_lock_attempts", "20", "int", "attempts to lock a mailbox"),
    _p("deliver_lock_delay", "1s", "time", "pause between lock attempts"),
    _p("stale_lock_time", "500s", "time", "age after which a dotlock is removed"),
    _p("allow_min_user", "no", "bool", "allow addresses that start with -"),
    _p("biff", "yes", "bool", "notify the local comsat (biff) service of mbox deliveries"),
    _p("strict_mailbox_ownership", "yes", "bool", "defer delivery to a mailbox not owned by the user"),
    # bounces
    _p("notify_classes", "resource, software", "list", "problems reported to postmaster",
       choices=("bounce", "2bounce", "data", "delay", "policy", "protocol", "resource", "software")),
    _p("bounce_notice_recipient", "postmaster", doc="receives notices about bounces"),
    _p("2bounce_notice_recipient", "postmaster", doc="receives undeliverable bounces"),
    _p("delay_notice_recipient", "postmaster", doc="receives notices about delayed mail"),
    _p("error_notice_recipient", "postmaster",
       doc="receives smtpd's transcripts of sessions with errors (notify_classes)"),
    _p("smtpd_history_flush_threshold", "100", "int",
       "history lines smtpd keeps for a transcript past an EHLO, RSET or queued message"),
    _p("double_bounce_sender", "double-bounce", doc="the sender of postmaster notices"),
    _p("bounce_size_limit", "50000", "size", "most of the original message in a bounce"),
    # pickup and submission
    _p("service_name", "", doc="the master.cf service name of the running daemon (read-only)"),
    _p("process_name", "", doc="the program name of the running daemon (read-only)"),
    _p("pickup_service_name", "pickup", doc="the pickup service"),
    _p("cleanup_service_name", "cleanup", doc="the cleanup service"),
    _p("queue_service_name", "qmgr", doc="the queue manager service"),
    _p("showq_service_name", "showq", doc="the queue listing service"),
    _p("empty_address_recipient", "MAILER-DAEMON", doc="how mailq shows the null sender"),
    _p("empty_address_local_login_sender_maps_lookup_key", "<>",
       doc="local_login_sender_maps pattern for the null sender"),
    _todo("bounce_service_name", "bounce", doc="the bounce service"),
    # outbound: the smtp and lmtp delivery agents (daemons/smtp), qmgr's routing to them
    _p("smtp_destination_recipient_limit", "$default_destination_recipient_limit", "int",
       "recipients per smtp delivery request (and per SMTP transaction)"),
    _p("smtp_destination_concurrency_limit", "$default_destination_concurrency_limit", "int",
       "parallel smtp deliveries per destination"),
    _p("relay_destination_recipient_limit", "$default_destination_recipient_limit", "int",
       "recipients per relay delivery request"),
    _p("relay_destination_concurrency_limit", "$default_destination_concurrency_limit", "int",
       "parallel relay deliveries per destination"),
    _p("lmtp_destination_recipient_limit", "$default_destination_recipient_limit", "int",
       "recipients per lmtp delivery request"),
    _p("lmtp_assume_final", "no", "bool",
       "an LMTP server without DSN made the final delivery: NOTIFY=SUCCESS says delivered"),
    _p("lmtp_destination_concurrency_limit", "$default_destination_concurrency_limit", "int",
       "parallel lmtp deliveries per destination"),
    _p("fallback_transport", "", doc="transport for local recipients without a UNIX account"),
    _p("sender_dependent_relayhost_maps", "", "list",
       "per-sender relayhost tables (sender, then @domain, then the <> key)"),
    _p("empty_address_relayhost_maps_lookup_key", "<>",
       doc="sender_dependent_relayhost_maps key for the null sender"),
    _p("sender_dependent_default_transport_maps", "", "maps",
       "per-sender default_transport tables (sender, then @domain, then the <> key)"),
    _p("empty_address_default_transport_maps_lookup_key", "<>",
       doc="sender_dependent_default_transport_maps key for the null sender"),
    _p("fallback_relay", "", "list", "obsolete name of smtp_fallback_relay"),
    _p("smtp_fallback_relay", "$fallback_relay", "list",
       "hosts to try when the MX hosts of a destination fail"),
    _p("lmtp_fallback_relay", "", "list", "hosts to try when the lmtp destination fails"),
    _p("smtp_tcp_port", "smtp", doc="port of a nexthop without one"),
    *[_p(f"{proto}_bind_address{six}", "",
         doc=f"the local IPv{6 if six else 4} address {proto} connects from")
      for proto in ("smtp", "lmtp") for six in ("", "6")],
    *[_p(f"{proto}_randomize_addresses", "yes", "bool",
         f"{proto}: shuffle server addresses of equal preference") for proto in ("smtp", "lmtp")],
    *[_p(f"{proto}_address_preference", "any", "enum",
         f"{proto}: the address family tried first among equals", choices=("any", "ipv4", "ipv6"))
      for proto in ("smtp", "lmtp")],
    _p("disable_dns_lookups", "no", "bool",
       "no DNS in the smtp and lmtp clients (with their dns_support_level empty)"),
    *[_p(f"{proto}_host_lookup", "dns", "list",
         f"how {proto} finds host addresses: dns and/or native (/etc/hosts, nsswitch)",
         choices=("dns", "native")) for proto in ("smtp", "lmtp")],
    *[_p(f"{proto}_dns_support_level", "", "enum",
         f"DNS in {proto}: disabled, enabled (dnssec: enabled, no validating resolver)",
         choices=("", "disabled", "enabled", "dnssec")) for proto in ("smtp", "lmtp")],
    _p("smtp_bind_address_enforce", "no", "bool",
       "defer (4.4.0) when smtp_bind_address(6) cannot be bound"),
    _p("lmtp_bind_address_enforce", "no", "bool",
       "defer (4.4.0) when lmtp_bind_address(6) cannot be bound"),
    _p("lmtp_tcp_port", "24", doc="port of an lmtp nexthop without one"),
    _p("smtp_helo_name", "$myhostname", doc="the name sent in EHLO/HELO"),
    _todo("smtp_send_xforward_command", "no", "bool",
          "send the original client's attributes with XFORWARD when the server offers it"),
    _p("lmtp_lhlo_name", "$myhostname", doc="the name sent in LHLO"),
    _p("smtp_connect_timeout", "30s", "time", "time limit to connect (0: none)"),
    _p("lmtp_connect_timeout", "0s", "time", "time limit to connect (0: none)"),
    _p("smtp_helo_timeout", "300s", "time", "time limit for the greeting and EHLO/HELO replies"),
    _p("lmtp_lhlo_timeout", "300s", "time", "time limit for the greeting and LHLO reply"),
    _p("smtp_mail_timeout", "300s", "time", "time limit for the MAIL FROM reply"),
    _p("lmtp_mail_timeout", "300s", "time", "time limit for the MAIL FROM reply"),
    _p("smtp_rcpt_timeout", "300s", "time", "time limit for a RCPT TO reply"),
    _p("lmtp_rcpt_timeout", "300s", "time", "time limit for a RCPT TO reply"),
    _p("smtp_data_init_timeout", "120s", "time", "time limit for the DATA reply"),
    _p("lmtp_data_init_timeout", "120s", "time", "time limit for the DATA reply"),
    _p("smtp_data_xfer_timeout", "180s", "time", "time limit for each chunk of the message"),
    _p("lmtp_data_xfer_timeout", "180s", "time", "time limit for each chunk of the message"),
    _p("smtp_data_done_timeout", "600s", "time", "time limit for the end-of-data reply"),
    _p("lmtp_data_done_timeout", "600s", "time", "time limit for the end-of-data replies"),
    _p("smtp_quit_timeout", "300s", "time", "time limit for the QUIT (and RSET) reply"),
    _p("lmtp_quit_timeout", "300s", "time", "time limit for the QUIT (and RSET) reply"),
    _p("smtp_discard_ehlo_keywords", "", "list", "EHLO keywords of the server not used"),
    _p("lmtp_discard_lhlo_keywords", "", "list", "LHLO keywords of the server not used"),
    _p("smtp_skip_5xx_greeting", "yes", "bool", "a 5xx greeting: try the next server"),
    _p("lmtp_skip_5xx_greeting", "yes", "bool", "a 5xx greeting: try the next server"),
    _p("smtp_mx_address_limit", "5", "int", "addresses tried per delivery (0: no limit)"),
    _p("lmtp_mx_address_limit", "5", "int", "addresses tried per delivery (0: no limit)"),
    _p("smtp_mx_session_limit", "2", "int", "sessions past the greeting per delivery (0: no limit)"),
    _p("lmtp_mx_session_limit", "2", "int", "sessions past the greeting per delivery (0: no limit)"),
    *[_p(f"{proto}_connection_cache_on_demand", "yes", "bool",
         "keep connections that delivered for the next request (no: only the "
         "connection_cache_destinations)") for proto in ("smtp", "lmtp")],
    *[_p(f"{proto}_connection_cache_destinations", "", "list",
         "nexthop domains whose connections are always kept (names, /file, type:table)")
      for proto in ("smtp", "lmtp")],
    _p("smtp_connection_cache_time_limit", "2s", "time", "how long an idle connection is kept"),
    _p("lmtp_connection_cache_time_limit", "2s", "time", "how long an idle connection is kept"),
    _p("smtp_connection_reuse_time_limit", "300s", "time", "how long a connection is reused"),
    _p("lmtp_connection_reuse_time_limit", "300s", "time", "how long a connection is reused"),
    *_client_tls("smtp", "nexthop, dot-nexthop"),
    *_client_tls("lmtp", "nexthop"),
    # Postfix 3.7 parameters not implemented yet whose absence would weaken security:
    # each makes its service refuse to run when set to anything but Postfix's default
    *_refused("smtpd", [
        ("smtpd_restriction_classes", "", "list", "named restriction lists for access tables"),
        ("smtpd_milter_maps", "", "maps", "per-client content filters"),
        ("smtpd_proxy_filter", "", "str", "before-queue content filter"),
        ("smtpd_client_auth_rate_limit", "0", "int", "AUTH commands per client per time unit"),
        ("smtpd_client_new_tls_session_rate_limit", "0", "int",
         "new TLS sessions per client per time unit"),
        ("smtpd_discard_ehlo_keyword_address_maps", "", "maps", "per-client EHLO keywords not announced"),
        ("smtpd_dns_reply_filter", "", "maps", "DNS replies dropped before restrictions see them"),
        ("smtpd_expansion_filter", "\\t\\40!\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ"
         "[\\\\]^_`abcdefghijklmnopqrstuvwxyz{|}~", "str",
         "characters of client data allowed in DNS list replies"),
        ("smtpd_per_request_deadline",
         "${smtpd_per_record_deadline?{$smtpd_per_record_deadline}:{${stress?{yes}:{no}}}}", "bool",
         "a time limit per request instead of per read"),
        ("smtpd_tls_dcert_file", "", "str", "DSA server certificate"),
        ("smtpd_tls_eccert_file", "", "str", "ECDSA server certificate"),
        ("smtpd_tls_eecdh_grade", "auto", "str", "ECDHE curve grade"),
        ("resolve_dequoted_address", "yes", "bool", "resolve quoted local parts' @ and % as routing"),
    ]),
    *_refused_client("smtp"),
    *_refused_client("lmtp"),
    *_refused("smtpd smtp lmtp", [
        ("tls_ssl_options", "", "list", "OpenSSL options"),
        ("tls_config_file", "default", "str", "OpenSSL configuration file"),
        ("tls_config_name", "", "str", "application section of tls_config_file"),
        ("tls_eecdh_auto_curves", "X25519 X448 prime256v1 secp521r1 secp384r1", "list",
         "ECDHE curves offered"),
    ]),
    _todo("tls_wildcard_matches_multiple_labels", "yes", "bool",
          "a certificate's *.example.com matches a.b.example.com", refuse=("no",),
          service="smtp lmtp"),
    *_refused("cleanup", [
        ("message_reject_characters", "", "str", "characters that make cleanup reject a message"),
        ("message_strip_characters", "", "str", "characters cleanup removes from messages"),
    ]),
    *_refused("master", [("master_service_disable", "", "list", "master.cf services not started")]),
]

PARAMS: dict[str, Param] = {p.name: p for p in _TABLE}


@functools.cache
def _system_hostname() -> str:
    name = socket.gethostname()
    if "." not in name:
        try:
            fqdn = socket.getfqdn(name)
        except OSError:
            fqdn = name
        if "." in fqdn and not fqdn.startswith("localhost"):
            name = fqdn
    if "." not in name:
        name = name + ".localdomain"
    return name.lower()


def system_default(name: str) -> str | None:
    """Machine-dependent defaults, or None when the table's default applies."""
    from pymailsys import MAIL_VERSION

    if name == "myhostname":
        return _system_hostname()
    if name == "mydomain":
        host = _system_hostname()
        return host.split(".", 1)[1] if "." in host else "localdomain"
    if name == "mail_version":
        return MAIL_VERSION
    if name == "process_name":
        program = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "postfix"
        return program[:-3] if program.endswith(".py") else program
    return None


def default_of(name: str) -> str:
    """The unexpanded built-in default of a declared parameter."""
    computed = system_default(name)
    if computed is not None:
        return computed
    return PARAMS[name].default
