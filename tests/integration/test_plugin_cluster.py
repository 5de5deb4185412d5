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


def entries(m: ClusterMember, addr: str) -> list[dict[str, Any]]:
    return m.route_entries(addr)


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
    assert until(lambda: (table, "31") in rules(local)), rules(local)
    rows = status(local, daemons[here], name)
    assert [r["state"] for r in rows] == ["ok"], rows

    # The other member: nothing for it, and no attempt at it -- by a daemon
    # that is alive and watching (it acts on its own member's instances in
    # the other parametrization and in test_stop_event_reaches_only_its_member).
    assert daemons[there].running, daemons[there].log()
    assert entries(remote, addr) == []
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
    assert until(lambda: only_in_table(m2, a2, "100") and ("100", "31") in rules(m2))
    assert until(lambda: only_in_table(m1, a1, "200") and ("200", "31") in rules(m1))
    m1_log = daemons["m1"].log()

    # Asked through m1: the event still comes from m2 (location m2).
    cluster.incus("m1", "stop", "--force", "c-ev2")
    assert until(lambda: rules(m2) == set()), rules(m2)
    assert entries(m2, a2) == []
    assert [r["state"] for r in status(m2, daemons["m2"], "c-ev2")] == ["stopped"]

    # m1 unaffected: its own instance's route and rule stay, nothing logged.
    time.sleep(0.5)  # give a wrongly acting m1 daemon the chance to show it
    assert only_in_table(m1, a1, "200"), entries(m1, a1)
    assert rules(m1) == {("200", "31")}, rules(m1)
    assert entries(m1, a2) == []
    assert daemons["m1"].log()[len(m1_log) :].count("c-ev2") == 0, daemons["m1"].log()
