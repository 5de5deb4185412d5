"""Encode and decode the rtnetlink messages the plugin uses: routes and rules.

Layouts follow <linux/netlink.h>, <linux/rtnetlink.h> and
<linux/fib_rules.h>. Only what the plugin needs is here.

Besides the one-message functions (``route_body``, ``decode_route``...) there
are bulk ones for the thousands of routes of one apply or one dump:
``Batch`` encodes a whole batch column by column (dump.py decodes a dump
the same way). They give exactly what the one-message functions give (the
unit tests hold them to it); they only spend less interpreter time per
route. See docs/performance.md.
"""

from __future__ import annotations

import struct
import sys
from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from itertools import groupby
from operator import itemgetter

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
RTM_DELLINK = 17
RTM_GETLINK = 18
RTM_NEWRULE = 32
RTM_DELRULE = 33
RTM_GETRULE = 34

# route attributes
RTA_DST = 1
RTA_IIF = 3
RTA_OIF = 4
RTA_GATEWAY = 5
RTA_PRIORITY = 6
RTA_TABLE = 15

RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253
RTN_UNICAST = 1
RT_TABLE_UNSPEC = 0
RTM_F_LOOKUP_TABLE = 0x1000  # a route get: say which table answered (IPv4)
RTM_F_FIB_MATCH = 0x2000  # a route get: answer with the FIB entry that matched

# rule attributes
FRA_DST = 1
FRA_IIFNAME = 3
FRA_PRIORITY = 6
FRA_SUPPRESS_PREFIXLEN = 14
FRA_TABLE = 15
FRA_PROTOCOL = 21
FR_ACT_TO_TBL = 1

IFLA_IFNAME = 3
IFF_UP = 0x1

# multicast groups of the notifications (<linux/rtnetlink.h> rtnetlink_groups)
RTNLGRP_LINK = 1
RTNLGRP_IPV4_ROUTE = 7
RTNLGRP_IPV4_RULE = 8
RTNLGRP_IPV6_ROUTE = 11
RTNLGRP_IPV6_RULE = 19
IFINFOMSG = struct.Struct("=BxHiII")  # family, type, index, flags, change

NLMSGHDR = struct.Struct("=IHHII")  # len, type, flags, seq, pid
RTMSG = struct.Struct("=BBBBBBBBI")  # also fib_rule_hdr: same size and layout
RTATTR = struct.Struct("=HH")
U32_ATTR = struct.Struct("=HHI")
NLMSGERR = struct.Struct("=i")
# Netlink speaks the host's byte order: every multi-byte field goes through
# a "=" (native order, standard sizes) struct, never a fixed order.
U32 = struct.Struct("=I")
HDR = NLMSGHDR.size
BODY = RTMSG.size

