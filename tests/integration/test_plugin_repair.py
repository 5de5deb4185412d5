"""Faults on a real Incus with the daemon running: whatever undoes the
applied state -- a link flap, routes and rules deleted by hand, a copy added
to main, a flush of the plugin's protocol -- ends with every instance route
in exactly its chosen tables, no route missing and no orphan rule (crashes:
test_plugin_faults.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest
from convergence import REPAIR, assert_exact, routed, rules_for

from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration


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
