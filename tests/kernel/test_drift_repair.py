"""Drift repair against the real kernel: the repairer (the daemon's code)
subscribed to a namespace's notifications puts back what others undo, and
gives up -- reported -- on something that keeps undoing it."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from incus_host_tables import problems
from incus_host_tables.engine import Engine
from incus_host_tables.netlink.kernel import Change, Netlink
from incus_host_tables.netlink.monitor import Monitor, NotificationKind
from incus_host_tables.repair import FightGuard, ManagedDevice, Repairer, RepairReason
from lab.netns import NetNS, inside

from .helpers import cli_argv, intent, run_cli

pytestmark = pytest.mark.kernel

V4 = "198.51.100.10"
V6 = "2001:db8::10"
CONFIG = {
    "ipv4.address": V4,
    "ipv6.address": V6,
    "user.ipv4.host_tables": "100",
    "user.ipv6.host_tables": "100",
}


def until(check: Callable[[], bool], what: str, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.01)


def converged(host: NetNS) -> bool:
    """Exactly the desired state: the routes in table 100 (and their copies in
    the reverse-path table 1158) only, with its one rule per family."""
    return (
        host.route_lines("table", "100", V4) == [f"{V4} dev vh0 proto 158 scope link"]
        and host.route_lines("table", "100", V6, v6=True)
        == [f"{V6} dev vh0 proto 158 metric 1024 pref medium"]
        and host.route_lines("table", "main", V4) == []
        and host.route_lines("table", "main", V6, v6=True) == []
        # table 100 and the reverse-path table: nowhere else
        and len(host.route_lines("proto", "158")) == 2
        and len(host.route_lines("proto", "158", v6=True)) == 2
        and len(host.route_lines("table", "1158", V4)) == 1
        and all(
            [line for line in host.rule_lines(v6) if "proto 158" in line]
            == ["1100:\tfrom all iif lo lookup 1158 proto 158"]
            for v6 in (False, True)
        )
    )


@contextmanager
def repairing(host: NetNS, keys: dict[str, str], **options: Any) -> Iterator[Repairer]:
    """A repairer (rule priority 1100, ``options``) subscribed to ``host``'s
    notifications, managing vh0 as c1's eth0 with ``keys``; stopped at the end."""
    repairer = Repairer(rule_priority=1100, **options)
    with inside(host.name):
        repairer.start()
    try:
        device = ManagedDevice("default", "c1", "eth0", "vh0", host.ifindex("vh0"), intent(keys))
        repairer.manage("default", "c1", [device])
        yield repairer
    finally:
        repairer.stop()


@pytest.fixture
def repairer(host: NetNS, make_engine: Callable[..., Engine]) -> Iterator[Repairer]:
    make_engine(host).converge("vh0", intent(CONFIG))
    assert converged(host)
    with repairing(host, CONFIG, resync_interval=3600, guard=lambda: FightGuard()) as repairer:
        yield repairer


def repairs(repairer: Repairer, reason: str) -> float:
    value = repairer.metrics.registry.get_sample_value(
        "incus_host_tables_repairs_total", {"reason": reason}
    )
    return value or 0.0


def test_route_deleted_by_hand_is_put_back(host: NetNS, repairer: Repairer) -> None:
    host.ip("route", "del", V4, "dev", "vh0", "table", "100")
    until(lambda: converged(host), "route put back")
    time.sleep(0.2)  # the echo of its own repair must not count as drift
    assert repairer.repairs == 1
    assert repairs(repairer, "route-deleted") == 1


def test_copy_added_to_main_is_removed(host: NetNS, repairer: Repairer) -> None:
    host.ip("route", "add", V4, "dev", "vh0")  # what Incus and `ip route add` do: proto boot
    until(lambda: converged(host), "main copy removed")
    assert repairs(repairer, "route-added") == 1


def test_copy_added_to_a_table_not_chosen_is_removed(host: NetNS, repairer: Repairer) -> None:
    host.ip("-6", "route", "add", V6, "dev", "vh0", "table", "300")
    until(lambda: converged(host), "table 300 copy removed")
    assert host.route_lines("table", "300", v6=True) == []


def test_link_flap_is_repaired(host: NetNS, repairer: Repairer) -> None:
    host.ip("link", "set", "vh0", "down")
    until(lambda: host.route_lines("table", "100", V4) == [], "down flushes the IPv4 route")
    host.ip("link", "set", "vh0", "up")
    until(lambda: converged(host), "routes back after the flap")
    assert repairs(repairer, "link-flap") >= 1


