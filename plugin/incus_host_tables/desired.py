"""Intent -> the routes and rules the kernel should hold. Pure.

An instance may have thousands of addresses, each in a few tables: the
routes are made by ``map`` over columns (one C-level tuple per route, each
address packed once for all tables), and the rules from the few distinct
(family, table, prefix length) groups of the routes, not route by route.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from itertools import repeat

from .config import DeviceIntent
from .model import (
    AF_INET,
    AF_INET6,
    DEFAULT_PRIORITY,
    HOST_PREFIXLEN,
    MAIN_TABLE,
    Route,
    Rule,
    family_tables,
)
from .model import DEFAULT_RP_TABLE as DEFAULT_RP_TABLE

FAMILY_OF: dict[str, int] = {"ipv4": AF_INET, "ipv6": AF_INET6}

# The reverse-path table (see docs/configuration.md, "Reverse path"): one
# plugin copy of every prefix of every instance that has a table other than
# main, on the instance's interface, and one rule per family
# `iif lo lookup RP_TABLE` that lets lookups with input interface lo (Incus's
# strict reverse-path filter, the host's own traffic) find them. The table
# holds nothing else, so a lookup of any other address falls through to the
# next rules (main) whatever the chosen tables hold, unreachable defaults of
# VRF-style tables included. Its default ID (1158) is defined in model: the
# config parser refuses it as a chosen table.

DEFAULT_RULE_PRIORITY = 1100


def desired_routes(intent: DeviceIntent, rp_table: int = DEFAULT_RP_TABLE) -> list[Route]:
    """Every address as a host route and every extra route, in every chosen
    table, and in the reverse-path table when a chosen table is not main.
    Host routes come first: the extra routes' gateway resolves through them."""
    if intent.vrf is not None:
        return []  # the VRF's table holds them; Incus puts them there
    routes: list[Route] = []
    for fam in intent.families():
        family = FAMILY_OF[fam.family]
        priority = DEFAULT_PRIORITY[family]
        plen = HOST_PREFIXLEN[family]
        packed = [addr.packed for addr in fam.addresses]  # once, not once per table
        tables = tables_with_rp(fam.tables, rp_table)
        for table in tables:
            routes += _routes(family, table, packed, repeat(plen), None, priority)
        if fam.routes:
            dsts = [net.network_address.packed for net in fam.routes]
            plens = [net.prefixlen for net in fam.routes]
            for table in tables:
                routes += _routes(family, table, dsts, plens, packed[0], priority)
    return routes


def tables_with_rp(tables: tuple[int, ...], rp_table: int) -> tuple[int, ...]:
    """The chosen tables, and the reverse-path table after them when one of
    them is not main (main needs no help: lookups from lo see it anyway)."""
    if any(table != MAIN_TABLE for table in tables) and rp_table not in tables:
        return (*tables, rp_table)
    return tables


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


def rp_rule(family: int, rp_table: int, priority: int) -> Rule:
    """The one reverse-path rule of a family: `iif lo lookup RP_TABLE`."""
    return Rule(family, rp_table, priority, None, 0, None)


def rules_for_routes(routes: Iterable[Route], priority: int, rp_table: int) -> set[Rule]:
    """The reverse-path rule of every family of which ``routes`` put a
    route in the reverse-path table. Only the few distinct (family, table)
    pairs of thousands of routes are looked at."""
    routes = routes if isinstance(routes, list) else list(routes)
    return rules_for_tables(family_tables(routes), priority, rp_table)


def rules_for_tables(pairs: Iterable[tuple[int, int]], priority: int, rp_table: int) -> set[Rule]:
    """``rules_for_routes`` of routes in these (family, table) pairs."""
    return {rp_rule(family, rp_table, priority) for family, table in pairs if table == rp_table}


def rules_for_intent(intent: DeviceIntent, priority: int, rp_table: int) -> set[Rule]:
    """``rules_for_routes(desired_routes(intent, rp_table), priority, rp_table)``,
    from the intent's tables without making every route."""
    if intent.vrf is not None:
        return set()
    return {
        rp_rule(FAMILY_OF[fam.family], rp_table, priority)
        for fam in intent.families()
        # no address, no routes (extra routes need one)
        if fam.addresses and rp_table in tables_with_rp(fam.tables, rp_table)
    }
