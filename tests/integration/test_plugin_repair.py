"""Faults on a real Incus with the daemon running: whatever undoes the
applied state -- a link flap, routes and rules deleted by hand, a copy added
to main, a flush of the plugin's protocol, the daemon killed in a start
storm -- ends with every instance route in exactly its chosen tables, no
route missing and no orphan rule."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest

from lab import IncusLab
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration

REPAIR = 5.0  # seconds a repair may take, at most (the bench measures the real figure)


def routed(addr4: str, addr6: str, tables: str) -> dict[str, str]:
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": addr4,
        "ipv6.address": addr6,
        "user.ipv4.host_tables": tables,
        "user.ipv6.host_tables": tables,
    }


def rules_for(tables: set[str]) -> set[tuple[str, str, int]]:
    """The plugin's rules that instances of both families in ``tables`` need:
    the reverse-path table's one rule per family (docs/architecture.md)."""
    return {("4", "1158", -1), ("6", "1158", -1)} if tables - {"main"} else set()


def exact(plug: PluginLab, want: Mapping[str, set[str]], rules: set[tuple[str, str, int]]) -> bool:
    """Every address in exactly its tables (main included only when chosen),
    each route the plugin's, and exactly the rules they need."""
    for addr, tables in want.items():
        entries = plug.entries(addr)
        if {e["table"] for e in entries} != tables or len(entries) != len(tables):
            return False
        if any(str(e.get("protocol")) != "158" for e in entries):
            return False
        if tables - {"main"} and len(plug.rp_entries(addr)) != 1:
            return False  # its one copy in the reverse-path table
    return plug.rules() == rules


def assert_exact(
    plug: PluginLab, want: Mapping[str, set[str]], rules: set[tuple[str, str, int]]
) -> None:
    assert plug.until(lambda: exact(plug, want, rules), REPAIR), (
        {a: plug.entries(a) for a in want},
        plug.rules(),
    )


@pytest.fixture
def instance(plug: PluginLab, daemon: PluginDaemon) -> tuple[str, dict[str, set[str]]]:
    """A running instance in tables 100 and 200, converged; its host interface."""
    a4, a6 = "198.51.100.151", "2001:db8:151::1"
    plug.launch("drep1", devices={"eth0": routed(a4, a6, "100,200")})
    want = {a4: {"100", "200"}, a6: {"100", "200"}}
    assert_exact(plug, want, rules_for({"100", "200"}))
    return plug.host_name("drep1"), want


def test_link_flap_is_repaired(plug: PluginLab, instance: tuple[str, dict[str, set[str]]]) -> None:
    ifname, want = instance
    plug.lab.ns_run("ip", "link", "set", ifname, "down")
    assert plug.until(lambda: plug.entries("198.51.100.151") == [], REPAIR)  # down flushed them
    plug.lab.ns_run("ip", "link", "set", ifname, "up")
    assert_exact(plug, want, rules_for({"100", "200"}))


def test_routes_and_rules_deleted_by_hand_are_repaired(
    plug: PluginLab, instance: tuple[str, dict[str, set[str]]]
) -> None:
    ifname, want = instance
    plug.lab.ns_run("ip", "route", "del", "198.51.100.151", "dev", ifname, "table", "100")
    plug.lab.ns_run("ip", "-6", "route", "del", "2001:db8:151::1", "dev", ifname, "table", "200")
    assert_exact(plug, want, rules_for({"100", "200"}))
    plug.lab.ns_run("ip", "rule", "del", "pref", "1100", "lookup", "1158")
    plug.lab.ns_run("ip", "-6", "rule", "del", "pref", "1100", "lookup", "1158")
    assert_exact(plug, want, rules_for({"100", "200"}))


def test_route_added_to_main_by_hand_is_removed(
    plug: PluginLab, instance: tuple[str, dict[str, set[str]]]
) -> None:
    ifname, want = instance
    # As Incus itself and `ip route add` make it: protocol boot, in main.
    plug.lab.ns_run("ip", "route", "add", "198.51.100.151", "dev", ifname)
    plug.lab.ns_run("ip", "-6", "route", "add", "2001:db8:151::1", "dev", ifname)
    assert_exact(plug, want, rules_for({"100", "200"}))


def test_flush_of_protocol_158_is_restored(
    plug: PluginLab, instance: tuple[str, dict[str, set[str]]]
) -> None:
    _, want = instance
    plug.lab.ns_run("ip", "route", "flush", "table", "all", "proto", "158")
    plug.lab.ns_run("ip", "-6", "route", "flush", "table", "all", "proto", "158")
    assert_exact(plug, want, rules_for({"100", "200"}))
    status = plug.cli("status", "drep1", "--format", "json")
    assert '"state": "ok"' in status.stdout, status.stdout


def test_status_and_metrics_report_the_repairs(
    plug: PluginLab, instance: tuple[str, dict[str, set[str]]]
) -> None:
    ifname, want = instance
    before = plug.cli("metrics")
    assert before.returncode == 0, before.stderr
    plug.lab.ns_run("ip", "route", "del", "198.51.100.151", "dev", ifname, "table", "100")
    assert_exact(plug, want, rules_for({"100", "200"}))

    def value(text: str, series: str) -> float:
        for line in text.splitlines():
            if line.startswith(series + " "):
                return float(line.split()[-1])
        raise AssertionError(f"no {series} in:\n{text}")

    deleted = 'incus_host_tables_repairs_total{reason="route-deleted"}'
    after = plug.cli("metrics")
    assert value(after.stdout, deleted) == value(before.stdout, deleted) + 1
    assert value(after.stdout, "incus_host_tables_managed_instances") >= 1
    assert value(after.stdout, "incus_host_tables_last_event_timestamp_seconds") > 0


STORM = 8  # containers started at once (the machine has 2 cores for everyone)


def test_daemon_killed_during_a_start_storm_converges_after_restart(
    plug: PluginLab, daemon: PluginDaemon, lab: IncusLab
) -> None:
    names = [f"dstorm{i}" for i in range(STORM)]
    want: dict[str, set[str]] = {}
    for i, name in enumerate(names):
        table = str(100 + i % 3)
        a4, a6 = f"198.51.100.{160 + i}", f"2001:db8:{160 + i}::1"
        plug.defer(lambda n=name: lab.incus("delete", "--force", n, check=False))
        lab.launch(name, devices={"eth0": routed(a4, a6, table)}, start=False)
        want[a4] = want[a6] = {table}
    starts = [
        subprocess.Popen(
            ["incus", "start", name],
            env=lab.env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for name in names
    ]
    try:
        # Partway through the storm: some started and synced, some not yet.
        plug.until(lambda: any(plug.entries(a) for a in want), 30)
        os.kill(daemon.pid, signal.SIGKILL)
    finally:
        for proc in starts:
            proc.wait(timeout=120)
    daemon.stop()  # reaps it and closes its log
    # While the daemon is away Incus leaves its copies in main.
    restarted = time.monotonic()
    daemon.start()
    rules = rules_for({"100", "101", "102"})
    remaining = max(restarted + 2.0 - time.monotonic(), 0.0)
    assert plug.until(lambda: exact(plug, want, rules), remaining), (
        f"not converged 2 s after the restart ({time.monotonic() - restarted:.2f} s)",
        {a: plug.entries(a) for a in want},
        plug.rules(),
    )
