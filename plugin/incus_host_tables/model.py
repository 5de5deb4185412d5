"""Value types shared by the pure planning code and the netlink layer.

Tuples, not dataclasses: a host may hold tens of thousands of these, and the
apply path builds and compares them in bulk.
"""

from __future__ import annotations

import _socket  # not `socket`: see netlink/kernel.py
import gc
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from itertools import compress, groupby, repeat
from operator import add, eq, itemgetter
from typing import NamedTuple

AF_INET: int = _socket.AF_INET
AF_INET6: int = _socket.AF_INET6

DEFAULT_TABLE = 253  # consulted by every lookup through the kernel's rule 32767
MAIN_TABLE = 254
LOCAL_TABLE = 255
# The plugin's reverse-path table (host setting --rp-table), refused as a chosen table.
DEFAULT_RP_TABLE = 1158

# Default metrics the kernel gives a route without one; Incus uses them too.
DEFAULT_PRIORITY: dict[int, int] = {AF_INET: 0, AF_INET6: 1024}
HOST_PREFIXLEN: dict[int, int] = {AF_INET: 32, AF_INET6: 128}


class Value:
    """Equality (and, unless a subclass is mutable, hashing) by ``_key()``:
    for the few plain value classes of the device path, which are not
    dataclasses because `dataclasses` costs every `device` command its
    import (docs/performance.md)."""

    __slots__ = ()

    def _key(self) -> tuple[object, ...]:
        raise NotImplementedError

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, type(self)):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


class Route(NamedTuple):
    """A route as the plugin means it (the interface is implied by the device)."""

    family: int
    table: int
    dst: bytes  # packed network address
    prefixlen: int
    gateway: bytes | None  # extra routes go via the instance's first address
    priority: int

    @property
    def is_host(self) -> bool:
        return self.prefixlen == HOST_PREFIXLEN[self.family]


class KernelRoute(NamedTuple):
    """A route read from the kernel. ``raw`` is the rtmsg with its attributes,
    exactly as dumped: sent back it deletes or restores this very route."""

    route: Route
    oif: int
    protocol: int
    scope: int
    type: int
    raw: bytes


class RouteColumns(Sequence[KernelRoute]):
    """Kernel routes that answer for all of them at once, field by field,
    without an object made per route: a dump kept as the kernel's messages
    (netlink/dump.py). A cleanup deletes every route of the plugin's it
    reads, so it never needs the objects; iterating makes them.

    The functions below (``protocols_of``...) take any sequence of kernel
    routes and use the columns where there are some."""

    __slots__ = ()

    def protocols(self) -> bytes:
        """The protocol of every route, in order (one byte each)."""
        raise NotImplementedError

    def family_tables(self) -> set[tuple[int, int]]:
        raise NotImplementedError

    def table_counts(self) -> dict[int, int]:
        """Routes per table."""
        raise NotImplementedError

    def has_gateway(self) -> bool:
        raise NotImplementedError

    def of_table(self, table: int) -> list[KernelRoute]:
        """The routes in ``table`` (only those are made)."""
        raise NotImplementedError


class Rule(NamedTuple):
    """A policy rule `iif lo [to DST/LEN] lookup TABLE [suppress_prefixlength N]`:
    the plugin makes only `iif lo lookup RP_TABLE`; the other forms are the
    rules of earlier versions, read so that the rules resync removes them."""

    family: int
    table: int
    priority: int
    dst: bytes | None  # None: no `to` selector
    prefixlen: int
    suppress_prefixlength: int | None


class KernelRule(NamedTuple):
    rule: Rule
    protocol: int
    raw: bytes


def format_prefix(family: int, dst: bytes, prefixlen: int) -> str:
    return f"{_socket.inet_ntop(family, dst)}/{prefixlen}"


def describe_route(route: Route, ifname: str | None = None) -> str:
    text = format_prefix(route.family, route.dst, route.prefixlen)
    if route.gateway is not None:
        text += f" via {_socket.inet_ntop(route.family, route.gateway)}"
    if ifname:
        text += f" dev {ifname}"
    text += f" table {route.table}"
    if route.priority != DEFAULT_PRIORITY[route.family]:
        text += f" metric {route.priority}"
    return text


