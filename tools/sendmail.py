"""sendmail, mailq, newaliases - Postfix to Sendmail compatibility interface.

SYNOPSIS
    sendmail [option ...] [recipient ...]
    mailq                        (= postqueue -p, also sendmail -bp)
    newaliases                   (= postalias $alias_database, also sendmail -bi / -I)

DESCRIPTION
    sendmail reads a message on standard input until end of file, or until a
    line with a lone "." unless -i / -oi is given. CRs at line ends are removed as
    sendmail_fix_line_endings says (always: from every line; strict: when the first
    line ends in CRLF; never). Leading "From " lines are skipped.

    The message goes to the running mail system over public/pickup
    (``pymailsys.submission.handoff``): pickup learns our uid from the
    kernel, checks authorized_submit_users and local_login_sender_maps, and replies after
    cleanup has queued the message. When the system is down (no socket,
    connection refused, or pickup answers "try later"), sendmail writes the
    message to maildrop/ instead (mode 0744 when complete, owned by us) and
    exits 0; pickup takes it in once the system runs.

    Options as Postfix's sendmail: -t (recipients from To/Cc/Bcc, or from the
    Resent- headers when there are any; Bcc headers removed), -i/-oi, -f/-r
    sender, -F full name, -N dsn, -R full|hdrs, -V envid, -B 7BIT|8BITMIME,
    -C config, -G, -bm (default), -bp, -bi/-I, -bs (smtpd in stand-alone
    mode, ``smtpd -S``, on standard input and output; each message a local
    submission by this user), -bd/-bl (postfix start), -bh/-bH (ignored), -q (postqueue
    -f; -q alone takes no value), -qRsite (postqueue -s), -qIqueueid (postqueue -i),
    -qINTERVAL (sendmail ends there, status 0), -XV (VERP: not supported, refused;
    also in Postfix 2.2's form, -V with two characters, after Postfix's warning). -I, -b and -q
    set the mode in the order given, the last one counting, as Postfix's.
    -n is refused, and -c, -x, -m, -oX, -L, -A, -e, -h, -p, -U, -O are
    accepted and ignored, as by Postfix. -bv and -v (one: the delivery status
    report) are not supported (a fatal error). Options end at the first argument
    that is not one (or at "--"), as Postfix's: whatever follows is a
    recipient. A closed standard input, output or error is /dev/null; a
    hangup, interrupt, quit or terminate signal removes the maildrop file
    being written.

DIAGNOSTICS
    Every fatal error exits 75 (EX_TEMPFAIL), as Debian's Postfix 3.7 sendmail
    (its msg_cleanup handler): usage errors, a user not allowed to submit mail,
    a refused address, "No recipient addresses found in message header", a
    message too big alike. A closed standard stream that cannot be reopened
    exits 71 (EX_OSERR). mailq, -bp, -q, -qR and -qI exit as postqueue does, and
    newaliases as postalias (1).

SECURITY
    Runs with the user's privileges only; no setuid or setgid.

CONFIGURATION PARAMETERS
    authorized_submit_users, local_login_sender_maps, alias_database,
    message_size_limit, line_length_limit, pickup_service_name,
    sendmail_fix_line_endings.
"""

from __future__ import annotations

import getopt
import os
import signal
import subprocess
import sys
from typing import BinaryIO, NoReturn

import click

from pymailsys import config as config_mod
from pymailsys import dsn, log, module_argv, rfc822
from pymailsys.queue import maildrop
from pymailsys.submission import access, handoff, login, message

PROGRAM = "sendmail"


def fatal(text: str) -> NoReturn:
    """End sendmail with status 75 (EX_TEMPFAIL), whatever the error, as Postfix's sendmail
    (its msg_cleanup handler exits 75 for every fatal error, the usage errors included)."""
    log.fatal(text, os.EX_TEMPFAIL)


