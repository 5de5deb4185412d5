"""The plugin's daemon on a real two-member Incus cluster: each member's daemon
acts only on the instances located on its own member (routes, rules, status,
events), and leaves the other member's instances alone."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from lab import until as lab_until
from lab.cluster import ClusterMember, IncusCluster
from lab.plugin import PluginDaemon, run_cli

pytestmark = pytest.mark.integration

CONVERGE = 5.0  # seconds a daemon gets to act on an event
PLUGIN_PROTO = "158"


@pytest.fixture(scope="module")
def cluster() -> Iterator[IncusCluster]:
    with IncusCluster("ihc") as c:
        yield c


@pytest.fixture(scope="module")
def daemons(cluster: IncusCluster) -> Iterator[dict[str, PluginDaemon]]:
    """One `incus-host-tables watch` per member, in its namespace, with its
    own run dir."""
    started: dict[str, PluginDaemon] = {}
    try:
        for name, member in cluster.members.items():
            run_dir = os.path.join(member.workdir, "plugin-run")
            os.mkdir(run_dir, 0o700)
            d = PluginDaemon(member, run_dir)
            d.start()
            started[name] = d
        yield started
    finally:
        for d in started.values():
            d.stop()


def routed(addr4: str, tables: str) -> dict[str, str]:
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": addr4,
        "user.ipv4.host_tables": tables,
    }


def until(check: Callable[[], bool], timeout: float = CONVERGE) -> bool:
    return lab_until(check, timeout)


RP_TABLE = "1158"  # the plugin's reverse-path table
RP_RULE = (RP_TABLE, "None")  # its rule, as rules() reports it


def entries(m: ClusterMember, addr: str) -> list[dict[str, Any]]:
    """The member's routes to exactly ``addr``, the reverse-path table aside."""
    return [r for r in m.route_entries(addr) if r["table"] != RP_TABLE]


def rp_entries(m: ClusterMember, addr: str) -> list[dict[str, Any]]:
    return [r for r in m.route_entries(addr) if r["table"] == RP_TABLE]


def rules(m: ClusterMember) -> set[tuple[str, str]]:
    """The plugin's IPv4 rules in the member's namespace: (table, suppress)."""
    out = m.ns_run("ip", "-j", "-4", "rule", "show").stdout
    return {
        (str(r.get("table")), str(r.get("suppress_prefixlen")))
        for r in json.loads(out or "[]")
        if str(r.get("protocol")) == PLUGIN_PROTO
    }


def status(m: ClusterMember, d: PluginDaemon, name: str) -> list[dict[str, Any]]:
    out = run_cli(m, d.run_dir, "status", "--all-projects", "--format", "json")
    assert out.returncode in (0, 1), out.stderr
    return [r for r in json.loads(out.stdout or "[]") if r["instance"] == name]


def mentions(d: PluginDaemon, name: str) -> list[str]:
    return [line for line in d.log().splitlines() if name in line]


def only_in_table(m: ClusterMember, addr: str, table: str) -> bool:
    found = entries(m, addr)
    return [e["table"] for e in found] == [table] and all(
        str(e.get("protocol")) == PLUGIN_PROTO for e in found
    )


@pytest.fixture
def instances(cluster: IncusCluster) -> Iterator[Callable[[str, str, str, str], str]]:
    made: list[tuple[str, str]] = []

    def launch(name: str, target: str, addr: str, tables: str) -> str:
        made.append((name, target))
        cluster.launch(name, target, devices={"eth0": routed(addr, tables)})
        return name

    yield launch
    for name, target in made:
        cluster.incus(target, "delete", "--force", name, check=False)


def test_cluster_is_up(cluster: IncusCluster, daemons: dict[str, PluginDaemon]) -> None:
    assert cluster.cluster_members() == {"m1": "Online", "m2": "Online"}
    for d in daemons.values():
        assert "reconciled 0 instances" in d.log(), d.log()


