"""The rtnetlink codec, checked against pyroute2 as an independent oracle."""

from __future__ import annotations

import errno
import ipaddress
import socket
import struct

import pytest
from pyroute2.netlink.rtnl.fibmsg import fibmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from incus_host_tables.model import Route, Rule
from incus_host_tables.netlink import codec as c

V4, V6 = socket.AF_INET, socket.AF_INET6
OIF = 42
OURS = 158
HDR = struct.Struct("=IHHII")


def ip(text: str) -> bytes:
    return ipaddress.ip_address(text).packed


def text(family: int, packed: bytes) -> str:
    return socket.inet_ntop(family, packed)


def theirs(cls: type, kind: int, body: bytes, flags: int = 0, seq: int = 9):  # type: ignore[no-untyped-def]
    msg = cls(c.message(kind, flags, seq, body))
    msg.decode()
    return msg


def attrs(msg) -> dict[str, object]:  # type: ignore[no-untyped-def]
    names = [name for name, _ in msg["attrs"]]
    assert len(names) == len(set(names)), names
    return dict(msg["attrs"])


def encoded(msg) -> bytes:  # type: ignore[no-untyped-def]
    msg.encode()
    return bytes(msg.data)


ROUTES = [
    pytest.param(Route(V4, 254, ip("203.0.113.1"), 32, None, 0), id="v4-host-main"),
    pytest.param(Route(V4, 100, ip("203.0.113.1"), 32, None, 0), id="v4-host-table"),
    pytest.param(Route(V6, 100, ip("2001:db8::1"), 128, None, 1024), id="v6-host"),
    pytest.param(Route(V4, 7, ip("198.51.100.0"), 24, ip("203.0.113.1"), 0), id="v4-extra"),
    pytest.param(Route(V4, 7, ip("198.51.100.0"), 24, ip("203.0.113.1"), 55), id="v4-metric"),
    pytest.param(Route(V6, 253, ip("2001:db8:1::"), 48, ip("2001:db8::1"), 1024), id="v6-extra"),
    pytest.param(
        Route(V4, 1, ip("198.51.100.9"), 32, ip("203.0.113.1"), 0), id="v4-extra-host-len"
    ),
]


@pytest.mark.parametrize("route", ROUTES)
def test_route_body_decodes_with_pyroute2(route: Route) -> None:
    msg = theirs(rtmsg, c.RTM_NEWROUTE, c.route_body(route, OIF, OURS), flags=0x405, seq=77)
    assert msg["header"]["type"] == c.RTM_NEWROUTE
    assert msg["header"]["flags"] == 0x405
    assert msg["header"]["sequence_number"] == 77
    assert msg["header"]["length"] == len(msg.data)
    host_v4 = route.family == V4 and route.gateway is None and route.prefixlen == 32
    assert (msg["family"], msg["dst_len"], msg["src_len"], msg["tos"]) == (
        route.family,
        route.prefixlen,
        0,
        0,
    )
    assert (msg["table"], msg["proto"], msg["type"], msg["flags"]) == (route.table, OURS, 1, 0)
    assert msg["scope"] == (253 if host_v4 else 0)
    expected: dict[str, object] = {
        "RTA_TABLE": route.table,
        "RTA_DST": text(route.family, route.dst),
        "RTA_OIF": OIF,
    }
    if route.gateway is not None:
        expected["RTA_GATEWAY"] = text(route.family, route.gateway)
    if route.priority:
        expected["RTA_PRIORITY"] = route.priority
    assert attrs(msg) == expected


@pytest.mark.parametrize("route", ROUTES)
def test_route_body_round_trips(route: Route) -> None:
    body = c.route_body(route, OIF, OURS)
    buf = b"\xee" * 8 + body  # decode at an offset, as from a receive buffer
    got = c.decode_route(memoryview(buf), 8, len(buf))
    assert got.route == route
    assert (got.oif, got.protocol, got.type) == (OIF, OURS, c.RTN_UNICAST)
    assert got.raw == body


def pyroute2_route(family: int, table: int, dst: str | None, dst_len: int, **nla: object) -> bytes:
    msg = rtmsg()
    msg["header"]["type"] = c.RTM_NEWROUTE
    msg["family"], msg["dst_len"] = family, dst_len
    msg["table"], msg["proto"], msg["scope"], msg["type"] = min(table, 252), 4, 0, 1
    msg["attrs"] = [("RTA_TABLE", table)]
    if dst is not None:
        msg["attrs"].append(("RTA_DST", dst))
    msg["attrs"] += list(nla.items())
    return encoded(msg)


