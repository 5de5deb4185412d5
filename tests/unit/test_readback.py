"""Which changes of a batch took effect, from the kernel's state after the
reports were lost (netlink/readback.py): undoing exactly those, in reverse,
restores the state from before the batch."""

from __future__ import annotations

import socket

from incus_host_tables.model import AF_INET, KernelRoute, KernelRule, Route, Rule
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink.kernel import Change, ChangeKind
from incus_host_tables.netlink.readback import ReadRoutes, ReadRules, in_effect

OURS, BOOT = 158, 3
VETH = 7


def route(addr: str, table: int) -> Route:
    return Route(AF_INET, table, socket.inet_pton(AF_INET, addr), 32, None, 0)


def kernel_route(r: Route, protocol: int) -> KernelRoute:
    body = c.route_body(r, VETH, protocol)
    return c.decode_route(body, 0, len(body))


def kernel_rule(r: Rule, protocol: int = OURS) -> KernelRule:
    body = c.rule_body(r, protocol)
    return c.decode_rule(body, 0, len(body))


RULE = Rule(AF_INET, 1158, 1100, None, 0, None)
NEW_RULE = Rule(AF_INET, 1158, 1100, None, 0, 31)
ADDED = route("198.51.100.10", 100)
NOT_ADDED = route("198.51.100.11", 100)
MAIN_COPY = kernel_route(route("198.51.100.10", 254), BOOT)
ADOPTED = kernel_route(route("198.51.100.10", 200), BOOT)
BATCH = [
    Change(ChangeKind.ADD_RULE, NEW_RULE),
    Change(ChangeKind.ADD_ROUTE, ADDED, VETH),
    Change(ChangeKind.ADD_ROUTE, NOT_ADDED, VETH),
    Change(ChangeKind.ADOPT_ROUTE, ADOPTED),
    Change(ChangeKind.DEL_ROUTE, MAIN_COPY),
    # a rule moved: deleted, then added again
    Change(ChangeKind.DEL_RULE, kernel_rule(RULE)),
    Change(ChangeKind.ADD_RULE, RULE),
]


def reader(
    routes: list[KernelRoute], rules: list[KernelRule]
) -> tuple[ReadRoutes, ReadRules, list[object]]:
    """Readers of a fixed kernel state, and the log of what they read."""
    reads: list[object] = []

    def read_routes(family: int, table: int) -> list[KernelRoute]:
        reads.append((family, table))
        return [kr for kr in routes if kr.route.family == family and kr.route.table == table]

    def read_rules(family: int) -> list[KernelRule]:
        reads.append(family)
        return [kr for kr in rules if kr.rule.family == family]

    return read_routes, read_rules, reads


def test_what_the_kernel_shows_is_what_took_effect() -> None:
    # Everything went in but the second add; the moved rule is back.
    now_routes = [kernel_route(ADDED, OURS), kernel_route(ADOPTED.route, OURS)]
    now_rules = [kernel_rule(RULE), kernel_rule(NEW_RULE)]
    read_routes, read_rules, reads = reader(now_routes, now_rules)

    done = in_effect(BATCH, OURS, read_routes, read_rules)

    assert done == [BATCH[0], BATCH[1], BATCH[3], BATCH[4]]
    assert sorted(map(str, reads)) == sorted(map(str, [(AF_INET, 100), (AF_INET, 200),
                                                       (AF_INET, 254), AF_INET]))  # fmt: skip


def test_nothing_went_in() -> None:
    before_routes = [MAIN_COPY, ADOPTED]
    read_routes, read_rules, _ = reader(before_routes, [kernel_rule(RULE)])
    assert in_effect(BATCH, OURS, read_routes, read_rules) == []


def test_a_moved_rule_lost_in_between_is_put_back() -> None:
    # Killed between the move's delete and its add: only the delete shows.
    read_routes, read_rules, _ = reader([MAIN_COPY, ADOPTED], [])
    assert in_effect(BATCH, OURS, read_routes, read_rules) == [BATCH[5]]


def test_a_route_of_another_protocol_or_interface_is_not_ours() -> None:
    body = c.route_body(ADDED, VETH + 1, OURS)
    elsewhere = c.decode_route(body, 0, len(body))
    read_routes, read_rules, _ = reader([kernel_route(ADDED, BOOT), elsewhere], [])
    assert in_effect([BATCH[1]], OURS, read_routes, read_rules) == []