def load_config(config_dir: str | None, program: str) -> config_mod.Config:
    log.init_stderr_only(program)
    if config_dir and os.path.basename(config_dir) == "main.cf":
        config_dir = os.path.dirname(config_dir)
    if config_dir:
        os.environ["MAIL_CONFIG"] = config_dir
    # as Postfix: no main.cf is an error, not a system of defaults (a mistyped -C
    # would submit the mail to whatever instance the defaults name)
    main_cf = os.path.join(config_mod.resolve_config_dir(config_dir), "main.cf")
    try:
        os.stat(main_cf)
    except OSError as e:
        fatal(f"open {main_cf}: {e.strerror}")
    try:
        cfg = config_mod.load(config_dir)
        log.init(cfg, program, stderr=True)
    except (config_mod.ConfigError, OSError) as e:
        fatal(str(e))
    return cfg


# --- enqueue ------------------------------------------------------------------------

def enqueue(cfg: config_mod.Config, *, sender: str | None, full_name: str | None,
            recipients: list[str], extract: bool, dot_rule: bool, encoding: str,
            envid: str, ret: int, notify: int, rewrite_context: str,
            stdin=None) -> str:  # type: ignore[no-untyped-def]
    """Submit one message; returns the queue ID (or maildrop file name).

    The message goes from standard input to a maildrop file a piece at a time
    (``message.read_text``, ``maildrop.MaildropFile``): memory stays the same
    whatever the input, and input over message_size_limit stops there, its file
    removed. Every envelope address passes ``rfc822.envelope_address`` first."""
    uid = os.getuid()
    refused = access.user_acl(cfg, "authorized_submit_users", uid)
    if refused is not None:
        fatal(f"User {refused}({uid}) is not allowed to submit mail")
    if sender is not None:
        env_sender = rfc822.envelope_address(message.parse_sender(sender))
        if env_sender is None:
            fatal(f"-f option specified malformed sender: {sender}")
    else:
        name = login.login_name(uid)
        if name is None:
            fatal(f"no login name found for user ID {uid}")
        env_sender = name
    if full_name is None:
        full_name = login.default_full_name(uid)
    full_name = login.clean_full_name(full_name)
    rcpts: list[str] = []
    for arg in recipients:
        rcpts.extend(rfc822.address_list(arg) or [arg.strip()])
    rcpts = [checked_recipient(r, env_sender, uid) for r in rcpts if r]
    if len(rcpts) > maildrop.MAX_RECIPIENTS:
        fatal(f"{env_sender}({uid}): too many recipients")
    sub = maildrop.Submission(sender=env_sender, recipients=rcpts, full_name=full_name,
                              encoding=encoding, envid=envid, ret=ret, notify=notify,
                              rewrite_context=rewrite_context)
    stream = stdin if stdin is not None else sys.stdin.buffer
    try:
        drop = handoff.create(cfg)
    except handoff.Refused as e:
        fatal(f"{env_sender}({uid}): {e.reason}")
    try:
        copy_input(cfg, stream, drop, sub, extract, dot_rule, uid)
    except BaseException:
        drop.discard()
        raise
    return hand_off(cfg, drop, sub, uid)


def checked_recipient(address: str, env_sender: str, uid: int) -> str:
    """The recipient as the mail system takes it (``rfc822.envelope_address``), or a fatal error."""
    checked = rfc822.envelope_address(address)
    if checked is None:
        fatal(f"{env_sender}({uid}): Bad recipient address syntax: {address}")
    return checked


