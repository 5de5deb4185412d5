"""The bulk code paths give exactly what the one-at-a-time functions give,
on random input.

- ``codec.decode_route_dump`` (column-wise) vs ``codec.decode_route`` per message;
- ``kernel.encode_batch`` (blocks) vs ``codec.message(*encode(change))`` per change;
- ``model.describe_routes`` vs ``model.describe_route`` per route;
- ``config._parse_addresses`` (inet_pton fast path) vs ``ipaddress`` alone;
- ``diff.diff_routes`` with nothing desired (a cleanup, told apart in C) vs
  the rule it applies, route by route; ``model.family_tables`` vs a set of pairs.
"""

from __future__ import annotations

import ipaddress
import struct
import sys
from collections import Counter
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from incus_host_tables import config
from incus_host_tables.diff import diff_routes
from incus_host_tables.model import (
    LOCAL_TABLE,
    KernelRoute,
    KernelRule,
    Route,
    Rule,
    describe_route,
    family_tables,
)
from incus_host_tables.model import describe_routes as describe_routes_bulk
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink import dump
from incus_host_tables.netlink.kernel import (
    Change,
    ChangeKind,
    ChangeRun,
    encode,
    encode_batch,
    encode_runs,
)
from incus_host_tables.ownership import OwnershipPolicy, incus_scope

V4, V6 = 2, 10
SETTINGS = settings(max_examples=100, suppress_health_check=list(HealthCheck), deadline=None)


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


