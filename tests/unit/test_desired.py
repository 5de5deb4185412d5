"""Intent -> desired routes, instance prefixes, rules and prunable tables."""

from __future__ import annotations

import ipaddress
import socket

import pytest

from incus_host_tables.config import DeviceIntent, FamilyIntent
from incus_host_tables.desired import (
    desired_routes,
    instance_prefixes,
    prunable_table,
    rules_for_intent,
    rules_for_routes,
)
from incus_host_tables.model import Route, Rule

V4, V6 = socket.AF_INET, socket.AF_INET6
MAIN = 254
RP = 1158  # the reverse-path table


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def intent(
    v4: tuple[tuple[int, ...], list[str], list[str]] = ((MAIN,), [], []),
    v6: tuple[tuple[int, ...], list[str], list[str]] = ((MAIN,), [], []),
    vrf: str | None = None,
) -> DeviceIntent:
    def fam(name: str, spec: tuple[tuple[int, ...], list[str], list[str]]) -> FamilyIntent:
        tables, addrs, nets = spec
        return FamilyIntent(
            name,  # type: ignore[arg-type]
            tables,
            tuple(ipaddress.ip_address(a) for a in addrs),
            tuple(ipaddress.ip_network(n) for n in nets),
        )

    return DeviceIntent(fam("ipv4", v4), fam("ipv6", v6), vrf)


def host4(table: int, addr: str) -> Route:
    return Route(V4, table, ip(addr), 32, None, 0)


def host6(table: int, addr: str) -> Route:
    return Route(V6, table, ip(addr), 128, None, 1024)


def extra(table: int, net: str, via: str) -> Route:
    n = ipaddress.ip_network(net)
    family = V4 if n.version == 4 else V6
    return Route(
        family, table, n.network_address.packed, n.prefixlen, ip(via), 0 if family == V4 else 1024
    )


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        pytest.param(intent(), [], id="no-addresses"),
        pytest.param(
            intent(v4=((MAIN,), ["203.0.113.1"], [])), [host4(MAIN, "203.0.113.1")], id="v4-main"
        ),
        pytest.param(
            intent(v6=((100,), ["2001:db8::1"], [])),
            [host6(100, "2001:db8::1"), host6(RP, "2001:db8::1")],
            id="v6-table-and-rp-copy",
        ),
        pytest.param(
            intent(v4=((100, 200), ["203.0.113.1", "203.0.113.2"], [])),
            [
                host4(100, "203.0.113.1"),
                host4(100, "203.0.113.2"),
                host4(200, "203.0.113.1"),
                host4(200, "203.0.113.2"),
                host4(RP, "203.0.113.1"),
                host4(RP, "203.0.113.2"),
            ],
            id="every-address-every-table-one-rp-copy",
        ),
        pytest.param(
            intent(v4=((100, MAIN), ["203.0.113.1", "203.0.113.2"], ["198.51.100.0/24"])),
            [
                host4(100, "203.0.113.1"),
                host4(100, "203.0.113.2"),
                host4(MAIN, "203.0.113.1"),
                host4(MAIN, "203.0.113.2"),
                host4(RP, "203.0.113.1"),
                host4(RP, "203.0.113.2"),
                extra(100, "198.51.100.0/24", "203.0.113.1"),
                extra(MAIN, "198.51.100.0/24", "203.0.113.1"),
                extra(RP, "198.51.100.0/24", "203.0.113.1"),
            ],
            id="extra-routes-via-first-address",
        ),
        pytest.param(
            intent(
                v4=((100,), ["203.0.113.1"], ["198.51.100.7/32"]),
                v6=((200, 100), ["2001:db8::2", "2001:db8::1"], ["2001:db8:1::/48"]),
            ),
            [
                host4(100, "203.0.113.1"),
                host4(RP, "203.0.113.1"),
                extra(100, "198.51.100.7/32", "203.0.113.1"),
                extra(RP, "198.51.100.7/32", "203.0.113.1"),
                host6(200, "2001:db8::2"),
                host6(200, "2001:db8::1"),
                host6(100, "2001:db8::2"),
                host6(100, "2001:db8::1"),
                host6(RP, "2001:db8::2"),
                host6(RP, "2001:db8::1"),
                extra(200, "2001:db8:1::/48", "2001:db8::2"),
                extra(100, "2001:db8:1::/48", "2001:db8::2"),
                extra(RP, "2001:db8:1::/48", "2001:db8::2"),
            ],
            id="both-families",
        ),
        pytest.param(
            intent(v4=((MAIN,), ["203.0.113.1"], ["198.51.100.0/24"]), vrf="vrf-blue"),
            [],
            id="vrf-nothing-desired",
        ),
    ],
)
def test_desired_routes(device: DeviceIntent, expected: list[Route]) -> None:
    routes = desired_routes(device, RP)
    assert sorted(routes) == sorted(expected)
    assert len(routes) == len(set(routes))
    # host routes first within a family: the extra routes' gateway resolves through them
    for family in (V4, V6):
        kinds = [r.gateway is not None for r in routes if r.family == family]
        assert kinds == sorted(kinds)