def test_flush_of_protocol_158_is_restored(host: NetNS, repairer: Repairer) -> None:
    host.ip("route", "flush", "table", "all", "proto", "158")
    host.ip("-6", "route", "flush", "table", "all", "proto", "158")
    until(lambda: converged(host), "every route restored")


def test_rules_deleted_by_hand_are_restored(host: NetNS, repairer: Repairer) -> None:
    for fam in ("-4", "-6"):
        host.ip(fam, "rule", "del", "pref", "1100")
    until(lambda: converged(host), "rules restored")
    assert repairs(repairer, "rule-changed") >= 1


def test_what_is_not_ours_is_left_alone(host: NetNS, repairer: Repairer) -> None:
    # Another protocol's route on the instance's interface for another prefix,
    # and a foreign rule: neither drift nor ours to touch.
    host.ip("route", "add", "203.0.113.5", "dev", "vh0", "table", "100", "proto", "static")
    host.ip("rule", "add", "pref", "1100", "iif", "lo", "lookup", "400", "proto", "static")
    time.sleep(0.3)
    assert host.route_lines("table", "100", "203.0.113.5") == [
        "203.0.113.5 dev vh0 proto static scope link"
    ]
    assert any("lookup 400 proto static" in line for line in host.rule_lines())
    assert converged(host)
    assert repairer.repairs == 0


def test_something_that_keeps_undoing_the_repair_is_not_fought(
    host: NetNS, repairer: Repairer
) -> None:
    # An adversary deletes the route whenever it is back, for a bounded time.
    deadline = time.monotonic() + 8.0
    deletions = 0
    while time.monotonic() < deadline and not repairer.parked():
        if host.route_lines("table", "100", V4):
            host.ip("route", "del", V4, "dev", "vh0", "table", "100")
            deletions += 1
        time.sleep(0.01)
    parked = repairer.parked()
    assert list(parked) == ["default/c1 device eth0 (vh0)"]
    assert repairer.repairs == 6
    record = problems.read("default", "c1")
    assert record is not None and record["source"] == "drift repair"
    message = str(record["message"])
    assert "given up after 6 repairs, each undone again within 10 s" in message
    assert (
        f"route {V4}/32 dev vh0 table 100 (protocol incus-host-tables (158)) deleted by" in message
    )
    # Left alone from now on: whatever undoes the sixth repair (the
    # adversary may have already) is no longer repaired.
    host.ip("route", "del", V4, "dev", "vh0", "table", "100", check=False)
    time.sleep(0.5)
    assert repairer.repairs == 6
    assert host.route_lines("table", "100", V4) == []
    assert (
        repairer.metrics.registry.get_sample_value("incus_host_tables_repairs_abandoned_total") == 1
    )
    assert deletions in (6, 7)  # the sixth repair may have been undone before it gave up


