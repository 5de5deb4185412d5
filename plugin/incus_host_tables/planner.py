"""Intent + kernel facts -> the plan that converges them. Pure.

The engine reads the facts (facts.py) and applies the plan; everything that
decides -- which routes to add, adopt or delete (with the ownership policy),
which shared reverse-path rule to add or release, which stale rule may go --
is here, and tested table-driven without a kernel.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Sequence
from operator import itemgetter
from typing import NamedTuple

from .config import DeviceIntent
from .desired import (
    DEFAULT_RP_TABLE,
    DEFAULT_RULE_PRIORITY,
    desired_routes,
    instance_prefixes,
    prunable_table,
    rules_for_intent,
    rules_for_routes,
    rules_for_tables,
)
from .diff import Plan, diff_routes, diff_rules, rule_sort_key, rules_to_move
from .facts import DeviceFacts, HostFacts
from .model import (
    MAIN_TABLE,
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    all_of_protocol,
    kernel_family_tables,
)
from .ownership import POLICY, OwnershipPolicy

_ROUTE = itemgetter(0)  # KernelRoute.route


class HostSettings(NamedTuple):
    """What every plan of a host shares."""

    rule_priority: int = DEFAULT_RULE_PRIORITY
    rp_table: int = DEFAULT_RP_TABLE
    policy: OwnershipPolicy = POLICY

    @property
    def protocol(self) -> int:
        return self.policy.protocol


def intent_problems(intent: DeviceIntent, settings: HostSettings) -> list[str]:
    """What makes ``intent`` unusable on this host beyond what the config
    alone shows: choosing the reverse-path table."""
    return [
        f"{fam.family}: table {settings.rp_table} is the plugin's reverse-path table "
        "(--rp-table); it cannot be chosen"
        for fam in intent.families()
        if settings.rp_table in fam.tables
    ]


def _ours(routes: Iterable[KernelRoute], settings: HostSettings) -> list[Route]:
    is_ours = settings.policy.route_is_ours
    return [kr.route for kr in routes if is_ours(kr)]


def _released(deleted: Sequence[KernelRoute], settings: HostSettings) -> set[Rule]:
    """The rules the ``deleted`` routes held (from their tables alone)."""
    pairs = kernel_family_tables(deleted)
    return rules_for_tables(pairs, settings.rule_priority, settings.rp_table)


def rp_families_to_read(
    intent: DeviceIntent, facts: DeviceFacts, settings: HostSettings
) -> set[int]:
    """The families whose reverse-path rule converging ``intent`` may
    release: the device has plugin copies there now and will have none.
    Only for those must the other interfaces' copies be read."""
    before = rules_for_routes(
        _ours(facts.routes, settings), settings.rule_priority, settings.rp_table
    )
    after = rules_for_intent(intent, settings.rule_priority, settings.rp_table)
    return {r.family for r in before - after}


def plan_device(intent: DeviceIntent, facts: DeviceFacts, settings: HostSettings) -> Plan:
    """What makes the device's routes and the shared rules match ``intent``."""
    desired = desired_routes(intent, settings.rp_table)
    diff = diff_routes(
        desired,
        facts.routes,
        policy=settings.policy,
        owned_prefixes=instance_prefixes(intent),
        prunable=lambda table: prunable_table(intent, table),
    )
    plan = Plan(
        route_add=diff.add,
        route_adopt=diff.adopt,
        route_delete=diff.delete,
        route_conflict=diff.conflicts,
    )
    needed = rules_for_routes(desired, settings.rule_priority, settings.rp_table)
    before = rules_for_routes(
        _ours(facts.routes, settings), settings.rule_priority, settings.rp_table
    )
    _plan_rules(plan, needed, before - needed, facts)
    return plan


