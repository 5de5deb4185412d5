"""Intent -> the routes and rules the kernel should hold. Pure."""

from __future__ import annotations

from collections.abc import Iterable

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
        for table in fam.tables:
            routes.extend(
                Route(family, table, addr.packed, plen, None, priority) for addr in fam.addresses
            )
        if fam.routes:
            via = fam.addresses[0].packed
            for table in fam.tables:
                routes.extend(
                    Route(family, table, net.network_address.packed, net.prefixlen, via, priority)
                    for net in fam.routes
                )
    return routes


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


def rules_for_routes(routes: Iterable[Route], priority: int) -> set[Rule]:
    """The policy rules that plugin-owned routes need so that the strict
    reverse-path filter (and the host itself, both looking up with input
    interface lo) finds them outside main: one rule per table for host
    routes, one per prefix for shorter extra routes. Main needs none."""
    rules: set[Rule] = set()
    for r in routes:
        if r.table == MAIN_TABLE:
            continue
        if r.is_host:
            rules.add(
                Rule(r.family, r.table, priority, None, 0, SUPPRESS_SHORTER_THAN_HOST[r.family])
            )
        else:
            rules.add(Rule(r.family, r.table, priority, r.dst, r.prefixlen, None))
    return rules