@pytest.mark.parametrize(
    ("data", "expected", "oif"),
    [
        pytest.param(
            pyroute2_route(V4, 100, "203.0.113.1", 32, RTA_OIF=5),
            Route(V4, 100, ip("203.0.113.1"), 32, None, 0),
            5,
            id="v4-host",
        ),
        pytest.param(
            pyroute2_route(V6, 100, "2001:db8::1", 128, RTA_PRIORITY=1024, RTA_PREF=0, RTA_OIF=6),
            Route(V6, 100, ip("2001:db8::1"), 128, None, 1024),
            6,
            id="v6-host-unknown-attr",
        ),
        pytest.param(
            pyroute2_route(
                V4,
                100,
                "198.51.100.0",
                24,
                RTA_PREFSRC="203.0.113.9",
                RTA_GATEWAY="203.0.113.1",
                RTA_OIF=7,
                RTA_PRIORITY=20,
            ),
            Route(V4, 100, ip("198.51.100.0"), 24, ip("203.0.113.1"), 20),
            7,
            id="v4-extra",
        ),
        pytest.param(
            pyroute2_route(V4, 70000, "203.0.113.1", 32, RTA_OIF=8),
            Route(V4, 70000, ip("203.0.113.1"), 32, None, 0),
            8,
            id="table-beyond-header-byte",
        ),
        pytest.param(
            pyroute2_route(V6, 254, None, 0, RTA_GATEWAY="fe80::1", RTA_OIF=9),
            Route(V6, 254, bytes(16), 0, ip("fe80::1"), 0),
            9,
            id="v6-default-no-dst",
        ),
    ],
)
def test_decode_route_from_pyroute2(data: bytes, expected: Route, oif: int) -> None:
    ((kind, _flags, _seq, start, end),) = c.iter_messages(data)
    assert kind == c.RTM_NEWROUTE
    got = c.decode_route(data, start, end)
    assert got.route == expected
    assert (got.oif, got.protocol, got.scope, got.type) == (oif, 4, 0, 1)
    assert got.raw == data[16:]


def test_with_protocol_changes_only_the_protocol() -> None:
    route = Route(V4, 100, ip("198.51.100.0"), 24, ip("203.0.113.1"), 0)
    body = c.route_body(route, OIF, 4)
    remarked = c.with_protocol(body, OURS)
    assert len(remarked) == len(body)
    assert [i for i in range(len(body)) if body[i] != remarked[i]] == [5]
    before = theirs(rtmsg, c.RTM_NEWROUTE, body)
    after = theirs(rtmsg, c.RTM_NEWROUTE, remarked)
    assert (before["proto"], after["proto"]) == (4, OURS)
    assert attrs(before) == attrs(after)
    assert c.decode_route(remarked, 0, len(remarked)).route == route


RULES = [
    pytest.param(Rule(V4, 100, 1100, None, 0, 31), id="v4-table"),
    pytest.param(Rule(V6, 200, 1100, None, 0, 127), id="v6-table"),
    pytest.param(Rule(V4, 100, 1100, ip("198.51.100.0"), 24, None), id="v4-prefix"),
    pytest.param(Rule(V6, 1, 32765, ip("2001:db8:1::"), 48, None), id="v6-prefix"),
]


@pytest.mark.parametrize("rule", RULES)
def test_rule_body_decodes_with_pyroute2(rule: Rule) -> None:
    msg = theirs(fibmsg, c.RTM_NEWRULE, c.rule_body(rule, OURS))
    assert msg["header"]["length"] == len(msg.data)
    assert (msg["family"], msg["dst_len"], msg["src_len"], msg["tos"]) == (
        rule.family,
        rule.prefixlen,
        0,
        0,
    )
    assert (msg["table"], msg["res1"], msg["res2"], msg["action"], msg["flags"]) == (
        rule.table,
        0,
        0,
        1,
        0,
    )
    expected: dict[str, object] = {
        "FRA_IIFNAME": "lo",
        "FRA_PRIORITY": rule.priority,
        "FRA_TABLE": rule.table,
        "FRA_PROTOCOL": OURS,
    }
    if rule.dst is not None:
        expected["FRA_DST"] = text(rule.family, rule.dst)
    if rule.suppress_prefixlength is not None:
        expected["FRA_SUPPRESS_PREFIXLEN"] = rule.suppress_prefixlength
    assert attrs(msg) == expected