@pytest.mark.parametrize(
    ("name", "here", "there", "addr", "table"),
    [
        ("c-m2", "m2", "m1", "198.51.100.150", "100"),
        ("c-m1", "m1", "m2", "198.51.100.151", "200"),
    ],
)
def test_only_the_local_daemon_acts(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
    name: str,
    here: str,
    there: str,
    addr: str,
    table: str,
) -> None:
    instances(name, here, addr, table)
    assert cluster.location(name) == here
    local, remote = cluster[here], cluster[there]

    assert until(lambda: only_in_table(local, addr, table)), entries(local, addr)
    assert until(lambda: rules(local) == {RP_RULE}), rules(local)
    assert len(rp_entries(local, addr)) == 1, rp_entries(local, addr)
    rows = status(local, daemons[here], name)
    assert [r["state"] for r in rows] == ["ok"], rows

    # The other member: nothing for it, and no attempt at it -- by a daemon
    # that is alive and watching (it acts on its own member's instances in
    # the other parametrization and in test_stop_event_reaches_only_its_member).
    assert daemons[there].running, daemons[there].log()
    assert entries(remote, addr) == rp_entries(remote, addr) == []
    assert rules(remote) == set(), rules(remote)
    assert status(remote, daemons[there], name) == []
    assert mentions(daemons[there], name) == [], daemons[there].log()
    assert "isolating" not in daemons[there].log()


def test_stop_event_reaches_only_its_member(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
) -> None:
    a2, a1 = "198.51.100.152", "198.51.100.153"
    instances("c-ev2", "m2", a2, "100")
    instances("c-ev1", "m1", a1, "200")
    m1, m2 = cluster["m1"], cluster["m2"]
    assert until(lambda: only_in_table(m2, a2, "100") and rules(m2) == {RP_RULE})
    assert until(lambda: only_in_table(m1, a1, "200") and rules(m1) == {RP_RULE})
    m1_log = daemons["m1"].log()

    # Asked through m1: the event still comes from m2 (location m2).
    cluster.incus("m1", "stop", "--force", "c-ev2")
    assert until(lambda: rules(m2) == set()), rules(m2)
    assert entries(m2, a2) == []
    assert [r["state"] for r in status(m2, daemons["m2"], "c-ev2")] == ["stopped"]

    # m1 unaffected: its own instance's route and rule stay, nothing logged.
    time.sleep(0.5)  # give a wrongly acting m1 daemon the chance to show it
    assert only_in_table(m1, a1, "200"), entries(m1, a1)
    assert rules(m1) == {RP_RULE}, rules(m1)
    assert entries(m1, a2) == []
    assert daemons["m1"].log()[len(m1_log) :].count("c-ev2") == 0, daemons["m1"].log()


# --------------------------------------------------------------------------
# The cluster's life cycle: moves, evacuation, a daemon that was away, and
# another member's event storm. Each step must converge within CONVERGED
# seconds of the Incus command returning; the times are printed (pytest -s)
# for docs/cluster.md.

CONVERGED = 2.0


def converge_time(check: Callable[[], bool], timeout: float = CONVERGED) -> float:
    """Seconds until ``check`` holds (polled every 10 ms); inf if it never did."""
    t0 = time.monotonic()
    if lab_until(check, timeout, interval=0.01):
        return time.monotonic() - t0
    return float("inf")


def record(what: str, seconds: float) -> None:
    print(f"\nconvergence {what}: {seconds:.3f} s")


def plugin_state(m: ClusterMember) -> list[str]:
    """Every protocol-158 route and rule in the member's namespace."""
    found = []
    for fam in ("-4", "-6"):
        for what in (("route", "show", "table", "all"), ("rule", "show")):
            out = m.ns_run("ip", "-j", fam, *what).stdout
            found += [
                json.dumps(item, sort_keys=True)
                for item in json.loads(out or "[]")
                if str(item.get("protocol")) == "158"
            ]
    return found


