"""Table values per key kind, iproute2 names, reserved IDs, keys that look
like ours, and conflicts the configuration alone shows. Pure, table-driven."""

from __future__ import annotations

import pytest

from incus_host_tables.config import (
    ConfigError,
    Family,
    TableSettings,
    check_device,
    near_miss_keys,
    parse_device,
    resolve_tables,
    validate_device,
)
from incus_host_tables.rttables import TableNames, parse_rt_tables

FAMILIES: list[Family] = ["ipv4", "ipv6"]
NAMES = TableNames()
NAMES.add(parse_rt_tables("100 tenant-a\n1001 vrf-blue\n0x3f2 hexname\n"))
WITH_NAMES = TableSettings(names=NAMES)


def problems_of(device: dict[str, str], settings: TableSettings = WITH_NAMES) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_device(device, settings)
    assert validate_device(device, settings) == info.value.problems
    return info.value.problems


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("key", "value", "tables"),
    [
        pytest.param("user.{f}.host_tables", "1001", (1001,), id="user-above-255"),
        pytest.param("user.{f}.host_tables", "4294967295", (4294967295,), id="user-u32-max"),
        pytest.param("user.{f}.host_tables", "vrf-blue", (1001,), id="user-name"),
        pytest.param("user.{f}.host_tables", "tenant-a, 200", (100, 200), id="user-name-and-id"),
        pytest.param("user.{f}.host_tables", "hexname", (1010,), id="user-hex-name"),
        pytest.param("user.{f}.host_tables", "main", (254,), id="user-builtin-main"),
        pytest.param("user.{f}.host_tables", "default,main", (253, 254), id="user-default-main"),
        pytest.param("{f}.host_tables", "253,254", (253, 254), id="native-default-with-main"),
        pytest.param("{f}.host_table", "1001", (1001,), id="legacy-above-255"),
        pytest.param("{f}.host_table", "4294967295", (4294967295,), id="legacy-u32-max"),
        pytest.param("{f}.host_table", "256", (256,), id="legacy-256"),
    ],
)
def test_accepted_tables(family: Family, key: str, value: str, tables: tuple[int, ...]) -> None:
    assert resolve_tables({key.format(f=family): value}, family, WITH_NAMES) == tables


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("key", "value", "needles"),
    [
        pytest.param("{f}.host_tables", "256", ["'256'", "out of range 0-255"], id="native-256"),
        pytest.param("{f}.host_tables", "1001", ["'1001'", "0-255"], id="native-1001"),
        pytest.param(
            "{f}.host_tables", "vrf-blue", ["'vrf-blue'", "not a decimal"], id="native-name"
        ),
        pytest.param(
            "{f}.host_table", "vrf-blue", ["'vrf-blue'", "not a decimal"], id="legacy-name"
        ),
        pytest.param(
            "user.{f}.host_tables", "nosuch", ["'nosuch'", "rt_tables"], id="unknown-name"
        ),
        pytest.param("user.{f}.host_tables", "local", ["'local' (255)", "local"], id="name-local"),
        pytest.param("user.{f}.host_tables", "0", ["table 0", "254"], id="user-zero"),
        pytest.param("user.{f}.host_tables", "1158", ["1158", "reverse-path"], id="rp-table"),
        pytest.param("{f}.host_table", "1158", ["1158", "reverse-path"], id="legacy-rp-table"),
        pytest.param("{f}.host_table", "255", ["255", "local"], id="legacy-local"),
        pytest.param("user.{f}.host_tables", "253", ["253", "32767", "254"], id="default-alone"),
        pytest.param("user.{f}.host_tables", "100,default", ["253", "32767"], id="default-named"),
        pytest.param("{f}.host_table", "253", ["253", "32767"], id="legacy-default"),
        pytest.param("user.{f}.host_tables", "4294967296", ["out of range"], id="above-u32"),
        pytest.param("user.{f}.host_tables", "+1100", ["'+1100'", "not a decimal"], id="plus"),
        pytest.param("user.{f}.host_tables", "\u0661\u0661", ["not a decimal"], id="arabic"),
        pytest.param("user.{f}.host_tables", "\uff11\uff11", ["not a decimal"], id="fullwidth"),
        pytest.param("user.{f}.host_tables", "1_1", ["not a decimal"], id="underscore"),
    ],
)
def test_refused_tables(family: Family, key: str, value: str, needles: list[str]) -> None:
    key = key.format(f=family)
    problems = problems_of({key: value})
    assert len(problems) == 1
    for needle in [f"{key}={value!r}", *needles]:
        assert needle in problems[0], problems[0]


