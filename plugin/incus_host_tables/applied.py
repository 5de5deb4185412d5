"""Where the plugin has put routes on each host interface: a write-ahead
record per interface, so that reading an interface's facts can be scoped to
the tables that may hold them (facts.py) instead of walking every route of
the host.

One file per interface, ``$RUN_DIR/applied/IFNAME``, naming the interface
index it is about: a record of another index is about an interface of the
same name that is gone (its routes went with it), so it counts as no record.
Per family it lists the tables other than main that may hold the plugin's
routes on the interface, and which of the instance prefixes may be the
plugin's in main (``*``: too many to list; main is then dumped, see
facts.py).

- Written *before* an apply puts a route where the record does not say yet
  (the union of what it says and what the apply adds), and set to exactly
  where the plugin's routes are after an apply that went through. A failed
  apply leaves the union: more places to read, never fewer.
- So no record for (name, index) means the plugin never put a route on the
  interface, but for routes made outside this scheme (an earlier version, a
  run directory wiped or not shared): the facts reader falls back to a full
  read when it sees one (see facts.py). An unreadable or malformed record is
  doubt too: full read.
- The run directory is on tmpfs, cleared at boot as the routes are, so no
  fsync: a crash that loses a write also loses the routes it was about.

The parsing and formatting are pure; ``AppliedStore`` is the file I/O.
"""

from __future__ import annotations

import _socket as socket  # not `socket`: see netlink/kernel.py
import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from enum import Enum
from itertools import compress, repeat
from operator import eq, itemgetter
from typing import NamedTuple

from .locking import run_dir
from .model import (
    AF_INET,
    AF_INET6,
    MAIN_TABLE,
    KernelRoute,
    Route,
    family_tables,
    format_prefix,
    in_table,
    kernel_family_tables,
)

Prefix = tuple[int, bytes, int]  # (family, dst, prefixlen)

HEADER = "incus-host-tables applied 1"
FAMILY_WORDS = {AF_INET: "ipv4", AF_INET6: "ipv6"}
_FAMILY_OF_WORD = {word: family for family, word in FAMILY_WORDS.items()}
ANY = "*"


class RecordError(ValueError):
    """A record that cannot be trusted (the reader falls back to a full read)."""


class Applied:
    """Where the plugin's routes on one interface may be.

    ``tables``: per family, the tables other than main. ``main``: per
    family, the prefixes that may be the plugin's in main; a family in
    ``main_any`` may have any prefix there (not listed). Compared by
    identity; a plain class (no `dataclasses` at every start-up)."""

    __slots__ = ("main", "main_any", "tables")

    def __init__(
        self,
        tables: Mapping[int, frozenset[int]] | None = None,
        main: Mapping[int, frozenset[Prefix]] | None = None,
        main_any: frozenset[int] = frozenset(),
    ) -> None:
        self.tables: Mapping[int, frozenset[int]] = tables if tables is not None else {}
        self.main: Mapping[int, frozenset[Prefix]] = main if main is not None else {}
        self.main_any = main_any

    def __repr__(self) -> str:
        return f"Applied({self.tables!r}, {self.main!r}, {self.main_any!r})"

    def tables_of(self, family: int) -> frozenset[int]:
        return self.tables.get(family, frozenset())

    def main_of(self, family: int) -> frozenset[Prefix]:
        return self.main.get(family, frozenset())

    def _key(self) -> tuple[tuple[frozenset[int], frozenset[Prefix], bool], ...]:
        return tuple((self.tables_of(f), self.main_of(f), f in self.main_any) for f in FAMILY_WORDS)

    def __eq__(self, other: object) -> bool:  # an absent family is an empty one
        return isinstance(other, Applied) and self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())

    def __bool__(self) -> bool:
        return bool(self.main_any or any(self.tables.values()) or any(self.main.values()))

    def covers(self, other: Applied) -> bool:
        """Does this record name every place ``other`` names?"""
        return all(
            other.tables_of(f) <= self.tables_of(f)
            and (
                f in self.main_any
                or (f not in other.main_any and other.main_of(f) <= self.main_of(f))
            )
            for f in FAMILY_WORDS
        )

    def union(self, other: Applied) -> Applied:
        return Applied(
            {f: self.tables_of(f) | other.tables_of(f) for f in FAMILY_WORDS},
            {f: self.main_of(f) | other.main_of(f) for f in FAMILY_WORDS},
            self.main_any | other.main_any,
        )


NOTHING = Applied()


_TABLE = itemgetter(1)


def applied_of(routes: Iterable[Route], main_limit: int) -> Applied:
    """Where ``routes`` (the plugin's, on one interface) are; more than
    ``main_limit`` prefixes of a family in main are recorded as any. A
    device may have tens of thousands: the tables are collected in C, and
    only the routes in main are looked at one by one."""
    routes = list(routes)
    pairs = family_tables(routes)
    in_main: Iterable[Route] = ()
    if (AF_INET, MAIN_TABLE) in pairs or (AF_INET6, MAIN_TABLE) in pairs:
        in_main = compress(routes, map(eq, map(_TABLE, routes), repeat(MAIN_TABLE)))
    return _applied(pairs, in_main, main_limit)