def copy_input(cfg: config_mod.Config, stream: BinaryIO, drop: maildrop.MaildropFile,
               sub: maildrop.Submission, extract: bool, dot_rule: bool, uid: int) -> None:
    """Standard input to ``drop`` (-t: the recipients in its headers to ``sub``); exits
    on an input error, when the message is too big or there is no recipient."""
    who = f"{sub.sender}({uid})"
    fix_eol = cfg.get("sendmail_fix_line_endings")
    if fix_eol not in message.FIX_EOL:
        fatal(f"invalid sendmail_fix_line_endings value: {fix_eol}")
    headers = (message.Recipients(cfg.get_size("header_size_limit"), maildrop.MAX_RECIPIENTS)
               if extract else None)
    try:
        drop.begin(sub)
        for piece in message.read_text(stream, dot_rule, cfg.get_int("line_length_limit"),
                                       fix_eol):
            for text, ends in [piece] if headers is None else headers.feed(piece):
                drop.text(text, ends)
        if headers is not None:
            for text, ends in headers.end():
                drop.text(text, ends)
            sub.extracted = [checked_recipient(r, sub.sender, uid) for r in headers.addresses()]
        if len(sub.all_recipients()) > maildrop.MAX_RECIPIENTS:
            fatal(f"{who}: too many recipients")
        if not sub.all_recipients():
            if extract:
                fatal(f"{who}: No recipient addresses found in message header")
            fatal(f"{who}: Recipient addresses must be specified on"
                  " the command line or via the -t option")
        drop.end(sub)
    except maildrop.TooBig as e:
        fatal(f"{who}: {e}")
    except message.HeaderTooLong as e:
        fatal(f"{who}: unable to extract recipients: {e}")
    except message.TooManyRecipients as e:
        fatal(f"{who}: {e}")
    except message.InputError as e:
        fatal(f"{who}: error reading input: {e}")
    except OSError as e:
        fatal(f"{who}: error writing queue file: {e.strerror or e}")


def hand_off(cfg: config_mod.Config, drop: maildrop.MaildropFile, sub: maildrop.Submission,
             uid: int) -> str:
    """Live submission over public/pickup, else a maildrop file; exits when refused."""
    try:
        return handoff.hand_off_file(cfg, drop, sub, uid)
    except handoff.Refused as e:
        fatal(f"{sub.sender}({uid}): {e.reason}")


# --- -bs: SMTP on standard input/output --------------------------------------------------

def run_smtpd_standalone(cfg: config_mod.Config) -> NoReturn:
    """-bs runs smtpd in stand-alone mode on our standard input and output, as
    Postfix's sendmail runs ``smtpd -S``: the same protocol, checks and replies as
    the SMTP service, each message a local submission by this user."""
    uid = os.getuid()
    refused = access.user_acl(cfg, "authorized_submit_users", uid)
    if refused is not None:
        fatal(f"User {refused}({uid}) is not allowed to submit mail")
    argv = module_argv("pymailsys.daemons.smtpd", "-S", "-c", cfg.config_dir)
    try:
        os.execv(sys.executable, argv)
    except OSError as e:
        fatal(f"execv {sys.executable}: {e.strerror}")


# --- other modes ---------------------------------------------------------------------

def run_mailq(cfg: config_mod.Config, verbose: int = 0) -> NoReturn:
    run_postqueue(cfg, "-p")


def run_newaliases(cfg: config_mod.Config, alias_map: str | None = None) -> NoReturn:
    from pymailsys import maps
    from pymailsys.maps import build as mapbuild

    specs = [alias_map] if alias_map else cfg.get_list("alias_database")
    if not specs:
        sys.exit(0)
    log.init(cfg, "postalias", stderr=True)
    try:
        maps.configure(cfg)
    except config_mod.ConfigError as e:
        log.fatal(str(e))  # postalias's, whose work this is: status 1
    for spec in specs:
        try:
            mapbuild.build_aliases(spec)
        except (mapbuild.BuildError, OSError) as e:
            log.fatal(str(e))
    sys.exit(0)


def run_postqueue(cfg: config_mod.Config, *args: str) -> NoReturn:
    """mailq, -bp, -q, -qR and -qI run postqueue in our place, as Postfix's sendmail does."""
    argv = module_argv("pymailsys.tools.postqueue", "-c", cfg.config_dir, *args)
    try:
        os.execv(sys.executable, argv)
    except OSError as e:
        fatal(f"execv {sys.executable}: {e.strerror}")


# --- command line ----------------------------------------------------------------------

MODE_ENQUEUE, MODE_MAILQ, MODE_NEWALIAS, MODE_FLUSHQ, MODE_DAEMON, MODE_USER, MODE_IGNORE = range(7)

GETOPT_LIST = "A:B:C:F:GIL:N:O:R:UV:X:b:ce:f:h:imno:p:r:q:tvx"  # as Postfix's sendmail
# -q alone is no getopt option (its "argument" is optional): it becomes -q with a value no
# argument can hold (a null), and only where an option may be, as in Postfix's sendmail
FLUSH_MARK = "-q\0"