def test_rp_table_comes_from_the_host_setting() -> None:
    settings = TableSettings(names=NAMES, rp_table=2000)
    assert resolve_tables({"user.ipv4.host_tables": "1158"}, "ipv4", settings) == (1158,)
    (problem,) = problems_of({"user.ipv4.host_tables": "2000"}, settings)
    assert "reverse-path" in problem


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("key", "value", "tables", "plain"),
    [
        ("{f}.host_table", "0100", (100,), "'100'"),
        ("{f}.host_table", "01001", (1001,), "'1001'"),
        ("{f}.host_tables", "0100, 200", (100, 200), "'100,200'"),
    ],
)
def test_incus_keys_take_leading_zeros_as_incus_does(
    family: Family, key: str, value: str, tables: tuple[int, ...], plain: str
) -> None:
    """Incus reads its own keys with strconv.ParseUint: ``0100`` is 100."""
    key = key.format(f=family)
    intent = parse_device({key: value})
    assert getattr(intent, family).tables == tables
    (warning,) = intent.warnings
    assert f"{key}={value!r}" in warning and f"write {plain}" in warning


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("value", ["0100", "00", "010,20"])
def test_user_keys_refuse_leading_zeros(family: Family, value: str) -> None:
    key = f"user.{family}.host_tables"
    (problem,) = problems_of({key: value})
    assert f"{key}={value!r}" in problem


@pytest.mark.parametrize("family", FAMILIES)
def test_legacy_zero_keeps_main_with_a_warning(family: Family) -> None:
    """Incus files table 0 into main, so such an instance works today: it
    keeps its routes in main rather than being refused."""
    device = {f"{family}.host_table": "0", f"{family}.address": "2001:db8::10"}
    if family == "ipv4":
        device[f"{family}.address"] = "198.51.100.10"
    intent = parse_device(device)
    assert getattr(intent, family).tables == (254,)
    (warning,) = intent.warnings
    assert f"{family}.host_table='0'" in warning and "main" in warning
    assert check_device(device) == ([], [warning])


NEAR_MISSES = [
    ("user.ipv4.host_table", "user.ipv4.host_tables"),
    ("user.ipv4.host-tables", "user.ipv4.host_tables"),
    ("user.IPv4.host_tables", "user.ipv4.host_tables"),
    ("ipv4.host-tables", "user.ipv4.host_tables"),
    ("IPV6.HOST_TABLES", "user.ipv6.host_tables"),
    ("user.ipv6.hosttables", "user.ipv6.host_tables"),
    ("user.ipv6.host_table", "user.ipv6.host_tables"),
    ("ipv6.Host_Table", "user.ipv6.host_tables"),
]


@pytest.mark.parametrize(("key", "meant"), NEAR_MISSES)
def test_near_miss_keys_warn(key: str, meant: str) -> None:
    device = {key: "100", "ipv4.address": "198.51.100.10"}
    (warning,) = near_miss_keys(device)
    assert f"{key}='100'" in warning and meant in warning and "ignored" in warning
    intent = parse_device(device)
    assert intent.warnings == (warning,)
    assert intent.ipv4.tables == (254,)  # ignored: the routes stay in main
    assert check_device(device) == ([], [warning])


@pytest.mark.parametrize(
    "key",
    [
        "ipv4.host_tables",
        "user.ipv4.host_tables",
        "ipv4.host_table",
        "user.comment",
        "ipv4.address",
        "user.ipv4.hostname",
        "user.host_tables",
    ],
)
def test_our_keys_and_unrelated_keys_do_not_warn(key: str) -> None:
    assert near_miss_keys({key: "100"}) == []


@pytest.mark.parametrize(
    ("family", "addresses", "routes", "clash"),
    [
        ("ipv4", "198.51.100.10,198.51.100.11", "198.51.100.11/32", "198.51.100.11/32"),
        ("ipv4", "198.51.100.10", "203.0.113.0/28,198.51.100.10/32", "198.51.100.10/32"),
        ("ipv6", "2001:db8::10", "2001:db8::10/128", "2001:db8::10/128"),
    ],
)
def test_route_equal_to_an_address_is_refused(
    family: Family, addresses: str, routes: str, clash: str
) -> None:
    device = {f"{family}.address": addresses, f"{family}.routes": routes}
    (problem,) = problems_of(device)
    for needle in (f"{family}.routes={routes!r}", repr(clash), f"{family}.address"):
        assert needle in problem, problem


def test_route_containing_an_address_is_fine() -> None:
    device = {"ipv4.address": "198.51.100.10", "ipv4.routes": "198.51.100.0/24"}
    assert validate_device(device) == []
