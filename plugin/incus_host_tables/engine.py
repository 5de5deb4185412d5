"""One device: read the kernel, plan with the pure code, apply atomically.

The kernel is the record of what the plugin owns: its routes and rules carry
the plugin's routing protocol number. Nothing is kept on disk, so a crash or
a reboot can never leave a stale record behind.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from .config import DeviceIntent
from .desired import (
    DEFAULT_RULE_PRIORITY,
    desired_routes,
    instance_prefixes,
    prunable_table,
    rules_for_routes,
)
from .diff import Plan, diff_routes, diff_rules, rule_sort_key
from .locking import host_lock
from .model import (
    AF_INET,
    AF_INET6,
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    describe_route,
    describe_rule,
)
from .netlink.kernel import Change, Netlink

# The routing protocol number that marks the plugin's routes and rules
# (hooks/rt_protos.d/incus-host-tables.conf names it for iproute2).
PROTOCOL = 158
PROTOCOL_NAME = "incus-host-tables"
FAMILIES = (AF_INET, AF_INET6)


class InterfaceMissing(LookupError):
    def __init__(self, ifname: str) -> None:
        super().__init__(f"host interface {ifname!r} does not exist")
        self.ifname = ifname


@dataclass
class DevicePlan:
    """A plan for one host interface, with what it was computed from."""

    ifname: str | None
    ifindex: int | None
    plan: Plan = field(default_factory=Plan)

    def changes(self) -> list[Change]:
        p, oif = self.plan, self.ifindex or 0
        out = [Change("add-rule", r) for r in p.rule_add]
        out += [Change("add-route", r, oif) for r in p.route_add]
        out += [Change("adopt-route", kr) for kr in p.route_adopt]
        out += [Change("del-route", kr) for kr in p.route_delete]
        out += [Change("del-rule", kr) for kr in p.rule_delete]
        return out

    def lines(self) -> list[str]:
        p, dev = self.plan, self.ifname
        out = [f"+ rule {describe_rule(r)}" for r in p.rule_add]
        out += [f"+ route {describe_route(r, dev)}" for r in p.route_add]
        out += [
            f"~ route {describe_route(kr.route, dev)} (adopt: protocol {kr.protocol} -> "
            f"{PROTOCOL_NAME})"
            for kr in p.route_adopt
        ]
        out += [f"- route {describe_route(kr.route, dev)}" for kr in p.route_delete]
        out += [f"- rule {describe_rule(kr.rule)}" for kr in p.rule_delete]
        return out


def _rule_serves(rule: Rule, route: Route) -> bool:
    if route.family != rule.family or route.table != rule.table:
        return False
    if rule.dst is None:
        return route.is_host
    return route.dst == rule.dst and route.prefixlen == rule.prefixlen


class Engine:
    def __init__(
        self,
        netlink: Netlink | None = None,
        *,
        protocol: int = PROTOCOL,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
    ) -> None:
        self.nl = netlink or Netlink()
        self.protocol = protocol
        self.rule_priority = rule_priority

    def close(self) -> None:
        self.nl.close()

    # -- facts ---------------------------------------------------------------

    def _ifindex(self, ifname: str) -> int:
        index = self.nl.ifindex(ifname)
        if index is None:
            raise InterfaceMissing(ifname)
        return index

    def link_routes(self, ifindex: int) -> list[KernelRoute]:
        return [kr for fam in FAMILIES for kr in self.nl.routes(fam, oif=ifindex)]

    def plugin_rules(self) -> list[KernelRule]:
        return [kr for fam in FAMILIES for kr in self.nl.rules(fam, protocol=self.protocol)]

    def _held_elsewhere(self, rule: Rule, oif: int | None) -> bool:
        """Does a plugin route on another interface still need ``rule``?"""
        for kr in self.nl.routes(rule.family, table=rule.table, protocol=self.protocol):
            if kr.oif != oif and _rule_serves(rule, kr.route):
                return True
        return False

    # -- planning ------------------------------------------------------------

    def plan_device(self, ifname: str, intent: DeviceIntent) -> DevicePlan:
        """What makes the kernel match ``intent`` for the interface."""
        ifindex = self._ifindex(ifname)
        present = self.link_routes(ifindex)
        desired = desired_routes(intent)
        add, adopt, delete = diff_routes(
            desired,
            present,
            protocol=self.protocol,
            owned_prefixes=instance_prefixes(intent),
            prunable=lambda table: prunable_table(intent, table),
        )
        needed = rules_for_routes(desired, self.rule_priority)
        before = rules_for_routes(
            (kr.route for kr in present if kr.protocol == self.protocol), self.rule_priority
        )
        plan = Plan(route_add=add, route_adopt=adopt, route_delete=delete)
        self._plan_rules(plan, needed, before - needed, ifindex)
        return DevicePlan(ifname, ifindex, plan)

    def plan_cleanup(self, ifname: str | None, intent: DeviceIntent | None) -> DevicePlan:
        """Remove the device's routes from every table and release the rules
        only it needed. The interface may already be gone (instance stopped:
        the kernel dropped its routes with it)."""
        ifindex = None
        present: list[KernelRoute] = []
        if ifname is not None:
            try:
                ifindex = self._ifindex(ifname)
            except InterfaceMissing:
                ifindex = None
        if ifindex is not None:
            present = self.link_routes(ifindex)
        owned = instance_prefixes(intent) if intent is not None else set()
        _, _, delete = diff_routes(
            [], present, protocol=self.protocol, owned_prefixes=owned, prunable=lambda t: True
        )
        released = rules_for_routes((kr.route for kr in delete), self.rule_priority)
        if intent is not None:
            # Its tables as configured: covers an interface already gone.
            released |= rules_for_routes(desired_routes(intent), self.rule_priority)
        plan = Plan(route_delete=delete)
        self._plan_rules(plan, set(), released, ifindex)
        return DevicePlan(ifname, ifindex, plan)

    def plan_rules_resync(self) -> DevicePlan:
        """Full resync of the plugin's rules from the plugin's routes."""
        routes = [
            kr.route for fam in FAMILIES for kr in self.nl.routes(fam, protocol=self.protocol)
        ]
        desired = rules_for_routes(routes, self.rule_priority)
        add, delete = diff_rules(desired, self.plugin_rules(), may_delete=lambda r: True)
        return DevicePlan(None, None, Plan(rule_add=add, rule_delete=delete))

    def _plan_rules(
        self, plan: Plan, needed: set[Rule], released: set[Rule], ifindex: int | None
    ) -> None:
        present = self.plugin_rules()
        have = {kr.rule for kr in present}
        plan.rule_add = sorted(needed - have, key=rule_sort_key)
        plan.rule_delete = [
            kr
            for kr in present
            if kr.rule in released and not self._held_elsewhere(kr.rule, ifindex)
        ]

    # -- applying ------------------------------------------------------------

    def apply(self, device_plan: DevicePlan) -> None:
        self.nl.apply(device_plan.changes(), self.protocol, device_plan.ifname)

    def converge(self, ifname: str, intent: DeviceIntent, *, dry_run: bool = False) -> DevicePlan:
        with host_lock():
            dp = self.plan_device(ifname, intent)
            if not dry_run:
                self.apply(dp)
        return dp

    def cleanup(
        self, ifname: str | None, intent: DeviceIntent | None, *, dry_run: bool = False
    ) -> DevicePlan:
        with host_lock():
            dp = self.plan_cleanup(ifname, intent)
            if not dry_run:
                self.apply(dp)
        return dp

    def resync_rules(self, *, dry_run: bool = False) -> DevicePlan:
        with host_lock():
            dp = self.plan_rules_resync()
            if not dry_run:
                self.apply(dp)
        return dp


def tables_of(routes: Iterable[KernelRoute]) -> dict[int, set[int]]:
    """family -> tables holding any of ``routes`` (for status)."""
    out: dict[int, set[int]] = {}
    for kr in routes:
        out.setdefault(kr.route.family, set()).add(kr.route.table)
    return out