@pytest.mark.parametrize("rule", [*RULES, pytest.param(Rule(V4, 1000, 5, None, 0, 31), id="big")])
def test_rule_body_round_trips(rule: Rule) -> None:
    body = c.rule_body(rule, OURS)
    got = c.decode_rule(body, 0, len(body))
    assert got.rule == rule
    assert got.protocol == OURS
    assert got.raw == body


def pyroute2_rule(family: int, table: int, dst_len: int, **nla: object) -> bytes:
    msg = fibmsg()
    msg["header"]["type"] = c.RTM_NEWRULE
    msg["family"], msg["dst_len"], msg["table"], msg["action"] = family, dst_len, min(table, 252), 1
    msg["attrs"] = list(nla.items())
    return encoded(msg)


@pytest.mark.parametrize(
    ("data", "expected", "protocol"),
    [
        pytest.param(
            pyroute2_rule(
                V4,
                100,
                0,
                FRA_TABLE=100,
                FRA_PRIORITY=1100,
                FRA_IIFNAME="lo",
                FRA_SUPPRESS_PREFIXLEN=31,
                FRA_SUPPRESS_IFGROUP=0xFFFFFFFF,
                FRA_PROTOCOL=OURS,
            ),
            Rule(V4, 100, 1100, None, 0, 31),
            OURS,
            id="suppress",
        ),
        pytest.param(
            pyroute2_rule(
                V6,
                300,
                48,
                FRA_DST="2001:db8:1::",
                FRA_TABLE=300,
                FRA_PRIORITY=9,
                FRA_SUPPRESS_PREFIXLEN=0xFFFFFFFF,
                FRA_PROTOCOL=2,
            ),
            Rule(V6, 300, 9, ip("2001:db8:1::"), 48, None),
            2,
            id="unset-suppress-is-none",
        ),
        pytest.param(
            pyroute2_rule(V4, 254, 0, FRA_TABLE=254, FRA_PRIORITY=32766),
            Rule(V4, 254, 32766, None, 0, None),
            0,
            id="no-protocol-attr",
        ),
    ],
)
def test_decode_rule_from_pyroute2(data: bytes, expected: Rule, protocol: int) -> None:
    ((_kind, _flags, _seq, start, end),) = c.iter_messages(data)
    got = c.decode_rule(data, start, end)
    assert got.rule == expected
    assert got.protocol == protocol


# -- framing ------------------------------------------------------------------


def test_iter_messages_on_concatenated_messages() -> None:
    route = Route(V4, 100, ip("203.0.113.1"), 32, None, 0)
    first = c.message(c.RTM_NEWROUTE, c.NLM_F_MULTI, 5, c.route_body(route, OIF, OURS))
    odd = HDR.pack(HDR.size + 3, c.NLMSG_NOOP, 0, 6, 0) + b"abc" + b"\0"  # padded to 4
    third = pyroute2_rule(V4, 100, 0, FRA_TABLE=100)
    done = c.message(c.NLMSG_DONE, c.NLM_F_MULTI, 5, struct.pack("=i", 0))
    buf = first + odd + third + done
    got = list(c.iter_messages(memoryview(buf)))
    assert [(k, f, s) for k, f, s, _, _ in got] == [
        (c.RTM_NEWROUTE, c.NLM_F_MULTI, 5),
        (c.NLMSG_NOOP, 0, 6),
        (c.RTM_NEWRULE, 0, 0),
        (c.NLMSG_DONE, c.NLM_F_MULTI, 5),
    ]
    bodies = [bytes(buf[s:e]) for _, _, _, s, e in got]
    assert bodies == [first[16:], b"abc", third[16:], struct.pack("=i", 0)]
    assert c.decode_route(buf, got[0][3], got[0][4]).route == route
    assert c.decode_rule(buf, got[2][3], got[2][4]).rule.table == 100


def test_iter_messages_ignores_a_trailing_partial_header() -> None:
    msg = c.message(c.NLMSG_NOOP, 0, 1, b"")
    assert len(list(c.iter_messages(msg + msg[:10]))) == 1
    assert list(c.iter_messages(b"")) == []


def test_iter_messages_rejects_a_short_length() -> None:
    with pytest.raises(ValueError, match="length 8"):
        list(c.iter_messages(HDR.pack(8, c.NLMSG_NOOP, 0, 1, 0)))


# -- errors -------------------------------------------------------------------


def tlv(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length & 3)


