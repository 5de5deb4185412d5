"""Which changes of a batch took effect, read back from the kernel.

A batch is sent without per-message acknowledgements: only failures are
reported. When the socket's receive buffer overflows (ENOBUFS), reports
were dropped and nothing tells which changes went through. The kernel's
state does: a route we added is there with our protocol, a route we deleted
is gone, an adopted route carries our protocol, and likewise for rules.
Pure logic over what the caller read; kernel.py reads, and imports this
module only when it needs it (a rare path).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from ..model import KernelRoute, KernelRule, Route, Rule
from .kernel import Change, ChangeKind

# (family, table) -> every route of that table; family -> every rule.
ReadRoutes = Callable[[int, int], Sequence[KernelRoute]]
ReadRules = Callable[[int], Sequence[KernelRule]]

__all__ = ["ReadRoutes", "ReadRules", "in_effect"]


def in_effect(
    changes: Sequence[Change], protocol: int, read_routes: ReadRoutes, read_rules: ReadRules
) -> list[Change]:
    """The changes of ``changes`` (in their order) whose effect the kernel
    shows now: undoing exactly these, in reverse, restores the state from
    before the batch. Each table and family involved is read once."""
    routes: dict[tuple[int, int], set[tuple[Route, int, int]]] = {}
    rules: dict[int, set[tuple[Rule, int]]] = {}

    def route_now(route: Route, oif: int, proto: int) -> bool:
        where = (route.family, route.table)
        if where not in routes:
            routes[where] = {(kr.route, kr.oif, kr.protocol) for kr in read_routes(*where)}
        return (route, oif, proto) in routes[where]

    def rule_now(rule: Rule, proto: int) -> bool:
        if rule.family not in rules:
            rules[rule.family] = {(kr.rule, kr.protocol) for kr in read_rules(rule.family)}
        return (rule, proto) in rules[rule.family]

    out: list[Change] = []
    deleted_rules: set[Rule] = set()
    for change in changes:
        kind, item, oif = change
        if kind == ChangeKind.ADD_ROUTE:
            assert isinstance(item, Route)
            done = route_now(item, oif, protocol)
        elif kind == ChangeKind.DEL_ROUTE:
            assert isinstance(item, KernelRoute)
            done = not route_now(item.route, item.oif, item.protocol)
        elif kind == ChangeKind.ADOPT_ROUTE:
            assert isinstance(item, KernelRoute)
            done = route_now(item.route, item.oif, protocol)
        elif kind == ChangeKind.ADD_RULE:
            assert isinstance(item, Rule)
            # A rule deleted earlier in the batch and added again (a move):
            # there before and there now, so nothing of the pair to undo.
            done = item not in deleted_rules and rule_now(item, protocol)
        else:
            assert isinstance(item, KernelRule)
            deleted_rules.add(item.rule)
            done = not rule_now(item.rule, item.protocol)
        if done:
            out.append(change)
    return out
