"""postconf - show and edit main.cf parameters.

SYNOPSIS
    postconf [-dhHnx] [-c config_dir] [-o name=value] [parameter ...]
    postconf [-c config_dir] -e name=value ...      (also: plain name=value)
    postconf [-c config_dir] -X name ...
    postconf [-c config_dir] -# name ...
    postconf -m
    postconf [-f] [-c config_dir] -M [service[/type] ...]
    postconf [-hHx] [-c config_dir] -P [service[/type[/name]] ...]

DESCRIPTION
    Without options, every parameter declared in ``pymailsys.config.params`` as
    ``name = value`` in name order, the value as main.cf sets it or else the
    built-in default, unexpanded (``name =`` when empty), and the parameters
    main.cf sets that Postfix 3.7 knows (``pymailsys.config.postfix_names``) or
    that are the administrator's own (referred to as ``$name``, or named in
    smtpd_restriction_classes). With names, just those; a Postfix parameter
    that pymailsys leaves out shows Postfix's default (``postconf: warning:
    NAME: unknown parameter`` for a name Postfix does not know either).

    -n    only parameters set in main.cf (and config_directory when -c is given)
    -d    built-in defaults (machine-dependent ones computed), not main.cf
    -x    expand ``$name`` references in the values
    -h    values only;  -H  names only
    -e    edit main.cf: each ``name=value`` replaces every line that sets name
          (continuation lines included), or is appended; comments and other
          lines are kept byte for byte; the file is rewritten under a temporary
          name and renamed into place. Arguments containing ``=`` imply -e.
          As in Postfix, a name is anything up to white space or ``=``, and
          main.cf is edited even when it does not load (so -X or -e can repair
          a malformed line: a line sets the name before its first white space
          or ``=``).
    -X    remove the lines that set each name;  -#  comment them out
    -m    the supported lookup table types (``maps.REGISTRY``)
    -M    master.cf services in Postfix's normalised one-line form
          (``-f``: ``-o`` options folded onto their own lines); names select
          ``service`` or ``service/type``
    -o    ``name=value``: use this value instead of main.cf's (repeatable)
    -P    master.cf's ``-o`` settings as ``service/type/name = value`` (master.cf
          order, names sorted within a service); names select ``service``,
          ``service/type`` or ``service/type/name``; -x expands them as the
          service sees them (``$service_name`` included)
    -c    configuration directory (else $MAIL_CONFIG, else /etc/pymailsys)

DIAGNOSTICS
    ``postconf: warning: /dir/main.cf: unused parameter: foo=bar`` (and
    ``/dir/master.cf: unused parameter: ...`` for a ``-o`` name) for a name
    that is neither declared, nor known to Postfix 3.7 (its built-in, legacy
    and master.cf service-defined names), nor the administrator's own (a
    ``$name`` in main.cf or master.cf; the name is kept: an administrator's
    main.cf always loads). ``postfix check`` says so too, and which known names
    pymailsys ignores.
    With -n, ``postconf: warning: /dir/main.cf, line N: overriding earlier
    entry: name=value`` for each main.cf line that sets a name again.
    ``postconf: fatal: -e, -X, or -# accepts no multi-line input`` and exit status 1,
    main.cf untouched, when a name or value for -e, -X or -# contains a newline (a
    CR is text, as in Postfix).
    ``postconf: fatal: open DIR/.main.cf.XXXXXXXX: Permission denied`` (or write, or
    rename ...) and exit status 1 when an edit cannot be written; main.cf is then
    untouched and no temporary file is left.
    ``postconf: fatal: ...`` and exit status 1 for a malformed main.cf line,
    a malformed master.cf entry (``pymailsys.config.master_cf`` parses it, with the
    same checks as master) or a failed edit.

CONFIGURATION PARAMETERS
    Every parameter in pymailsys.config.params (that table is what -d prints).
"""

from __future__ import annotations

import getopt
import os
import sys
import tempfile

from pymailsys import config as config_mod
from pymailsys import log, maps
from pymailsys.config import master_cf, params, postfix_names, validate
from pymailsys.config.lines import BLANK, SPACE, physical_lines, split_nameval