_pack_hdr = NLMSGHDR.pack
_pack_u32_attr = U32_ATTR.pack
_unpack_hdr = NLMSGHDR.unpack_from
_unpack_rtattr = RTATTR.unpack_from
_unpack_rtmsg = RTMSG.unpack_from
_unpack_u32 = U32.unpack_from


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
    # The header's table byte holds IDs up to 255; RTA_TABLE carries any.
    table_byte = route.table if route.table < 256 else RT_TABLE_UNSPEC
    body = RTMSG.pack(
        route.family, route.prefixlen, 0, 0, table_byte, protocol, scope, RTN_UNICAST, 0
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


def probe_request(seq: int, family: int, dst: bytes, iif: int | None = None) -> bytes:
    """A route get (not a dump) for ``dst`` answered with the FIB entry the
    lookup matched, as a dump shows it. The lookup goes through the policy
    rules as the host's own traffic (or, with ``iif``, traffic arriving on
    that interface) would: see facts.py for how the answer is judged."""
    flags = RTM_F_FIB_MATCH | (RTM_F_LOOKUP_TABLE if family == AF_INET else 0)
    body = RTMSG.pack(family, len(dst) * 8, 0, 0, 0, 0, 0, 0, flags) + _attr(RTA_DST, dst)
    if iif is not None:
        body += _pack_u32_attr(8, RTA_IIF, iif)
    return message(RTM_GETROUTE, NLM_F_REQUEST, seq, body)


def without_attribute(body: bytes, kind: int) -> bytes:
    """An rtmsg and its attributes without those of type ``kind`` (what a
    route get adds to the route it shows, e.g. RTA_IIF)."""
    if not any(atype == kind for atype, _s, _e in attributes(body, BODY, len(body))):
        return body
    kept = [body[:BODY]]
    pos = BODY
    while pos + 4 <= len(body):
        alen, atype = _unpack_rtattr(body, pos)
        if alen < 4:
            break
        step = (alen + 3) & ~3
        if atype != kind:
            kept.append(body[pos : pos + step])
        pos += step
    return b"".join(kept)


# NETLINK_FIB_LOOKUP (<net/ip_fib.h> struct fib_result_nl): an IPv4 lookup in
# one table given by ID (up to 255), without policy rules. The request and
# the answer are the same struct: fl_addr, fl_mark, fl_tos, fl_scope,
# tb_id_in, then tb_id, prefixlen, nh_sel, type, scope, err.
NETLINK_FIB_LOOKUP = 10
FIB_RESULT_NL = struct.Struct("=4sIBBBBBBBBi")


def fib_lookup_request(seq: int, table: int, dst: bytes) -> bytes:
    body = FIB_RESULT_NL.pack(dst, 0, 0, 0, table, 0, 0, 0, 0, 0, 0)
    return message(0, NLM_F_REQUEST, seq, body)


def decode_fib_lookup(buf: bytes, start: int) -> tuple[int, int]:
    """(errno, prefix length of the longest match) of a NETLINK_FIB_LOOKUP
    answer; errno EAGAIN means no route of the table matched."""
    *_head, prefixlen, _nh, _type, _scope, err = FIB_RESULT_NL.unpack_from(buf, start)
    return -err, prefixlen


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
        for atype, value_start, value_end in attributes(buf, pos, end):
            if atype == NLMSGERR_ATTR_MSG:
                text = _text(buf[value_start:value_end])
    return -error, text


def attributes(buf: bytes | memoryview, pos: int, end: int) -> Iterator[tuple[int, int, int]]:
    """(type, value start, value end) of each attribute from ``pos`` to ``end``."""
    while pos + 4 <= end:
        alen, atype = _unpack_rtattr(buf, pos)
        if alen < 4:
            return
        yield atype, pos + 4, pos + alen
        pos += (alen + 3) & ~3


def _text(value: bytes | memoryview) -> str:
    return bytes(value).rstrip(b"\0").decode(errors="replace")


def _u32_attr(buf: bytes | memoryview, start: int, end: int) -> int:
    """The 32-bit attribute value from ``start`` to ``end``, in the host's
    order (a truncated one reads as what it holds)."""
    if end - start >= 4:
        return int(_unpack_u32(buf, start)[0])
    return int.from_bytes(buf[start:end], sys.byteorder)


def _attribute_values(
    buf: bytes | memoryview, pos: int, end: int, u32: frozenset[int]
) -> tuple[dict[int, int], dict[int, bytes]]:
    """Attribute values by type, the last of a type winning: those in
    ``u32`` as host-order integers, the others as bytes."""
    numbers: dict[int, int] = {}
    blobs: dict[int, bytes] = {}
    for atype, value_start, value_end in attributes(buf, pos, end):
        if atype in u32:
            numbers[atype] = _u32_attr(buf, value_start, value_end)
        else:
            blobs[atype] = bytes(buf[value_start:value_end])
    return numbers, blobs


_ROUTE_U32 = frozenset({RTA_OIF, RTA_TABLE, RTA_PRIORITY})
_RULE_U32 = frozenset({FRA_TABLE, FRA_PRIORITY, FRA_SUPPRESS_PREFIXLEN})


def decode_route(buf: bytes | memoryview, start: int, end: int) -> KernelRoute:
    family, dst_len, _src_len, _tos, table, protocol, scope, rtype, _flags = _unpack_rtmsg(
        buf, start
    )
    numbers, blobs = _attribute_values(buf, start + BODY, end, _ROUTE_U32)
    dst = blobs.get(RTA_DST) or bytes(4 if family == AF_INET else 16)
    route = Route(
        family,
        numbers.get(RTA_TABLE, table),
        dst,
        dst_len,
        blobs.get(RTA_GATEWAY),
        numbers.get(RTA_PRIORITY, 0),
    )
    return KernelRoute(
        route, numbers.get(RTA_OIF, 0), protocol, scope, rtype, bytes(buf[start:end])
    )


def decode_rule(buf: bytes | memoryview, start: int, end: int) -> KernelRule:
    family, dst_len, _src, _tos, table, _r1, _r2, _action, _flags = _unpack_rtmsg(buf, start)
    numbers, blobs = _attribute_values(buf, start + BODY, end, _RULE_U32)
    dst = blobs.get(FRA_DST)
    suppress: int | None = numbers.get(FRA_SUPPRESS_PREFIXLEN)
    if suppress is not None:
        suppress -= (suppress >> 31) << 32  # a signed value; -1 means none
        suppress = None if suppress == -1 else suppress
    protocol = blobs[FRA_PROTOCOL][0] if blobs.get(FRA_PROTOCOL) else 0
    rule = Rule(
        family,
        numbers.get(FRA_TABLE, table),
        numbers.get(FRA_PRIORITY, 0),
        dst,
        dst_len if dst is not None else 0,
        suppress,
    )
    return KernelRule(rule, protocol, bytes(buf[start:end]))


def link_request(seq: int, ifname: str) -> bytes:
    body = IFINFOMSG.pack(0, 0, 0, 0, 0) + _attr(IFLA_IFNAME, ifname.encode() + b"\0")
    return message(RTM_GETLINK, NLM_F_REQUEST, seq, body)


def decode_link_index(buf: bytes | memoryview, start: int) -> int:
    return int(IFINFOMSG.unpack_from(buf, start)[2])


def decode_link(buf: bytes | memoryview, start: int, end: int) -> tuple[int, int, str]:
    """(index, flags, name) of an RTM_NEWLINK/RTM_DELLINK."""
    _family, _type, index, flags, _change = IFINFOMSG.unpack_from(buf, start)
    name = ""
    for atype, value_start, value_end in attributes(buf, start + IFINFOMSG.size, end):
        if atype == IFLA_IFNAME:
            name = _text(buf[value_start:value_end])
    return index, flags, name


# -- bulk encoding --------------------------------------------------------------
#
# A batch of thousands of route messages differs from message to message only
# in the sequence number and the destination (and, rarely, in the table or the
# metric); a batch of deletions is the dumped bodies behind headers that
# differ only in the sequence number. So a run of same-sized messages is built
# as one block: the constant message (built by ``route_body``/``message``
# themselves) repeated, then the varying fields written column by column
# through strided memoryviews, in C. No Python code runs per route.

# (family, table, prefixlen, gateway, priority): what a run's template fixes.
_ROUTE_SHAPE = itemgetter(0, 1, 3, 4, 5)
_ROUTE_DST = itemgetter(2)
_WORD = 4  # the columns are 32-bit words: every field that varies is one or more
_RTM_FLAGS_WORD = 2  # rtm_flags: bytes 8-11 of an rtmsg
_TYPE_FLAGS = struct.Struct("=HH")  # nlmsg_type, nlmsg_flags: the header's second word


def _words(data: bytearray | bytes) -> memoryview:
    return memoryview(data).cast("I")


def attribute_offset(msg: bytes, start: int, kind: int) -> int:
    """Offset in ``msg`` of the value of its first attribute ``kind``
    (attributes from ``start`` on)."""
    for atype, value_start, _end in attributes(msg, start, len(msg)):
        if atype == kind:
            return value_start
    raise ValueError(f"no attribute {kind} in the message")


def masked_rtm_flags(body: bytes, mask: int) -> bytes:
    """``body`` (an rtmsg and its attributes) with rtm_flags ANDed with ``mask``."""
    flags = U32.unpack_from(body, 8)[0] & mask
    return body[:8] + U32.pack(flags) + body[12:]


class Batch:
    """Messages to send, the i-th with sequence number ``first_seq + i``.

    Held as blocks of same-sized messages back to back, so that a chunk to
    send is a join of a few slices, not of thousands of small objects. The
    blocks are exactly what ``message`` gives for each message."""

    def __init__(self, first_seq: int) -> None:
        self.first_seq = first_seq
        self._starts: list[int] = []  # index of each block's first message
        self._blocks: list[tuple[int, bytes]] = []  # (message size, messages)
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def _append_block(self, size: int, data: bytes) -> None:
        if data:
            self._starts.append(self._count)
            self._blocks.append((size, data))
            self._count += len(data) // size

    @property
    def next_seq(self) -> int:
        return self.first_seq + self._count

    def add(self, kind: int, flags: int, body: bytes) -> None:
        """One message."""
        data = message(kind, flags, self.next_seq, body)
        self._append_block(len(data), data)

    def add_bodies(
        self, bodies: Iterable[bytes], kind: int, flags: int, rtm_flags_mask: int | None = None
    ) -> None:
        """``message(kind, flags, seq, body)`` for each body: per run of one
        size, the headers written as columns and the bodies laid in behind.
        With ``rtm_flags_mask``, the rtm_flags of each body (an rtmsg) are
        ANDed with it first, as a dumped route's must be to be sent back."""
        for size, group in groupby(bodies, key=len):
            run = list(group)
            if size % _WORD or size < BODY:
                for body in run:  # an odd size: one by one
                    if rtm_flags_mask is not None:
                        body = masked_rtm_flags(body, rtm_flags_mask)
                    self.add(kind, flags, body)
                continue
            n, stride, width = len(run), (HDR + size) // _WORD, size // _WORD
            rows = bytearray(b"".join(run))
            if rtm_flags_mask is not None:
                column = _words(rows)[_RTM_FLAGS_WORD::width]
                if any(column.tobytes()):  # rare: dumps nearly never carry flags
                    column[:] = array("I", [v & rtm_flags_mask for v in column.tolist()])
            # Every message's header as the first one's (a repeated pattern,
            # copied in C), then the sequence numbers and the bodies written in.
            block = bytearray(_pack_hdr(HDR + size, kind, flags, 0, 0) + bytes(size)) * n
            words = _words(block)
            words[2::stride] = array("I", range(self.next_seq, self.next_seq + n))
            self._fill(words, stride, HDR // _WORD, rows, width)
            self._append_block(HDR + size, bytes(block))

    def add_messages(
        self,
        messages: memoryview | bytes,
        size: int,
        kind: int,
        flags: int,
        rtm_flags_mask: int | None = None,
    ) -> None:
        """Route messages of ``size`` bytes each (a multiple of 4), back to
        back as a dump brings them, made ``kind`` requests: what
        ``add_bodies`` makes of their bodies, byte for byte, with only the
        headers' type, flags, sequence number and port ID written over."""
        n, stride = len(messages) // size, size // _WORD
        block = bytearray(messages)
        words = _words(block)
        words[1::stride] = array("I", _TYPE_FLAGS.pack(kind, flags)) * n
        words[2::stride] = array("I", range(self.next_seq, self.next_seq + n))
        words[3::stride] = array("I", bytes(_WORD)) * n
        if rtm_flags_mask is not None:
            column = words[HDR // _WORD + _RTM_FLAGS_WORD :: stride]
            if any(column.tobytes()):
                column[:] = array("I", [v & rtm_flags_mask for v in column.tolist()])
        self._append_block(size, bytes(block))

    def add_routes(
        self, routes: Iterable[Route], oif: int, protocol: int, kind: int, flags: int
    ) -> None:
        """``message(kind, flags, seq, route_body(route, oif, protocol))`` for
        each route: per run of one shape, the message of its first route
        repeated, with each one's destination and sequence number written in."""
        for _shape, group in groupby(routes, key=_ROUTE_SHAPE):
            run = list(group)
            dsts = list(map(_ROUTE_DST, run))
            sizes = set(map(len, dsts))
            if len(sizes) != 1 or (dst_len := sizes.pop()) % _WORD or not dst_len:
                for r in run:  # an odd destination: one by one
                    self.add(kind, flags, route_body(r, oif, protocol))
                continue
            template = message(kind, flags, 0, route_body(run[0], oif, protocol))
            dst_at = attribute_offset(template, HDR + BODY, RTA_DST)  # route_body's own layout
            n, stride = len(run), len(template) // _WORD
            block = bytearray(template) * n
            words = _words(block)
            words[2::stride] = array("I", range(self.next_seq, self.next_seq + n))
            self._fill(words, stride, dst_at // _WORD, b"".join(dsts), dst_len // _WORD)
            self._append_block(len(template), bytes(block))

    @staticmethod
    def _fill(words: memoryview, stride: int, at: int, rows: bytes | bytearray, width: int) -> None:
        """Write ``rows`` (``width`` words each, one row per message) into
        every message from word ``at`` on: one strided copy per word."""
        source = _words(rows)
        for j in range(width):
            words[at + j :: stride] = source[j::width]

    def data(self, start: int, stop: int) -> bytes:
        """Messages ``start`` to ``stop`` (not included), back to back."""
        parts: list[bytes | memoryview] = []
        b = bisect_right(self._starts, start) - 1
        while start < stop:
            first = self._starts[b]
            size, block = self._blocks[b]
            end = min(stop, first + len(block) // size)
            parts.append(memoryview(block)[(start - first) * size : (end - first) * size])
            start = end
            b += 1
        return b"".join(parts)

    def messages(self) -> list[bytes]:
        """Each message on its own (for tests and tools)."""
        return [self.data(i, i + 1) for i in range(self._count)]
