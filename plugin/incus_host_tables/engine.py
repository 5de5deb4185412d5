"""One device: read the kernel, plan with the pure code, apply atomically.

The kernel is the record of what the plugin owns: its routes and rules carry
the plugin's routing protocol number. Nothing is kept on disk, so a crash or
a reboot can never leave a stale record behind.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from itertools import repeat
from operator import itemgetter

from .config import DeviceIntent
from .desired import (
    DEFAULT_RULE_PRIORITY,
    desired_routes,
    instance_prefixes,
    prunable_table,
    rules_for_intent,
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
    describe_routes,
    describe_rule,
    gc_paused,
)
from .netlink.kernel import Change, ChangeRun, Netlink, RouteQuery

# The routing protocol number that marks the plugin's routes and rules
# (data/rt_protos.conf, installed into /etc/iproute2/rt_protos.d/, names it).
PROTOCOL = 158
RTPROT_KERNEL = 2  # routes the kernel made itself (the IPv6 link-local one)
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
        out: list[Change] = []
        for kind, items, oif in self.runs():
            out += _changes(kind, items, oif)
        return out

    def runs(self) -> list[ChangeRun]:
        """The changes, in order, a run per kind (what ``apply`` sends)."""
        p, oif = self.plan, self.ifindex or 0
        return [
            ChangeRun("add-rule", p.rule_add),
            ChangeRun("add-route", p.route_add, oif),
            ChangeRun("adopt-route", p.route_adopt),
            ChangeRun("del-route", p.route_delete),
            ChangeRun("del-rule", p.rule_delete),
        ]

    def lines(self) -> list[str]:
        p = self.plan
        out = [f"+ rule {describe_rule(r)}" for r in p.rule_add]
        out += self._add_lines() + self._adopt_lines() + self._delete_lines()
        out += [f"- rule {describe_rule(kr.rule)}" for kr in p.rule_delete]
        return out

    def summary(self, limit: int = 20) -> list[str]:
        """``lines()``, but a kind of route change with more than ``limit``
        routes is told in one line, counted per table: printing 12,000
        lines costs a process more than making the changes."""
        p, dev = self.plan, self.ifname
        out = [f"+ rule {describe_rule(r)}" for r in p.rule_add]
        for sign, what, routes, lines in (
            ("+", "add", p.route_add, self._add_lines),
            ("~", "adopt", list(_routes_of(p.route_adopt)), self._adopt_lines),
            ("-", "delete", list(_routes_of(p.route_delete)), self._delete_lines),
        ):
            if len(routes) <= limit:
                out += lines()
                continue
            tables = Counter(map(_TABLE, routes))
            per_table = ", ".join(f"table {t}: {n}" for t, n in sorted(tables.items()))
            out.append(f"{sign} {len(routes)} routes to {what} on {dev} ({per_table})")
        out += [f"- rule {describe_rule(kr.rule)}" for kr in p.rule_delete]
        return out

    def _add_lines(self) -> list[str]:
        return describe_routes(self.plan.route_add, self.ifname, "+ route ")

    def _adopt_lines(self) -> list[str]:
        return [
            f"~ route {describe_route(kr.route, self.ifname)} (adopt: protocol {kr.protocol} -> "
            f"{PROTOCOL_NAME})"
            for kr in self.plan.route_adopt
        ]

    def _delete_lines(self) -> list[str]:
        return describe_routes(_routes_of(self.plan.route_delete), self.ifname, "- route ")


def _changes(kind: str, items: Sequence[object], oif: int = 0) -> Iterator[Change]:
    """Change(kind, item, oif) for each item, made in C (as in desired._routes)."""
    return map(tuple.__new__, repeat(Change), zip(repeat(kind), items, repeat(oif), strict=False))


_ROUTE = itemgetter(0)  # KernelRoute.route
_TABLE = itemgetter(1)  # Route.table


def _routes_of(kernel_routes: Iterable[KernelRoute]) -> Iterator[Route]:
    return map(_ROUTE, kernel_routes)


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
        return self.nl.link_routes(ifindex)

    def plugin_rules(self) -> list[KernelRule]:
        return [kr for fam in FAMILIES for kr in self.nl.rules(fam, protocol=self.protocol)]

    def _held_elsewhere(self, rule: Rule, oif: int | None) -> bool:
        """Does a plugin route on another interface still need ``rule``?"""
        return rule in self._held_elsewhere_of([rule], oif)

    def _held_elsewhere_of(
        self,
        rules: Sequence[Rule],
        oif: int | None,
        known: dict[tuple[int, int], list[KernelRoute]] | None = None,
    ) -> set[Rule]:
        """Those of ``rules`` that a plugin route on another interface than
        ``oif`` (None: gone, so any) still needs. One kernel-filtered dump per
        (family, table), unless ``known`` has it already (``_others_query``);
        the device's own routes there, typically thousands when it is cleaned
        up, are dropped while decoding."""
        held: set[Rule] = set()
        for family, table in dict.fromkeys((r.family, r.table) for r in rules):
            if known is not None and (family, table) in known:
                found = known[family, table]
            else:
                (found,) = self.nl.routes_many([self._others_query(family, table, oif)])
            others = [kr.route for kr in found if kr.oif != oif]
            for rule in rules:
                if (rule.family, rule.table) == (family, table) and any(
                    _rule_serves(rule, route) for route in others
                ):
                    held.add(rule)
        return held

    def _others_query(self, family: int, table: int, oif: int | None) -> RouteQuery:
        """The plugin's routes in ``table`` but those on ``oif``."""
        return RouteQuery(family, table=table, protocol=self.protocol, exclude_oif=oif)

    # -- planning ------------------------------------------------------------

    def plan_device(self, ifname: str, intent: DeviceIntent) -> DevicePlan:
        """What makes the kernel match ``intent`` for the interface."""
        with gc_paused():
            return self._plan_device(ifname, intent)

    def _plan_device(self, ifname: str, intent: DeviceIntent) -> DevicePlan:
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
            [kr.route for kr in present if kr.protocol == self.protocol], self.rule_priority
        )
        plan = Plan(route_add=add, route_adopt=adopt, route_delete=delete)
        self._plan_rules(plan, needed, before - needed, ifindex)
        return DevicePlan(ifname, ifindex, plan)

    def plan_cleanup(self, ifname: str | None, intent: DeviceIntent | None) -> DevicePlan:
        """Remove the device's routes from every table and release the rules
        only it needed. The interface may already be gone (instance stopped:
        the kernel dropped its routes with it)."""
        with gc_paused():
            return self._plan_cleanup(ifname, intent)

    def _plan_cleanup(self, ifname: str | None, intent: DeviceIntent | None) -> DevicePlan:
        ifindex = None
        present: list[KernelRoute] = []
        if ifname is not None:
            try:
                ifindex = self._ifindex(ifname)
            except InterfaceMissing:
                ifindex = None
        # The rules a cleanup releases are at least those of the intent's
        # tables: whether another interface still needs them is read together
        # with the device's own routes (two dumps at a time: routes_many).
        guessed = rules_for_intent(intent, self.rule_priority) if intent is not None else set()
        groups = list(dict.fromkeys((r.family, r.table) for r in guessed))
        queries = [self._others_query(family, table, ifindex) for family, table in groups]
        if ifindex is not None:
            link = [RouteQuery(AF_INET, oif=ifindex), RouteQuery(AF_INET6, oif=ifindex)]
            queries = [*link, *queries]
        found = self.nl.routes_many(queries)
        if ifindex is not None:
            present = found.pop(0) + found.pop(0)
        known = dict(zip(groups, found, strict=True))
        if intent is not None:
            owned = instance_prefixes(intent)
        else:
            # Config unreadable (isolating an invalid instance): everything on
            # the instance's own interface but the kernel's routes goes --
            # Incus's copy in main included. Fail closed.
            owned = {
                (kr.route.family, kr.route.dst, kr.route.prefixlen)
                for kr in present
                if kr.protocol != RTPROT_KERNEL
            }
        _, _, delete = diff_routes(
            [], present, protocol=self.protocol, owned_prefixes=owned, prunable=lambda t: True
        )
        # And the intent's: its tables as configured cover an interface already gone.
        released = rules_for_routes(list(map(_ROUTE, delete)), self.rule_priority) | guessed
        plan = Plan(route_delete=delete)
        self._plan_rules(plan, set(), released, ifindex, known)
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
        self,
        plan: Plan,
        needed: set[Rule],
        released: set[Rule],
        ifindex: int | None,
        known: dict[tuple[int, int], list[KernelRoute]] | None = None,
    ) -> None:
        present = self.plugin_rules()
        have = {kr.rule for kr in present}
        plan.rule_add = sorted(needed - have, key=rule_sort_key)
        candidates = [kr for kr in present if kr.rule in released]
        held = self._held_elsewhere_of([kr.rule for kr in candidates], ifindex, known)
        plan.rule_delete = [kr for kr in candidates if kr.rule not in held]

    # -- applying ------------------------------------------------------------

    def apply(self, device_plan: DevicePlan) -> None:
        with gc_paused():
            self.nl.apply_runs(device_plan.runs(), self.protocol, device_plan.ifname)

    def converge(self, ifname: str, intent: DeviceIntent, *, dry_run: bool = False) -> DevicePlan:
        with host_lock(), gc_paused():
            dp = self.plan_device(ifname, intent)
            if not dry_run:
                self.apply(dp)
        return dp

    def cleanup(
        self, ifname: str | None, intent: DeviceIntent | None, *, dry_run: bool = False
    ) -> DevicePlan:
        with host_lock(), gc_paused():
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