def _line(name: str, value: str, mode: str) -> str:
    value = " ".join(value.split())  # as Postfix's postconf prints: one space between words
    if mode == "h":
        return value
    if mode == "H":
        return name
    return f"{name} = {value}" if value else f"{name} ="


def _known(cfg: config_mod.Config, entries: list[master_cf.ServiceEntry]) -> set[str]:
    """The main.cf names that are no "unused parameter": declared, known to Postfix,
    or the administrator's own (referred to in main.cf or master.cf)."""
    explicit = cfg.explicit()
    own = postfix_names.user_defined(explicit, entries)
    return set(params.PARAMS) | {
        name for name in explicit
        if name in own or postfix_names.default(name, entries) is not None}


def _warn_unused(cfg: config_mod.Config, entries: list[master_cf.ServiceEntry]) -> None:
    for problem in validate.unused(cfg, entries):
        log.warning(str(problem))


def _quiet_entries(cfg: config_mod.Config) -> list[master_cf.ServiceEntry]:
    """master.cf's services for the names they define; none when it is missing or broken
    (-M and -P say so)."""
    try:
        return master_cf.parse_file(os.path.join(cfg.config_dir, "master.cf"))
    except (OSError, config_mod.ConfigError):
        return []


def _show(cfg: config_mod.Config, names: list[str], defaults: bool, nondefault: bool,
          expand: bool, mode: str) -> int:
    entries = _quiet_entries(cfg)
    explicit = cfg.explicit()
    known = _known(cfg, entries)
    default_cfg = config_mod.Config(cfg.config_dir, {})
    source = default_cfg if defaults else cfg
    if names:
        selected = []
        for name in names:
            if name in known or postfix_names.default(name, entries) is not None:
                selected.append(name)
            else:
                log.warning(f"{name}: unknown parameter")
    elif nondefault:
        selected = sorted(n for n in explicit if n in known)
    else:
        selected = sorted(known)
    out = []
    for name in selected:
        value = source.raw(name)
        if value is None:
            value = postfix_names.default(name, entries) or ""
        if expand:
            try:
                value = source.expand(value)
            except config_mod.ConfigError as e:
                log.fatal(str(e))
        out.append(_line(name, value, mode) + "\n")
    sys.stdout.write("".join(out))
    return 0


# --- editing main.cf -----------------------------------------------------------

def _key(line: str) -> str:
    """The name a main.cf line sets, as Postfix's postconf -e/-X/-# finds it: the text
    before the first white space or ``=`` (``broken`` for a malformed ``broken line``)."""
    end = 0
    while end < len(line) and line[end] not in SPACE and line[end] != "=":
        end += 1
    return line[:end]


