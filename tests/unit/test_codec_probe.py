"""The route probes' messages (codec.probe_request, without_attribute) and
the IPv4 table lookup's (fib_lookup_request, decode_fib_lookup)."""

from __future__ import annotations

import errno
import socket

from incus_host_tables.model import AF_INET, AF_INET6, Route
from incus_host_tables.netlink import codec as c

A4 = socket.inet_pton(AF_INET, "198.51.100.10")
A6 = socket.inet_pton(AF_INET6, "2001:db8::10")


def test_probe_request_asks_for_the_fib_entry() -> None:
    msg = c.probe_request(5, AF_INET, A4)
    length, kind, flags, seq, _pid = c.NLMSGHDR.unpack_from(msg)
    assert (length, kind, flags, seq) == (len(msg), c.RTM_GETROUTE, c.NLM_F_REQUEST, 5)
    family, dst_len, *_rest, rtm_flags = c.RTMSG.unpack_from(msg, c.HDR)
    assert (family, dst_len) == (AF_INET, 32)
    assert rtm_flags == c.RTM_F_FIB_MATCH | c.RTM_F_LOOKUP_TABLE
    attrs = {t: bytes(msg[s:e]) for t, s, e in c.attributes(msg, c.HDR + c.BODY, len(msg))}
    assert attrs == {c.RTA_DST: A4}
    # IPv6 refuses RTM_F_LOOKUP_TABLE in a route get; the interface is RTA_IIF.
    msg6 = c.probe_request(6, AF_INET6, A6, iif=7)
    assert c.RTMSG.unpack_from(msg6, c.HDR)[-1] == c.RTM_F_FIB_MATCH
    attrs6 = {t: bytes(msg6[s:e]) for t, s, e in c.attributes(msg6, c.HDR + c.BODY, len(msg6))}
    assert attrs6 == {c.RTA_DST: A6, c.RTA_IIF: c.U32.pack(7)}


def test_without_attribute() -> None:
    body = c.route_body(Route(AF_INET6, 254, A6, 128, None, 1024), 7, 3)
    with_iif = body + c._pack_u32_attr(8, c.RTA_IIF, 7)
    assert c.without_attribute(with_iif, c.RTA_IIF) == body
    assert c.without_attribute(body, c.RTA_IIF) is body
    assert c.decode_route(body, 0, len(body)).route.table == 254


def test_fib_lookup_round_trip() -> None:
    msg = c.fib_lookup_request(9, 254, A4)
    assert len(msg) == c.HDR + c.FIB_RESULT_NL.size
    answer = bytearray(msg)
    # the kernel writes tb_id, prefixlen, nh_sel, type, scope, err in place
    c.FIB_RESULT_NL.pack_into(answer, c.HDR, A4, 0, 0, 0, 254, 254, 24, 0, 1, 0, 0)
    assert c.decode_fib_lookup(bytes(answer), c.HDR) == (0, 24)
    c.FIB_RESULT_NL.pack_into(answer, c.HDR, A4, 0, 0, 0, 254, 254, 0, 0, 0, 0, -errno.EAGAIN)
    assert c.decode_fib_lookup(bytes(answer), c.HDR)[0] == errno.EAGAIN