def plan_cleanup(
    intent: DeviceIntent | None,
    facts: DeviceFacts,
    settings: HostSettings,
    families: Collection[int] | None = None,
) -> Plan:
    """Remove the device's routes from every table (ours, and Incus's copies
    of its prefixes) and release the rules only it needed. ``intent`` None:
    the config is unreadable (ownership.py: fail closed). The interface may
    be gone: then the intent's tables tell which rules it held. ``families``:
    only those (a retry family by family after a failure)."""
    routes = facts.routes
    if families is not None:
        routes = [kr for kr in routes if kr.route.family in families]
    owned = _owned_prefixes(intent, routes, settings)
    diff = diff_routes([], routes, policy=settings.policy, owned_prefixes=owned,
                       prunable=lambda table: True)  # fmt: skip
    released = _released(diff.delete, settings)
    if intent is not None:
        released |= rules_for_intent(intent, settings.rule_priority, settings.rp_table)
    if families is not None:
        released = {r for r in released if r.family in families}
    plan = Plan(route_delete=diff.delete)
    _plan_rules(plan, set(), released, facts)
    return plan


def _owned_prefixes(
    intent: DeviceIntent | None, routes: Sequence[KernelRoute], settings: HostSettings
) -> set[tuple[int, bytes, int]] | None:
    """``instance_prefixes`` for a cleanup (None: the intent is unknown).
    Only routes not of the plugin's protocol are checked against them: when
    every route is ours (a big device's usual case, counted in C), the
    thousands of prefixes are not made, and none is claimed."""
    if intent is None:
        return None
    if all_of_protocol(routes, settings.protocol):
        return set()
    return instance_prefixes(intent)


def _plan_rules(plan: Plan, needed: set[Rule], released: set[Rule], facts: DeviceFacts) -> None:
    """Add the ``needed`` rules that are missing; delete the ``released``
    ones that no other interface's reverse-path copy still needs (a family
    not read counts as needed: never release on a guess)."""
    present = facts.plugin_rules
    have = {kr.rule for kr in present}
    plan.rule_add = sorted(needed - have, key=rule_sort_key)
    plan.rule_delete = [
        kr
        for kr in present
        if kr.rule in released
        and kr.rule.family in facts.rp_checked
        and kr.rule.family not in facts.rp_held_elsewhere
    ]
    plan.rule_move = rules_to_move(plan.rule_add, present, plan.rule_delete)


def rule_serves(rule: Rule, route: Route) -> bool:
    """Does a lookup through ``rule`` find ``route``? (The reverse-path rule
    serves its whole table; the rules of earlier versions only host routes
    (`suppress_prefixlength`), or one prefix (`to`).)"""
    if route.family != rule.family or route.table != rule.table:
        return False
    if rule.dst is not None:
        return route.dst == rule.dst and route.prefixlen == rule.prefixlen
    if rule.suppress_prefixlength is not None:
        return route.prefixlen > rule.suppress_prefixlength
    return True


def stale_rules_to_delete(
    stale: Sequence[KernelRule], routes: Sequence[KernelRoute], rp_table: int
) -> list[KernelRule]:
    """Those of the ``stale`` plugin rules that may go now. A rule of an
    earlier scheme (per table, per prefix) stays while it still serves a
    plugin route that has no copy in the reverse-path table yet: an
    instance not yet reconciled keeps a working reverse path until it is."""
    if not stale:
        return []
    copied = {
        (kr.route.family, kr.route.dst, kr.route.prefixlen, kr.oif)
        for kr in routes
        if kr.route.table == rp_table
    }
    uncopied = [
        kr.route
        for kr in routes
        if kr.route.table not in (rp_table, MAIN_TABLE)
        and (kr.route.family, kr.route.dst, kr.route.prefixlen, kr.oif) not in copied
    ]
    return [kr for kr in stale if not any(rule_serves(kr.rule, r) for r in uncopied)]


def plan_rules_resync(facts: HostFacts, settings: HostSettings) -> Plan:
    """The plugin's rules from the plugin's routes: a family's reverse-path
    rule iff the reverse-path table holds a plugin route of it, and no other
    plugin rule (but a stale one still needed, see stale_rules_to_delete)."""
    wanted = rules_for_routes(
        list(map(_ROUTE, facts.plugin_routes)), settings.rule_priority, settings.rp_table
    )
    add, unwanted = diff_rules(wanted, facts.plugin_rules, may_delete=lambda rule: True)
    delete = stale_rules_to_delete(unwanted, facts.plugin_routes, settings.rp_table)
    move = rules_to_move(add, facts.plugin_rules, delete)
    return Plan(rule_add=add, rule_delete=delete, rule_move=move)
