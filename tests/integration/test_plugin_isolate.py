"""Isolation with real packets (docs/configuration.md, "The reverse-path
table"; docs/incus-behaviour.md, "The reverse-path trap"): each table choice
reaches exactly the clients of the routing domains it names, with strict
(VRF-style) tables too, the host's own traffic still goes by main, and an
instance whose config turns invalid is removed from every
table."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from plugin_checks import assert_reach, domain_clients

from lab import Client, IncusLab
from lab.image import find_static_busybox
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clients(lab: IncusLab) -> Iterator[dict[str, Client]]:
    """One client per routing domain; table clients are strict (VRF-like)."""
    with domain_clients(lab, "i", 20) as made:
        # A client that reaches nothing would pass every "must not reach":
        # each one first reaches its gateway in H, in both families.
        for label, c in made.items():
            assert c.ping_within(c.gateway4, 5), f"{label}: no IPv4 link to H"
            assert c.ping_within(c.gateway6, 5), f"{label}: no IPv6 link to H"
        yield made


def routed(tables: str, a4: str, a6: str | None = None) -> dict[str, str]:
    """A routed NIC with its addresses in ``tables``."""
    nic = {"type": "nic", "nictype": "routed", "name": "eth0", "ipv4.address": a4,
           "user.ipv4.host_tables": tables}  # fmt: skip
    if a6 is not None:
        nic |= {"ipv6.address": a6, "user.ipv6.host_tables": tables}
    return nic


@pytest.mark.parametrize(
    ("n", "tables", "reach"),
    [
        (171, "100", {"t100"}),
        (172, "100,200", {"t100", "t200"}),
        (173, "254,100", {"main", "t100"}),
        (175, "200", {"t200"}),
        (176, "254", {"main"}),
    ],
    ids=["t100", "t100+t200", "main+t100", "t200", "main"],
)
def test_reachability_matrix(
    plug: PluginLab,
    daemon: PluginDaemon,
    clients: dict[str, Client],
    n: int,
    tables: str,
    reach: set[str],
) -> None:
    a4, a6 = f"198.51.100.{n}", f"2001:db8:{n}::1"
    plug.launch(f"iso{n}", devices={"eth0": routed(tables, a4, a6)})
    want = {"main" if t == "254" else t for t in tables.split(",")}
    assert plug.until(lambda: plug.tables(a4) == want and plug.tables(a6) == want), (
        plug.entries(a4),
        plug.entries(a6),
    )
    # A table other than main: one copy in the reverse-path table, and its rule.
    copies = 0 if want == {"main"} else 1
    assert len(plug.rp_entries(a4)) == len(plug.rp_entries(a6)) == copies
    assert plug.rules() == (plug.RP_RULES if copies else set())
    assert_reach(clients, (a4, a6), reach)


def host_pings(plug: PluginLab, addr: str) -> bool:
    """H's own traffic (input interface lo) reaches ``addr``."""
    family = "-6" if ":" in addr else "-4"
    ping = [find_static_busybox(), "ping", family, "-q", "-c", "1", "-W", "1", addr]
    proc = plug.lab.ns_run(*ping, check=False, timeout=10)
    return proc.returncode == 0


def test_strict_tables_each_instance_in_one_domain(
    plug: PluginLab, daemon: PluginDaemon, clients: dict[str, Client]
) -> None:
    """One instance only in table 100, another only in 200, both strict
    tables: each answers its own domain and no other, and the host itself
    still reaches main's destinations (the per-table rule of earlier
    versions stopped every lookup from lo at a strict table's unreachable
    default)."""
    addresses = {"t100": ("198.51.100.177", "2001:db8:177::1"),
                 "t200": ("198.51.100.178", "2001:db8:178::1")}  # fmt: skip
    for n, (label, (a4, a6)) in zip((177, 178), addresses.items(), strict=True):
        plug.launch(f"iso{n}", devices={"eth0": routed(label[1:], a4, a6)})
    assert plug.until(
        lambda: all(
            plug.tables(addr) == {label[1:]} and len(plug.rp_entries(addr)) == 1
            for label, pair in addresses.items()
            for addr in pair
        )
    ), {addr: plug.lab.route_entries(addr) for pair in addresses.values() for addr in pair}
    assert plug.rules() == plug.RP_RULES

    for owner, pair in addresses.items():
        for addr in pair:
            for label, client in clients.items():
                if label == owner:
                    assert client.ping_within(addr, 5), f"{label} must reach {addr}"
                else:
                    assert not client.ping(addr), f"{label} must not reach {addr}"
    main = clients["main"]
    for addr, uplink in ((main.address4, main.host_ifname), (main.address6, main.host_ifname)):
        got = plug.lab.ns_run("ip", "route", "get", addr).stdout
        assert f"dev {uplink}" in got and "table" not in got, got
        assert host_pings(plug, addr), f"H must reach {addr} through main"


