"""Desired vs. present -> the changes that converge them. Pure."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from .model import LOCAL_TABLE, KernelRoute, KernelRule, Route, Rule


@dataclass
class Plan:
    """Changes for one apply, in the order they are sent."""

    rule_add: list[Rule] = field(default_factory=list)
    route_add: list[Route] = field(default_factory=list)
    # Present with the right shape but another protocol (Incus put it there):
    # re-marked as the plugin's, so ownership is visible in the kernel.
    route_adopt: list[KernelRoute] = field(default_factory=list)
    route_delete: list[KernelRoute] = field(default_factory=list)
    rule_delete: list[KernelRule] = field(default_factory=list)
    # Rules of the old scheme that a new reverse-path rule must come before
    # (the kernel appends a rule after those of equal preference): deleted
    # and added again, last.
    rule_move: list[KernelRule] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.rule_add
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


def diff_routes(
    desired: Iterable[Route],
    present: Iterable[KernelRoute],
    *,
    protocol: int,
    owned_prefixes: set[tuple[int, bytes, int]],
    prunable: Callable[[int], bool],
) -> tuple[list[Route], list[KernelRoute], list[KernelRoute]]:
    """Routes of one interface: (add, adopt, delete).

    ``present`` are the routes on the device's interface, all tables. A
    present route is removed when it is not desired and either the plugin
    installed it or it is a copy of an instance prefix (Incus's copy in main,
    or one left in a table no longer chosen) in a table we may prune.
    Anything else on the interface (the kernel's link-local route, the local
    table) is left alone.
    """
    # One pass over thousands of routes: plain loop, locals only, no calls
    # on the common paths (desired and present; ours, to delete).
    want = dict.fromkeys(desired)
    adopt: list[KernelRoute] = []
    delete: list[KernelRoute] = []
    seen: set[Route] = set()
    if not want:  # cleanup: what the loop below does when nothing is wanted
        delete = [
            kr
            for kr in present
            if kr.route.table != LOCAL_TABLE
            and (
                kr.protocol == protocol
                or (
                    (kr.route.family, kr.route.dst, kr.route.prefixlen) in owned_prefixes
                    and prunable(kr.route.table)
                )
            )
        ]
    for kr in present if want else ():
        r = kr.route
        if r.table == LOCAL_TABLE:
            continue
        if r in want and r not in seen:
            seen.add(r)
            if kr.protocol != protocol:
                adopt.append(kr)
            continue
        if kr.protocol == protocol or (
            (r.family, r.dst, r.prefixlen) in owned_prefixes and prunable(r.table)
        ):
            delete.append(kr)
    add = [r for r in want if r not in seen] if seen else list(want)
    # Extra routes before host routes: their gateway resolves through them
    # (the same stable order a sort on "is a host route" gives).
    if any(kr.route.gateway is not None for kr in delete):
        delete = [kr for kr in delete if kr.route.gateway is not None] + [
            kr for kr in delete if kr.route.gateway is None
        ]
    return add, adopt, delete


def diff_rules(
    desired: set[Rule], present: Iterable[KernelRule], *, may_delete: Callable[[Rule], bool]
) -> tuple[list[Rule], list[KernelRule]]:
    """Plugin rules: add the missing desired ones; delete present ones that
    are not desired and that ``may_delete`` releases (another device may
    still need a shared per-table rule)."""
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
