"""A routed NIC with a parent (proxy ARP/NDP; docs/incus-behaviour.md,
"Routed NIC with a parent"): the plugin moves the host routes but never
touches Incus's neighbour proxy entries."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration


def proxies(plug: PluginLab) -> tuple[str, str]:
    v4 = plug.lab.ns_run("ip", "-4", "neigh", "show", "proxy").stdout
    v6 = plug.lab.ns_run("ip", "-6", "neigh", "show", "proxy").stdout
    return v4, v6


def test_apply_keeps_proxy_entries(plug: PluginLab) -> None:
    lan = plug.client("plan0", table=None, v4="198.18.30.2/28", v6="2001:db8:f30::2/64")
    parent = lan.host_ifname
    plug.lab.ns_run(
        "sh",
        "-c",
        f"echo 1 > /proc/sys/net/ipv4/conf/{parent}/forwarding"
        f" && echo 1 > /proc/sys/net/ipv6/conf/{parent}/forwarding"
        f" && echo 1 > /proc/sys/net/ipv6/conf/{parent}/proxy_ndp"
        " && echo 1 > /proc/sys/net/ipv6/conf/all/proxy_ndp",
    )
    a4, a6 = "198.51.100.181", "2001:db8:181::1"
    nic = {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "parent": parent,
        "ipv4.address": a4,
        "ipv6.address": a6,
        "user.ipv4.host_tables": "100",
        "user.ipv6.host_tables": "100",
    }
    plug.launch("ppar1", devices={"eth0": nic})
    before = proxies(plug)
    assert a4 in before[0] and a6 in before[1], before
    assert plug.tables(a4) == {"main"}  # Incus alone (no daemon, no hooks)

    out = plug.cli("apply", "ppar1")
    assert out.returncode == 0, out.stderr
    assert plug.tables(a4) == {"100"} and plug.tables(a6) == {"100"}
    assert proxies(plug) == before

    out = plug.cli("cleanup", "ppar1")
    assert out.returncode == 0, out.stderr
    assert proxies(plug) == before