_u32 = st.integers(0, 2**32 - 1).map(lambda v: struct.pack("=I", v))
_attrs = st.one_of(
    st.tuples(st.sampled_from([c.RTA_TABLE, c.RTA_OIF, c.RTA_PRIORITY]), _u32),
    st.tuples(st.sampled_from([c.RTA_TABLE, c.RTA_OIF, c.RTA_PRIORITY]), st.binary(max_size=6)),
    st.tuples(
        st.sampled_from([c.RTA_DST, c.RTA_GATEWAY]),
        st.sampled_from([4, 16, 0, 3]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
    ),
    st.tuples(st.integers(0, 30), st.binary(max_size=40)),
)
# A few shapes, repeated in a random pattern: runs of one shape, and breaks.
_shapes = st.lists(
    st.tuples(st.sampled_from([V4, V6]), st.integers(0, 255), st.integers(0, 255),
              st.lists(_attrs, max_size=6)),
    min_size=1, max_size=4,
)  # fmt: skip


def _dump(
    seq: int,
    shapes: list[Any],
    pattern: list[int],
    foreign_every: int,
    protocols: list[int] = [4],  # noqa: B006  # read only
    flags: list[int] = [0],  # noqa: B006
) -> bytes:
    out = b""
    for i, k in enumerate(pattern):
        family, dst_len, table, attrs = shapes[k % len(shapes)]
        protocol, rtm_flags = protocols[i % len(protocols)], flags[i % len(flags)]
        body = struct.pack("=BBBBBBBBI", family, dst_len, 0, 0, table, protocol, 0, 1, rtm_flags)
        body += b"".join(_attr(t, p) for t, p in attrs)
        other = foreign_every and i % foreign_every == 0  # a reply to another request
        out += c.message(c.RTM_NEWROUTE, 2, seq + 1 if other else seq, body)
    return out


@SETTINGS
@given(
    _shapes,
    st.lists(st.integers(0, 3), min_size=1, max_size=80),
    st.integers(0, 7),
    st.booleans(),
    st.sampled_from([None, 0, 5, 7]),
)
def test_decode(
    shapes: list[Any], pattern: list[int], foreign_every: int, done: bool, skip: int | None
) -> None:
    seq = 77
    buf = _dump(seq, shapes, pattern, foreign_every)
    if done:  # the end of the dump, then messages that must not be read
        buf += c.message(c.NLMSG_DONE, 2, seq, b"\0\0\0\0") + _dump(seq, shapes, pattern[:3], 0)
    expected: list[KernelRoute] = []
    expected_end = None
    for kind, flags, mseq, start, end in c.iter_messages(buf):
        if mseq != seq:
            continue
        if kind in (c.NLMSG_DONE, c.NLMSG_ERROR):
            expected_end = (kind, flags, start, end)
            break
        kr = c.decode_route(buf, start, end)
        if skip is None or kr.oif != skip:
            expected.append(kr)
    got: list[KernelRoute] = []
    assert dump.decode_route_dump(buf, seq, got, {}, skip) == expected_end
    assert got == expected
    assert all(type(g.route) is Route and type(g) is KernelRoute for g in got)


@SETTINGS
@given(
    _shapes,
    st.lists(st.integers(0, 3), min_size=1, max_size=80),
    st.integers(0, 7),
    st.sampled_from([None, 0, 5, 7]),
    st.lists(st.sampled_from([158, 158, 158, 3, 4]), min_size=1, max_size=5),
    st.lists(st.sampled_from([0, 0, 0x4, 0x41]), min_size=1, max_size=3),
)
def test_kept_dump(
    shapes: list[Any],
    pattern: list[int],
    foreign_every: int,
    skip: int | None,
    protocols: list[int],
    flags: list[int],
) -> None:
    """A dump kept as its messages (DumpedRoutes) is the decoded one: as a
    sequence, column by column, and sent back as requests byte for byte."""
    seq = 77
    buf = _dump(seq, shapes, pattern, foreign_every, protocols, flags)
    buf += c.message(c.NLMSG_DONE, 2, seq, b"\0\0\0\0")
    decoded: list[KernelRoute] = []
    end = dump.decode_route_dump(buf, seq, decoded, {}, skip)

    def kept() -> dump.DumpedRoutes:  # a fresh one: its columns before any route is made
        routes = dump.DumpedRoutes()
        assert dump.decode_route_dump(buf, seq, routes, {}, skip) == end
        return routes

    assert kept().protocols() == bytes(kr.protocol for kr in decoded)
    assert kept().family_tables() == {(kr.route.family, kr.route.table) for kr in decoded}
    assert kept().table_counts() == dict(Counter(kr.route.table for kr in decoded))
    assert kept().has_gateway() == any(kr.route.gateway is not None for kr in decoded)
    for table in {kr.route.table for kr in decoded} | {1}:
        assert kept().of_table(table) == [kr for kr in decoded if kr.route.table == table]
    for oif in {kr.oif for kr in decoded} | {1}:
        on, off = kept().split_oif(oif)
        assert (list(on), list(off)) == (
            [kr for kr in decoded if kr.oif == oif],
            [kr for kr in decoded if kr.oif != oif],
        )
    for undo in (False, True):
        sent = encode_runs([ChangeRun(ChangeKind.DEL_ROUTE, kept())], 158, 900, undo)
        each = encode_batch([Change(ChangeKind.DEL_ROUTE, kr, 0) for kr in decoded], 158, 900, undo)
        assert sent.messages() == each.messages()
        assert sent.data(0, len(sent)) == each.data(0, len(each))
    routes = kept()
    assert len(routes) == len(decoded)
    assert routes == decoded and list(routes) == decoded and routes[:] == decoded
    assert all(type(g.route) is Route and type(g) is KernelRoute for g in routes)
    _kept_runs.append(any(isinstance(p, tuple) for p in kept()._parts))


_kept_runs: list[bool] = []


def test_kept_dump_keeps_runs() -> None:
    """The property above did keep runs as messages, not only odd ones."""
    _kept_runs.clear()
    test_kept_dump()
    assert any(_kept_runs)


def _route(family: int, table: int, plen: int, gw: bytes | None, prio: int, dst: bytes) -> Route:
    return Route(family, table, dst, plen, gw, prio)


_routes = st.builds(
    _route,
    st.sampled_from([V4, V6]),
    st.sampled_from([1, 100, 254, 300]),
    st.sampled_from([24, 32, 128]),
    st.sampled_from([None, b"\1\2\3\4", bytes(16)]),
    st.sampled_from([0, 1024, 5]),
    st.sampled_from([4, 16, 3]).flatmap(lambda n: st.binary(min_size=n, max_size=n)),
)


def _raw(route: Route, rtm_flags: int, extra: bytes) -> bytes:
    body = c.route_body(route, 3, 4)
    return body[:8] + rtm_flags.to_bytes(4, sys.byteorder) + body[12:] + extra


_raws = st.builds(
    _raw, _routes, st.sampled_from([0, 0, 4, 1, 0x14]), st.sampled_from([b"", _attr(6, bytes(4))])
)
_kernel_routes = st.builds(lambda r, raw: KernelRoute(r, 3, 4, 0, 1, raw), _routes, _raws)
_rule = Rule(V4, 100, 1100, None, 0, 31)
_changes = st.one_of(
    st.builds(lambda r, oif: Change("add-route", r, oif), _routes, st.sampled_from([0, 7])),
    st.builds(lambda k: Change("del-route", k), _kernel_routes),
    st.builds(lambda k: Change("adopt-route", k), _kernel_routes),
    st.just(Change("add-rule", _rule)),
    st.builds(lambda raw: Change("del-rule", KernelRule(_rule, 158, raw)), st.binary(min_size=12)),
)


@SETTINGS
@given(
    st.lists(_changes, max_size=40).map(lambda cs: cs + cs[:5] * 3),
    st.booleans(),
    st.integers(1, 2**31),
)
def test_encode(changes: list[Change], undo: bool, first: int) -> None:
    batch = encode_batch(changes, 158, first, undo)
    expected = []
    for i, change in enumerate(changes):
        kind, flags, body = encode(change, 158, undo)
        expected.append(c.message(kind, flags, first + i, body))
    assert batch.messages() == expected
    assert batch.data(0, len(batch)) == b"".join(expected)


_describable = st.builds(
    lambda family, table, plen, gw, prio: Route(
        family, table, bytes(4 if family == V4 else 16), plen, gw, prio
    ),
    st.sampled_from([V4, V6]),
    st.sampled_from([100, 254, 300]),
    st.sampled_from([32, 24, 128]),
    st.sampled_from([None, b"gate"]),
    st.sampled_from([0, 1024, 7]),
).map(lambda r: r._replace(gateway=None if r.gateway is None else bytes(len(r.dst))))


@SETTINGS
@given(st.lists(_describable, max_size=30), st.sampled_from([None, "vh0", "{odd}"]))
def test_describe(routes: list[Route], ifname: str | None) -> None:
    expected = ["+ route " + describe_route(r, ifname) for r in routes]
    assert describe_routes_bulk(routes, ifname, "+ route ") == expected


def _parse_addresses_reference(device: dict[str, str], family: config.Family) -> object:
    """_parse_addresses as it was: ipaddress alone."""
    key = f"{family}.address"
    raw = config._value(device, key)
    if raw is None:
        return ()
    version = 4 if family == "ipv4" else 6
    result: list[config.IPAddress] = []
    for item in raw.split(","):
        item = item.strip(" \t")
        if item == "":
            raise config.ConfigError(f"{key}={raw!r}: empty item in the list")
        try:
            addr = ipaddress.ip_address(item)
        except ValueError:
            raise config.ConfigError(f"{key}={raw!r}: {item!r} is not an IP address") from None
        if addr.version != version:
            raise config.ConfigError(f"{key}={raw!r}: {item!r} is not an {family.upper()} address")
        if not config._is_host_address(addr):
            raise config.ConfigError(f"{key}={raw!r}: {item!r} is not a unicast host address")
        if addr in result:
            raise config.ConfigError(f"{key}={raw!r}: {item!r} is listed twice")
        result.append(addr)
    return tuple(result)


_octets = st.one_of(
    st.integers(0, 300).map(str),
    st.sampled_from(["00", "01", "010", "0x1", "", " 1", "1 ", "\u0663", "+1", "1e1", "0255"]),
)
_items = st.one_of(
    st.builds(".".join, st.lists(_octets, min_size=1, max_size=6)),
    st.text(max_size=12),
    st.sampled_from(
        ["2001:db8::1", "::ffff:1.2.3.4", "1.2.3.4%eth0", "0.0.0.0", "255.255.255.255",
         "169.254.1.1", "127.0.0.1", "224.0.0.1", "240.0.0.1", "1.2.3.4\x00", "198.18.0.1"]
    ),
)  # fmt: skip


def _outcome(fn: Any, device: dict[str, str], family: config.Family) -> tuple[str, object]:
    try:
        return "ok", fn(device, family)
    except Exception as err:  # the error and its message must match too
        return type(err).__name__, str(err)


@settings(max_examples=10_000, suppress_health_check=list(HealthCheck), deadline=None)
@given(st.lists(_items, min_size=1, max_size=5), st.sampled_from(["ipv4", "ipv6"]))
def test_parse_addresses(items: list[str], family: config.Family) -> None:
    device = {f"{family}.address": ",".join(items)}
    got = _outcome(config._parse_addresses, device, family)
    assert got == _outcome(_parse_addresses_reference, device, family), device


def test_first_octets() -> None:
    """Every IPv4 first octet, against the fast path's list of those to check."""
    for octet in range(256):
        for rest in ("0.0.0", "254.1.1", "255.255.255", "1.2.3"):
            device = {"ipv4.address": f"{octet}.{rest}"}
            got = _outcome(config._parse_addresses, device, "ipv4")
            assert got == _outcome(_parse_addresses_reference, device, "ipv4"), device


def _on_device(route: Route, protocol: int, incus_scoped: bool) -> KernelRoute:
    scope = incus_scope(KernelRoute(route, 3, protocol, 0, 1, b"")) if incus_scoped else 200
    return KernelRoute(route, 3, protocol, scope, 1, b"")


_present = st.builds(
    _on_device,
    _routes.map(lambda r: r._replace(table=r.table if r.table != 1 else LOCAL_TABLE)),
    st.sampled_from([158, 158, 3, 4, 2]),  # ours, boot (Incus's), static, kernel
    st.booleans(),
)


@SETTINGS
@given(st.lists(_present, max_size=40), st.sampled_from([None, 0, 1]), st.booleans())
def test_cleanup_diff(present: list[KernelRoute], owned_from: int | None, vrf: bool) -> None:
    policy = OwnershipPolicy(158)
    owned = None if owned_from is None else {
        (kr.route.family, kr.route.dst, kr.route.prefixlen) for kr in present[owned_from::2]
    }  # fmt: skip

    def prunable(table: int) -> bool:
        return table == 254 or not vrf

    removable = [
        kr
        for kr in present
        if kr.route.table != LOCAL_TABLE
        and (kr.protocol == 158 or (policy.adoptable(kr, owned) and prunable(kr.route.table)))
    ]
    expected = [kr for kr in removable if kr.route.gateway is not None]
    expected += [kr for kr in removable if kr.route.gateway is None]
    got = diff_routes([], present, policy=policy, owned_prefixes=owned, prunable=prunable)
    assert got.delete == expected
    assert [id(kr) for kr in got.delete] == [id(kr) for kr in expected]
    # The same routes with columns (as a device's dump brings them).
    kept = dump.DumpedRoutes(present)
    got_kept = diff_routes([], kept, policy=policy, owned_prefixes=owned, prunable=prunable)
    assert list(got_kept.delete) == expected
    assert (got.add, got.adopt, got.conflicts) == ([], [], [])
    _met_incus_copy.append(any(kr.protocol != 158 for kr in got.delete))


_met_incus_copy: list[bool] = []


def test_cleanup_diff_deletes_incus_copies_too() -> None:
    """The property above did meet Incus's copies among the deletions."""
    _met_incus_copy.clear()
    test_cleanup_diff()
    assert any(_met_incus_copy)


@SETTINGS
@given(st.lists(_routes, max_size=40))
def test_family_tables(routes: list[Route]) -> None:
    assert family_tables(routes) == {(r.family, r.table) for r in routes}
