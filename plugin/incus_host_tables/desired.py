"""Intent -> the routes and rules the kernel should hold. Pure.

An instance may have thousands of addresses, each in a few tables: the
routes are made by ``map`` over columns (one C-level tuple per route, each
address packed once for all tables), and the rules from the few distinct
(family, table, prefix length) groups of the routes, not route by route.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat
from operator import itemgetter

from .config import DeviceIntent
from .model import (
    AF_INET,
    AF_INET6,
    DEFAULT_PRIORITY,
    HOST_PREFIXLEN,
    MAIN_TABLE,
    Route,
    Rule,
)

FAMILY_OF: dict[str, int] = {"ipv4": AF_INET, "ipv6": AF_INET6}

# The rule that lets the reverse-path filter's lookup (input interface lo)
# see an isolated table honours only host routes of it: every shorter match
# is suppressed and the lookup goes on to the next rule.
SUPPRESS_SHORTER_THAN_HOST: dict[int, int] = {AF_INET: 31, AF_INET6: 127}

DEFAULT_RULE_PRIORITY = 1100


def desired_routes(intent: DeviceIntent) -> list[Route]:
    """Every address as a host route and every extra route, in every chosen
    table. Host routes come first: the extra routes' gateway resolves
    through them."""
    if intent.vrf is not None:
        return []  # the VRF's table holds them; Incus puts them there
    routes: list[Route] = []
    for fam in intent.families():
        family = FAMILY_OF[fam.family]
        priority = DEFAULT_PRIORITY[family]
        plen = HOST_PREFIXLEN[family]
        packed = [addr.packed for addr in fam.addresses]  # once, not once per table
        for table in fam.tables:
            routes += _routes(family, table, packed, repeat(plen), None, priority)
        if fam.routes:
            dsts = [net.network_address.packed for net in fam.routes]
            plens = [net.prefixlen for net in fam.routes]
            for table in fam.tables:
                routes += _routes(family, table, dsts, plens, packed[0], priority)
    return routes


def _routes(
    family: int,
    table: int,
    dsts: Sequence[bytes],
    prefixlens: Iterable[int],
    gateway: bytes | None,
    priority: int,
) -> Iterable[Route]:
    """Route(family, table, dst, prefixlen, gateway, priority) for each dst,
    built in C: ``tuple.__new__`` is what Route(...) ends in, without the
    Python-level __new__ of a NamedTuple."""
    columns = zip(
        repeat(family),
        repeat(table),
        dsts,
        prefixlens,
        repeat(gateway),
        repeat(priority),
        strict=False,
    )
    return map(tuple.__new__, repeat(Route), columns)


def instance_prefixes(intent: DeviceIntent) -> set[tuple[int, bytes, int]]:
    """(family, dst, prefixlen) of everything that belongs to the instance:
    a copy in a table not chosen is a leak to remove, whoever put it there."""
    prefixes: set[tuple[int, bytes, int]] = set()
    for fam in intent.families():
        family = FAMILY_OF[fam.family]
        prefixes.update((family, a.packed, HOST_PREFIXLEN[family]) for a in fam.addresses)
        prefixes.update((family, n.network_address.packed, n.prefixlen) for n in fam.routes)
    return prefixes


def prunable_table(intent: DeviceIntent, table: int) -> bool:
    """May a copy of an instance route in ``table`` be removed? With a VRF
    only main: the VRF's own table is Incus's business."""
    if intent.vrf is not None:
        return table == MAIN_TABLE
    return True


_FAMILY_TABLE_PREFIXLEN = itemgetter(0, 1, 3)
_FAMILY_TABLE_DST_PREFIXLEN = itemgetter(0, 1, 2, 3)


def rules_for_routes(routes: Iterable[Route], priority: int) -> set[Rule]:
    """The policy rules that plugin-owned routes need so that the strict
    reverse-path filter (and the host itself, both looking up with input
    interface lo) finds them outside main: one rule per table for host
    routes, one per prefix for shorter extra routes. Main needs none."""
    routes = routes if isinstance(routes, list | tuple) else list(routes)
    rules: set[Rule] = set()
    # The distinct (family, table, prefixlen) of thousands of routes are a
    # handful: decide on those. Only shorter prefixes need their addresses.
    shorter = False
    for family, table, prefixlen in set(map(_FAMILY_TABLE_PREFIXLEN, routes)):
        if table == MAIN_TABLE:
            continue
        if prefixlen == HOST_PREFIXLEN[family]:
            rules.add(Rule(family, table, priority, None, 0, SUPPRESS_SHORTER_THAN_HOST[family]))
        else:
            shorter = True
    if shorter:
        for family, table, dst, prefixlen in set(map(_FAMILY_TABLE_DST_PREFIXLEN, routes)):
            if table != MAIN_TABLE and prefixlen != HOST_PREFIXLEN[family]:
                rules.add(Rule(family, table, priority, dst, prefixlen, None))
    return rules


def rules_for_intent(intent: DeviceIntent, priority: int) -> set[Rule]:
    """``rules_for_routes(desired_routes(intent), priority)``, from the
    intent's tables and extra prefixes without making every route."""
    if intent.vrf is not None:
        return set()
    rules: set[Rule] = set()
    for fam in intent.families():
        if not fam.addresses:
            continue  # no address, no routes (extra routes need one)
        family = FAMILY_OF[fam.family]
        host = HOST_PREFIXLEN[family]
        for table in fam.tables:
            if table == MAIN_TABLE:
                continue
            rules.add(Rule(family, table, priority, None, 0, SUPPRESS_SHORTER_THAN_HOST[family]))
            rules.update(
                Rule(family, table, priority, net.network_address.packed, net.prefixlen, None)
                for net in fam.routes
                if net.prefixlen != host
            )
    return rules
