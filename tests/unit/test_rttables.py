"""Table names read as iproute2 6.x reads them (lib/rt_names.c): file
precedence, rt_tables.d overrides, line syntax, duplicate names. The files
live in a temporary directory, never the machine's /etc."""

from __future__ import annotations

from pathlib import Path

import pytest

from incus_host_tables.rttables import (
    SystemTableNames,
    TableNames,
    parse_rt_tables,
    read_table_names,
)


@pytest.mark.parametrize(
    ("text", "entries"),
    [
        ("100 blue\n", [(100, "blue")]),
        ("  \t100\tblue  # comment\n", [(100, "blue")]),
        ("# c\n\n1001 vrf-red\n", [(1001, "vrf-red")]),
        ("0x10 hex\n", [(16, "hex")]),
        ("-5 neg\n7 ok\n", [(7, "ok")]),  # negative IDs are skipped
        ("2147483648 big\n7 ok\n", [(7, "ok")]),  # beyond iproute2's int
        ("7 ok\nbroken line\n8 lost\n", [(7, "ok")]),  # "corrupted": stop
        ("9 name trailing words\n", [(9, "name")]),
    ],
)
def test_parse_rt_tables(text: str, entries: list[tuple[int, str]]) -> None:
    assert parse_rt_tables(text) == entries


def test_builtin_names() -> None:
    names = TableNames()
    assert (names.id_of("main"), names.id_of("local"), names.id_of("default")) == (254, 255, 253)
    assert names.name_of(254) == "main" and names.id_of("nosuch") is None


def test_duplicate_name_resolves_like_ip() -> None:
    """``ip`` scans buckets ID & 255 upwards, last-read entry first."""
    names = TableNames()
    names.add([(300, "x"), (100, "x")])  # buckets 44 and 100: 300 wins
    assert names.id_of("x") == 300
    names.add([(44, "x")])  # same bucket as 300, read later: wins
    assert names.id_of("x") == 44
    names.add([(300, "y")])
    assert names.name_of(300) == "y"  # the entry read last names the ID


def write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_file_precedence(tmp_path: Path) -> None:
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    write(usr / "rt_tables", "10 from-usr\n")
    write(usr / "rt_tables.d" / "a.conf", "20 usr-a\n")
    write(usr / "rt_tables.d" / "b.conf", "30 usr-b\n")
    write(usr / "rt_tables.d" / "ignored.txt", "40 not-conf\n")
    write(etc / "rt_tables.d" / "b.conf", "31 etc-b\n")  # overrides usr's b.conf
    write(etc / "rt_tables.d" / ".hidden.conf", "50 hidden\n")
    write(etc / "rt_tables.d" / ".conf", "51 short\n")
    names = read_table_names(str(etc), str(usr))
    # /etc/iproute2/rt_tables missing: the /usr copy is read
    assert names.id_of("from-usr") == 10
    assert names.id_of("usr-a") == 20
    assert names.id_of("usr-b") is None and names.id_of("etc-b") == 31
    assert names.id_of("not-conf") is None
    assert names.id_of("hidden") is None and names.id_of("short") is None

    write(etc / "rt_tables", "11 from-etc\n")  # present: the /usr copy is not read
    names = read_table_names(str(etc), str(usr))
    assert names.id_of("from-etc") == 11 and names.id_of("from-usr") is None


def test_system_names_read_lazily(tmp_path: Path) -> None:
    names = SystemTableNames(str(tmp_path / "etc"), str(tmp_path / "usr"))
    write(tmp_path / "etc" / "rt_tables", "1001 late\n")  # written after construction
    assert names.id_of("late") == 1001
    assert names.name_of(1001) == "late"