def _rewrite(path: str, text: str) -> None:
    """Replace path with text: a temporary file in its directory, renamed into place.
    Any failure is fatal (``open DIR/.main.cf.XXXX: Permission denied``, as Postfix's
    ``open DIR/main.cf.tmp: ...``) with path untouched and the temporary file gone."""
    directory = os.path.dirname(path) or "."
    try:
        st: os.stat_result | None = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as e:
        log.fatal(f"open {path}: {e.strerror}")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".main.cf.", dir=directory)
    except OSError as e:
        log.fatal(f"open {os.path.join(directory, '.main.cf.XXXXXXXX')}: {e.strerror}")
    step = f"write {tmp}"
    try:
        with os.fdopen(fd, "w", encoding="utf-8", errors="surrogateescape",
                       newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        step = f"set owner and mode of {tmp}"
        if st is not None:
            os.chmod(tmp, st.st_mode & 0o7777)
            if os.geteuid() == 0:
                os.chown(tmp, st.st_uid, st.st_gid)
        else:
            os.chmod(tmp, 0o644)
        step = f"rename {tmp} to {path}"
        os.rename(tmp, path)
    except BaseException as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(e, OSError):
            log.fatal(f"{step}: {e.strerror or e}")
        raise


def _read_lines(path: str) -> list[str]:
    """main.cf's lines, split at \\n only: every other byte (CR included) is kept."""
    try:
        with open(path, encoding="utf-8", errors="surrogateescape", newline="") as f:
            return physical_lines(f.read())
    except FileNotFoundError:
        return []
    except OSError as e:
        log.fatal(f"open {path}: {e.strerror}")


def edit_main_cf(path: str, edits: dict[str, str | None], comment: bool = False) -> None:
    """Set (value), remove (None) or comment out (comment=True) parameters in main.cf,
    as Postfix's postconf does: the lines are main.cf's as they are (split at newline
    only; main.cf need not load), a line that starts a logical line sets the name
    ``_key`` says, and its continuation lines go with it, across comment and empty
    lines (which are kept)."""
    lines = _read_lines(path)
    out: list[str] = []
    present: set[str] = set()
    current: str | None = None  # the edited name whose continuation lines these are
    for line in lines:
        stripped = line.lstrip(BLANK)
        if not stripped or stripped[0] == "#":
            out.append(line)
        elif line[0] in BLANK:
            if current is None:
                out.append(line)
            elif comment:
                out.append("#" + line)
        else:
            name = _key(line)
            current = name if name in edits else None
            if current is None:
                out.append(line)
            elif comment:
                out.append("#" + line)
            else:
                present.add(name)
                value = edits[name]
                if value is not None:
                    out.append(f"{name} = {value}")
    if not comment:
        for name, value in edits.items():
            if value is not None and name not in present:
                out.append(f"{name} = {value}")
    _rewrite(path, "".join(line + "\n" for line in out))


# --- master.cf -----------------------------------------------------------------

def _show_master(cfg: config_mod.Config, selectors: list[str], fold: bool) -> int:
    entries = _master_entries(cfg)
    if entries is None:
        return 0
    out = []
    selection = _Selection(selectors)
    for entry in entries:
        if not selection.wants(entry.name, f"{entry.name}/{entry.type}"):
            continue
        head = (f"{entry.name:<10} {entry.type:<5} "
                + " ".join(f"{f:<7}" for f in entry.columns) + " ")
        # In order; an -o setting that contains white space is printed in braces.
        words = [entry.command]
        options: list[str] = []
        command = [entry.command]
        args = entry.args
        i = 0
        while i < len(args):
            if args[i] == "-o" and i + 1 < len(args):
                value = args[i + 1]
                if any(ch.isspace() for ch in value):
                    value = f"{{{value}}}"
                words += ["-o", value]
                options.append(f"    -o {value}\n")
                i += 2
                continue
            words.append(args[i])
            command.append(args[i])
            i += 1
        if fold:
            out.append(head + " ".join(command) + "\n")
            out.extend(options)
        else:
            out.append(head + " ".join(words) + "\n")
    selection.warn_unmatched()
    sys.stdout.write("".join(out))
    return 0


class _Selection:
    """The master.cf names a -M or -P request asks for (none: all of them)."""

    def __init__(self, selectors: list[str]) -> None:
        self.selectors = selectors
        self.matched: set[str] = set()

    def wants(self, *names: str) -> bool:
        """True when a selector is one of names (each selector that is, counts as matched)."""
        if not self.selectors:
            return True
        hit = [s for s in self.selectors if s in names]
        self.matched.update(hit)
        return bool(hit)

    def warn_unmatched(self) -> None:
        for s in self.selectors:
            if s not in self.matched:
                log.warning(f'unmatched request: "{s}"')


def _master_entries(cfg: config_mod.Config) -> list[master_cf.ServiceEntry] | None:
    """master.cf's services; None (after Postfix's warning) when there is no master.cf."""
    path = os.path.join(cfg.config_dir, "master.cf")
    if not os.path.exists(path):
        log.warning(f"open {path}: No such file or directory")
        return None
    try:
        return master_cf.parse_file(path)
    except config_mod.ConfigError as e:
        log.fatal(str(e))


def _show_service_params(cfg: config_mod.Config, selectors: list[str], expand: bool,
                         mode: str) -> int:
    """-P: master.cf's ``-o`` settings as ``service/type/name = value``, in master.cf order,
    names sorted within a service; selectors ``service``, ``service/type`` or
    ``service/type/name``."""
    entries = _master_entries(cfg)
    if entries is None:
        return 0
    out = []
    selection = _Selection(selectors)
    for entry in entries:
        overrides = dict(entry.overrides())
        service_cfg = cfg.with_overrides({**overrides, "service_name": entry.name})
        for name in sorted(overrides):
            full = f"{entry.name}/{entry.type}/{name}"
            if not selection.wants(entry.name, f"{entry.name}/{entry.type}", full):
                continue
            value = overrides[name]
            if expand:
                try:
                    value = service_cfg.expand(value)
                except config_mod.ConfigError as e:
                    log.fatal(str(e))
            out.append(_line(full, value, mode) + "\n")
    selection.warn_unmatched()
    sys.stdout.write("".join(out))
    return 0


# --- main ------------------------------------------------------------------------

def _printable(text: str) -> str:
    """text with control characters as ``?``, as Postfix's printable() shows them."""
    return "".join("?" if ord(ch) < 0x20 or ord(ch) == 0x7f else ch for ch in text)


def run(argv: list[str]) -> int:
    log.init_stderr_only("postconf")
    try:
        opts, args = getopt.gnu_getopt(argv, "c:dehHmMno:PxX#fv")
    except getopt.GetoptError as e:
        sys.stderr.write(f"postconf: {e.msg}\n")
        log.fatal("usage: postconf [-dhHmMnx] [-c config_dir] [-e|-X|-#] [name...]")
    flags = {o for o, _ in opts}
    config_dir = next((a for o, a in opts if o == "-c"), None)
    if "-m" in flags:
        sys.stdout.write("".join(t + "\n" for t in sorted(set(maps.REGISTRY) | {"proxy"})))
        return 0
    if "-d" in flags and "-n" in flags:
        log.fatal("specify one of -d -n")
    overrides: dict[str, str] = {}
    for option, value in opts:
        if option == "-o":
            name, sep, setting = value.partition("=")
            if not sep:
                log.fatal(f"-o option requires parameter=value, not {value}")
            overrides[name.strip()] = setting.strip()
    editing = bool(flags & {"-e", "-X", "-#"}) or bool(args and all("=" in a for a in args))
    if editing and any("\n" in arg for arg in args):
        # A newline would write a line of its own into main.cf: another parameter.
        log.fatal("-e, -X, or -# accepts no multi-line input")
    if editing:
        # Before main.cf is loaded: one that does not load can be repaired with -e/-X/-#.
        main_cf = os.path.join(config_mod.resolve_config_dir(config_dir), "main.cf")
        if "-X" in flags or "-#" in flags:
            if not args:
                log.fatal("missing parameter name")
            edit_main_cf(main_cf, dict.fromkeys(args), comment="-#" in flags)
            return 0
        edits: dict[str, str | None] = {}
        for arg in args:
            try:
                name, value = split_nameval(arg)
            except ValueError as e:
                log.fatal(f'{e}: "{_printable(arg.lstrip(SPACE))}"')
            edits[name] = value
        edit_main_cf(main_cf, edits)
        return 0
    try:
        cfg = config_mod.load(config_dir, overrides or None)
    except config_mod.ConfigError as e:
        log.fatal(str(e))
    _warn_unused(cfg, _quiet_entries(cfg))
    if "-M" in flags:
        return _show_master(cfg, args, "-f" in flags)
    if "-n" in flags:
        for text in cfg.overridden:
            log.warning(text)
    mode = "h" if "-h" in flags else "H" if "-H" in flags else ""
    if "-P" in flags:
        return _show_service_params(cfg, args, "-x" in flags, mode)
    return _show(cfg, args, "-d" in flags, "-n" in flags, "-x" in flags, mode)


def main() -> None:
    sys.exit(run(sys.argv[1:]))


if __name__ == "__main__":
    main()
