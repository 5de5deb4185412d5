"""Routing table names, read the way iproute2 6.x reads them.

iproute2 (lib/rt_names.c) knows ``default`` (253), ``main`` (254) and
``local`` (255) built in, then reads:

1. ``/etc/iproute2/rt_tables``, or ``/usr/share/iproute2/rt_tables`` only if
   the first does not exist;
2. every ``*.conf`` in ``/usr/share/iproute2/rt_tables.d`` whose name is not
   also present in ``/etc/iproute2/rt_tables.d`` (the /etc copy overrides);
3. every ``*.conf`` in ``/etc/iproute2/rt_tables.d``.

Names starting with ``.`` and names of 5 characters or fewer are skipped.
A line is ``ID NAME``, ID decimal or ``0x`` hex; ``#`` starts a comment
line; a malformed line ends the reading of that file (iproute2 reports
"Database ... is corrupted" and keeps what it read so far). IDs iproute2 reads
into a C ``int`` that end up negative (2147483648 and above) are skipped.

When one name is given several IDs, ``ip`` resolves it by scanning buckets
``ID & 255`` in ascending order, the entry read last first in each bucket;
``TableNames`` reproduces that. iproute2 reads a directory in ``readdir``
order; this module reads it sorted, which matters only for such duplicates.

``parse_rt_tables`` and ``TableNames`` are pure; ``read_table_names`` is the
thin reader of the files.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable

from .config import TableSettings

ETC_DIR = "/etc/iproute2"
USR_DIR = "/usr/share/iproute2"
BUILTIN: tuple[tuple[int, str], ...] = ((253, "default"), (254, "main"), (255, "local"))
INT_MAX = 2**31 - 1

# sscanf("0x%x %s") or sscanf("%d %s"): a number, optional blanks, a name
# (the first run of non-blank characters); the rest of the line is ignored.
# Compiled on first use (re caches it): most commands never read the files.
_LINE = r"(?:0x([0-9A-Fa-f]+)|([+-]?[0-9]+))[ \t\n\v\f\r]*([^ \t\n\v\f\r]+)"


def parse_rt_tables(text: str) -> list[tuple[int, str]]:
    """(ID, name) pairs of one rt_tables file, in file order."""
    entries: list[tuple[int, str]] = []
    line_re = re.compile(_LINE)
    for line in text.splitlines():
        stripped = line.lstrip(" \t")
        if stripped == "" or stripped.startswith("#"):
            continue
        match = line_re.match(stripped)
        if match is None:
            break  # iproute2: "Database ... is corrupted", the rest is not read
        hex_id, dec_id, name = match.groups()
        number = int(hex_id, 16) if hex_id is not None else int(dec_id)
        if 0 <= number <= INT_MAX:
            entries.append((number, name))
    return entries


class TableNames:
    """Name <-> ID as ``ip`` resolves them; entries in reading order."""

    def __init__(self, entries: Iterable[tuple[int, str]] = BUILTIN) -> None:
        self.entries = list(entries)

    def __repr__(self) -> str:
        return f"TableNames({self.entries!r})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TableNames):
            return NotImplemented
        return self.entries == other.entries

    __hash__ = None  # type: ignore[assignment]  # mutable

    def add(self, pairs: Iterable[tuple[int, str]]) -> None:
        self.entries.extend(pairs)

    def id_of(self, name: str) -> int | None:
        best: tuple[int, int] | None = None  # (bucket, -reading position)
        found: int | None = None
        for position, (table, entry) in enumerate(self.entries):
            if entry != name:
                continue
            key = (table & 255, -position)
            if best is None or key < best:
                best, found = key, table
        return found

    def name_of(self, table: int) -> str | None:
        for entry_table, name in reversed(self.entries):
            if entry_table == table:
                return name
        return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError:
        return ""  # unreadable: iproute2 skips it too


def _conf_files(directory: str) -> list[str]:
    try:
        names = os.listdir(directory)
    except OSError:
        return []
    return sorted(n for n in names if not n.startswith(".") and len(n) > 5 and n.endswith(".conf"))


def read_table_names(etc_dir: str = ETC_DIR, usr_dir: str = USR_DIR) -> TableNames:
    names = TableNames()
    text = _read(os.path.join(etc_dir, "rt_tables"))
    if text is None:
        text = _read(os.path.join(usr_dir, "rt_tables"))
    names.add(parse_rt_tables(text or ""))
    etc_d, usr_d = os.path.join(etc_dir, "rt_tables.d"), os.path.join(usr_dir, "rt_tables.d")
    for conf in _conf_files(usr_d):
        if not os.path.lexists(os.path.join(etc_d, conf)):
            names.add(parse_rt_tables(_read(os.path.join(usr_d, conf)) or ""))
    for conf in _conf_files(etc_d):
        names.add(parse_rt_tables(_read(os.path.join(etc_d, conf)) or ""))
    return names


class SystemTableNames:
    """The host's names, read on first use: a config of plain IDs (the hot
    path of every container start) never opens the files."""

    def __init__(self, etc_dir: str = ETC_DIR, usr_dir: str = USR_DIR) -> None:
        self._dirs = (etc_dir, usr_dir)
        self._names: TableNames | None = None

    def _loaded(self) -> TableNames:
        if self._names is None:
            self._names = read_table_names(*self._dirs)
        return self._names

    def id_of(self, name: str) -> int | None:
        return self._loaded().id_of(name)

    def name_of(self, table: int) -> str | None:
        return self._loaded().name_of(table)


def host_table_settings(rp_table: int | None = None) -> TableSettings:
    """What table values mean on this host: its iproute2 names, read when a
    key holds one, and the RP table (default when None)."""
    if rp_table is None:
        return TableSettings(names=SystemTableNames())
    return TableSettings(names=SystemTableNames(), rp_table=rp_table)
