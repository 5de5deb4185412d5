"""The applied-tables record (applied.py) and the places a scoped read
covers (facts.candidates): pure parts, table-driven; the store on a
temporary run directory."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from incus_host_tables.applied import (
    NOTHING,
    Applied,
    AppliedStore,
    RecordError,
    RecordState,
    applied_of,
    format_record,
    parse_record,
)
from incus_host_tables.config import parse_device
from incus_host_tables.facts import candidates
from incus_host_tables.model import AF_INET, AF_INET6, MAIN_TABLE, Route

A4 = socket.inet_pton(AF_INET, "198.51.100.10")
B4 = socket.inet_pton(AF_INET, "198.51.100.11")
A6 = socket.inet_pton(AF_INET6, "2001:db8::10")
NET4 = socket.inet_pton(AF_INET, "203.0.113.0")


def r4(table: int, dst: bytes = A4, plen: int = 32) -> Route:
    return Route(AF_INET, table, dst, plen, None, 0)


def r6(table: int) -> Route:
    return Route(AF_INET6, table, A6, 128, None, 1024)


SAMPLE = Applied(
    {AF_INET: frozenset({100, 1158}), AF_INET6: frozenset({4294967295})},
    {AF_INET: frozenset({(AF_INET, A4, 32), (AF_INET, NET4, 24)})},
    frozenset({AF_INET6}),
)
SAMPLE_TEXT = """incus-host-tables applied 1
ifindex 7
ipv4 tables 100 1158
ipv4 main 198.51.100.10/32 203.0.113.0/24
ipv6 tables 4294967295
ipv6 main *
"""


def test_format_and_parse_round_trip() -> None:
    assert format_record(7, SAMPLE) == SAMPLE_TEXT
    assert parse_record(SAMPLE_TEXT) == (7, SAMPLE)
    assert parse_record(format_record(3, NOTHING)) == (3, NOTHING)
    assert SAMPLE.union(NOTHING) == SAMPLE != NOTHING


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("", "empty"),
        (SAMPLE_TEXT[:-1], "torn: no final newline"),
        (SAMPLE_TEXT.replace("applied 1", "applied 2"), "another version"),
        (SAMPLE_TEXT.replace("ifindex 7", "ifindex 0"), "index 0"),
        (SAMPLE_TEXT.replace("ifindex 7", "ifindex x"), "index not a number"),
        (SAMPLE_TEXT.replace("tables 100", "tables 0"), "table 0"),
        (SAMPLE_TEXT.replace("4294967295", "4294967296"), "table beyond u32"),
        (SAMPLE_TEXT.replace("tables 100", "tables -1"), "negative table"),
        (SAMPLE_TEXT.replace("198.51.100.10/32", "198.51.100.300/32"), "bad address"),
        (SAMPLE_TEXT.replace("203.0.113.0/24", "203.0.113.0/33"), "prefix too long"),
        (SAMPLE_TEXT.replace("203.0.113.0/24", "203.0.113.0"), "no prefix length"),
        (SAMPLE_TEXT.replace("ipv6 main *", "ipv6 main 198.51.100.1/32"), "wrong family"),
        (SAMPLE_TEXT.replace("ipv6 tables", "ipv4 tables"), "family lines swapped"),
        (SAMPLE_TEXT + "extra\n", "a line too many"),
    ],
)
def test_anything_but_a_whole_record_is_refused(text: str, why: str) -> None:
    with pytest.raises(RecordError):
        parse_record(text)


@pytest.mark.parametrize(
    ("routes", "limit", "tables4", "main4", "any_main"),
    [
        ([], 8, set(), set(), set()),
        ([r4(100), r4(1158), r6(100)], 8, {100, 1158}, set(), set()),
        ([r4(MAIN_TABLE), r4(MAIN_TABLE, B4)], 8, set(), {A4, B4}, set()),
        ([r4(MAIN_TABLE), r4(MAIN_TABLE, B4)], 1, set(), set(), {AF_INET}),
    ],
)
def test_where_routes_are(
    routes: list[Route], limit: int, tables4: set[int], main4: set[bytes], any_main: set[int]
) -> None:
    got = applied_of(routes, limit)
    assert got.tables_of(AF_INET) == tables4
    assert {dst for _f, dst, _p in got.main_of(AF_INET)} == main4
    assert got.main_any == any_main


@pytest.mark.parametrize(
    ("big", "small", "covers"),
    [
        (SAMPLE, NOTHING, True),
        (NOTHING, SAMPLE, False),
        (SAMPLE, applied_of([r4(100)], 8), True),
        (SAMPLE, applied_of([r4(200)], 8), False),
        (SAMPLE, applied_of([r4(MAIN_TABLE, B4)], 8), False),
        (SAMPLE, applied_of([r6(MAIN_TABLE)], 8), True),  # ipv6 main: any
        (applied_of([r4(MAIN_TABLE)], 8), applied_of([r4(MAIN_TABLE)], 0), False),
    ],
)
def test_covers(big: Applied, small: Applied, covers: bool) -> None:
    assert big.covers(small) is covers
    assert big.union(small).covers(big) and big.union(small).covers(small)


def test_store_keys_by_name_and_index(tmp_path: Path) -> None:
    store = AppliedStore(str(tmp_path))
    assert store.read("vh0", 7).state is RecordState.NONE
    store.write("vh0", 7, SAMPLE)
    assert store.read("vh0", 7).state is RecordState.TRUSTED
    assert store.read("vh0", 7).applied.covers(SAMPLE)
    # A re-created interface of the same name never inherits the record.
    assert store.read("vh0", 8).state is RecordState.NONE
    assert store.read("vh1", 7).state is RecordState.NONE
    (tmp_path / "applied" / "vh0").write_text(SAMPLE_TEXT[:40])
    assert store.read("vh0", 7).state is RecordState.DOUBT
    (tmp_path / "applied" / "vh0").write_bytes(b"\xff\xfe")
    assert store.read("vh0", 7).state is RecordState.DOUBT
    store.write("vh0", 7, NOTHING)  # nothing left: no record at all
    assert not (tmp_path / "applied" / "vh0").exists()
    assert sorted(p.name for p in (tmp_path / "applied").iterdir()) == []


@pytest.mark.parametrize(
    ("config", "record", "tables4", "probe4"),
    [
        # isolated: chosen, reverse-path; main probed for the address
        ({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100"},
         NOTHING, {100, 1158}, {A4}),
        # Incus's own key overridden by the new one: still read (its copies)
        ({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100",
          "ipv4.host_table": "300"}, NOTHING, {100, 300, 1158}, {A4}),
        # a table of the record, and its main prefixes, are read too
        ({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100"},
         applied_of([r4(200), r4(MAIN_TABLE, B4)], 8), {100, 200, 1158}, {A4, B4}),
        # main chosen: probed, not dumped
        ({"ipv4.address": "198.51.100.10"}, NOTHING, {1158}, {A4}),
        # the record says any prefix in main: dumped
        ({"ipv4.address": "198.51.100.10"}, Applied({}, {}, frozenset({AF_INET})),
         {1158, 254}, set()),
    ],
)  # fmt: skip
def test_candidates(
    config: dict[str, str],
    record: Applied,
    tables4: set[int],
    probe4: set[bytes],
) -> None:
    where = candidates(parse_device(config), record, True, 1158, limit=8)
    assert where.tables[AF_INET] == tables4
    assert {dst for _f, dst, _p in where.main[AF_INET]} == probe4
    # IPv6 without addresses: the reverse-path table only, nothing to probe
    assert where.tables[AF_INET6] == {1158}
    assert not where.main[AF_INET6]


def test_many_prefixes_dump_main() -> None:
    addresses = ",".join(f"198.51.100.{i}" for i in range(1, 11))
    where = candidates(parse_device({"ipv4.address": addresses}), NOTHING, True, 1158, limit=8)
    assert MAIN_TABLE in where.tables[AF_INET] and not where.main[AF_INET]