def nothing_left(m: ClusterMember, *addrs: str) -> bool:
    """No route to any of ``addrs`` in any table, and nothing of the plugin's."""
    return all(entries(m, a) == [] for a in addrs) and plugin_state(m) == []


def only_ours_in(m: ClusterMember, tables: set[str], *addrs: str) -> bool:
    for addr in addrs:
        found = entries(m, addr)
        if {e["table"] for e in found} != tables:
            return False
        if any(str(e.get("protocol")) != PLUGIN_PROTO for e in found):
            return False
    return True


@pytest.fixture(scope="module")
def clients(cluster: IncusCluster) -> Iterator[dict[str, Any]]:
    """Per member: a table-100 client (table 100 strict, as a VRF's: the
    plugin's reverse-path table keeps the member's own traffic, the cluster
    database's included, out of it) and a main client."""
    made: dict[str, Any] = {}
    try:
        for i, (name, m) in enumerate(cluster.members.items()):
            made[f"{name}-t100"] = m.add_client(
                "ct100", table=100, v4=f"198.18.{40 + i}.2/28", v6=f"2001:db8:e4{i}::2/64"
            )
            made[f"{name}-main"] = m.add_client(
                "cmain", table=None, v4=f"198.18.{42 + i}.2/28", v6=f"2001:db8:e6{i}::2/64"
            )
        yield made
    finally:
        for key, c in made.items():
            cluster[key.split("-")[0]].remove_client(c)


def reachable_from(clients: dict[str, Any], *addrs: str) -> set[str]:
    return {label for label, c in clients.items() if all(c.ping_within(a, 2) for a in addrs)}


def test_move_of_a_stopped_instance_converges_on_the_new_member(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
    clients: dict[str, Any],
) -> None:
    a4, a6 = "198.51.100.160", "2001:db8:160::1"
    m1, m2 = cluster["m1"], cluster["m2"]
    name = "c-mv"
    instances(name, "m1", a4, "100")
    # Dual-stack: the keys of a stopped instance count at its next start.
    cluster.incus("m1", "stop", "--force", name)
    cluster.incus("m1", "config", "device", "set", name, "eth0", f"ipv6.address={a6}")
    cluster.incus("m1", "config", "device", "set", name, "eth0", "user.ipv6.host_tables=100")
    cluster.incus("m1", "start", name)
    assert until(lambda: only_ours_in(m1, {"100"}, a4, a6)), (entries(m1, a4), entries(m1, a6))

    cluster.incus("m1", "stop", "--force", name)
    assert until(lambda: nothing_left(m1, a4, a6)), plugin_state(m1)
    cluster.incus("m1", "move", name, "--target", "m2")
    assert cluster.location(name) == "m2"
    cluster.incus("m1", "start", name)
    took = converge_time(lambda: only_ours_in(m2, {"100"}, a4, a6))
    record("move + start on m2", took)
    assert took <= CONVERGED, (entries(m2, a4), entries(m2, a6))
    assert nothing_left(m1, a4, a6), plugin_state(m1)
    assert reachable_from(clients, a4) == {"m2-t100"}
    assert reachable_from(clients, a6) == {"m2-t100"}