def nlmsgerr(
    error: int, request: bytes, *, capped: bool = False, tlvs: bytes | None = None, seq: int = 3
) -> bytes:
    """An NLMSG_ERROR as <linux/netlink.h> lays it out: struct nlmsgerr (error,
    the request's header, its payload unless capped), then the ack TLVs."""
    flags = (c.NLM_F_CAPPED if capped else 0) | (c.NLM_F_ACK_TLVS if tlvs is not None else 0)
    echoed = request[:16] if capped else request + b"\0" * (-len(request) & 3)
    payload = struct.pack("=i", error) + echoed + (tlvs or b"")
    return HDR.pack(16 + len(payload), c.NLMSG_ERROR, flags, seq, 0) + payload


REQUEST = c.message(
    c.RTM_NEWROUTE, 0x605, 3, c.route_body(Route(V4, 100, ip("203.0.113.1"), 32, None, 0), 1, OURS)
)
ODD_REQUEST = HDR.pack(19, c.NLMSG_NOOP, 1, 3, 0) + b"xyz"
MSG, OFFS = 1, 2


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        pytest.param(nlmsgerr(0, REQUEST, capped=True), (0, ""), id="ack"),
        pytest.param(nlmsgerr(-errno.EEXIST, REQUEST), (errno.EEXIST, ""), id="error-no-tlvs"),
        pytest.param(
            nlmsgerr(-errno.EINVAL, REQUEST, capped=True, tlvs=tlv(MSG, b"Invalid table\0")),
            (errno.EINVAL, "Invalid table"),
            id="capped-with-msg",
        ),
        pytest.param(
            nlmsgerr(
                -errno.EINVAL,
                REQUEST,
                tlvs=tlv(OFFS, struct.pack("=I", 20)) + tlv(MSG, b"Invalid prefix\0"),
            ),
            (errno.EINVAL, "Invalid prefix"),
            id="full-request-offs-then-msg",
        ),
        pytest.param(
            nlmsgerr(-errno.EINVAL, ODD_REQUEST, tlvs=tlv(MSG, b"odd\0")),
            (errno.EINVAL, "odd"),
            id="unaligned-request-echoed",
        ),
        pytest.param(
            nlmsgerr(
                -errno.ENODEV,
                REQUEST,
                capped=True,
                tlvs=tlv(MSG, b"No such device\0") + tlv(OFFS, struct.pack("=I", 28)),
            ),
            (errno.ENODEV, "No such device"),
            id="msg-then-offs",
        ),
        pytest.param(
            nlmsgerr(-errno.EPERM, REQUEST, capped=True, tlvs=tlv(OFFS, struct.pack("=I", 4))),
            (errno.EPERM, ""),
            id="tlvs-without-msg",
        ),
        pytest.param(
            nlmsgerr(-errno.EPERM, REQUEST, capped=True, tlvs=b""),
            (errno.EPERM, ""),
            id="tlv-flag-no-tlvs",
        ),
        pytest.param(
            nlmsgerr(0, REQUEST, capped=True, tlvs=tlv(MSG, b"warning only\0")),
            (0, "warning only"),
            id="ack-with-message",
        ),
        pytest.param(
            nlmsgerr(-errno.EINVAL, REQUEST, capped=True, tlvs=tlv(MSG, b"bad \xff byte\0")),
            (errno.EINVAL, "bad \ufffd byte"),
            id="undecodable-byte",
        ),
    ],
)
def test_decode_error(reply: bytes, expected: tuple[int, str]) -> None:
    # preceded by another message, so offsets inside a buffer are exercised
    buf = c.message(c.NLMSG_NOOP, 0, 1, b"pad!") + reply
    messages = list(c.iter_messages(buf))
    kind, flags, seq, start, end = messages[1]
    assert (kind, seq) == (c.NLMSG_ERROR, 3)
    assert c.decode_error(buf, start, end, flags) == expected
    assert c.decode_error(memoryview(buf), start, end, flags) == expected


