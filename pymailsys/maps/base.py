"""The lookup-table contract every table type implements, and the registry it joins.

``Table`` is one table: ``lookup(key)`` returns a string (found), ``None`` (not
found) or raises ``TableError`` (the table could not answer; callers defer, they
never treat this as not found). ``owner`` says whose the table is (Postfix's
dict->owner), for local(8), which runs an alias's commands and files with the
rights of the table's owner: the uid of the file the table was read from (0:
root, trusted), 0 for a table that has no file (static, inline: main.cf's), or
None when it is unknown (the default for a type that says nothing, as
Postfix's dict_alloc; local then defers); ``combined_owner`` is the owner of a
table made of others (unionmap, pipemap). ``register("type")`` adds a factory for a table
type; ``pymailsys.maps`` opens tables through that registry. ``read_source`` and
``logical_lines`` read the source files of the text-based types (Postfix's
readllines(), the one reader in ``pymailsys.config.lines``: comments and blank
lines skipped, a line starting with white space continues the one before it,
its white space kept).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from pymailsys import log
from pymailsys.bounded_read import FileRefused, read_bounded
from pymailsys.config import lines, split_list


class TableError(Exception):
    """A table could not be opened or could not answer a lookup."""


class TableConfigError(TableError):
    """A table answered what Postfix calls a configuration error (an empty result);
    the warnings are already logged."""


class Table:
    """One lookup table. Subclasses implement lookup()."""

    fold = True  # fold keys to lower case before lookup
    fixed = True  # a fixed-key table (Postfix's DICT_FLAG_FIXED), not a pattern table
    owner: int | None = None  # the owner's uid (0: root or no file, trusted); None: unknown

    def __init__(self, type_name: str, name: str) -> None:
        self.type = type_name
        self.name = name

    @property
    def spec(self) -> str:
        return f"{self.type}:{self.name}"

    def lookup(self, key: str) -> str | None:
        raise NotImplementedError

    def without_regsub(self) -> Table:
        """This table as a security-sensitive parameter uses it (``open_table``'s
        ``regsub=False``): itself, unless its results can copy text of the key."""
        return self

    def changed(self) -> bool:
        """True when the file this table was first opened from has been replaced since
        (Postfix's dict_changed: the daemon should restart); tables without such a file
        never change."""
        return False

    def __repr__(self) -> str:
        return f"<Table {self.spec}>"


def combined_owner(tables: Iterable[Table]) -> int | None:
    """The owner of a table made of ``tables`` (Postfix's DICT_OWNER_AGGREGATE): 0 when
    every one is trusted, the one user who owns any of the others, else None (a member
    of unknown owner, or members of two different users)."""
    owner: int | None = 0
    for table in tables:
        if table.owner is None or (owner and table.owner and table.owner != owner):
            return None
        owner = owner or table.owner
    return owner


Factory = Callable[[str, str], Table]
REGISTRY: dict[str, Factory] = {}


def register(*type_names: str) -> Callable[[Factory], Factory]:
    def deco(factory: Factory) -> Factory:
        for t in type_names:
            REGISTRY[t] = factory
        return factory
    return deco


def split_spec(spec: str) -> tuple[str, str]:
    type_name, sep, name = spec.partition(":")
    if not sep or not type_name or not name:
        raise TableError(f'open dictionary: expecting "type:name" form instead of "{spec}"')
    return type_name, name


# --- source files -------------------------------------------------------------

Warn = Callable[[str], None]


def default_warn(text: str) -> None:
    log.warning(text)


SOURCE_SIZE_LIMIT = 1 << 26  # bytes of a table's source file
SOURCE_READ_TIMEOUT = 60.0  # seconds


def read_source(name: str, inline: bool = False) -> tuple[str, int]:
    """The text of a table's source file (texthash, cidr, regexp, pcre), read once when
    the table is opened, as ``bounded_read`` reads (a regular file of at most
    SOURCE_SIZE_LIMIT bytes, a FIFO never blocks), and the uid of the file read (the
    table's ``owner``); ``TableError("open NAME: reason")`` when it cannot be read.

    With ``inline`` (cidr, regexp, pcre: Postfix's dict_stream_open), a name in braces
    is the source itself, one rule per inner pair of braces: ``regexp:{{/^a/ A}, {/b/
    B}}``, owned by root (main.cf's, as an inline: table)."""
    if inline and name.startswith("{"):
        try:
            rules = [extpar(item) for item in split_list(extpar(name))]
        except ValueError as e:
            raise TableError(str(e)) from None
        return "".join(f"{rule}\n" for rule in rules), 0
    try:
        data, st = read_bounded(name, SOURCE_SIZE_LIMIT, SOURCE_READ_TIMEOUT)
    except (FileRefused, TimeoutError) as e:
        raise TableError(f"open {name}: {e}") from e
    except OSError as e:
        raise TableError(f"open {name}: {e.strerror}") from e
    # lines end at LF only (config.lines): a CR stays text, as in Postfix
    return data.decode("utf-8", "surrogateescape"), st.st_uid


def logical_lines(text: str, name: str) -> Iterator[tuple[int, str]]:
    """The logical lines of table source ``name`` (``config.lines``, Postfix's
    readllines()); one that would start with white space is skipped with
    Postfix's warning."""
    def leading_space(_lineno: int, line: str) -> None:
        more = "..." if len(line) > 30 else ""
        default_warn(f'{name}: logical line must not start with whitespace: "{line[:30]}{more}"')
    return lines.logical_lines(text, leading_space)


def extpar(text: str) -> str:
    """Postfix's extpar(EXTPAR_FLAG_STRIP) of ``{text}``: the text inside, stripped;
    ValueError with Postfix's reason when the braces do not close at the end."""
    if not text.endswith("}") or balanced_end(text) != len(text):
        if balanced_end(text) < 0:
            raise ValueError(f"missing '}}' in \"{text}\"")
        raise ValueError(f"syntax error after '}}' in \"{text}\"")
    return text[1:-1].strip()


def balanced_end(text: str) -> int:
    """The index after the brace that closes text's first one (-1: none closes it)."""
    level = 0
    for i, ch in enumerate(text):
        if ch == "{":
            level += 1
        elif ch == "}":
            level -= 1
            if level == 0:
                return i + 1
    return -1