def describe_routes(
    routes: Iterable[Route], ifname: str | None = None, prefix: str = ""
) -> list[str]:
    """``[prefix + describe_route(r, ifname) for r in routes]``, for the
    thousands of lines of a big plan: what follows the address is the same
    for every route of one (family, table, prefixlen, gateway, metric), so
    it is made once per run of those, and the lines are put together in C."""
    out: list[str] = []
    ntop = _socket.inet_ntop
    for _shape, group in groupby(routes, key=_ROUTE_SHAPE):
        run = list(group)
        family = run[0].family
        tail = describe_route(run[0], ifname)[len(ntop(family, run[0].dst)) :]
        addresses = map(ntop, repeat(family), map(_ROUTE_DST, run))
        out += map(add, map(add, repeat(prefix), addresses), repeat(tail))
    return out


_ROUTE_SHAPE = itemgetter(0, 1, 3, 4, 5)  # family, table, prefixlen, gateway, priority
_ROUTE_DST = itemgetter(2)


_FAMILY = itemgetter(0)
_TABLE = itemgetter(1)


def family_tables(routes: Sequence[Route]) -> set[tuple[int, int]]:
    """The distinct (family, table) of ``routes``. Thousands of routes,
    a handful of pairs: the tables are collected family by family in C,
    without a pair made per route."""
    families = set(map(_FAMILY, routes))
    if len(families) == 1:
        (family,) = families
        return {(family, table) for table in set(map(_TABLE, routes))}
    pairs: set[tuple[int, int]] = set()
    for family in families:
        of_family = compress(routes, map(eq, map(_FAMILY, routes), repeat(family)))
        pairs.update((family, table) for table in set(map(_TABLE, of_family)))
    return pairs


_KR_ROUTE = itemgetter(0)
_KR_PROTOCOL = itemgetter(2)


def protocols_of(routes: Sequence[KernelRoute]) -> bytes:
    """The protocol of each route, in order, one byte each (protocols are
    8-bit): counted or searched in C."""
    if isinstance(routes, RouteColumns):
        return routes.protocols()
    return bytes(map(_KR_PROTOCOL, routes))


def all_of_protocol(routes: Sequence[KernelRoute], protocol: int) -> bool:
    return protocols_of(routes).count(protocol) == len(routes)


def kernel_family_tables(routes: Sequence[KernelRoute]) -> set[tuple[int, int]]:
    """``family_tables`` of kernel routes."""
    if isinstance(routes, RouteColumns):
        return routes.family_tables()
    return family_tables(list(map(_KR_ROUTE, routes)))


def kernel_table_counts(routes: Sequence[KernelRoute]) -> dict[int, int]:
    if isinstance(routes, RouteColumns):
        return routes.table_counts()
    return dict(Counter(map(_TABLE, map(_KR_ROUTE, routes))))


def any_gateway(routes: Sequence[KernelRoute]) -> bool:
    if isinstance(routes, RouteColumns):
        return routes.has_gateway()
    return any(kr.route.gateway is not None for kr in routes)


def in_table(routes: Sequence[KernelRoute], table: int) -> list[KernelRoute]:
    if isinstance(routes, RouteColumns):
        return routes.of_table(table)
    return [kr for kr in routes if kr.route.table == table]


def describe_rule(rule: Rule) -> str:
    family = "-4" if rule.family == AF_INET else "-6"
    text = f"{family} pref {rule.priority} iif lo"
    if rule.dst is not None:
        text += f" to {format_prefix(rule.family, rule.dst, rule.prefixlen)}"
    text += f" lookup {rule.table}"
    if rule.suppress_prefixlength is not None:
        text += f" suppress_prefixlength {rule.suppress_prefixlength}"
    return text


@contextmanager
def gc_paused() -> Iterator[None]:
    """Hold off the cyclic garbage collector around bulk work.

    Decoding a dump or planning an apply makes tens of thousands of small
    tuples that never form cycles; every 700 allocations the collector would
    walk the young ones again, and the long-lived ones now and then, which
    costs a third of the bulk time. Reference counting still frees
    everything at once; the collector runs as usual afterwards. Nesting is
    fine: only the outermost pause re-enables it.

    What the pause made and still holds (a plan of thousands of routes) is
    handed to the oldest generation on the way out: re-enabled as it was,
    the collector would walk all of it at the next allocation (1.5 ms per
    10,000 routes) only to find no cycle. ``freeze`` then ``unfreeze`` is
    that move, in constant time (the process freezes nothing otherwise).
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()