def applied_of_kernel(routes: Sequence[KernelRoute], main_limit: int) -> Applied:
    """``applied_of`` the routes of kernel routes, from their columns where
    they have some (model.RouteColumns): no route object is made but for
    those in main."""
    pairs = kernel_family_tables(routes)
    in_main: Iterable[Route] = ()
    if (AF_INET, MAIN_TABLE) in pairs or (AF_INET6, MAIN_TABLE) in pairs:
        in_main = [kr.route for kr in in_table(routes, MAIN_TABLE)]
    return _applied(pairs, in_main, main_limit)


def _applied(pairs: set[tuple[int, int]], in_main: Iterable[Route], main_limit: int) -> Applied:
    tables = {
        f: frozenset(t for fam, t in pairs if fam == f and t != MAIN_TABLE) for f in FAMILY_WORDS
    }
    found: dict[int, set[Prefix]] = {f: set() for f in FAMILY_WORDS}
    for r in in_main:
        found[r.family].add((r.family, r.dst, r.prefixlen))
    main = {f: frozenset(p) for f, p in found.items() if len(p) <= main_limit}
    main_any = {f for f, p in found.items() if len(p) > main_limit}
    return Applied(tables, main, frozenset(main_any))


def format_record(ifindex: int, applied: Applied) -> str:
    lines = [HEADER, f"ifindex {ifindex}"]
    for family, word in FAMILY_WORDS.items():
        tables = " ".join(map(str, sorted(applied.tables_of(family))))
        lines.append(f"{word} tables {tables}".rstrip())
        if family in applied.main_any:
            lines.append(f"{word} main {ANY}")
        else:
            prefixes = sorted(applied.main_of(family))
            words = " ".join(format_prefix(*p) for p in prefixes)
            lines.append(f"{word} main {words}".rstrip())
    return "\n".join(lines) + "\n"


def _prefix(family: int, text: str) -> Prefix:
    address, _, length = text.partition("/")
    try:
        dst = socket.inet_pton(family, address)
    except OSError:
        raise RecordError(f"bad address {address!r}") from None
    limit = 32 if family == AF_INET else 128
    if not length.isdigit() or not 0 <= int(length) <= limit:
        raise RecordError(f"bad prefix length in {text!r}")
    return family, dst, int(length)


def parse_record(text: str) -> tuple[int, Applied]:
    """(interface index, what it says); RecordError when it is not exactly
    what ``format_record`` writes (a torn or foreign file is doubt)."""
    lines = text.split("\n")
    if not text.endswith("\n") or len(lines) != 7 or lines[0] != HEADER:
        raise RecordError("not a complete record")
    key, _, index = lines[1].partition(" ")
    if key != "ifindex" or not index.isdigit() or int(index) <= 0:
        raise RecordError(f"bad interface index line {lines[1]!r}")
    tables: dict[int, frozenset[int]] = {}
    main: dict[int, frozenset[Prefix]] = {}
    main_any: set[int] = set()
    for n, (family, word) in enumerate(FAMILY_WORDS.items()):
        t_words = lines[2 + 2 * n].split(" ")
        m_words = lines[3 + 2 * n].split(" ")
        if t_words[:2] != [word, "tables"] or m_words[:2] != [word, "main"]:
            raise RecordError(f"bad {word} lines")
        if not all(w.isdigit() and 0 < int(w) < 1 << 32 for w in t_words[2:]):
            raise RecordError(f"bad {word} table in {lines[2 + 2 * n]!r}")
        tables[family] = frozenset(map(int, t_words[2:]))
        if m_words[2:] == [ANY]:
            main_any.add(family)
        else:
            main[family] = frozenset(_prefix(family, w) for w in m_words[2:])
    return int(index), Applied(tables, main, frozenset(main_any))


class RecordState(Enum):
    NONE = "none"  # no record for this interface: nothing of ours was ever put on it
    TRUSTED = "trusted"
    DOUBT = "doubt"  # unreadable or malformed: read everything


class RecordRead(NamedTuple):
    state: RecordState
    applied: Applied = NOTHING


class AppliedStore:
    """The records under ``run_dir``/applied (the run directory is looked
    up when used: it is a host setting that tests change)."""

    def __init__(self, run_dir: str | None = None) -> None:
        self._run_dir = run_dir

    def _dir(self) -> str:
        return os.path.join(self._run_dir or run_dir(), "applied")

    def _path(self, ifname: str) -> str:
        if not ifname or "/" in ifname or ifname in (".", ".."):
            raise RecordError(f"not an interface name: {ifname!r}")
        return os.path.join(self._dir(), ifname)

    def read(self, ifname: str, ifindex: int) -> RecordRead:
        try:
            with open(self._path(ifname), encoding="ascii") as f:
                text = f.read()
        except FileNotFoundError:
            return RecordRead(RecordState.NONE)
        except (OSError, UnicodeDecodeError, RecordError):
            return RecordRead(RecordState.DOUBT)
        try:
            index, applied = parse_record(text)
        except RecordError:
            return RecordRead(RecordState.DOUBT)
        if index != ifindex:
            return RecordRead(RecordState.NONE)  # an interface of that name that is gone
        return RecordRead(RecordState.TRUSTED, applied)

    def write(self, ifname: str, ifindex: int, applied: Applied) -> None:
        """Set the record (atomically); none at all when ``applied`` is empty."""
        if not applied:
            self.forget(ifname)
            return
        path = self._path(ifname)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = f"{path}:{os.getpid()}"  # ':' is in no interface name: never a record
        with open(tmp, "w", encoding="ascii") as f:
            f.write(format_record(ifindex, applied))
        os.replace(tmp, path)

    def forget(self, ifname: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self._path(ifname))
