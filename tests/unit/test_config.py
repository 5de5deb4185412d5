"""Device keys -> tables and intent: every rule of the spec, for both families."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable

import pytest

from incus_host_tables.config import (
    ConfigError,
    Family,
    parse_device,
    resolve_tables,
    validate_device,
)

FAMILIES: list[Family] = ["ipv4", "ipv6"]
NATIVE, USER, LEGACY = "{f}.host_tables", "user.{f}.host_tables", "{f}.host_table"
LIST_KEYS = [pytest.param(NATIVE, id="native"), pytest.param(USER, id="user")]
ALL_KEYS = [*LIST_KEYS, pytest.param(LEGACY, id="legacy")]

# Addresses and prefixes of each family, in documentation ranges.
ADDR = {"ipv4": ("203.0.113.10", "203.0.113.11"), "ipv6": ("2001:db8::10", "2001:db8::11")}
NET = {
    "ipv4": ("198.51.100.0/24", "203.0.113.0/25"),
    "ipv6": ("2001:db8:1::/48", "2001:db8:2::/64"),
}
OTHER: dict[Family, Family] = {"ipv4": "ipv6", "ipv6": "ipv4"}


def config_error(fn: Callable[..., object], *args: object) -> ConfigError:
    with pytest.raises(ConfigError) as info:
        fn(*args)
    return info.value


def assert_names(message: str, *parts: str) -> None:
    for part in parts:
        assert part in message, f"{part!r} missing from {message!r}"


# -- which tables ----------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("keys", "expected"),
    [
        pytest.param({}, (254,), id="nothing-set-main"),
        pytest.param({NATIVE: "100,200"}, (100, 200), id="native-only"),
        pytest.param({USER: "100,200"}, (100, 200), id="user-only"),
        pytest.param({NATIVE: "100,200", USER: "100,200"}, (100, 200), id="both-equal"),
        pytest.param({NATIVE: "100,200", USER: " 100 ,\t200 "}, (100, 200), id="both-equal-ws"),
        pytest.param({LEGACY: "100"}, (100,), id="legacy-only-not-main"),
        pytest.param({LEGACY: "254"}, (254,), id="legacy-main"),
        pytest.param({NATIVE: "100", LEGACY: "200"}, (100,), id="native-beats-legacy"),
        pytest.param({USER: "100", LEGACY: "200"}, (100,), id="user-beats-legacy"),
        pytest.param({NATIVE: "", USER: "", LEGACY: ""}, (254,), id="all-empty-unset"),
        pytest.param({NATIVE: "", LEGACY: "100"}, (100,), id="empty-native-unset"),
        pytest.param({NATIVE: "", USER: "100"}, (100,), id="empty-native-user-used"),
        pytest.param({USER: "", NATIVE: "100"}, (100,), id="empty-user-native-used"),
        pytest.param({NATIVE: "254,100"}, (254, 100), id="main-plus-other"),
    ],
)
def test_resolve_tables_choice(
    family: Family, keys: dict[str, str], expected: tuple[int, ...]
) -> None:
    device = {k.format(f=family): v for k, v in keys.items()}
    assert resolve_tables(device, family) == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", ALL_KEYS)
def test_other_family_keys_do_not_leak(family: Family, key: str) -> None:
    device = {key.format(f=OTHER[family]): "100"}
    assert resolve_tables(device, family) == (254,)
    assert resolve_tables(device, OTHER[family]) == (100,)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("native", "user"),
    [
        pytest.param("100", "200", id="different-table"),
        pytest.param("100,200", "200,100", id="different-primary"),
        pytest.param("100,200", "100", id="subset"),
    ],
)
def test_native_and_user_must_agree(family: Family, native: str, user: str) -> None:
    device = {NATIVE.format(f=family): native, USER.format(f=family): user}
    err = config_error(resolve_tables, device, family)
    assert_names(str(err), f"{family}.host_tables", f"user.{family}.host_tables", native, user)
    problems = validate_device(device)
    assert len(problems) == 1
    assert_names(problems[0], f"{family}.host_tables", f"user.{family}.host_tables")


def test_resolve_tables_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="ipv5"):
        resolve_tables({}, "ipv5")  # type: ignore[arg-type]


# -- values ----------------------------------------------------------------


VALID_LISTS = [
    pytest.param("100", (100,), id="single"),
    pytest.param("1", (1,), id="lowest"),
    pytest.param("253,254", (253, 254), id="highest"),
    pytest.param("200,100,150", (200, 100, 150), id="order-kept"),
    pytest.param(" 1 , 2 ,3 ", (1, 2, 3), id="spaces-around-items"),
    pytest.param("\t5\t,\t6", (5, 6), id="tabs-around-items"),
    pytest.param(",".join(map(str, range(1, 255))), tuple(range(1, 255)), id="every-table"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize(("value", "expected"), VALID_LISTS)
def test_valid_table_lists(family: Family, key: str, value: str, expected: tuple[int, ...]) -> None:
    assert resolve_tables({key.format(f=family): value}, family) == expected


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("100", 100, id="plain"),
        pytest.param(" 100\t", 100, id="whitespace"),
        pytest.param("1", 1, id="lowest"),
        pytest.param("254", 254, id="main"),
    ],
)
def test_valid_legacy_table(family: Family, value: str, expected: int) -> None:
    assert resolve_tables({LEGACY.format(f=family): value}, family) == (expected,)


HUGE = "1" + "0" * 5000  # beyond Python's int-from-str digit limit

# (value, a substring naming the offending value in the message)
INVALID_ITEMS = [
    pytest.param("255", "255", id="local"),
    pytest.param("1158", "1158", id="rp-table"),
    pytest.param("4294967296", "4294967296", id="above-u32"),
    pytest.param(HUGE, "10000000", id="huge"),
    pytest.param("+5", "+5", id="plus-sign"),
    pytest.param("-5", "-5", id="minus-sign"),
    pytest.param("0x10", "0x10", id="hex"),
    pytest.param("1e2", "1e2", id="exponent"),
    pytest.param("1.0", "1.0", id="decimal-point"),
    pytest.param("1_0", "1_0", id="underscore"),
    pytest.param("\uff11\uff12", "\uff11\uff12", id="fullwidth-digits"),
    pytest.param("\u0661\u0662", "\u0661\u0662", id="arabic-indic-digits"),
    pytest.param("\u00b2", "\u00b2", id="superscript"),
    pytest.param("1 2", "1 2", id="inner-space"),
    pytest.param("1;2", "1;2", id="semicolon"),
    pytest.param("253", "253", id="default-without-main"),
]
INVALID_LISTS = [
    pytest.param("1,,2", "1,,2", id="empty-item"),
    pytest.param("1,", "1,", id="trailing-comma"),
    pytest.param(",1", ",1", id="leading-comma"),
    pytest.param(",", ",", id="only-comma"),
    pytest.param("1, ,2", "1, ,2", id="blank-item"),
    pytest.param("7,7", "7", id="duplicate"),
    pytest.param("7, 8,\t7", "7", id="duplicate-spaced"),
    pytest.param("100,0", "0", id="zero-in-list"),
    pytest.param("100,255", "255", id="local-in-list"),
    pytest.param("100,x", "x", id="junk-in-list"),
]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", ALL_KEYS)
@pytest.mark.parametrize(("value", "offending"), INVALID_ITEMS)
def test_invalid_table_values(family: Family, key: str, value: str, offending: str) -> None:
    key = key.format(f=family)
    err = config_error(resolve_tables, {key: value}, family)
    assert isinstance(err, ValueError)
    assert_names(str(err), key, offending)
    assert err.problems and all(key in p for p in err.problems)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", LIST_KEYS)
@pytest.mark.parametrize(("value", "offending"), INVALID_LISTS)
def test_invalid_table_lists(family: Family, key: str, value: str, offending: str) -> None:
    key = key.format(f=family)
    assert_names(str(config_error(resolve_tables, {key: value}, family)), key, offending)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("value", ["100,200", "100,"], ids=["list", "trailing-comma"])
def test_legacy_key_takes_one_table(family: Family, value: str) -> None:
    key = LEGACY.format(f=family)
    assert_names(str(config_error(resolve_tables, {key: value}, family)), key, value)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", LIST_KEYS)
def test_zero_suggests_main(family: Family, key: str) -> None:
    message = str(config_error(resolve_tables, {key.format(f=family): "0"}, family))
    assert "254" in message


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("value", ["007", "00", "0255", "0256"])
def test_leading_zero_hint_is_a_valid_table(family: Family, value: str) -> None:
    """A message that says "write N" must not point at a table that is itself
    rejected (0, 255, >255)."""
    key = USER.format(f=family)
    message = str(config_error(resolve_tables, {key: value}, family))
    assert_names(message, key, value)
    hint = re.search(r"write (\d+)", message)
    if hint is not None:
        assert resolve_tables({key: hint.group(1)}, family) == (int(hint.group(1)),), message


# -- new vs deprecated key ------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", LIST_KEYS)
def test_new_and_deprecated_key(family: Family, key: str) -> None:
    new, legacy = key.format(f=family), LEGACY.format(f=family)
    device = {new: "100", legacy: "200"}
    # run time: the new key wins, with a warning naming the deprecated key
    intent = parse_device(device)
    assert getattr(intent, family).tables == (100,)
    assert len(intent.warnings) == 1
    assert_names(intent.warnings[0], legacy, "200")
    # validation: an error naming both keys
    problems = validate_device(device)
    assert len(problems) == 1
    assert_names(problems[0], legacy, "200", new)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_warning_without_conflict(family: Family) -> None:
    assert parse_device({LEGACY.format(f=family): "100"}).warnings == ()
    assert (
        parse_device({NATIVE.format(f=family): "100", LEGACY.format(f=family): ""}).warnings == ()
    )


# -- addresses ------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_addresses_in_order(family: Family) -> None:
    a, b = ADDR[family]
    intent = parse_device({f"{family}.address": f" {b} ,\t{a}"})
    assert getattr(intent, family).addresses == (ipaddress.ip_address(b), ipaddress.ip_address(a))
    assert getattr(intent, OTHER[family]).addresses == ()


INVALID_ADDRESSES = {
    "ipv4": [
        pytest.param("2001:db8::1", "2001:db8::1", id="wrong-family"),
        pytest.param("bogus", "bogus", id="not-an-address"),
        pytest.param("203.0.113.0/24", "203.0.113.0/24", id="prefix"),
        pytest.param("203.0.113.1,203.0.113.1", "203.0.113.1", id="duplicate"),
        pytest.param("203.0.113.1,,203.0.113.2", "203.0.113.1,,203.0.113.2", id="empty-item"),
        pytest.param("0.0.0.0", "0.0.0.0", id="unspecified"),
        pytest.param("224.0.0.1", "224.0.0.1", id="multicast"),
        pytest.param("127.0.0.1", "127.0.0.1", id="loopback"),
        pytest.param("255.255.255.255", "255.255.255.255", id="broadcast"),
        pytest.param("203.0.113.010", "203.0.113.010", id="leading-zero-octet"),
    ],
    "ipv6": [
        pytest.param("203.0.113.1", "203.0.113.1", id="wrong-family"),
        pytest.param("bogus", "bogus", id="not-an-address"),
        pytest.param("2001:db8::/64", "2001:db8::/64", id="prefix"),
        pytest.param("2001:db8::1,2001:db8:0::1", "2001:db8:0::1", id="duplicate-spelled"),
        pytest.param("2001:db8::1,", "2001:db8::1,", id="empty-item"),
        pytest.param("::", "::", id="unspecified"),
        pytest.param("ff02::1", "ff02::1", id="multicast"),
        pytest.param("::1", "::1", id="loopback"),
    ],
}


@pytest.mark.parametrize(
    ("family", "value", "offending"),
    [
        pytest.param(fam, *p.values, id=f"{fam}-{p.id}")
        for fam in FAMILIES
        for p in INVALID_ADDRESSES[fam]
    ],
)
def test_invalid_addresses(family: Family, value: str, offending: str) -> None:
    key = f"{family}.address"
    err = config_error(parse_device, {key: value})
    assert len(err.problems) == 1
    assert_names(err.problems[0], key, offending)
    assert validate_device({key: value}) == err.problems


# -- extra routes ---------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_routes_in_order(family: Family) -> None:
    a, b = NET[family]
    intent = parse_device({f"{family}.address": ADDR[family][0], f"{family}.routes": f"{b}, {a}"})
    assert getattr(intent, family).routes == (ipaddress.ip_network(b), ipaddress.ip_network(a))


INVALID_ROUTES = {
    "ipv4": [
        pytest.param("198.51.100.1/24", "198.51.100.1/24", id="host-bits"),
        pytest.param("2001:db8::/64", "2001:db8::/64", id="wrong-family"),
        pytest.param("bogus", "bogus", id="not-a-prefix"),
        pytest.param("198.51.100.0/33", "198.51.100.0/33", id="bad-length"),
        pytest.param("198.51.100.0/24,198.51.100.0/24", "198.51.100.0/24", id="duplicate"),
        pytest.param("198.51.100.0/24,", "198.51.100.0/24,", id="empty-item"),
    ],
    "ipv6": [
        pytest.param("2001:db8:1::1/48", "2001:db8:1::1/48", id="host-bits"),
        pytest.param("198.51.100.0/24", "198.51.100.0/24", id="wrong-family"),
        pytest.param("bogus", "bogus", id="not-a-prefix"),
        pytest.param("2001:db8::/129", "2001:db8::/129", id="bad-length"),
        pytest.param("2001:db8::/64,2001:db8:0::/64", "2001:db8:0::/64", id="duplicate"),
        pytest.param(",2001:db8::/64", ",2001:db8::/64", id="empty-item"),
    ],
}


@pytest.mark.parametrize(
    ("family", "value", "offending"),
    [
        pytest.param(fam, *p.values, id=f"{fam}-{p.id}")
        for fam in FAMILIES
        for p in INVALID_ROUTES[fam]
    ],
)
def test_invalid_routes(family: Family, value: str, offending: str) -> None:
    key = f"{family}.routes"
    err = config_error(parse_device, {f"{family}.address": ADDR[family][0], key: value})
    assert len(err.problems) == 1
    assert_names(err.problems[0], key, offending)


@pytest.mark.parametrize("family", FAMILIES)
def test_host_bits_message_suggests_the_network(family: Family) -> None:
    value = {"ipv4": "198.51.100.1/24", "ipv6": "2001:db8:1::1/48"}[family]
    err = config_error(
        parse_device, {f"{family}.address": ADDR[family][0], f"{family}.routes": value}
    )
    assert str(ipaddress.ip_interface(value).network) in str(err)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "address", [None, "", "other-family"], ids=["no-address", "empty-address", "other-family"]
)
def test_routes_need_an_address_of_their_family(family: Family, address: str | None) -> None:
    device = {f"{family}.routes": NET[family][0]}
    if address == "other-family":
        device[f"{OTHER[family]}.address"] = ADDR[OTHER[family]][0]
    elif address is not None:
        device[f"{family}.address"] = address
    err = config_error(parse_device, device)
    assert len(err.problems) == 1
    assert_names(err.problems[0], f"{family}.routes", NET[family][0], f"{family}.address")


# -- vrf ------------------------------------------------------------------------


def test_vrf_alone_is_accepted() -> None:
    device = {"vrf": "vrf-blue", "ipv4.address": "203.0.113.1", "ipv6.address": "2001:db8::1"}
    assert parse_device(device).vrf == "vrf-blue"
    assert validate_device(device) == []


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", ALL_KEYS)
def test_vrf_excludes_host_table_keys(family: Family, key: str) -> None:
    key = key.format(f=family)
    device = {"vrf": "vrf-blue", key: "100"}
    problems = validate_device(device)
    assert len(problems) == 1
    assert_names(problems[0], "vrf", "vrf-blue", key, "100")
    assert config_error(parse_device, device).problems == problems


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("key", ALL_KEYS)
def test_vrf_with_empty_host_table_key_is_fine(family: Family, key: str) -> None:
    assert validate_device({"vrf": "vrf-blue", key.format(f=family): ""}) == []


@pytest.mark.parametrize(
    "value",
    [
        pytest.param("a/b", id="slash"),
        pytest.param("a b", id="space"),
        pytest.param("x" * 16, id="too-long"),
        pytest.param(".", id="dot"),
        pytest.param("..", id="dotdot"),
        pytest.param("\u00e9" * 8, id="too-long-in-bytes"),
        pytest.param("a:b", id="colon"),
    ],
)
def test_invalid_vrf_names(value: str) -> None:
    err = config_error(parse_device, {"vrf": value})
    assert len(err.problems) == 1
    assert_names(err.problems[0], "vrf", value)


@pytest.mark.parametrize(
    "value", ["x" * 15, "vrf-blue", "v\u00e9rf"], ids=["15-bytes", "plain", "utf8"]
)
def test_valid_vrf_names(value: str) -> None:
    assert parse_device({"vrf": value}).vrf == value


# -- ignored keys ---------------------------------------------------------------

IGNORED = {
    "nictype": "routed",
    "parent": "eth0",
    "mtu": "not-a-number",
    "name": "eth0",
    "hwaddr": "zz:zz",
    "host_name": "veth-x",
    "vlan": "-1",
    "limits.ingress": "10Mbit",
    "limits.egress": "junk",
    "limits.max": "1Gbit",
    "limits.priority": "9",
    "ipv4.gateway": "none",
    "ipv6.gateway": "bogus",
    "user.comment": "ipv4.host_tables=0",
    "security.mac_filtering": "maybe",
}


def test_other_keys_are_ignored() -> None:
    base = {"ipv4.address": "203.0.113.1", "ipv6.host_tables": "100"}
    assert validate_device({**base, **IGNORED}) == []
    intent = parse_device({**base, **IGNORED})
    assert intent == parse_device(base)
    assert intent.warnings == ()


# -- every problem at once -----------------------------------------------------


def test_all_problems_are_collected() -> None:
    device = {
        "ipv4.host_tables": "0",
        "ipv6.host_table": "255",
        "ipv4.address": "bogus4",
        "ipv6.address": "2001:db8::1",
        "ipv6.routes": "2001:db8:1::1/48",
        "vrf": "bad/name",
    }
    problems = config_error(parse_device, device).problems
    assert validate_device(device) == problems
    for key, value in [
        ("ipv4.host_tables", "0"),
        ("ipv6.host_table", "255"),
        ("ipv4.address", "bogus4"),
        ("ipv6.routes", "2001:db8:1::1/48"),
        ("vrf", "bad/name"),
    ]:
        assert sum(key in p and value in p for p in problems) == 1, (key, problems)
    assert len(problems) == 5


@pytest.mark.parametrize("family", FAMILIES)
def test_problems_of_every_table_key_are_collected(family: Family) -> None:
    device = {
        NATIVE.format(f=family): "0",
        USER.format(f=family): "abc",
        LEGACY.format(f=family): "4294967296",
    }
    problems = validate_device(device)
    for key, value in [(NATIVE, "0"), (USER, "abc"), (LEGACY, "4294967296")]:
        assert any(key.format(f=family) + "=" in p and value in p for p in problems), problems


@pytest.mark.parametrize("family", FAMILIES)
def test_vrf_conflict_reported_alongside_other_problems(family: Family) -> None:
    device = {"vrf": "vrf-blue", NATIVE.format(f=family): "100", f"{family}.address": "bogus"}
    problems = validate_device(device)
    assert any(f"{family}.address" in p and "bogus" in p for p in problems), problems
    assert any("vrf" in p and NATIVE.format(f=family) in p for p in problems), problems


def test_config_error_problems() -> None:
    assert ConfigError("one").problems == ["one"]
    err = ConfigError(["a", "b"])
    assert err.problems == ["a", "b"]
    assert str(err) == "a; b"
    assert isinstance(err, ValueError)


def test_valid_device_parses_fully() -> None:
    device = {
        "ipv4.address": "203.0.113.1,203.0.113.2",
        "ipv4.routes": "198.51.100.0/24",
        "ipv4.host_tables": "100,254",
        "user.ipv4.host_tables": "100, 254",
        "ipv6.address": "2001:db8::1",
        "ipv6.host_table": "200",
    }
    assert validate_device(device) == []
    intent = parse_device(device)
    assert intent.vrf is None
    assert intent.ipv4.family == "ipv4"
    assert intent.ipv4.tables == (100, 254)
    assert intent.ipv4.addresses == tuple(
        map(ipaddress.IPv4Address, ["203.0.113.1", "203.0.113.2"])
    )
    assert intent.ipv4.routes == (ipaddress.IPv4Network("198.51.100.0/24"),)
    assert intent.ipv6.family == "ipv6"
    assert intent.ipv6.tables == (200,)
    assert intent.ipv6.addresses == (ipaddress.IPv6Address("2001:db8::1"),)
    assert intent.ipv6.routes == ()
    assert intent.families() == (intent.ipv4, intent.ipv6)
