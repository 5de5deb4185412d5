"""Isolation with real packets (docs/incus-behaviour.md, "The reverse-path
trap"): each table choice reaches exactly the clients of the routing domains
it names, and an instance whose config turns invalid is removed from every
table."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lab import Client, IncusLab
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def clients(lab: IncusLab) -> Iterator[dict[str, Client]]:
    """One client per routing domain; table clients are strict (VRF-like)."""
    made = {
        "t100": lab.add_client("it100", table=100, v4="198.18.20.2/28", v6="2001:db8:f20::2/64"),
        "t200": lab.add_client("it200", table=200, v4="198.18.21.2/28", v6="2001:db8:f21::2/64"),
        "main": lab.add_client("itmain", table=None, v4="198.18.22.2/28", v6="2001:db8:f22::2/64"),
    }
    try:
        # A client that reaches nothing would pass every "must not reach":
        # each one first reaches its gateway in H, in both families.
        for label, c in made.items():
            assert c.ping_within(c.gateway4, 5), f"{label}: no IPv4 link to H"
            assert c.ping_within(c.gateway6, 5), f"{label}: no IPv6 link to H"
        yield made
    finally:
        for c in made.values():
            lab.remove_client(c)


@pytest.mark.parametrize(
    ("n", "tables", "reach"),
    [
        (171, "100", {"t100"}),
        (172, "100,200", {"t100", "t200"}),
        (173, "254,100", {"main", "t100"}),
    ],
    ids=["t100", "t100+t200", "main+t100"],
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
    nic = {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": a4,
        "ipv6.address": a6,
        "user.ipv4.host_tables": tables,
        "user.ipv6.host_tables": tables,
    }
    plug.launch(f"iso{n}", devices={"eth0": nic})
    want = {"main" if t == "254" else t for t in tables.split(",")}
    assert plug.until(lambda: plug.tables(a4) == want and plug.tables(a6) == want), (
        plug.entries(a4),
        plug.entries(a6),
    )
    for label, client in clients.items():
        for addr in (a4, a6):
            if label in reach:
                assert client.ping_within(addr, 5), f"{label} must reach {addr}"
            else:
                assert not client.ping(addr), f"{label} must not reach {addr}"


def test_invalid_live_change_isolates_running_instance(
    plug: PluginLab, daemon: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.174"
    nic = {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": a4,
        "user.ipv4.host_tables": "100",
    }
    plug.launch("iso174", devices={"eth0": nic})
    assert plug.until(lambda: plug.tables(a4) == {"100"})
    plug.lab.incus("config", "device", "set", "iso174", "eth0", "user.ipv4.host_tables=0")
    # The daemon isolates it: no host route in any table, main included.
    assert plug.until(lambda: plug.entries(a4) == [], 5.0), plug.entries(a4)