def test_periodic_resync_repairs_what_no_notification_told(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """A resync repairs drift it was never notified of (here: a change made
    before the repairer subscribed)."""
    make_engine(host).converge("vh0", intent(CONFIG))
    host.ip("route", "del", V4, "dev", "vh0", "table", "100")
    with repairing(host, CONFIG, resync_interval=1) as repairer:
        until(lambda: converged(host), "resync repaired it", timeout=5)
        assert repairs(repairer, "resync") == 1


def test_a_burst_is_one_converge(host: NetNS, repairer: Repairer) -> None:
    """Four of the instance's routes deleted in one request batch (as a
    flush does): one repair puts all four back."""
    with inside(host.name):
        offender = Netlink()  # not the repairer's: its changes are drift
    try:
        ours = [kr for kr in offender.link_routes(host.ifindex("vh0")) if kr.protocol == 158]
        assert len(ours) == 4  # two in table 100, their copies in the reverse-path table
        offender.apply([Change("del-route", kr) for kr in ours], 0)
    finally:
        offender.close()
    until(lambda: converged(host), "all put back")
    time.sleep(0.2)
    assert repairer.repairs == 1


def test_a_slow_flush_is_no_fight(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    """Routes deleted one after another (a routing manager removing what it
    does not know): each deletion is new drift, repaired, never given up."""
    many = {
        "ipv4.address": ",".join(f"198.51.100.{i}" for i in range(10, 20)),
        "user.ipv4.host_tables": "100",
    }
    make_engine(host).converge("vh0", intent(many))
    with repairing(host, many, resync_interval=3600) as repairer:
        for i in range(10, 20):
            host.ip("route", "del", f"198.51.100.{i}", "dev", "vh0", "table", "100")
            time.sleep(0.03)
        until(lambda: len(host.route_lines("table", "100", "proto", "158")) == 10, "all back")
        assert repairer.parked() == {}
        assert repairer.repairs >= 2  # spread over time: more than one converge
        assert problems.read("default", "c1") is None


def test_lost_notifications_trigger_a_full_resync(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """A notification socket too small for a flood of foreign changes
    overflows (ENOBUFS): the resync that follows repairs the route whose
    deletion notice was lost in the flood."""
    make_engine(host).converge("vh0", intent(CONFIG))
    host.add_veth("vf0", "vf1")
    with repairing(host, CONFIG, resync_interval=3600, notification_buffer=4096) as repairer:
        flood = [f"route add 10.1.{i >> 8}.{i & 255}/32 dev vf0" for i in range(3000)]
        host.batch([*flood[:1500], f"route del {V4} dev vh0 table 100", *flood[1500:]])
        until(lambda: converged(host), "resync repaired it")
        resyncs = repairer.metrics.registry.get_sample_value(
            "incus_host_tables_resyncs_total", {"trigger": "overflow"}
        )
        assert resyncs is not None and resyncs >= 1


def test_rules_fought_over_wait_for_the_next_resync(host: NetNS, repairer: Repairer) -> None:
    deadline = time.monotonic() + 8.0
    while time.monotonic() < deadline and "rules" not in repairer.parked():
        if any("proto 158" in line for line in host.rule_lines()):
            host.ip("rule", "del", "pref", "1100", "lookup", "1158")
        time.sleep(0.01)
    assert "rules" in repairer.parked()
    assert repairer.repairs == 6
    # Whatever undoes the sixth repair (the adversary may have already) is left alone.
    host.ip("rule", "del", "pref", "1100", "lookup", "1158", check=False)
    time.sleep(0.3)
    assert not any("proto 158" in line for line in host.rule_lines())
    assert repairer.repairs == 6
    repairer.request_resync(RepairReason.RESYNC)  # what the next periodic resync does
    until(lambda: converged(host), "the resync put the rule back")
    assert repairer.parked() == {}


ALL_BIG = 16_000  # with the 4,000 copies in the reverse-path table
BIG = {  # 12,000 routes: 4,000 addresses in three tables
    "ipv4.address": ",".join(f"198.18.{i >> 8}.{i & 255}" for i in range(1, 4001)),
    "user.ipv4.host_tables": "100,200,250",
}


def kill_apply_after(host: NetNS, routes_seen: int) -> int:
    """Start `device apply` of BIG, SIGKILL it once the kernel announced
    ``routes_seen`` new routes; how many of the plugin's routes it made."""
    with inside(host.name):
        watcher = Monitor()
    try:
        argv = ["ip", "netns", "exec", host.name, *cli_argv("apply", "vh0", BIG)]
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = 0
        deadline = time.monotonic() + 30
        while seen < routes_seen and time.monotonic() < deadline:
            seen += sum(n.kind is NotificationKind.ROUTE_ADDED for n in watcher.read(timeout=1))
        proc.kill()
        proc.wait(timeout=10)
    finally:
        watcher.close()
    return len(host.route_lines("proto", "158"))


@pytest.mark.parametrize(
    ("routes_seen", "managed"),
    [
        pytest.param(1, BIG, id="early-same-config"),
        pytest.param(50, BIG, id="later-same-config"),
        pytest.param(1, CONFIG, id="early-config-changed"),
        pytest.param(50, CONFIG, id="later-config-changed"),
    ],
)
def test_a_killed_apply_is_made_exact_by_the_resync(
    host: NetNS, routes_seen: int, managed: dict[str, str]
) -> None:
    """`device apply` of 12,000 routes killed (SIGKILL) once the kernel has
    made ``routes_seen`` of them, then the daemon's resync with the config it
    knows: exactly its routes, exactly the rules they need -- none left for
    the tables of the killed apply."""
    for _attempt in range(3):  # a busy machine may let the apply finish first: again
        made = kill_apply_after(host, routes_seen)
        if made < ALL_BIG:
            break
        assert run_cli(host, "cleanup", "vh0", BIG).returncode == 0
    assert routes_seen <= made < ALL_BIG, f"killed after {made} routes: not partway"

    with repairing(host, managed, resync_interval=3600) as repairer:
        repairer.request_resync(RepairReason.RESYNC)
        if managed is CONFIG:
            until(lambda: converged(host), "exactly the managed config", timeout=30)
        else:

            def exact() -> bool:
                routes = host.route_lines("proto", "158")
                rules = [line for line in host.rule_lines() if "proto 158" in line]
                return len(routes) == ALL_BIG and len(rules) == 1

            until(exact, "all 16,000 routes and the one rule", timeout=30)
            lines = host.route_lines("proto", "158")
            assert {line.split(" table ")[1].split()[0] for line in lines} == {
                "100",
                "200",
                "250",
                "1158",
            }
