"""`vrf=NAME`: the VRF's table is Incus's business; the plugin only removes
the instance's copy from main. Needs VRF devices (CONFIG_NET_VRF)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from incus_host_tables.engine import Engine
from lab.netns import NetNS

from .helpers import intent

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"


@pytest.fixture
def vrf_host(host: NetNS) -> NetNS:
    """H with VRF vrfX (table 10) and vh0 enslaved to it; skips without VRF."""
    proc = subprocess.run(
        ["ip", "-n", host.name, "link", "add", "vrfX", "type", "vrf", "table", "10"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        # Only a kernel without VRF support skips; any other failure fails.
        assert "Unknown device type" in proc.stderr, proc.stderr
        pytest.skip("kernel lacks VRF devices (CONFIG_NET_VRF)")
    host.ip("link", "set", "vrfX", "up")
    host.ip("link", "set", "vh0", "master", "vrfX")
    host.wait_link_local("vh0")
    return host


def test_vrf_keeps_the_vrf_table_and_removes_main(
    vrf_host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    h = vrf_host
    for fam, prefix in (("-4", f"{V4}/32"), ("-6", f"{V6}/128")):
        h.ip(fam, "route", "add", prefix, "dev", "vh0", "table", "10")
        h.ip(fam, "route", "add", prefix, "dev", "vh0", "table", "main")
    vrf_routes = [line for line in h.route_lines("table", "10") if V4 in line]
    vrf_routes6 = [line for line in h.route_lines("table", "10", v6=True) if V6 in line]
    assert vrf_routes and vrf_routes6
    config = {"vrf": "vrfX", "ipv4.address": V4, "ipv6.address": V6}

    make_engine(h).converge("vh0", intent(config))

    assert [line for line in h.route_lines("table", "main") if V4 in line] == []
    assert [line for line in h.route_lines("table", "main", v6=True) if V6 in line] == []
    assert [line for line in h.route_lines("table", "10") if V4 in line] == vrf_routes
    assert [line for line in h.route_lines("table", "10", v6=True) if V6 in line] == vrf_routes6
    assert [line for line in h.rule_lines() if "proto 158" in line] == []
