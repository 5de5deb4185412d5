"""What the kernel holds that a plan depends on, read before any decision.

The engine reads a ``DeviceFacts`` (or, for the rules resync, a
``HostFacts``) and hands it to the pure planner (planner.py). Reads are
filtered by interface, table and protocol in the kernel; the reverse-path
table facts are asked for only for the families a plan may release a rule
of.

A dump filtered by interface alone still walks every route of the family
in every table: on a host with a million routes that walk, not the
device's own routes, is the cost. So a device is read in one of two ways
(``ReadScope``):

- **full**: every table, filtered by interface (status, the periodic
  resync, and whenever there is doubt);
- **scoped** (``Candidates``): only where a route a plan may act on can be.
  Per family: table-scoped dumps (RTA_TABLE with strict checking: the
  kernel walks that table only) of the chosen tables, the reverse-path
  table, the table of Incus's own key and the tables the applied-tables
  record names (applied.py); and main, where the host's own routes are,
  probed prefix by prefix for the instance's prefixes and those the record
  names (``_probe_main``). A probe whose answer is not clear-cut falls back
  to the scoped dump of main, so the facts stay those a full read gives.
  Without a record, a plugin route seen anyway means one was made outside
  the record: the read starts again in full.
"""

from __future__ import annotations

import errno
from collections.abc import Collection, Mapping, Sequence
from enum import Enum
from typing import NamedTuple

from .applied import Applied, Prefix
from .config import DeviceIntent
from .desired import FAMILY_OF, tables_with_rp
from .model import (
    AF_INET,
    AF_INET6,
    DEFAULT_PRIORITY,
    HOST_PREFIXLEN,
    LOCAL_TABLE,
    MAIN_TABLE,
    KernelRoute,
    KernelRule,
)
from .netlink.dump import DumpedRoutes
from .netlink.kernel import Netlink, RouteQuery
from .ownership import OwnershipPolicy

FAMILIES = (AF_INET, AF_INET6)

# Up to this many prefixes of a family are probed in main one by one;
# beyond, main is dumped (table-scoped). A probe costs about what decoding
# a handful of dumped routes does, so a device with thousands of prefixes
# (all of them in main, Incus's copies or the plugin's) reads main faster
# in one dump, walk included, on all but the largest hosts.
MAIN_PROBE_LIMIT = 64

_FR_ACT_TO_TBL = 1  # a rule's action: look up a table (fib_rule_hdr.action, byte 7)


class ReadScope(Enum):
    FULL = "full"  # every table, filtered by interface
    SCOPED = "scoped"  # the candidate tables, and probes of main


class Reading(NamedTuple):
    """How the engine is to read a device: ``full``, every table; else
    scoped (``Candidates``), with ``tables`` read besides (where drift
    repair saw a change)."""

    full: bool = False
    tables: frozenset[int] = frozenset()


SCOPED = Reading()
FULL = Reading(full=True)


class Candidates(NamedTuple):
    """Where a device's routes that a plan may act on can be, per family:
    ``tables`` dumped (table and interface filtered), and ``main`` prefixes
    probed (main is then not among the tables). ``trusted``: a record
    vouches for these places, so a plugin route found in them is expected."""

    tables: Mapping[int, frozenset[int]]
    main: Mapping[int, frozenset[Prefix]]
    host_prefixes: frozenset[Prefix]  # the instance's addresses: routes without gateway
    trusted: bool


