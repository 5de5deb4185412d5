"""Intent + kernel facts -> plan, without a kernel (planner.py): the shared
reverse-path rule, cleanup with and without a readable config, adoption
and conflicts, and the rules resync with stale rules of earlier versions."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Collection

import pytest

from incus_host_tables.config import DeviceIntent, FamilyIntent, parse_device
from incus_host_tables.facts import DeviceFacts, HostFacts
from incus_host_tables.model import KernelRoute, KernelRule, Route, Rule
from incus_host_tables.planner import (
    HostSettings,
    intent_problems,
    plan_cleanup,
    plan_device,
    plan_rules_resync,
    rp_families_to_read,
)

V4, V6 = socket.AF_INET, socket.AF_INET6
MAIN, RP, P = 254, 1158, 1100
OURS, BOOT, STATIC = 158, 3, 4
OIF, OTHER = 7, 8
SETTINGS = HostSettings()
A4, A6 = "198.51.100.10", "2001:db8::10"
RP4, RP6 = Rule(V4, RP, P, None, 0, None), Rule(V6, RP, P, None, 0, None)
OLD100 = Rule(V4, 100, P, None, 0, 31)  # the per-table rule of earlier versions


def intent(tables: str = "100", v6: bool = True) -> DeviceIntent:
    keys = {"ipv4.address": A4, "user.ipv4.host_tables": tables}
    if v6:
        keys |= {"ipv6.address": A6, "user.ipv6.host_tables": tables}
    return parse_device(keys)


def host(table: int, addr: str) -> Route:
    a = ipaddress.ip_address(addr)
    v4 = a.version == 4
    return Route(V4 if v4 else V6, table, a.packed, 32 if v4 else 128, None, 0 if v4 else 1024)


def kr(route: Route, protocol: int = OURS, oif: int = OIF) -> KernelRoute:
    scope = 253 if route.family == V4 and route.gateway is None else 0
    return KernelRoute(route, oif, protocol, scope, 1, repr((route, protocol, oif)).encode())


def krule(rule: Rule) -> KernelRule:
    return KernelRule(rule, OURS, repr(rule).encode())


def facts(
    routes: list[KernelRoute],
    rules: Collection[Rule] = (),
    held: Collection[int] = (),
    checked: Collection[int] = (V4, V6),
    ifindex: int | None = OIF,
) -> DeviceFacts:
    return DeviceFacts(
        "vh0", ifindex, routes, [krule(r) for r in rules], frozenset(held), frozenset(checked)
    )


def converged(tables: tuple[int, ...] = (100,)) -> list[KernelRoute]:
    """The device's routes after a converge of A4/A6 in ``tables``."""
    return [kr(host(t, a)) for t in (*tables, RP) for a in (A4, A6)]


# -- converge: routes and the shared rule ---------------------------------------


@pytest.mark.parametrize(
    ("device", "rules", "held", "add", "delete"),
    [
        pytest.param([], [], set(), [RP4, RP6], [], id="first-device-adds-the-rules"),
        pytest.param([], [RP4, RP6], set(), [], [], id="rules-present-nothing-to-add"),
        pytest.param(converged(), [RP4, RP6], set(), [], [], id="converged-no-change"),
    ],
)
def test_converge_rules(
    device: list[KernelRoute],
    rules: list[Rule],
    held: set[int],
    add: list[Rule],
    delete: list[Rule],
) -> None:
    plan = plan_device(intent(), facts(device, rules, held), SETTINGS)
    assert plan.rule_add == add
    assert [k.rule for k in plan.rule_delete] == delete
    if device == converged():
        assert not plan


@pytest.mark.parametrize(
    ("held", "checked", "released"),
    [
        pytest.param(set(), {V4, V6}, [RP4, RP6], id="last-user-releases"),
        pytest.param({V4}, {V4, V6}, [RP6], id="another-interface-holds-ipv4"),
        pytest.param({V4, V6}, {V4, V6}, [], id="another-interface-holds-both"),
        pytest.param(set(), {V6}, [RP6], id="never-release-a-family-not-read"),
    ],
)
def test_moving_to_main_releases_the_rule_only_when_no_one_else_needs_it(
    held: set[int], checked: set[int], released: list[Rule]
) -> None:
    plan = plan_device(intent("254"), facts(converged(), [RP4, RP6], held, checked), SETTINGS)
    assert [k.rule for k in plan.rule_delete] == released
    # the copies in 100 and in the reverse-path table go, main gets the routes
    assert {k.route.table for k in plan.route_delete} == {100, RP}
    assert {r.table for r in plan.route_add} == {MAIN}


def test_which_reverse_path_families_a_converge_must_read() -> None:
    assert rp_families_to_read(intent("254"), facts(converged()), SETTINGS) == {V4, V6}
    assert rp_families_to_read(intent("200"), facts(converged()), SETTINGS) == set()
    assert rp_families_to_read(intent("100", v6=False), facts(converged()), SETTINGS) == {V6}
    assert rp_families_to_read(intent("254"), facts([]), SETTINGS) == set()


def test_a_new_rule_goes_before_stale_rules_of_its_preference() -> None:
    plan = plan_device(intent(), facts([], [OLD100]), SETTINGS)
    assert plan.rule_add == [RP4, RP6]
    assert [k.rule for k in plan.rule_move] == [OLD100]
    assert plan.rule_delete == []  # stale rules are the resync's business


# -- adoption and conflicts ----------------------------------------------------


