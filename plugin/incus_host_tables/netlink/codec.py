"""Encode and decode the rtnetlink messages the plugin uses: routes and rules.

Layouts follow <linux/netlink.h>, <linux/rtnetlink.h> and
<linux/fib_rules.h>. Only what the plugin needs is here.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from ..model import AF_INET, HOST_PREFIXLEN, KernelRoute, KernelRule, Route, Rule

# netlink
NLMSG_NOOP = 1
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_DUMP_INTR = 0x10
NLM_F_DUMP = 0x300
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_CAPPED = 0x100  # in NLMSG_ERROR: the request is not echoed back
NLM_F_ACK_TLVS = 0x200  # in NLMSG_ERROR: extended ack attributes follow
NLMSGERR_ATTR_MSG = 1

# rtnetlink message types
RTM_NEWROUTE = 24
RTM_DELROUTE = 25
RTM_GETROUTE = 26
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34

# route attributes
RTA_DST = 1
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RT_TABLE_UNSPEC = 0

# rule attributes
FRA_DST = 1
FRA_IIFNAME = 3
FRA_PRIORITY = 6
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_PROTOCOL = 21
FR_ACT_TO_TBL = 1

IFLA_IFNAME = 3
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # also fib_rule_hdr: same size and layout
RTATTR = struct.Struct("=HH")
U32_ATTR = struct.Struct("=HHI")
NLMSGERR = struct.Struct("=i")
HDR = NLMSGHDR.size
BODY = RTMSG.size

_pack_hdr = NLMSGHDR.pack
_pack_u32_attr = U32_ATTR.pack
_unpack_hdr = NLMSGHDR.unpack_from
_unpack_rtattr = RTATTR.unpack_from
_unpack_rtmsg = RTMSG.unpack_from


def _attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return RTATTR.pack(length, kind) + payload + b"\0" * (-length & 3)


def message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    """A netlink message around an already-encoded body."""
    return _pack_hdr(HDR + len(body), kind, flags, seq, 0) + body


def route_body(route: Route, oif: int, protocol: int) -> bytes:
    """rtmsg + attributes for one of the plugin's routes: host routes are
    scope link (as `ip route add ADDR dev IFACE` makes them), extra routes
    go via the instance's address."""
    host = route.gateway is None and route.prefixlen == HOST_PREFIXLEN[route.family]
    scope = RT_SCOPE_LINK if host and route.family == AF_INET else RT_SCOPE_UNIVERSE
    body = RTMSG.pack(
        route.family, route.prefixlen, 0, 0, route.table, protocol, scope, RTN_UNICAST, 0
    )
    body += _pack_u32_attr(8, RTA_TABLE, route.table)
    body += _attr(RTA_DST, route.dst)
    body += _pack_u32_attr(8, RTA_OIF, oif)
    if route.gateway is not None:
        body += _attr(RTA_GATEWAY, route.gateway)
    if route.priority:
        body += _pack_u32_attr(8, RTA_PRIORITY, route.priority)
    return body


def with_protocol(raw: bytes, protocol: int) -> bytes:
    """The same rtmsg with another protocol byte (re-marking a route)."""
    return raw[:5] + bytes((protocol,)) + raw[6:]


def rule_body(rule: Rule, protocol: int) -> bytes:
    body = RTMSG.pack(
        rule.family,
        rule.prefixlen if rule.dst is not None else 0,
        0,
        0,
        rule.table if rule.table < 256 else RT_TABLE_UNSPEC,
        0,
        0,
        FR_ACT_TO_TBL,
        0,
    )
    body += _attr(FRA_IIFNAME, b"lo\0")
    if rule.dst is not None:
        body += _attr(FRA_DST, rule.dst)
    body += _pack_u32_attr(8, FRA_PRIORITY, rule.priority)
    body += _pack_u32_attr(8, FRA_TABLE, rule.table)
    if rule.suppress_prefixlength is not None:
        body += _pack_u32_attr(8, FRA_SUPPRESS_PREFIXLEN, rule.suppress_prefixlength)
    body += _attr(FRA_PROTOCOL, bytes((protocol,)))
    return body