def test_evacuate_and_restore(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
    clients: dict[str, Any],
) -> None:
    m1, m2 = cluster["m1"], cluster["m2"]
    moving = {"c-evac1": ("198.51.100.161", "100"), "c-evac2": ("198.51.100.162", "100,200")}
    staying = ("c-stay2", "198.51.100.163", "100")
    for name, (addr, tables) in moving.items():
        instances(name, "m1", addr, tables)
    instances(staying[0], "m2", staying[1], staying[2])

    def on(m: ClusterMember) -> bool:
        return all(
            only_ours_in(m, set(tables.split(",")), addr) for addr, tables in moving.values()
        )

    assert until(lambda: on(m1) and only_ours_in(m2, {"100"}, staying[1]))
    addrs = [addr for addr, _ in moving.values()]
    m2_before = sorted(plugin_state(m2))

    cluster.incus("m1", "cluster", "evacuate", "m1", "--action", "migrate", "--force", timeout=180)
    assert {cluster.location(n) for n in moving} == {"m2"}
    took = converge_time(lambda: on(m2))
    record("evacuate m1 (2 instances to m2)", took)
    assert took <= CONVERGED, [entries(m2, a) for a in addrs]
    assert nothing_left(m1, *addrs), plugin_state(m1)
    assert reachable_from(clients, addrs[0]) == {"m2-t100"}

    cluster.incus("m1", "cluster", "restore", "m1", "--force", timeout=180)
    assert {cluster.location(n) for n in moving} == {"m1"}
    took = converge_time(lambda: on(m1))
    record("restore m1 (2 instances back)", took)
    assert took <= CONVERGED, [entries(m1, a) for a in addrs]
    # m2 is back to what it held before: only the instance that stayed.
    assert until(lambda: sorted(plugin_state(m2)) == m2_before), plugin_state(m2)
    assert all(entries(m2, a) == [] for a in addrs)
    assert only_ours_in(m2, {"100"}, staying[1])
    assert reachable_from(clients, addrs[0]) == {"m1-t100"}


def test_daemon_away_while_its_instance_changes_resyncs(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
) -> None:
    m2 = cluster["m2"]
    addr, name = "198.51.100.164", "c-away"
    instances(name, "m2", addr, "100")
    assert until(lambda: only_ours_in(m2, {"100"}, addr))

    d = daemons["m2"]
    d.stop()
    try:
        cluster.incus("m1", "stop", "--force", name)
        cluster.incus("m1", "config", "device", "set", name, "eth0", "user.ipv4.host_tables=200")
        cluster.incus("m1", "start", name)
        # Nobody watching on m2: Incus alone puts the route in main.
        assert {e["table"] for e in entries(m2, addr)} == {"main"}
    finally:
        t0 = time.monotonic()
        d.start()
    took = converge_time(lambda: only_ours_in(m2, {"200"}, addr))
    record("m2 daemon restart (resync)", time.monotonic() - t0)
    assert took <= CONVERGED, entries(m2, addr)
    assert "reconciled 1 instances" in d.log(), d.log()


def routes_not_kernel(m: ClusterMember) -> list[str]:
    """The member's routes, every table, but the kernel's own (link-local
    addresses may still come up while the test runs)."""
    return [line for line in m.routes().splitlines() if "proto kernel" not in line]


def test_events_about_m1_instances_leave_m2_untouched(
    cluster: IncusCluster,
    daemons: dict[str, PluginDaemon],
    instances: Callable[[str, str, str, str], str],
) -> None:
    m1, m2 = cluster["m1"], cluster["m2"]
    addr = "198.51.100.165"
    m2_routes = routes_not_kernel(m2)
    m2_rules = [m2.ns_run("ip", fam, "rule", "show").stdout for fam in ("-4", "-6")]
    m2_log = len(daemons["m2"].log())

    # Every kind of lifecycle event, all about an instance on m1, some asked
    # through m2's API.
    instances("c-storm", "m1", addr, "100")
    assert until(lambda: only_ours_in(m1, {"100"}, addr))
    cluster.incus("m2", "config", "device", "set", "c-storm", "eth0", "user.ipv4.host_tables=200")
    cluster.incus("m2", "restart", "--force", "c-storm")
    assert until(lambda: only_ours_in(m1, {"200"}, addr))
    cluster.incus("m2", "stop", "--force", "c-storm")
    cluster.incus("m2", "delete", "c-storm")
    assert until(lambda: nothing_left(m1, addr)), plugin_state(m1)

    time.sleep(0.5)  # give a wrongly acting m2 daemon the chance to show it
    assert routes_not_kernel(m2) == m2_routes
    assert [m2.ns_run("ip", fam, "rule", "show").stdout for fam in ("-4", "-6")] == m2_rules
    assert "c-storm" not in daemons["m2"].log()[m2_log:], daemons["m2"].log()
