"""One device: read the kernel, plan with the pure code, apply atomically.

The kernel is the record of what the plugin owns: its routes and rules carry
the plugin's routing protocol number. The one thing kept on disk is *where*
they may be on each interface (applied.py): written before an apply puts a
route somewhere new, so that reading an interface can be scoped to those
tables (facts.py) without ever missing a route of the plugin's.
"""

from __future__ import annotations

import errno
from collections import Counter
from collections.abc import Collection, Iterable, Iterator, Sequence
from itertools import chain, compress, repeat
from operator import eq, itemgetter, not_

from . import planner
from .applied import (
    NOTHING,
    Applied,
    AppliedStore,
    RecordRead,
    RecordState,
    applied_of,
    applied_of_kernel,
)
from .config import ConfigError, DeviceIntent
from .desired import DEFAULT_RP_TABLE, DEFAULT_RULE_PRIORITY, rules_for_intent
from .diff import Plan
from .facts import (
    FAMILIES,
    FULL,
    MAIN_PROBE_LIMIT,
    SCOPED,
    DeviceFacts,
    FactReader,
    HostFacts,
    Reading,
    candidates,
)
from .locking import host_lock
from .model import (
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    Value,
    describe_route,
    describe_routes,
    describe_rule,
    gc_paused,
    kernel_table_counts,
    protocols_of,
)
from .netlink.kernel import ApplyError, Change, ChangeKind, ChangeRun, Netlink
from .ownership import PROTOCOL, PROTOCOL_NAME, RTPROT_KERNEL, OwnershipPolicy, protocol_name
from .planner import HostSettings

__all__ = [
    "FAMILIES",
    "FULL",
    "PROTOCOL",
    "PROTOCOL_NAME",
    "RTPROT_KERNEL",
    "SCOPED",
    "DevicePlan",
    "Engine",
    "InterfaceMissing",
    "Reading",
    "RouteConflict",
]


class InterfaceMissing(LookupError):
    def __init__(self, ifname: str) -> None:
        super().__init__(f"host interface {ifname!r} does not exist")
        self.ifname = ifname