def dump_request(
    kind: int,
    seq: int,
    family: int,
    *,
    table: int = 0,
    protocol: int = 0,
    oif: int | None = None,
) -> bytes:
    """A dump request; with strict checking the kernel itself filters by
    table, protocol and output interface, so Python never parses the rest."""
    body = RTMSG.pack(family, 0, 0, 0, table if table < 256 else 0, protocol, 0, 0, 0)
    if kind == RTM_GETROUTE:
        if table:
            body += _pack_u32_attr(8, RTA_TABLE, table)
        if oif is not None:
            body += _pack_u32_attr(8, RTA_OIF, oif)
    return message(kind, NLM_F_REQUEST | NLM_F_DUMP, seq, body)


def iter_messages(buf: bytes | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, body_start, body_end) for each message in ``buf``."""
    offset = 0
    end = len(buf)
    while offset + HDR <= end:
        length, kind, flags, seq, _pid = _unpack_hdr(buf, offset)
        if length < HDR:
            raise ValueError(f"malformed netlink message length {length}")
        yield kind, flags, seq, offset + HDR, offset + length
        offset += (length + 3) & ~3


def decode_error(buf: bytes | memoryview, start: int, end: int, flags: int) -> tuple[int, str]:
    """(errno, kernel's extended-ack text) of an NLMSG_ERROR; errno 0 is an ack."""
    (error,) = NLMSGERR.unpack_from(buf, start)
    text = ""
    if flags & NLM_F_ACK_TLVS:
        # After the error code comes the original header, plus the request
        # body unless the kernel capped it; then the ack attributes.
        orig_len = _unpack_hdr(buf, start + 4)[0]
        pos = start + 4 + (HDR if flags & NLM_F_CAPPED else (orig_len + 3) & ~3)
        while pos + 4 <= end:
            alen, atype = _unpack_rtattr(buf, pos)
            if alen < 4:
                break
            if atype == NLMSGERR_ATTR_MSG:
                text = bytes(buf[pos + 4 : pos + alen]).rstrip(b"\0").decode(errors="replace")
            pos += (alen + 3) & ~3
    return -error, text


def decode_route(buf: bytes | memoryview, start: int, end: int) -> KernelRoute:
    family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags = _unpack_rtmsg(
        buf, start
    )
    dst = b""
    gateway = None
    oif = 0
    priority = 0
    pos = start + BODY
    while pos + 4 <= end:
        alen, atype = _unpack_rtattr(buf, pos)
        if alen < 4:
            break
        if atype == RTA_DST:
            dst = bytes(buf[pos + 4 : pos + alen])
        elif atype == RTA_OIF:
            oif = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        elif atype == RTA_TABLE:
            table = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        elif atype == RTA_PRIORITY:
            priority = int.from_bytes(buf[pos + 4 : pos + 8], "little")
        elif atype == RTA_GATEWAY:
            gateway = bytes(buf[pos + 4 : pos + alen])
        pos += (alen + 3) & ~3
    if not dst:
        dst = bytes(4 if family == AF_INET else 16)
    route = Route(family, table, dst, dst_len, gateway, priority)
    return KernelRoute(route, oif, protocol, scope, rtype, bytes(buf[start:end]))


def decode_rule(buf: bytes | memoryview, start: int, end: int) -> KernelRule:
    family, dst_len, _src, _tos, table, _r1, _r2, _action, _flags = _unpack_rtmsg(buf, start)
    dst: bytes | None = None
    priority = 0
    suppress: int | None = None
    protocol = 0
    pos = start + BODY
    while pos + 4 <= end:
        alen, atype = _unpack_rtattr(buf, pos)
        if alen < 4:
            break
        value = buf[pos + 4 : pos + alen]
        if atype == FRA_DST:
            dst = bytes(value)
        elif atype == FRA_TABLE:
            table = int.from_bytes(value[:4], "little")
        elif atype == FRA_PRIORITY:
            priority = int.from_bytes(value[:4], "little")
        elif atype == FRA_SUPPRESS_PREFIXLEN:
            raw = int.from_bytes(value[:4], "little", signed=True)
            suppress = None if raw == -1 else raw
        elif atype == FRA_PROTOCOL:
            protocol = value[0]
        pos += (alen + 3) & ~3
    rule = Rule(family, table, priority, dst, dst_len if dst is not None else 0, suppress)
    return KernelRule(rule, protocol, bytes(buf[start:end]))


def link_request(seq: int, ifname: str) -> bytes:
    body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, ifname.encode() + b"\0")
    return message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def decode_link_index(buf: bytes | memoryview, start: int) -> int:
    return int(IFINFOMSG.unpack_from(buf, start)[2])