def unmark(value: str | None) -> str | None:
    """An argument as given: FLUSH_MARK that was an option's value or a recipient is -q."""
    return "-q" if value == FLUSH_MARK else value


def ordered_options(args: list[str], letters: str) -> list[tuple[str, str]]:
    """The options among ``letters`` in ``args`` (marked), in the order given, with
    their values: -I, -b and -q change the mode in turn, as Postfix's sendmail reads them
    (the last one wins, ``-q -bm`` is delivery mode, ``-bm -q`` a queue flush)."""
    try:
        opts, _rest = getopt.getopt(args, GETOPT_LIST)
    except getopt.GetoptError:
        return []  # click has refused these arguments already
    return [(o[1], v) for o, v in opts if o[1] in letters]


@click.command(context_settings={"help_option_names": [], "allow_interspersed_args": False})
@click.option("-t", "extract", is_flag=True)
@click.option("-i", "no_dot", is_flag=True)
@click.option("-o", "oflags", multiple=True)
@click.option("-f", "sender")
@click.option("-r", "rsender")
@click.option("-F", "full_name")
@click.option("-N", "notify")
@click.option("-R", "ret")
@click.option("-V", "envid")
@click.option("-B", "body")
@click.option("-b", "bflags", multiple=True)
@click.option("-C", "config_dir")
@click.option("-q", "qopts", multiple=True)
@click.option("-X", "xflags", multiple=True)
@click.option("-O", "oopts", multiple=True)
@click.option("-L", "syslog_label")
@click.option("-A", "aflag")
@click.option("-e", "eflag")
@click.option("-h", "hflag")
@click.option("-p", "pflag")
@click.option("-m", "mflag", is_flag=True)
@click.option("-c", "cflag", is_flag=True)
@click.option("-x", "xflag", is_flag=True)
@click.option("-n", "nflag", is_flag=True)
@click.option("-U", "uflag", is_flag=True)
@click.option("-G", "gateway", is_flag=True)
@click.option("-I", "init_aliases", is_flag=True)
@click.option("-v", "verbose", count=True)
@click.argument("recipients", nargs=-1)
@click.pass_context
def cli(ctx: click.Context, extract: bool, no_dot: bool, oflags: tuple[str, ...],
        sender: str | None, rsender: str | None, full_name: str | None, notify: str | None,
        ret: str | None, envid: str | None, body: str | None, bflags: tuple[str, ...],
        config_dir: str | None, qopts: tuple[str, ...], xflags: tuple[str, ...],
        oopts: tuple[str, ...], syslog_label: str | None, aflag: str | None,
        eflag: str | None, hflag: str | None, pflag: str | None, mflag: bool,
        cflag: bool, xflag: bool, nflag: bool, uflag: bool, gateway: bool,
        init_aliases: bool, verbose: int, recipients: tuple[str, ...]) -> None:
    program, args = ctx.obj
    cfg = load_config(config_dir, "sendmail")
    sender, rsender, full_name = (unmark(v) for v in (sender, rsender, full_name))
    recipients = tuple("-q" if a == FLUSH_MARK else a for a in recipients)
    mode = {"mailq": MODE_MAILQ, "newaliases": MODE_NEWALIAS}.get(program, MODE_ENQUEUE)
    dot_rule = True
    encoding = ""
    alias_map = None
    if nflag:
        fatal("-n option not supported")
    if body is not None:
        if body == "8BITMIME":
            encoding = "8bit"
        elif body == "7BIT":
            encoding = "7bit"
        else:
            fatal("-B option needs 8BITMIME or 7BIT")
    dsn_notify = 0
    if notify is not None:
        try:
            dsn_notify = dsn.parse_notify(notify, blanks=True)
        except ValueError:
            log.warning(f"bad -N option value: '{notify}' -- ignored")
    dsn_ret = 0
    if ret is not None:
        try:
            dsn_ret = dsn.parse_ret(ret)
        except ValueError:
            log.warning("bad -R option value -- ignored")
    dsn_envid = ""
    for _opt, value in ordered_options(args, "V"):
        if len(value) == 2:  # Postfix 2.2's VERP option (-V delimiters), now -XV
            given = "-V" if f"-V{value}" not in args else f"-V{value}"
            log.warning(f"option {given} is deprecated with Postfix 2.3; "
                        f"specify -X{given[1:]} instead")
            xflags = (*xflags, "V")
    if envid is not None:
        if len(envid) > dsn.ENVID_MAX:
            log.warning("too long -V option value -- ignored")
        elif not dsn.valid_envid(envid):
            log.warning("bad syntax in -V option value -- ignored")
        else:
            dsn_envid = envid
    for x in xflags:
        fatal(f"unsupported: -X{x[:1]}")  # -XV (VERP) too: not implemented
    verify = False
    site = qid = qtime = None
    for opt, value in ordered_options(args, "bIq"):
        if opt == "I":
            mode = MODE_NEWALIAS
        elif opt == "q" and value == FLUSH_MARK[2:]:  # -q alone
            if mode == MODE_DAEMON:
                log.warning("ignoring -q option in daemon mode")
            else:
                mode = MODE_FLUSHQ
        elif opt == "q":
            if value[:1].isdigit():
                qtime = value
            elif value[:1] == "R":
                site = value[1:]
                if not site:
                    fatal("specify: -qRsitename")
            elif value[:1] == "I":
                qid = value[1:]
                if not qid:
                    fatal("specify: -qIqueueid")
            else:
                fatal(f"-q{value[:1]} is not implemented")
        elif value[:1] in ("d", "l"):
            if mode == MODE_FLUSHQ:
                log.warning("ignoring -q option in daemon mode")
            mode = MODE_DAEMON
        elif value[:1] in ("h", "H"):
            mode = MODE_IGNORE
        elif value[:1] == "i":
            mode = MODE_NEWALIAS
        elif value[:1] == "m":
            mode = MODE_ENQUEUE
        elif value[:1] == "p":
            mode = MODE_MAILQ
        elif value[:1] == "s":
            mode = MODE_USER
        elif value[:1] == "v":
            verify = True
        else:
            fatal(f"unsupported: -b{value[:1]}")
    for o in oflags:
        if o.startswith("A"):
            if len(o) == 1:
                fatal("-oA requires pathname")
            alias_map = o[1:]
        elif o.startswith("i"):
            dot_rule = False
    if no_dot:
        dot_rule = False
    env_sender = sender if sender is not None else rsender
    if extract and mode != MODE_ENQUEUE:
        fatal("-t can be used only in delivery mode")
    if site and mode != MODE_ENQUEUE:
        fatal("-qR can be used only in delivery mode")
    if qid and mode != MODE_ENQUEUE:
        fatal("-qI can be used only in delivery mode")
    if verify and extract:
        fatal("-t option cannot be used with -bv")
    if qtime and mode != MODE_DAEMON:
        sys.exit(0)  # -qINTERVAL: a queue run interval, the qmgr's to keep
    if verify:
        fatal("-bv (address verification) is not supported")
    if verbose == 1 and mode == MODE_ENQUEUE and not site and not qid:
        # Postfix mails the sender a report of the first delivery attempt; there is none
        # to mail here, and a request quietly not done would be worse than a refusal
        fatal("-v (mail delivery status report) is not supported")

    if mode == MODE_ENQUEUE:
        if site:
            if recipients:
                fatal("flush site requires no recipient")
            run_postqueue(cfg, "-s", site)
        if qid:
            if recipients:
                fatal("flush queue_id requires no recipient")
            run_postqueue(cfg, "-i", qid)
        enqueue(cfg, sender=env_sender, full_name=full_name, recipients=list(recipients),
                extract=extract, dot_rule=dot_rule, encoding=encoding, envid=dsn_envid,
                ret=dsn_ret, notify=dsn_notify,
                rewrite_context="remote" if gateway else "local")
        sys.exit(0)
    if mode == MODE_MAILQ:
        if recipients:
            fatal("display queue mode requires no recipient")
        run_mailq(cfg, verbose)
    if mode == MODE_FLUSHQ:
        if recipients:
            fatal("flush queue mode requires no recipient")
        run_postqueue(cfg, "-f")
    if mode == MODE_DAEMON:
        if recipients:
            fatal("daemon mode requires no recipient")
        result = subprocess.run(module_argv("pymailsys.tools.postfix", "-c", cfg.config_dir,
                                            "start"), check=False)
        sys.exit(1 if result.returncode else 0)
    if mode == MODE_NEWALIAS:
        if recipients:
            fatal("alias initialization mode requires no recipient")
        run_newaliases(cfg, alias_map)
    if mode == MODE_USER:
        if recipients:
            fatal("stand-alone mode requires no recipient")
        run_smtpd_standalone(cfg)
    sys.exit(0)


