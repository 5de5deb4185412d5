"""Drift repair's pure parts: which notification means drift of which
device, the fight guard's back-off, and decoding notifications (built with
the codec's own encoders). The repair itself runs against the real kernel
in tests/kernel/test_drift_repair.py."""

from __future__ import annotations

import ipaddress
import socket
import struct

import pytest

from incus_host_tables.config import parse_device
from incus_host_tables.model import KernelRoute, KernelRule, Route, Rule
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink.monitor import (
    Link,
    Notification,
    NotificationKind,
    decode_notifications,
)
from incus_host_tables.repair import RULES, FightGuard, ManagedDevice, RepairReason, classify

V4 = socket.AF_INET
OURS = 158
BOOT = 3
OWN_PORT = 4242
DEVICE = ManagedDevice(
    "default",
    "c1",
    "eth0",
    "veth1",
    7,
    parse_device({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100"}),
)
DEVICES = {7: DEVICE}


def route(table: int, protocol: int, oif: int = 7, dst: str = "198.51.100.10") -> KernelRoute:
    r = Route(V4, table, ipaddress.ip_address(dst).packed, 32, None, 0)
    return KernelRoute(r, oif, protocol, 253, 1, b"")


def rule(protocol: int) -> KernelRule:
    return KernelRule(Rule(V4, 100, 1100, None, 0, 31), protocol, b"")


ADDED, DELETED = NotificationKind.ROUTE_ADDED, NotificationKind.ROUTE_DELETED


@pytest.mark.parametrize(
    ("note", "expected"),
    [
        pytest.param(
            Notification(DELETED, 999, route=route(100, OURS)),
            (7, RepairReason.ROUTE_DELETED, "route 198.51.100.10/32 dev veth1 table 100 "
             "(protocol incus-host-tables (158)) deleted by netlink port 999"),
            id="ours-deleted-by-someone",
        ),
        pytest.param(
            Notification(ADDED, 31337, route=route(254, BOOT)),
            (7, RepairReason.ROUTE_ADDED, "route 198.51.100.10/32 dev veth1 table 254 "
             "(protocol boot (3)) added by netlink port 31337"),
            id="copy-added-to-main",
        ),
        pytest.param(
            Notification(DELETED, 0, route=route(100, OURS)),
            (7, RepairReason.ROUTE_DELETED, "route 198.51.100.10/32 dev veth1 table 100 "
             "(protocol incus-host-tables (158)) deleted by the kernel"),
            id="deleted-by-the-kernel",
        ),
        pytest.param(Notification(ADDED, OWN_PORT, route=route(100, OURS)), None, id="own-add"),
        pytest.param(Notification(DELETED, OWN_PORT, route=route(254, BOOT)), None, id="own-del"),
        pytest.param(Notification(DELETED, 999, route=route(100, OURS, oif=8)), None,
                     id="another-interface"),
        pytest.param(Notification(ADDED, 0, route=route(255, 2)), None, id="local-table"),
        pytest.param(Notification(ADDED, 0, route=route(254, 2)), None, id="kernel-route"),
        pytest.param(
            Notification(NotificationKind.RULE_DELETED, 999, rule=rule(OURS)),
            (RULES, RepairReason.RULE_CHANGED,
             "rule -4 pref 1100 iif lo lookup 100 suppress_prefixlength 31 deleted by "
             "netlink port 999"),
            id="our-rule-deleted",
        ),
        pytest.param(Notification(NotificationKind.RULE_DELETED, 999, rule=rule(4)), None,
                     id="foreign-rule"),
        pytest.param(Notification(NotificationKind.RULE_ADDED, OWN_PORT, rule=rule(OURS)), None,
                     id="own-rule"),
        pytest.param(
            Notification(NotificationKind.LINK_CHANGED, 0, link=Link(7, c.IFF_UP, "veth1")),
            (7, RepairReason.LINK_FLAP, "interface veth1 went up"),
            id="link-up",
        ),
        pytest.param(
            Notification(NotificationKind.LINK_CHANGED, 0, link=Link(7, 0, "veth1")),
            (7, RepairReason.LINK_FLAP, "interface veth1 went down"),
            id="link-down",
        ),
        pytest.param(Notification(NotificationKind.LINK_CHANGED, 0, link=Link(9, 1, "x")), None,
                     id="unmanaged-link"),
        pytest.param(Notification(NotificationKind.LINK_DELETED, 0, link=Link(7, 0, "veth1")),
                     None, id="link-deleted"),
    ],
)  # fmt: skip
def test_classify(note: Notification, expected: tuple[int, RepairReason, str] | None) -> None:
    found = classify(note, DEVICES, {OWN_PORT})
    if expected is None:
        assert found is None
    else:
        assert found is not None
        index, drift = found
        assert (index, drift.reason, drift.what) == expected


def test_link_state_travels_with_the_drift() -> None:
    up = classify(Notification(NotificationKind.LINK_CHANGED, 0, link=Link(7, 1, "v")), DEVICES, ())
    down = classify(
        Notification(NotificationKind.LINK_CHANGED, 0, link=Link(7, 0, "v")), DEVICES, ()
    )
    assert up is not None and up[1].link_up is True
    assert down is not None and down[1].link_up is False


SAME = frozenset({"+ route 198.51.100.10/32 dev veth1 table 100"})


@pytest.mark.parametrize(
    ("repairs", "expected"),
    [
        pytest.param([(0.0, SAME)], [0.0], id="first-repair-at-once"),
        pytest.param([(0.0, SAME), (0.05, SAME), (0.3, SAME)], [0.0, 0.25, 0.7], id="doubling"),
        pytest.param([(t * 20.0, SAME) for t in range(7)], [t * 20.0 for t in range(7)],
                     id="far-apart-never-gives-up"),
        pytest.param([(t * 0.01, frozenset({f"- route {t}"})) for t in range(10)],
                     [t * 0.01 for t in range(10)], id="new-drift-each-time-is-no-fight"),
        pytest.param([(0.0, SAME), (0.1, SAME), (0.3, SAME), (0.7, SAME), (1.5, SAME), (3.1, SAME)],
                     [0.0, 0.3, 0.7, 1.5, 3.1, None], id="gives-up-after-six"),
        pytest.param([(0.0, SAME), (0.1, SAME | {"x"}), (0.3, frozenset({"y"})), (0.4, SAME)],
                     [0.0, 0.3, 0.3, 0.4], id="a-series-ends-when-nothing-is-redone"),
    ],
)  # fmt: skip
def test_fight_guard(
    repairs: list[tuple[float, frozenset[str]]], expected: list[float | None]
) -> None:
    guard = FightGuard(base=0.1, window=10.0, max_tries=6)
    got = [guard.repaired(t, changes) for t, changes in repairs]
    assert got == pytest.approx(expected)


def test_decode_notifications_reads_kind_sender_and_content() -> None:
    r = Route(V4, 100, ipaddress.ip_address("198.51.100.10").packed, 32, None, 0)
    rl = Rule(V4, 100, 1100, None, 0, 31)
    link_body = c.IFINFOMSG.pack(0, 0, 7, c.IFF_UP, 0) + c._attr(c.IFLA_IFNAME, b"veth1\0")
    buf = b"".join(
        [
            c._pack_hdr(c.HDR + len(b), kind, 0, 0, pid) + b
            for kind, pid, b in (
                (c.RTM_DELROUTE, 999, c.route_body(r, 7, OURS)),
                (c.RTM_NEWRULE, 0, c.rule_body(rl, OURS)),
                (c.RTM_NEWLINK, 0, link_body),
                (c.RTM_DELLINK, 0, link_body),
                (c.NLMSG_DONE, 0, struct.pack("=i", 0)),
            )
        ]
    )
    notes = decode_notifications(buf)
    assert [(n.kind, n.sender) for n in notes] == [
        (NotificationKind.ROUTE_DELETED, 999),
        (NotificationKind.RULE_ADDED, 0),
        (NotificationKind.LINK_CHANGED, 0),
        (NotificationKind.LINK_DELETED, 0),
    ]
    assert notes[0].route is not None and (notes[0].route.route, notes[0].route.oif) == (r, 7)
    assert notes[1].rule is not None and notes[1].rule.rule == rl
    assert notes[2].link == Link(7, c.IFF_UP, "veth1")


def test_sender_process_names_a_running_process_by_its_port() -> None:
    import os
    from pathlib import Path

    from incus_host_tables.repair import sender_process

    pid = os.getpid()
    comm = Path("/proc/self/comm").read_text().strip()
    assert sender_process(pid) == f"netlink port {pid} (likely {comm}, pid {pid})"
    assert sender_process(0) == "the kernel"
    assert sender_process(4_000_000_000) == "netlink port 4000000000"  # not a first socket