# -- requests -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("family", "table", "protocol", "oif", "header_table", "expected_attrs"),
    [
        pytest.param(V4, 0, 0, None, 0, {}, id="unfiltered"),
        pytest.param(V4, 100, 0, None, 100, {"RTA_TABLE": 100}, id="table"),
        pytest.param(V6, 0, OURS, None, 0, {}, id="protocol"),
        pytest.param(V6, 0, 0, 12, 0, {"RTA_OIF": 12}, id="oif"),
        pytest.param(V4, 254, OURS, 3, 254, {"RTA_TABLE": 254, "RTA_OIF": 3}, id="everything"),
        pytest.param(V6, 1000, 0, None, 0, {"RTA_TABLE": 1000}, id="table-beyond-byte"),
    ],
)
def test_route_dump_request(
    family: int,
    table: int,
    protocol: int,
    oif: int | None,
    header_table: int,
    expected_attrs: dict[str, int],
) -> None:
    data = c.dump_request(c.RTM_GETROUTE, 31, family, table=table, protocol=protocol, oif=oif)
    msg = rtmsg(data)
    msg.decode()
    assert msg["header"]["type"] == c.RTM_GETROUTE
    assert msg["header"]["flags"] == c.NLM_F_REQUEST | c.NLM_F_DUMP
    assert msg["header"]["sequence_number"] == 31
    assert msg["header"]["length"] == len(data)
    assert msg["family"] == family
    assert (msg["table"], msg["proto"]) == (header_table, protocol)
    # strict checking rejects a dump request with any of these set
    assert (msg["dst_len"], msg["src_len"], msg["tos"], msg["scope"], msg["flags"]) == (0,) * 5
    assert attrs(msg) == expected_attrs


@pytest.mark.parametrize("family", [V4, V6])
def test_rule_dump_request_has_a_clean_header(family: int) -> None:
    data = c.dump_request(c.RTM_GETRULE, 8, family)
    msg = fibmsg(data)
    msg.decode()
    assert msg["header"]["type"] == c.RTM_GETRULE
    assert msg["header"]["flags"] == c.NLM_F_REQUEST | c.NLM_F_DUMP
    assert msg["header"]["length"] == len(data)
    assert msg["family"] == family
    fields = ("dst_len", "src_len", "tos", "table", "res1", "res2", "action", "flags")
    assert [msg[f] for f in fields] == [0] * len(fields)
    assert msg["attrs"] == []


def test_link_request_and_index() -> None:
    msg = ifinfmsg(c.link_request(4, "veth1234"))
    msg.decode()
    assert msg["header"]["type"] == c.RTM_GETLINK
    assert msg["header"]["flags"] == c.NLM_F_REQUEST
    assert msg.get_attr("IFLA_IFNAME") == "veth1234"
    reply = ifinfmsg()
    reply["header"]["type"] = c.RTM_NEWLINK
    reply["index"] = 4242
    reply["attrs"] = [("IFLA_IFNAME", "veth1234")]
    data = encoded(reply)
    ((_kind, _flags, _seq, start, _end),) = c.iter_messages(data)
    assert c.decode_link_index(data, start) == 4242


# -- byte order --------------------------------------------------------------


def test_codec_uses_no_fixed_byte_order() -> None:
    """Netlink speaks the host's byte order: no "little"/"big" and no struct
    format with a fixed order anywhere in the codec."""
    import ast
    from pathlib import Path

    tree = ast.parse(Path(c.__file__).read_text())
    fixed = [
        node.value
        for node in ast.walk(tree)
        if isinstance(node, ast.Constant)
        and isinstance(node.value, str)
        and (node.value in ("little", "big") or node.value[:1] in ("<", ">", "!"))
    ]
    assert fixed == []


def test_decoders_read_32_bit_values_in_native_order() -> None:
    # Values whose four bytes all differ: any other byte order misreads them.
    route = Route(V4, 0x01020304, ip("198.51.100.7"), 32, None, 0x0A0B0C0D)
    body = c.route_body(route, 0x11223344, OURS)
    kr = c.decode_route(body, 0, len(body))
    assert (kr.route.table, kr.route.priority, kr.oif) == (0x01020304, 0x0A0B0C0D, 0x11223344)
    assert struct.pack("=I", 0x11223344) in body

    rule = Rule(V4, 0x01020304, 0x00010203, ip("198.51.100.0"), 24, 0x0102)
    rbody = c.rule_body(rule, OURS)
    assert c.decode_rule(rbody, 0, len(rbody)).rule == rule
    assert struct.pack("=I", 0x01020304) in rbody


def test_bulk_encoder_finds_the_address_where_route_body_puts_it() -> None:
    routes = [Route(V6, 300, ip(f"2001:db8::{i:x}"), 128, None, 0) for i in range(1, 5)]
    batch = c.Batch(7)
    batch.add_routes(routes, OIF, OURS, c.RTM_NEWROUTE, c.NLM_F_REQUEST)
    for i, (msg, route) in enumerate(zip(batch.messages(), routes, strict=True)):
        assert msg == c.message(
            c.RTM_NEWROUTE, c.NLM_F_REQUEST, 7 + i, c.route_body(route, OIF, OURS)
        )