@pytest.mark.parametrize(
    ("device", "expected"),
    [
        pytest.param(intent(), set(), id="empty"),
        pytest.param(
            intent(
                v4=((100, 200), ["203.0.113.1"], ["198.51.100.0/24"]),
                v6=((MAIN,), ["2001:db8::1"], ["2001:db8:1::/48"]),
            ),
            {
                (V4, ip("203.0.113.1"), 32),
                (V4, ip("198.51.100.0"), 24),
                (V6, ip("2001:db8::1"), 128),
                (V6, ip("2001:db8:1::"), 48),
            },
            id="addresses-and-routes-once-whatever-the-tables",
        ),
        pytest.param(
            intent(v4=((MAIN,), ["203.0.113.1"], []), vrf="vrf-blue"),
            {(V4, ip("203.0.113.1"), 32)},
            id="vrf-still-owns-its-prefixes",
        ),
    ],
)
def test_instance_prefixes(device: DeviceIntent, expected: set[tuple[int, bytes, int]]) -> None:
    assert instance_prefixes(device) == expected


@pytest.mark.parametrize(
    ("vrf", "table", "expected"),
    [
        pytest.param(None, MAIN, True, id="main"),
        pytest.param(None, 100, True, id="chosen"),
        pytest.param(None, 200, True, id="other"),
        pytest.param("vrf-blue", MAIN, True, id="vrf-main"),
        pytest.param("vrf-blue", 100, False, id="vrf-table"),
        pytest.param("vrf-blue", 10, False, id="vrf-other"),
    ],
)
def test_prunable_table(vrf: str | None, table: int, expected: bool) -> None:
    device = intent(v4=((100,), ["203.0.113.1"], []), vrf=vrf)
    assert prunable_table(device, table) is expected


P = 1100


def rp_rule(family: int, priority: int = P, table: int = RP) -> Rule:
    return Rule(family, table, priority, None, 0, None)


@pytest.mark.parametrize(
    ("routes", "priority", "expected"),
    [
        pytest.param([], P, set(), id="none"),
        pytest.param(
            [host4(MAIN, "203.0.113.1"), extra(MAIN, "198.51.100.0/24", "203.0.113.1")],
            P,
            set(),
            id="main-needs-none",
        ),
        pytest.param(
            [host4(100, "203.0.113.1"), host6(200, "2001:db8::1")],
            P,
            set(),
            id="chosen-tables-alone-need-none",
        ),
        pytest.param(
            [host4(100, "203.0.113.1"), host4(RP, "203.0.113.1"), host4(RP, "203.0.113.2")],
            P,
            {rp_rule(V4)},
            id="one-rule-for-the-family",
        ),
        pytest.param(
            [host6(RP, "2001:db8::1"), extra(RP, "2001:db8:1::/48", "2001:db8::1")],
            P,
            {rp_rule(V6)},
            id="extra-routes-need-no-rule-of-their-own",
        ),
        pytest.param(
            [host4(RP, "203.0.113.1"), host6(RP, "2001:db8::1")],
            P,
            {rp_rule(V4), rp_rule(V6)},
            id="both-families",
        ),
        pytest.param([host4(RP, "203.0.113.1")], 77, {rp_rule(V4, 77)}, id="priority"),
    ],
)
def test_rules_for_routes(routes: list[Route], priority: int, expected: set[Rule]) -> None:
    assert rules_for_routes(routes, priority, RP) == expected
    assert rules_for_routes(iter(routes), priority, RP) == expected


@pytest.mark.parametrize(
    "device",
    [
        pytest.param(intent(), id="empty"),
        pytest.param(
            intent(
                v4=((100, MAIN), ["203.0.113.1"], ["198.51.100.0/24"]),
                v6=((200,), ["2001:db8::1"], []),
            ),
            id="both-families",
        ),
        pytest.param(intent(v4=((MAIN,), ["203.0.113.1"], [])), id="main-only"),
        pytest.param(intent(v4=((100,), [], [])), id="no-address"),
        pytest.param(intent(v4=((100,), ["203.0.113.1"], []), vrf="vrf-blue"), id="vrf"),
    ],
)
def test_rules_for_intent_equals_the_rules_of_its_routes(device: DeviceIntent) -> None:
    expected = rules_for_routes(desired_routes(device, RP), P, RP)
    assert rules_for_intent(device, P, RP) == expected


def test_another_rp_table() -> None:
    device = intent(v4=((100,), ["203.0.113.1"], []))
    assert desired_routes(device, 3000) == [host4(100, "203.0.113.1"), host4(3000, "203.0.113.1")]
    assert rules_for_intent(device, P, 3000) == {rp_rule(V4, table=3000)}
