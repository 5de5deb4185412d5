"""The isolation matrix on LXD, with real IPv4 and IPv6 pings: each table
choice reaches exactly the clients of the routing domains it names. LXD
itself puts a routed NIC's host route in main (and, with ``host_table``, in
that table too); the daemon, fed by LXD's event stream, corrects it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest

from lab import Client, IncusLab
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.lxd

CONVERGE = 5.0  # seconds the daemon gets to act on LXD's start event


@pytest.fixture(scope="module")
def clients(lab: IncusLab) -> Iterator[dict[str, Client]]:
    """One client per routing domain; table clients are strict (VRF-like)."""
    made = {
        "t100": lab.add_client("lt100", table=100, v4="198.18.30.2/28", v6="2001:db8:f30::2/64"),
        "t200": lab.add_client("lt200", table=200, v4="198.18.31.2/28", v6="2001:db8:f31::2/64"),
        "main": lab.add_client("ltmain", table=None, v4="198.18.32.2/28", v6="2001:db8:f32::2/64"),
    }
    try:
        yield made
    finally:
        for c in made.values():
            lab.remove_client(c)


def tables_keys(tables: str) -> dict[str, str]:
    return {"user.ipv4.host_tables": tables, "user.ipv6.host_tables": tables}


@pytest.mark.parametrize(
    ("n", "keys", "want", "reach"),
    [
        (71, tables_keys("100"), {"100"}, {"t100"}),
        (72, tables_keys("100,200"), {"100", "200"}, {"t100", "t200"}),
        (73, tables_keys("254,100"), {"main", "100"}, {"main", "t100"}),
        # LXD: table 100 *and* main; the plugin: table 100 only.
        (74, {"ipv4.host_table": "100", "ipv6.host_table": "100"}, {"100"}, {"t100"}),
        # No key: main only, as LXD has it (the plugin may adopt the route).
        (75, {}, {"main"}, {"main"}),
    ],
    ids=["t100", "t100+t200", "main+t100", "legacy-host_table", "no-key"],
)
def test_isolation_matrix(
    plug: PluginLab,
    daemon: PluginDaemon,
    clients: dict[str, Client],
    n: int,
    keys: dict[str, str],
    want: set[str],
    reach: set[str],
) -> None:
    a4, a6 = f"198.51.100.{n}", f"2001:db8:{n}::1"
    nic = {"type": "nic", "nictype": "routed", "name": "eth0", "ipv4.address": a4}
    nic |= {"ipv6.address": a6, **keys}
    name = plug.launch(f"liso{n}", devices={"eth0": nic})

    def converged() -> bool:
        for addr in (a4, a6):
            entries = plug.entries(addr)
            if {e["table"] for e in entries} != want:
                return False
            # Outside main every route is the plugin's (protocol 158).
            if any(e["table"] != "main" and str(e.get("protocol")) != "158" for e in entries):
                return False
        return True

    assert plug.until(converged, CONVERGE), (plug.entries(a4), plug.entries(a6))
    status = plug.cli("status", name, "--format", "json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["ok"], rows
    for label, client in clients.items():
        for addr in (a4, a6):
            if label in reach:
                assert client.ping_within(addr, 5), f"{label} must reach {addr}"
            else:
                assert not client.ping(addr), f"{label} must not reach {addr}"