def test_incus_routes_are_adopted_and_its_main_copy_removed() -> None:
    incus = [kr(host(100, A4), BOOT), kr(host(MAIN, A4), BOOT)]
    plan = plan_device(intent(v6=False), facts(incus), SETTINGS)
    assert plan.route_adopt == [incus[0]]
    assert plan.route_delete == [incus[1]]
    assert plan.route_add == [host(RP, A4)]
    assert plan.route_conflict == []


@pytest.mark.parametrize("protocol", [STATIC, 2, 9, 11, 12, 16, 42])
def test_other_protocols_collide_and_are_never_deleted(protocol: int) -> None:
    theirs = [kr(host(100, A4), protocol), kr(host(MAIN, A4), protocol)]
    plan = plan_device(intent(v6=False), facts(theirs), SETTINGS)
    assert plan.route_conflict == [(host(100, A4), theirs[0])]
    assert plan.route_adopt == plan.route_delete == []
    cleanup = plan_cleanup(intent(v6=False), facts(theirs), SETTINGS)
    assert cleanup.route_delete == []


# -- cleanup ---------------------------------------------------------------------


def test_cleanup_with_a_readable_config() -> None:
    routes = [*converged(), kr(host(MAIN, A4), BOOT), kr(host(MAIN, "198.51.100.99"), BOOT)]
    plan = plan_cleanup(intent(), facts(routes, [RP4, RP6]), SETTINGS)
    # Incus's copy of another prefix is not the instance's: it stays.
    assert sorted(plan.route_delete) == sorted([*converged(), routes[-2]])
    assert [k.rule for k in plan.rule_delete] == [RP4, RP6]


def test_cleanup_without_a_readable_config_fails_closed_but_keeps_foreign_routes() -> None:
    incus = [kr(host(MAIN, A4), BOOT), kr(host(MAIN, "198.51.100.99"), BOOT)]
    static = kr(host(MAIN, "198.51.100.98"), STATIC)
    plan = plan_cleanup(None, facts([*converged(), *incus, static], [RP4, RP6], {V6}), SETTINGS)
    assert sorted(plan.route_delete) == sorted([*converged(), *incus])
    assert [k.rule for k in plan.rule_delete] == [RP4]  # IPv6 still held elsewhere


def test_cleanup_after_the_interface_is_gone_releases_the_intents_rules() -> None:
    gone = facts([], [RP4, RP6], ifindex=None)
    assert [k.rule for k in plan_cleanup(intent(), gone, SETTINGS).rule_delete] == [RP4, RP6]
    held = facts([], [RP4, RP6], {V4, V6}, ifindex=None)
    assert plan_cleanup(intent(), held, SETTINGS).rule_delete == []
    # Without a config nothing tells which rules it held: the resync's job.
    assert plan_cleanup(None, gone, SETTINGS).rule_delete == []


# -- the rules resync -------------------------------------------------------------


@pytest.mark.parametrize(
    ("routes", "rules", "add", "delete", "move"),
    [
        pytest.param([], [], [], [], [], id="nothing"),
        pytest.param(converged(), [], [RP4, RP6], [], [], id="missing-rules"),
        pytest.param([], [RP4, RP6], [], [RP4, RP6], [], id="no-copy-left"),
        pytest.param(
            [kr(host(100, A4))], [OLD100], [], [], [], id="stale-rule-kept-for-an-uncopied-route"
        ),
        pytest.param(
            [kr(host(100, A4)), kr(host(RP, A4))],
            [OLD100],
            [RP4],
            [OLD100],
            [],
            id="stale-rule-goes-once-copied",
        ),
        pytest.param(
            [kr(host(100, A4)), kr(host(RP, A4)), kr(host(200, A4), oif=OTHER)],
            [Rule(V4, 200, P, None, 0, 31), RP4],
            [],
            [],
            [],
            id="other-interface-not-yet-reconciled",
        ),
        pytest.param(
            [kr(host(RP, A4))],
            [RP4._replace(priority=900)],
            [RP4],
            [RP4._replace(priority=900)],
            [],
            id="new-priority",
        ),
    ],
)
def test_rules_resync(
    routes: list[KernelRoute],
    rules: list[Rule],
    add: list[Rule],
    delete: list[Rule],
    move: list[Rule],
) -> None:
    plan = plan_rules_resync(HostFacts(routes, [krule(r) for r in rules]), SETTINGS)
    assert plan.rule_add == add
    assert [k.rule for k in plan.rule_delete] == delete
    assert [k.rule for k in plan.rule_move] == move


def test_resync_moves_a_kept_stale_rule_behind_a_new_reverse_path_rule() -> None:
    routes = [kr(host(RP, A4)), kr(host(200, A4), oif=OTHER)]
    old200 = Rule(V4, 200, P, None, 0, 31)
    plan = plan_rules_resync(HostFacts(routes, [krule(old200)]), SETTINGS)
    assert plan.rule_add == [RP4]
    assert [k.rule for k in plan.rule_move] == [old200]
    assert plan.rule_delete == []


def test_the_reverse_path_table_cannot_be_chosen() -> None:
    base = intent()
    v6 = base.ipv6
    chosen = DeviceIntent(base.ipv4, FamilyIntent(v6.family, (100, RP), v6.addresses))
    assert intent_problems(chosen, SETTINGS) == [
        "ipv6: table 1158 is the plugin's reverse-path table (--rp-table); it cannot be chosen"
    ]
    assert intent_problems(base, SETTINGS) == []
