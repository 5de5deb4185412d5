"""Desired vs. present -> add, adopt, delete, conflicts (with the ownership
policy of ownership.py); and the rules diff."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Iterable

import pytest

from incus_host_tables.diff import Plan, RouteDiff, diff_routes, diff_rules, rule_sort_key
from incus_host_tables.model import KernelRoute, KernelRule, Route, Rule
from incus_host_tables.ownership import OwnershipPolicy

V4, V6 = socket.AF_INET, socket.AF_INET6
MAIN, LOCAL = 254, 255
OURS, STATIC, KERNEL, BOOT = 158, 4, 2, 3  # routing protocol numbers
OIF = 7


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def host(table: int, addr: str) -> Route:
    a = ipaddress.ip_address(addr)
    return Route(
        V4 if a.version == 4 else V6,
        table,
        a.packed,
        a.max_prefixlen,
        None,
        0 if a.version == 4 else 1024,
    )


def extra(table: int, net: str, via: str) -> Route:
    n = ipaddress.ip_network(net)
    family = V4 if n.version == 4 else V6
    return Route(
        family, table, n.network_address.packed, n.prefixlen, ip(via), 0 if family == V4 else 1024
    )


LINK, UNIVERSE = 253, 0  # scopes


def kr(route: Route, protocol: int, scope: int | None = None) -> KernelRoute:
    """A route on the instance's interface; by default of the scope Incus
    gives it (link for an IPv4 route without gateway)."""
    if scope is None:
        scope = LINK if route.family == V4 and route.gateway is None else UNIVERSE
    return KernelRoute(route, OIF, protocol, scope, 1, repr((route, protocol, scope)).encode())


# The instance: 203.0.113.1 and 198.51.100.0/24 via it; 2001:db8::1.
OWNED: set[tuple[int, bytes, int]] = {
    (V4, ip("203.0.113.1"), 32),
    (V4, ip("198.51.100.0"), 24),
    (V6, ip("2001:db8::1"), 128),
}


def desired_in(*tables: int) -> list[Route]:
    routes = [host(t, "203.0.113.1") for t in tables] + [host(t, "2001:db8::1") for t in tables]
    return routes + [extra(t, "198.51.100.0/24", "203.0.113.1") for t in tables]


def run(
    desired: Iterable[Route],
    present: Iterable[KernelRoute],
    prunable: Iterable[int] | None = None,
    owned: set[tuple[int, bytes, int]] | None = OWNED,
) -> RouteDiff:
    allowed = None if prunable is None else set(prunable)
    return diff_routes(
        desired,
        present,
        policy=OwnershipPolicy(OURS),
        owned_prefixes=owned,
        prunable=lambda t: allowed is None or t in allowed,
    )


def apply(plan: RouteDiff, present: list[KernelRoute]) -> list[KernelRoute]:
    """What the kernel holds after the plan: deletes gone, adopted re-marked, adds ours."""
    assert not plan.conflicts
    add, adopt, delete, _ = plan
    after = [k for k in present if k not in delete and k not in adopt]
    return after + [kr(k.route, OURS) for k in adopt] + [kr(r, OURS) for r in add]


LINK_LOCAL = kr(Route(V6, MAIN, ip("fe80::"), 64, None, 256), KERNEL)
LOCAL_COPY = kr(host(LOCAL, "203.0.113.1"), KERNEL)
LOCAL_OURS = kr(host(LOCAL, "2001:db8::1"), OURS)
FOREIGN = kr(host(MAIN, "203.0.113.99"), BOOT)
FOREIGN_NET = kr(extra(100, "203.0.113.0/24", "203.0.113.1"), STATIC)


STATIC_HERE = kr(host(100, "203.0.113.1"), STATIC)
BOOT_GLOBAL = kr(host(100, "203.0.113.1"), BOOT, UNIVERSE)  # not Incus's scope


@pytest.mark.parametrize(
    ("desired", "present", "prunable", "add", "adopt", "delete", "conflicts"),
    [
        pytest.param(desired_in(100), [], None, desired_in(100), [], [], [], id="add-missing"),
        pytest.param(
            desired_in(100),
            [kr(r, OURS) for r in desired_in(100)],
            None,
            [],
            [],
            [],
            [],
            id="all-present",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(100, "203.0.113.1"), BOOT), kr(host(100, "2001:db8::1"), BOOT)],
            None,
            desired_in(100)[2:],
            [kr(host(100, "203.0.113.1"), BOOT), kr(host(100, "2001:db8::1"), BOOT)],
            [],
            [],
            id="adopt-incus-routes",
        ),
        pytest.param(
            desired_in(100),
            [STATIC_HERE],
            None,
            desired_in(100),
            [],
            [],
            [(host(100, "203.0.113.1"), STATIC_HERE)],
            id="static-in-place-is-a-conflict-not-a-takeover",
        ),
        pytest.param(
            desired_in(100),
            [BOOT_GLOBAL],
            None,
            desired_in(100),
            [],
            [],
            [(host(100, "203.0.113.1"), BOOT_GLOBAL)],
            id="boot-of-another-scope-is-a-conflict",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(100, "203.0.113.1")._replace(priority=50), STATIC)],
            None,
            desired_in(100),
            [],
            [],
            [],
            id="static-with-another-metric-coexists",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(MAIN, "203.0.113.1"), BOOT), kr(host(MAIN, "2001:db8::1"), BOOT)],
            None,
            desired_in(100),
            [],
            [kr(host(MAIN, "203.0.113.1"), BOOT), kr(host(MAIN, "2001:db8::1"), BOOT)],
            [],
            id="delete-incus-copies-in-main",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(MAIN, "203.0.113.1"), STATIC), kr(host(MAIN, "2001:db8::1"), 12)],
            None,
            desired_in(100),
            [],
            [],
            [],
            id="static-and-bird-copies-in-main-are-never-deleted",
        ),
        pytest.param(
            desired_in(100),
            [kr(r, OURS) for r in desired_in(100, 200)],
            None,
            [],
            [],
            [kr(r, OURS) for r in desired_in(200)],
            [],
            id="delete-table-no-longer-chosen",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(300, "203.0.113.1"), BOOT)],
            None,
            desired_in(100),
            [],
            [kr(host(300, "203.0.113.1"), BOOT)],
            [],
            id="delete-incus-copy-in-unchosen-table",
        ),
        pytest.param(
            desired_in(100),
            [
                kr(host(100, "203.0.113.50"), OURS),
                kr(extra(100, "198.18.0.0/16", "203.0.113.1"), OURS),
            ],
            None,
            desired_in(100),
            [],
            [
                kr(extra(100, "198.18.0.0/16", "203.0.113.1"), OURS),
                kr(host(100, "203.0.113.50"), OURS),
            ],
            [],
            id="delete-plugin-owned-leftovers",
        ),
        pytest.param(
            desired_in(100),
            [LINK_LOCAL, LOCAL_COPY, LOCAL_OURS, FOREIGN, FOREIGN_NET],
            None,
            desired_in(100),
            [],
            [],
            [],
            id="leave-kernel-local-and-foreign-alone",
        ),
        pytest.param(
            [],
            [kr(host(MAIN, "203.0.113.1"), BOOT), kr(host(100, "203.0.113.1"), BOOT)],
            [MAIN],
            [],
            [],
            [kr(host(MAIN, "203.0.113.1"), BOOT)],
            [],
            id="vrf-only-main-prunable",
        ),
        pytest.param(
            desired_in(100),
            [kr(host(100, "203.0.113.1")._replace(priority=50), BOOT)],
            None,
            desired_in(100),
            [],
            [kr(host(100, "203.0.113.1")._replace(priority=50), BOOT)],
            [],
            id="incus-route-of-another-metric-replaced",
        ),
    ],
)
def test_diff_routes(
    desired: list[Route],
    present: list[KernelRoute],
    prunable: list[int] | None,
    add: list[Route],
    adopt: list[KernelRoute],
    delete: list[KernelRoute],
    conflicts: list[tuple[Route, KernelRoute]],
) -> None:
    got = run(desired, present, prunable)
    assert sorted(got.add) == sorted(add)
    assert got.adopt == adopt
    assert sorted(got.delete) == sorted(delete)
    assert got.conflicts == conflicts


def test_cleanup_without_known_prefixes_removes_only_ours_and_incus_shaped() -> None:
    """An unreadable config: every Incus-shaped boot route on the interface
    counts as the instance's (fail closed); static, kernel and other shapes
    stay."""
    ours = kr(host(100, "198.18.5.5"), OURS)
    incus_main = kr(host(MAIN, "198.18.5.5"), BOOT)
    static = kr(host(MAIN, "198.18.5.6"), STATIC)
    got = run([], [ours, incus_main, static, LINK_LOCAL, LOCAL_COPY, BOOT_GLOBAL], owned=None)
    assert sorted(got.delete) == sorted([ours, incus_main])
    assert got.add == got.adopt == got.conflicts == []


def messy_present() -> list[KernelRoute]:
    return [
        kr(host(MAIN, "203.0.113.1"), BOOT),  # Incus's copy in main
        kr(extra(MAIN, "198.51.100.0/24", "203.0.113.1"), BOOT),
        kr(host(100, "203.0.113.1"), BOOT),  # right place, Incus's protocol
        kr(host(200, "2001:db8::1"), OURS),  # table no longer chosen
        kr(extra(200, "198.51.100.0/24", "203.0.113.1"), OURS),
        kr(host(100, "203.0.113.77"), OURS),  # leftover of an old address
        LINK_LOCAL,
        LOCAL_COPY,
        FOREIGN,
        FOREIGN_NET,
    ]


@pytest.mark.parametrize("tables", [(100,), (100, MAIN), (MAIN,), (300, 100)], ids=str)
def test_diff_routes_is_idempotent(tables: tuple[int, ...]) -> None:
    present = messy_present()
    plan = run(desired_in(*tables), present)
    after = apply(plan, present)
    assert run(desired_in(*tables), after) == ([], [], [], [])
    assert {k.route for k in after if k.protocol == OURS} == set(desired_in(*tables))
    # what was never ours nor the instance's survives
    for untouched in (LINK_LOCAL, LOCAL_COPY, FOREIGN, FOREIGN_NET):
        assert untouched in after


def test_deletes_extra_routes_before_host_routes() -> None:
    present = messy_present()
    delete = run(desired_in(300), present).delete
    kinds = [k.route.gateway is not None for k in delete]
    assert kinds.count(True) >= 2 and kinds.count(False) >= 2
    assert kinds == sorted(kinds, reverse=True)


def test_add_keeps_desired_order() -> None:
    desired = desired_in(100, 200)
    assert run(desired, []).add == desired


def test_duplicate_desired_added_once() -> None:
    route = host(100, "203.0.113.1")
    assert run([route, route], []).add == [route]


# -- rules ------------------------------------------------------------------

P = 1100
R100 = Rule(V4, 100, P, None, 0, 31)
R200 = Rule(V4, 200, P, None, 0, 31)
RNET = Rule(V4, 100, P, ip("198.51.100.0"), 24, None)
R6 = Rule(V6, 100, P, None, 0, 127)


def krule(rule: Rule) -> KernelRule:
    return KernelRule(rule, OURS, repr(rule).encode())


@pytest.mark.parametrize(
    ("desired", "present", "releasable", "add", "delete"),
    [
        pytest.param({R100, R6}, [], None, [R100, R6], [], id="add-missing-sorted"),
        pytest.param({R100}, [krule(R100)], None, [], [], id="present"),
        pytest.param({R100}, [krule(R100), krule(R200)], None, [], [krule(R200)], id="delete"),
        pytest.param({R100}, [krule(R200)], set(), [R100], [], id="still-needed-elsewhere"),
        pytest.param(
            set(), [krule(R200), krule(RNET)], {RNET}, [], [krule(RNET)], id="only-released"
        ),
    ],
)
def test_diff_rules(
    desired: set[Rule],
    present: list[KernelRule],
    releasable: set[Rule] | None,
    add: list[Rule],
    delete: list[KernelRule],
) -> None:
    got_add, got_delete = diff_rules(
        desired,
        iter(present),
        may_delete=lambda r: releasable is None or r in releasable,
    )
    assert got_add == sorted(add, key=rule_sort_key)
    assert got_delete == delete


def test_diff_rules_is_idempotent() -> None:
    desired = {R100, RNET, R6}
    present = [krule(R200), krule(RNET)]
    add, delete = diff_rules(desired, present, may_delete=lambda r: True)
    after = [k for k in present if k not in delete] + [krule(r) for r in add]
    assert diff_rules(desired, after, may_delete=lambda r: True) == ([], [])


def test_plan_truth_and_count() -> None:
    assert not Plan()
    assert Plan().count() == 0
    plan = Plan(route_add=[host(100, "203.0.113.1")], rule_delete=[krule(R100), krule(R200)])
    assert plan
    assert plan.count() == 3
