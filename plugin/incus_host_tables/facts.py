"""What the kernel holds that a plan depends on, read before any decision.

The engine reads a ``DeviceFacts`` (or, for the rules resync, a
``HostFacts``) and hands it to the pure planner (planner.py). Reads are
scoped by interface, table and protocol in the kernel, so each fact costs
one filtered dump; the reverse-path table facts are asked for only for the
families a plan may release a rule of.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import NamedTuple

from .model import AF_INET, AF_INET6, KernelRoute, KernelRule
from .netlink.kernel import Netlink, RouteQuery
from .ownership import OwnershipPolicy

FAMILIES = (AF_INET, AF_INET6)


class DeviceFacts(NamedTuple):
    """One host interface as the kernel shows it."""

    ifname: str | None
    ifindex: int | None  # None: the interface does not exist (any more)
    routes: Sequence[KernelRoute] = ()  # every route on it, every table
    plugin_rules: Sequence[KernelRule] = ()  # the plugin's rules, both families
    # Families whose reverse-path table holds a plugin route of another
    # interface (so the family's rule is still needed whatever this device
    # does). Only the families in ``rp_checked`` were read.
    rp_held_elsewhere: frozenset[int] = frozenset()
    rp_checked: frozenset[int] = frozenset(FAMILIES)


class HostFacts(NamedTuple):
    """Every plugin route (all interfaces, all tables) and every plugin rule."""

    plugin_routes: Sequence[KernelRoute]
    plugin_rules: Sequence[KernelRule]


class FactReader:
    """Reads facts through one netlink connection."""

    def __init__(self, nl: Netlink, policy: OwnershipPolicy, rp_table: int) -> None:
        self.nl = nl
        self.policy = policy
        self.protocol = policy.protocol
        self.rp_table = rp_table

    def ifindex(self, ifname: str | None) -> int | None:
        return self.nl.ifindex(ifname) if ifname is not None else None

    def plugin_rules(self) -> list[KernelRule]:
        ours = self.policy.rule_is_ours
        return [kr for fam in FAMILIES for kr in self.nl.rules(fam) if ours(kr)]

    def _rp_query(self, family: int, ifindex: int | None) -> RouteQuery:
        """The plugin's routes in the reverse-path table but those on ``ifindex``."""
        return RouteQuery(family, table=self.rp_table, protocol=self.protocol, exclude_oif=ifindex)

    def device(
        self, ifname: str | None, ifindex: int | None, rp_families: Collection[int] = FAMILIES
    ) -> DeviceFacts:
        """The interface's routes, the plugin's rules, and the reverse-path
        table of ``rp_families`` (all dumps two at a time: routes_many)."""
        queries: list[RouteQuery] = []
        if ifindex is not None:
            queries += [RouteQuery(AF_INET, oif=ifindex), RouteQuery(AF_INET6, oif=ifindex)]
        families = [f for f in FAMILIES if f in rp_families]
        queries += [self._rp_query(f, ifindex) for f in families]
        found = self.nl.routes_many(queries) if queries else []
        routes: list[KernelRoute] = []
        if ifindex is not None:
            routes = found.pop(0) + found.pop(0)
        held = frozenset(f for f, others in zip(families, found, strict=True) if others)
        return DeviceFacts(ifname, ifindex, routes, self.plugin_rules(), held, frozenset(families))

    def rp_held_elsewhere(self, facts: DeviceFacts, families: Collection[int]) -> DeviceFacts:
        """``facts`` with the reverse-path table of ``families`` read too."""
        todo = [f for f in FAMILIES if f in families and f not in facts.rp_checked]
        if not todo:
            return facts
        found = self.nl.routes_many([self._rp_query(f, facts.ifindex) for f in todo])
        held = {f for f, others in zip(todo, found, strict=True) if others}
        return DeviceFacts(
            facts.ifname,
            facts.ifindex,
            facts.routes,
            facts.plugin_rules,
            facts.rp_held_elsewhere | held,
            facts.rp_checked | frozenset(todo),
        )

    def host(self) -> HostFacts:
        routes = [kr for fam in FAMILIES for kr in self.nl.routes(fam, protocol=self.protocol)]
        return HostFacts(routes, self.plugin_rules())
