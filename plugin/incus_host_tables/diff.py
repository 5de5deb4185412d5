"""Desired vs. present -> the changes that converge them. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from itertools import compress, repeat
from operator import and_, eq, is_not, itemgetter, ne, not_
from typing import NamedTuple

from .model import (
    LOCAL_TABLE,
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    Value,
    all_of_protocol,
    any_gateway,
    kernel_family_tables,
)
from .ownership import OwnershipPolicy


class Plan(Value):
    """Changes for one apply, in the order they are sent. (A plain class:
    `dataclasses` would cost every `device` command its import.)"""

    __slots__ = _FIELDS = (
        "rule_add",
        "route_add",
        "route_adopt",
        "route_delete",
        "rule_delete",
        "rule_move",
        "route_conflict",
    )

    def __init__(
        self,
        rule_add: list[Rule] | None = None,
        route_add: list[Route] | None = None,
        route_adopt: list[KernelRoute] | None = None,
        route_delete: Sequence[KernelRoute] | None = None,
        rule_delete: list[KernelRule] | None = None,
        rule_move: list[KernelRule] | None = None,
        route_conflict: list[tuple[Route, KernelRoute]] | None = None,
    ) -> None:
        self.rule_add = rule_add if rule_add is not None else []
        self.route_add = route_add if route_add is not None else []
        # Present with the right shape but another protocol (Incus put it
        # there): re-marked as the plugin's, so ownership is visible in the kernel.
        self.route_adopt = route_adopt if route_adopt is not None else []
        self.route_delete = route_delete if route_delete is not None else []
        self.rule_delete = rule_delete if rule_delete is not None else []
        # Rules of the old scheme that a new reverse-path rule must come
        # before (the kernel appends a rule after those of equal
        # preference): deleted and added again, last.
        self.rule_move = rule_move if rule_move is not None else []
        # Desired routes that collide with a route the plugin may not touch
        # (ownership.py): the plan cannot be applied.
        self.route_conflict = route_conflict if route_conflict is not None else []

    def _key(self) -> tuple[object, ...]:
        return tuple(getattr(self, name) for name in self._FIELDS)

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._FIELDS)
        return f"Plan({inner})"

    def __bool__(self) -> bool:
        return bool(
            self.route_conflict
            or self.rule_add
            or self.route_add
            or self.route_adopt
            or self.route_delete
            or self.rule_delete
            or self.rule_move
        )

    def count(self) -> int:
        return (
            len(self.rule_add)
            + len(self.route_add)
            + len(self.route_adopt)
            + len(self.route_delete)
            + len(self.rule_delete)
            + 2 * len(self.rule_move)
        )


class RouteDiff(NamedTuple):
    add: list[Route]
    adopt: list[KernelRoute]
    delete: Sequence[KernelRoute]
    # Present routes that no one may touch (ownership.py) where a desired
    # route must go: refused, never taken over.
    conflicts: list[tuple[Route, KernelRoute]]


_KEY = itemgetter(0, 1, 2, 3, 5)  # family, table, dst, prefixlen, priority: the kernel's identity
_ROUTE = itemgetter(0)  # KernelRoute.route
_PROTOCOL = itemgetter(2)  # KernelRoute.protocol
_TABLE = itemgetter(1)  # Route.table
_GATEWAY = itemgetter(4)  # Route.gateway


def diff_routes(
    desired: Iterable[Route],
    present: Sequence[KernelRoute],
    *,
    policy: OwnershipPolicy,
    owned_prefixes: set[tuple[int, bytes, int]] | None,
    prunable: Callable[[int], bool],
) -> RouteDiff:
    """Routes of one interface: add, adopt, delete, conflicts.

    ``present`` are the routes on the device's interface, all tables. A
    present route is removed when it is not desired, the policy lets the
    plugin remove it (ours, or Incus's copy of an instance prefix), and its
    table may be pruned. Anything else on the interface (the kernel's
    link-local route, the local table, an operator's or a routing daemon's
    route) is left alone; where a desired route would collide with such a
    route, that is a conflict. ``owned_prefixes`` None: the instance's
    prefixes are unknown (see ownership.py).
    """
    want = dict.fromkeys(desired)
    ours = policy.protocol
    if not want:
        return RouteDiff([], [], _removable(present, policy, owned_prefixes, prunable), [])
    # One pass over thousands of routes: plain loop, locals only, no calls
    # on the common paths (desired and present; ours, to delete).
    adopt: list[KernelRoute] = []
    delete: list[KernelRoute] = []
    foreign: list[KernelRoute] = []
    seen: set[Route] = set()
    for kr in present:
        r = kr.route
        if r.table == LOCAL_TABLE:
            continue
        if kr.protocol == ours:
            if r in want and r not in seen:
                seen.add(r)
            else:
                delete.append(kr)
            continue
        if policy.adoptable(kr, owned_prefixes):
            if r in want and r not in seen:
                seen.add(r)
                adopt.append(kr)
            elif prunable(r.table):
                delete.append(kr)
            continue
        if want:
            foreign.append(kr)
    conflicts: list[tuple[Route, KernelRoute]] = []
    if foreign:
        by_key = {_KEY(r): r for r in want if r not in seen}
        conflicts = [(by_key[_KEY(kr.route)], kr) for kr in foreign if _KEY(kr.route) in by_key]
    add = [r for r in want if r not in seen] if seen else list(want)
    return RouteDiff(add, adopt, _gateways_first(delete), conflicts)


def _removable(
    present: Sequence[KernelRoute],
    policy: OwnershipPolicy,
    owned_prefixes: set[tuple[int, bytes, int]] | None,
    prunable: Callable[[int], bool],
) -> Sequence[KernelRoute]:
    """``diff_routes``'s deletions when nothing is desired (a cleanup): ours,
    and Incus's copies in prunable tables; never the local table. When all
    are ours, none in the local table and none via a gateway (a big
    device's usual case), that is ``present`` itself, told from its columns
    (model.RouteColumns: no route object made); otherwise ours are told
    apart in C, and only the others (a few) are looked at one by one."""
    local = any(table == LOCAL_TABLE for _family, table in kernel_family_tables(present))
    ours_only = all_of_protocol(present, policy.protocol)
    if ours_only and not local and not any_gateway(present):
        return present
    present = list(present)
    protocols = list(map(_PROTOCOL, present))
    keep: list[bool] | None = None  # None: every one
    if not ours_only:
        keep = list(map(eq, protocols, repeat(policy.protocol)))
        for i in compress(range(len(present)), map(not_, keep)):
            kr = present[i]
            keep[i] = policy.adoptable(kr, owned_prefixes) and prunable(kr.route.table)
    routes = list(map(_ROUTE, present))
    if local:
        not_local = map(ne, map(_TABLE, routes), repeat(LOCAL_TABLE))
        keep = list(map(and_, keep, not_local)) if keep is not None else list(not_local)
    if keep is None:
        return _gateways_first(present, routes)
    return _gateways_first(list(compress(present, keep)))


def _gateways_first(
    delete: list[KernelRoute], routes: list[Route] | None = None
) -> list[KernelRoute]:
    """Extra routes before host routes: their gateway resolves through them
    (the same stable order a sort on "is a host route" gives). ``routes``:
    those of ``delete``, when already at hand."""
    gateways = map(_GATEWAY, routes if routes is not None else map(_ROUTE, delete))
    if any(map(is_not, gateways, repeat(None))):
        return [kr for kr in delete if kr.route.gateway is not None] + [
            kr for kr in delete if kr.route.gateway is None
        ]
    return delete


def diff_rules(
    desired: set[Rule], present: Iterable[KernelRule], *, may_delete: Callable[[Rule], bool]
) -> tuple[list[Rule], list[KernelRule]]:
    """Plugin rules: add the missing desired ones; delete present ones that
    are not desired and that ``may_delete`` releases (another device may
    still need the shared reverse-path rule)."""
    present = list(present)
    have = {kr.rule for kr in present}
    add = sorted(desired - have, key=rule_sort_key)
    delete = [kr for kr in present if kr.rule not in desired and may_delete(kr.rule)]
    return add, delete


def rules_to_move(
    added: Iterable[Rule], present: Iterable[KernelRule], deleted: Iterable[KernelRule]
) -> list[KernelRule]:
    """The present plugin rules, other than those ``deleted``, that share a
    family and preference with an ``added`` rule: the added one would land
    after them, and a stale rule for a strict table ahead of it ends the
    lookup before it (see ``Plan.rule_move``)."""
    slots = {(r.family, r.priority) for r in added}
    if not slots:
        return []
    gone = {kr.rule for kr in deleted}
    return [
        kr for kr in present if (kr.rule.family, kr.rule.priority) in slots and kr.rule not in gone
    ]


def rule_sort_key(rule: Rule) -> tuple[int, int, bytes, int, int]:
    return (rule.family, rule.table, rule.dst or b"", rule.prefixlen, rule.priority)