class Interrupted(BaseException):
    """A signal that ends sendmail: raised where it lands, so that the maildrop file being
    written is removed on the way out (``enqueue``, ``handoff``)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _interrupted(signum: int, _frame: object) -> None:
    raise Interrupted(signum)


ENDING_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)


def _run(program: str, argv: list[str] | None = None) -> int:
    """The command; a hangup, interrupt, quit or terminate signal (unless ignored, as under
    nohup) removes a half-written maildrop file and then ends sendmail by that signal,
    as Postfix's postdrop removes its file, instead of leaving the file behind."""
    args = sys.argv[1:] if argv is None else argv
    log.init_stderr_only(program)
    for signum in ENDING_SIGNALS:
        if signal.getsignal(signum) != signal.SIG_IGN:
            signal.signal(signum, _interrupted)
    try:
        marked = [FLUSH_MARK if a == "-q" else a for a in args]
        cli.main(args=marked, prog_name=program, standalone_mode=False, obj=(program, marked))
    except Interrupted as e:
        signal.signal(e.signum, signal.SIG_DFL)
        os.kill(os.getpid(), e.signum)
        return 128 + e.signum  # not reached
    except click.UsageError as e:
        # as Postfix's sendmail: getopt's complaint, then the usage line
        if isinstance(e, click.NoSuchOption):
            sys.stderr.write(f"{program}: invalid option -- '{e.option_name[1:2]}'\n")
        elif isinstance(e, click.BadOptionUsage):
            sys.stderr.write(f"{program}: option requires an argument -- "
                             f"'{e.option_name[1:2]}'\n")
        else:
            sys.stderr.write(f"{program}: {e.format_message()}\n")
        sys.stderr.write(f"{program}: fatal: usage: {program} [options]\n")
        return os.EX_TEMPFAIL  # as every fatal error (``fatal``)
    except click.exceptions.Exit as e:
        return int(e.exit_code)
    except (TimeoutError, BrokenPipeError):
        return os.EX_TEMPFAIL
    return 0


def open_standard_streams() -> None:
    """As Postfix's sendmail: a closed standard input, output or error is opened on
    /dev/null first, so that no file sendmail opens takes its number (a maildrop file
    as fd 2 would take in the error messages) and a closed input is an empty message."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            if os.open(os.devnull, os.O_RDWR) != fd:
                sys.exit(os.EX_OSERR)
            os.set_inheritable(fd, True)  # postqueue and smtpd -S run on it too
    if sys.stdin is None:
        sys.stdin = open(0, closefd=False)
    if sys.stdout is None:
        sys.stdout = open(1, "w", closefd=False)
    if sys.stderr is None:
        sys.stderr = open(2, "w", closefd=False)


def main(argv: list[str] | None = None) -> int:
    name = os.path.basename(sys.argv[0]) if argv is None else PROGRAM
    if name not in ("mailq", "newaliases"):
        name = PROGRAM
    open_standard_streams()
    return _run(name, argv)


def mailq_main(argv: list[str] | None = None) -> int:
    open_standard_streams()
    return _run("mailq", argv)


def newaliases_main(argv: list[str] | None = None) -> int:
    open_standard_streams()
    return _run("newaliases", argv)


if __name__ == "__main__":
    sys.exit(main())