class DevicePlan(Value):
    """A plan for one host interface, with what it was computed from. (A
    plain class: `dataclasses` would cost every `device` command its import.)"""

    __slots__ = ("ifindex", "ifname", "plan", "record_after", "record_ahead", "record_now")

    def __init__(
        self,
        ifname: str | None,
        ifindex: int | None,
        plan: Plan | None = None,
        record_now: Applied | None = None,
        record_ahead: Applied | None = None,
        record_after: Applied | None = None,
    ) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self.plan = plan if plan is not None else Plan()
        # The applied-tables record (applied.py) around the apply: what the
        # file says now (None: nothing trustworthy), what it must say before
        # the first change goes out, and after the last. None: not kept (rules).
        self.record_now = record_now
        self.record_ahead = record_ahead
        self.record_after = record_after

    def _key(self) -> tuple[object, ...]:
        return (
            self.ifname,
            self.ifindex,
            self.plan,
            self.record_now,
            self.record_ahead,
            self.record_after,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"DevicePlan{self._key()!r}"

    def changes(self) -> list[Change]:
        out: list[Change] = []
        for kind, items, oif in self.runs():
            out += _changes(kind, items, oif)
        return out

    def runs(self) -> list[ChangeRun]:
        """The changes, in order, a run per kind (what ``apply`` sends)."""
        p, oif = self.plan, self.ifindex or 0
        return [
            ChangeRun(ChangeKind.ADD_RULE, p.rule_add),
            ChangeRun(ChangeKind.ADD_ROUTE, p.route_add, oif),
            ChangeRun(ChangeKind.ADOPT_ROUTE, p.route_adopt),
            ChangeRun(ChangeKind.DEL_ROUTE, p.route_delete),
            ChangeRun(ChangeKind.DEL_RULE, p.rule_delete),
            ChangeRun(ChangeKind.DEL_RULE, p.rule_move),
            ChangeRun(ChangeKind.ADD_RULE, [kr.rule for kr in p.rule_move]),
        ]

    def conflict_lines(self) -> list[str]:
        return [
            f"! route {describe_route(route, self.ifname)} (conflict: a route of protocol "
            f"{protocol_name(kr.protocol)} is there; not {PROTOCOL_NAME}'s to take over)"
            for route, kr in self.plan.route_conflict
        ]

    def lines(self) -> list[str]:
        p = self.plan
        out = self.conflict_lines()
        out += [f"+ rule {describe_rule(r)}" for r in p.rule_add]
        out += self._add_lines() + self._adopt_lines() + self._delete_lines()
        out += [f"- rule {describe_rule(kr.rule)}" for kr in p.rule_delete]
        out += [f"~ rule {describe_rule(kr.rule)} (moved after the new rule)" for kr in p.rule_move]
        return out

    def summary(self, limit: int = 20) -> list[str]:
        """``lines()``, but a kind of route change with more than ``limit``
        routes is told in one line, counted per table: printing 12,000
        lines costs a process more than making the changes."""
        p, dev = self.plan, self.ifname
        out = self.conflict_lines()
        out += [f"+ rule {describe_rule(r)}" for r in p.rule_add]
        for sign, what, count, lines, tables in (
            ("+", "add", len(p.route_add), self._add_lines,
             lambda: Counter(map(_TABLE, p.route_add))),
            ("~", "adopt", len(p.route_adopt), self._adopt_lines,
             lambda: kernel_table_counts(p.route_adopt)),
            ("-", "delete", len(p.route_delete), self._delete_lines,
             lambda: kernel_table_counts(p.route_delete)),
        ):  # fmt: skip
            if count <= limit:
                out += lines()
                continue
            per_table = ", ".join(f"table {t}: {n}" for t, n in sorted(tables().items()))
            out.append(f"{sign} {count} routes to {what} on {dev} ({per_table})")
        out += [f"- rule {describe_rule(kr.rule)}" for kr in p.rule_delete]
        out += [f"~ rule {describe_rule(kr.rule)} (moved after the new rule)" for kr in p.rule_move]
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


def _changes(kind: ChangeKind, items: Sequence[object], oif: int = 0) -> Iterator[Change]:
    """Change(kind, item, oif) for each item, made in C (as in desired._routes)."""
    return map(tuple.__new__, repeat(Change), zip(repeat(kind), items, repeat(oif), strict=False))


_ROUTE = itemgetter(0)  # KernelRoute.route
_TABLE = itemgetter(1)  # Route.table
_PROTOCOL = itemgetter(2)  # KernelRoute.protocol


def _routes_of(kernel_routes: Iterable[KernelRoute]) -> Iterator[Route]:
    return map(_ROUTE, kernel_routes)


class RouteConflict(ApplyError):
    """A desired route collides with a route that is not the plugin's to
    take over (ownership.py). Raised before anything is changed."""

    def __init__(self, dp: DevicePlan) -> None:
        route, kr = dp.plan.route_conflict[0]
        text = (
            f"a route of protocol {protocol_name(kr.protocol)} is there, not "
            f"{PROTOCOL_NAME}'s to take over"
        )
        super().__init__(
            f"{ChangeKind.ADD_ROUTE} {describe_route(route, dp.ifname)}", errno.EEXIST, text
        )
        self.conflicts = dp.plan.route_conflict
        more = len(self.conflicts) - 1
        self.args = (
            f"{self.change}: {text}"
            + (f" (and {more} more)" if more else "")
            + "; nothing changed",
        )


class Engine:
    """Read the facts, plan (planner.py, pure), apply atomically. The public
    methods below are what lifecycle, the daemon and the CLI call."""

    def __init__(
        self,
        netlink: Netlink | None = None,
        *,
        protocol: int = PROTOCOL,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        rp_table: int = DEFAULT_RP_TABLE,
    ) -> None:
        self.nl = netlink or Netlink()
        self.protocol = protocol
        self.rule_priority = rule_priority
        self.rp_table = rp_table
        self.policy = OwnershipPolicy(protocol)
        self.settings = HostSettings(rule_priority, rp_table, self.policy)
        self.facts = FactReader(self.nl, self.policy, rp_table)
        self.records = AppliedStore()

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

    def interface_routes(self, ifname: str) -> tuple[int | None, list[KernelRoute]]:
        """(index, every route on it) of a host interface; (None, []) when
        it does not exist."""
        ifindex = self.nl.ifindex(ifname)
        return ifindex, self.link_routes(ifindex) if ifindex is not None else []

    def rules_needed(self, intent: DeviceIntent, family: int | None = None) -> set[Rule]:
        """The plugin rules ``intent`` needs (of ``family`` only, when given)."""
        rules = rules_for_intent(intent, self.rule_priority, self.rp_table)
        return {r for r in rules if family is None or r.family == family}

    def plugin_rules(self) -> list[KernelRule]:
        return self.facts.plugin_rules()

    def _read_device(
        self,
        ifname: str,
        ifindex: int,
        intent: DeviceIntent | None,
        how: Reading,
        rp_families: tuple[int, ...],
    ) -> tuple[DeviceFacts, RecordRead]:
        """The interface's facts, scoped by its applied-tables record (and
        ``how.tables`` besides) unless ``how.full`` (or the record is in
        doubt, or the instance's prefixes are unknown: then every table)."""
        record = self.records.read(ifname, ifindex)
        if how.full or intent is None or record.state is RecordState.DOUBT:
            return self.facts.device(ifname, ifindex, rp_families), record
        trusted = record.state is RecordState.TRUSTED
        where = candidates(intent, record.applied, trusted, self.rp_table, also=how.tables)
        return self.facts.device_scoped(ifname, ifindex, where, rp_families), record

    def device_facts(
        self, ifname: str, intent: DeviceIntent, how: Reading = SCOPED
    ) -> tuple[DeviceFacts, RecordRead]:
        """What converging ``intent`` on ``ifname`` depends on: the
        interface's routes, the plugin's rules, and the reverse-path table
        of the families whose rule it may release (and the record read)."""
        index = self._ifindex(ifname)
        facts, record = self._read_device(ifname, index, intent, how, ())
        facts = self.facts.rp_held_elsewhere(
            facts, planner.rp_families_to_read(intent, facts, self.settings)
        )
        return facts, record

    def cleanup_facts(
        self, ifname: str | None, intent: DeviceIntent | None, how: Reading = SCOPED
    ) -> tuple[DeviceFacts, RecordRead | None]:
        """The same for a cleanup; the interface may be gone."""
        ifindex = self.facts.ifindex(ifname)
        if ifname is None or ifindex is None:
            return self.facts.device(ifname, None), None
        return self._read_device(ifname, ifindex, intent, how, FAMILIES)

    def _with_record(
        self, dp: DevicePlan, facts: DeviceFacts, record: RecordRead | None
    ) -> DevicePlan:
        """``dp`` with the record before, ahead of and after its apply."""
        if dp.ifname is None:
            return dp
        if dp.ifindex is None:  # the interface is gone, and its routes with it
            dp.record_after = NOTHING
            return dp
        # Tens of thousands of routes on a big device: told from their
        # columns (model.RouteColumns) or filtered in C.
        routes, plan, limit = facts.routes, dp.plan, MAIN_PROBE_LIMIT
        present: Sequence[KernelRoute] = routes
        if protocols_of(routes).count(self.protocol) != len(routes):
            present = list(compress(routes, map(eq, map(_PROTOCOL, routes), repeat(self.protocol))))
        there = applied_of_kernel(present, limit)
        kept = there
        # The deletions are among facts.routes, each once: as many of ours
        # among them as there are present means none is kept (a cleanup's
        # case, counted in C).
        deleted = plan.route_delete
        if deleted and protocols_of(deleted).count(self.protocol) == len(present):
            kept = NOTHING
        elif deleted:
            gone = set(map(id, deleted))
            left = compress(present, map(not_, map(gone.__contains__, map(id, present))))
            kept = applied_of(map(_ROUTE, left), limit)
        new = chain(plan.route_add, map(_ROUTE, plan.route_adopt))
        dp.record_after = kept.union(applied_of(new, limit))
        now = record.applied if record is not None and record.state is RecordState.TRUSTED else None
        dp.record_now = now
        ahead = there.union(dp.record_after)
        dp.record_ahead = ahead.union(now) if now is not None else ahead
        return dp

    # -- planning ------------------------------------------------------------

    def intent_problems(self, intent: DeviceIntent) -> list[str]:
        """What makes ``intent`` unusable on this host (beyond what the
        config alone shows): choosing the reverse-path table."""
        return planner.intent_problems(intent, self.settings)

    def plan_device(self, ifname: str, intent: DeviceIntent, how: Reading = SCOPED) -> DevicePlan:
        """What makes the kernel match ``intent`` for the interface, from
        the facts read as ``how`` says."""
        problems = self.intent_problems(intent)
        if problems:
            raise ConfigError(problems)
        with gc_paused():
            facts, record = self.device_facts(ifname, intent, how)
            plan = planner.plan_device(intent, facts, self.settings)
            return self._with_record(DevicePlan(ifname, facts.ifindex, plan), facts, record)

    def plan_cleanup(
        self,
        ifname: str | None,
        intent: DeviceIntent | None,
        *,
        families: Collection[int] | None = None,
        how: Reading = SCOPED,
    ) -> DevicePlan:
        """Remove the device's routes from every table and release the rules
        only it needed. The interface may already be gone (instance stopped:
        the kernel dropped its routes with it). ``families``: only those."""
        with gc_paused():
            facts, record = self.cleanup_facts(ifname, intent, how)
            plan = planner.plan_cleanup(intent, facts, self.settings, families)
            return self._with_record(DevicePlan(ifname, facts.ifindex, plan), facts, record)

    def plan_rules_resync(self, gone: Collection[KernelRoute] = ()) -> DevicePlan:
        """Full resync of the plugin's rules from the plugin's routes.
        ``gone``: routes to count as removed already (a dry run's planned
        removals, so that it plans the rules the real run ends with)."""
        host = self.facts.host()
        if gone:
            removed = {(kr.route, kr.oif) for kr in gone}
            kept = [kr for kr in host.plugin_routes if (kr.route, kr.oif) not in removed]
            host = HostFacts(kept, host.plugin_rules)
        plan = planner.plan_rules_resync(host, self.settings)
        return DevicePlan(None, None, plan)

    # -- applying ------------------------------------------------------------

    def apply(self, device_plan: DevicePlan) -> None:
        """Apply the plan; the interface's record is widened first where
        the plan puts routes it does not name, and set to where the routes
        are once every change went through (a failure leaves it wide)."""
        dp = device_plan
        if dp.plan.route_conflict:
            raise RouteConflict(dp)
        name, index = dp.ifname, dp.ifindex
        now, ahead = dp.record_now, dp.record_ahead
        widen = ahead and (now is None or not now.covers(ahead))
        if name is not None and index is not None and ahead is not None and widen:
            self.records.write(name, index, ahead)
            now = ahead
        with gc_paused():
            self.nl.apply_runs(dp.runs(), self.protocol, dp.ifname)
        if name is None or dp.record_after is None or dp.record_after == now:
            return
        if index is None:
            self.records.forget(name)
        else:
            self.records.write(name, index, dp.record_after)

    def converge(
        self,
        ifname: str,
        intent: DeviceIntent,
        *,
        dry_run: bool = False,
        how: Reading = SCOPED,
    ) -> DevicePlan:
        """Make the interface match ``intent``. A conflict with a route that
        is not the plugin's raises RouteConflict, a dry run included (plan
        equals apply)."""
        with host_lock(), gc_paused():
            dp = self.plan_device(ifname, intent, how)
            if dp.plan.route_conflict:
                raise RouteConflict(dp)
            if not dry_run:
                self.apply(dp)
        return dp

    def cleanup(
        self,
        ifname: str | None,
        intent: DeviceIntent | None,
        *,
        dry_run: bool = False,
        families: Collection[int] | None = None,
        how: Reading = SCOPED,
    ) -> DevicePlan:
        with host_lock(), gc_paused():
            dp = self.plan_cleanup(ifname, intent, families=families, how=how)
            if not dry_run:
                self.apply(dp)
        return dp

    def resync_rules(self, *, dry_run: bool = False) -> DevicePlan:
        with host_lock():
            dp = self.plan_rules_resync()
            if not dry_run:
                self.apply(dp)
        return dp