def candidates(
    intent: DeviceIntent,
    applied: Applied,
    trusted: bool,
    rp_table: int,
    limit: int = MAIN_PROBE_LIMIT,
    also: Collection[int] = (),
) -> Candidates:
    """The places to read for ``intent`` and what the record says, and the
    tables ``also`` (where a notification saw a change) (pure)."""
    tables: dict[int, frozenset[int]] = {}
    main: dict[int, frozenset[Prefix]] = {}
    hosts: set[Prefix] = set()
    for fam in intent.families():
        family = FAMILY_OF[fam.family]
        found = set(tables_with_rp(fam.tables, rp_table)) | {rp_table}
        found |= set(fam.incus_tables) | applied.tables_of(family) | set(also)
        found -= {MAIN_TABLE, LOCAL_TABLE}  # main: probed; local: nobody's routes of ours
        probes: set[Prefix] = set()
        many = len(fam.addresses) + len(fam.routes) + len(applied.main_of(family)) > limit
        if family in applied.main_any or many:
            found.add(MAIN_TABLE)  # (the prefixes are not even made: thousands)
        else:
            plen = HOST_PREFIXLEN[family]
            own = {(family, a.packed, plen) for a in fam.addresses}
            hosts |= own
            own |= {(family, n.network_address.packed, n.prefixlen) for n in fam.routes}
            probes = own | applied.main_of(family)
        tables[family] = frozenset(found)
        main[family] = frozenset(probes)
    return Candidates(tables, main, frozenset(hosts), trusted)


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
    # How ``routes`` were read: every table, or the candidates (then the
    # routes are those a full read shows in the candidate tables, and in
    # main those at the probed prefixes).
    scope: ReadScope = ReadScope.FULL


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

    def device_scoped(
        self,
        ifname: str,
        ifindex: int,
        where: Candidates,
        rp_families: Collection[int] = FAMILIES,
    ) -> DeviceFacts:
        """``device``, read only where ``where`` says (see the module
        docstring); a full read when a plugin route turns up without a
        record vouching for it."""
        rules = [kr for fam in FAMILIES for kr in self.nl.rules(fam)]
        lookups_only = {
            fam: all(kr.raw[7] == _FR_ACT_TO_TBL for kr in rules if kr.rule.family == fam)
            for fam in FAMILIES
        }
        # Kept as dumped: a cleanup deletes them without a route object each.
        routes = DumpedRoutes()
        families = [f for f in FAMILIES if f in rp_families]
        # The reverse-path table of such a family is read once, every
        # interface's routes in it: the device's own are taken from that
        # read (in their place among the tables), the others' tell whether
        # another interface still holds the family's rule. (Two dumps would
        # have the kernel walk and copy out the device's copies twice.)
        shared = {f for f in families if self.rp_table in where.tables[f]}
        queries = [
            RouteQuery(fam, table=table)
            if fam in shared and table == self.rp_table
            else RouteQuery(fam, oif=ifindex, table=table)
            for fam in FAMILIES
            for table in sorted(where.tables[fam])
        ]
        for fam in FAMILIES:
            probed = self._probe_main(fam, ifindex, where, lookups_only[fam])
            if probed is None:
                queries.append(RouteQuery(fam, oif=ifindex, table=MAIN_TABLE))
            else:
                routes.extend(probed)
        queries += [self._rp_query(f, ifindex) for f in families if f not in shared]
        found = self.nl.dumps_many(queries)
        others: dict[int, bool] = {}  # another interface's plugin copy in the family's table
        for query, got in zip(queries, found, strict=True):
            if query.exclude_oif is not None:  # another interface's copies only
                others[query.family] = bool(got)
            elif query.oif is None:  # the whole shared reverse-path table
                on_device, elsewhere = got.split_oif(ifindex)
                routes.extend(on_device)
                others[query.family] = self.protocol in elsewhere.protocols()
            else:
                routes.extend(got)
        if not where.trusted and self.protocol in routes.protocols():
            return self.device(ifname, ifindex, rp_families)
        held = frozenset(f for f in families if others[f])
        ours = self.policy.rule_is_ours
        return DeviceFacts(
            ifname,
            ifindex,
            routes,
            [kr for kr in rules if ours(kr)],
            held,
            frozenset(families),
            ReadScope.SCOPED,
        )

    def _probe_main(
        self, family: int, ifindex: int, where: Candidates, lookups_only: bool
    ) -> list[KernelRoute] | None:
        """The routes on ``ifindex`` in main at the prefixes ``where`` lists
        for ``family``, as a dump of main shows them; None when the probes
        cannot tell for sure (then main is dumped).

        What is taken as an answer: a route of exactly the prefix, in main,
        on the interface, of the default metric (Incus's and the plugin's):
        it is the route there. Absent: IPv4, looked up in main alone
        (NETLINK_FIB_LOOKUP), the longest match is shorter or there is none;
        IPv6, looked up through the rules as traffic arriving on the
        interface (which the reverse-path rule, ``iif lo``, does not
        catch), the answer comes from main and is shorter -- for an address
        (a route with a gateway may be passed over while its neighbour is
        unreachable) -- or no table has a route and every rule is a table
        lookup. Anything else: None. IPv4 details come from a lookup
        through the rules as the host's own traffic: one that the
        reverse-path table or another table answers tells nothing of main."""
        prefixes = sorted(where.main[family])
        if not prefixes:
            return []
        dsts = [dst for _f, dst, _plen in prefixes]
        metric = DEFAULT_PRIORITY[family]
        present: list[Prefix] = prefixes
        if family == AF_INET:
            lengths = self.nl.fib_lookup(MAIN_TABLE, dsts)
            if lengths is None:
                return None
            present = []
            for prefix, length in zip(prefixes, lengths, strict=True):
                if length is None or length > prefix[2]:
                    return None  # unclear, or a more specific route shadows it
                if length == prefix[2]:
                    present.append(prefix)
            answers = self.nl.probe(family, [dst for _f, dst, _p in present])
        else:
            answers = self.nl.probe(family, dsts, iif=ifindex)
        found: list[KernelRoute] = []
        for prefix, answer in zip(present, answers, strict=True):
            _f, dst, plen = prefix
            if isinstance(answer, int):
                if family == AF_INET6 and answer == errno.ENETUNREACH and lookups_only:
                    continue
                return None
            r = answer.route
            if r.table == MAIN_TABLE and r.dst == dst and r.prefixlen == plen:
                if answer.oif != ifindex or r.priority != metric:
                    return None  # something else is first there: what is behind is unknown
                found.append(answer)
            elif not (
                family == AF_INET6
                and r.table == MAIN_TABLE
                and r.prefixlen < plen
                and prefix in where.host_prefixes
            ):
                return None
        return found

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
        found = self.nl.dumps_many(queries) if queries else []
        routes = DumpedRoutes()
        if ifindex is not None:
            routes.extend(found.pop(0))
            routes.extend(found.pop(0))
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
            facts.scope,
        )

    def host(self) -> HostFacts:
        routes = [kr for fam in FAMILIES for kr in self.nl.routes(fam, protocol=self.protocol)]
        return HostFacts(routes, self.plugin_rules())
