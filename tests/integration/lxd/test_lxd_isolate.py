"""The isolation matrix on LXD, with real IPv4 and IPv6 pings: each table
choice reaches exactly the clients of the routing domains it names. LXD
itself puts a routed NIC's host route in main (and, with ``host_table``, in
that table too); the daemon, fed by LXD's event stream, corrects it."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from plugin_checks import assert_reach, converged, domain_clients, host_tables, routed_nic

from lab import Client, IncusLab
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.lxd

CONVERGE = 5.0  # seconds the daemon gets to act on LXD's start event


@pytest.fixture(scope="module")
def clients(lab: IncusLab) -> Iterator[dict[str, Client]]:
    """One client per routing domain; table clients are strict (VRF-like)."""
    with domain_clients(lab, "l", 30) as made:
        yield made


@pytest.mark.parametrize(
    ("n", "keys", "want", "reach"),
    [
        (71, host_tables("100"), {"100"}, {"t100"}),
        (72, host_tables("100,200"), {"100", "200"}, {"t100", "t200"}),
        (73, host_tables("254,100"), {"main", "100"}, {"main", "t100"}),
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
    name = plug.launch(f"liso{n}", devices={"eth0": routed_nic(n, keys)})
    # Outside main every route is the plugin's (protocol 158).
    assert plug.until(lambda: converged(plug, {a4: want, a6: want}), CONVERGE), (
        plug.entries(a4),
        plug.entries(a6),
    )
    status = plug.cli("status", name, "--format", "json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["ok"], rows
    assert_reach(clients, (a4, a6), reach)