def test_invalid_live_change_isolates_running_instance(
    plug: PluginLab, daemon: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.174"
    plug.launch("iso174", devices={"eth0": routed("100", a4)})
    assert plug.until(lambda: plug.tables(a4) == {"100"})
    plug.lab.incus("config", "device", "set", "iso174", "eth0", "user.ipv4.host_tables=0")
    # The daemon isolates it: no host route in any table, main included.
    assert plug.until(lambda: plug.entries(a4) == [], 5.0), plug.entries(a4)


def test_a_foreign_route_in_a_chosen_table_is_refused_and_kept(
    plug: PluginLab, daemon: PluginDaemon
) -> None:
    """An operator's static route for the instance's address in table 100:
    the plugin never takes it over. The apply is refused, the instance is
    isolated (Incus's copy in main removed too), and the static route stays."""
    a4 = "198.51.100.179"
    static = ("route", "add", "blackhole", f"{a4}/32", "table", "100", "proto", "static")
    plug.lab.ns_run("ip", *static)
    plug.defer(lambda: plug.lab.ns_run("ip", "route", "del", f"{a4}/32", "table", "100",
                                       check=False))  # fmt: skip
    plug.launch("iso179", devices={"eth0": routed("100", a4)})

    def isolated() -> bool:
        entries = plug.lab.route_entries(a4)
        return [(e["table"], e.get("protocol"), e.get("type")) for e in entries] == [
            ("100", "static", "blackhole")
        ]

    assert plug.until(isolated, 5.0), plug.lab.route_entries(a4)
    rows = json.loads(plug.cli("status", "iso179", "--format", "json").stdout)
    assert [r["state"] for r in rows] == ["error"], rows
    assert "File exists" in rows[0]["detail"], rows


def test_reconcile_migrates_the_rules_of_earlier_versions(
    plug: PluginLab, daemon: PluginDaemon, clients: dict[str, Client]
) -> None:
    """A host running an earlier version has a per-table rule per family
    (strict table 100: it stops every lookup from lo it cannot answer).
    `reconcile` leaves only the reverse-path rules, and the instance and the
    host's own traffic keep working."""
    a4, a6 = "198.51.100.180", "2001:db8:180::1"
    plug.launch("iso180", devices={"eth0": routed("100", a4, a6)})
    assert plug.until(lambda: plug.rules() == plug.RP_RULES)
    # The upgrade path: no daemon yet (a running one repairs stale rules at once).
    daemon.stop()
    plug.defer(lambda: daemon.running or daemon.start())
    for fam, suppress in (("-4", "31"), ("-6", "127")):
        old = ("rule", "add", "pref", "1100", "iif", "lo", "lookup", "100",
               "suppress_prefixlength", suppress, "proto", "158")  # fmt: skip
        plug.lab.ns_run("ip", fam, *old)
        plug.defer(lambda fam=fam, suppress=suppress: plug.lab.ns_run(
            "ip", fam, "rule", "del", "pref", "1100", "iif", "lo", "lookup", "100",
            "suppress_prefixlength", suppress, check=False))  # fmt: skip
    assert plug.rules() == plug.RP_RULES | {("4", "100", 31), ("6", "100", 127)}
    main = clients["main"]
    assert not host_pings(plug, main.address4)  # the old rule's strict-table trap

    out = plug.cli("reconcile")
    assert out.returncode == 0, out.stderr
    assert "- rule -4 pref 1100 iif lo lookup 100 suppress_prefixlength 31" in out.stdout
    assert "- rule -6 pref 1100 iif lo lookup 100 suppress_prefixlength 127" in out.stdout
    assert plug.rules() == plug.RP_RULES
    for addr in (a4, a6):
        assert clients["t100"].ping_within(addr, 5)
    assert host_pings(plug, main.address4) and host_pings(plug, main.address6)
