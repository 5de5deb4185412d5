"""What Incus 6.0.4 does with a routed NIC and a host table, before the plugin.

These facts are what the plugin changes; if one stops holding (another Incus
version), the plugin's premises need revisiting.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from lab import Client, IncusLab

pytestmark = pytest.mark.integration

ADDR4 = "198.51.100.10"
ADDR6 = "2001:db8::10"
TABLE = "100"


@dataclass
class Baseline:
    host_name: str
    in_table: Client  # routed into table 100, like a VRF member
    in_main: Client  # in H's main routing domain


@pytest.fixture(scope="module")
def baseline(lab: IncusLab) -> Iterator[Baseline]:
    lab.launch(
        "base1",
        devices={
            "eth0": {
                "type": "nic",
                "nictype": "routed",
                "ipv4.address": ADDR4,
                "ipv4.host_table": TABLE,
                "ipv6.address": ADDR6,
                "ipv6.host_table": TABLE,
            }
        },
    )
    a = lab.add_client("base100", table=int(TABLE), v4="203.0.113.2/24", v6="2001:db8:a::2/64")
    b = lab.add_client("basemain", table=None, v4="198.18.0.2/24", v6="2001:db8:b::2/64")
    try:
        config = lab.query("/1.0/instances/base1")["config"]
        yield Baseline(config["volatile.eth0.host_name"], a, b)
    finally:
        lab.delete("base1")
        lab.remove_client(a)
        lab.remove_client(b)


@pytest.mark.parametrize("addr", [ADDR4, ADDR6])
def test_host_route_lands_in_table_and_main(lab: IncusLab, baseline: Baseline, addr: str) -> None:
    routes = lab.route_entries(addr)
    assert {(r["dev"], r["table"]) for r in routes} == {
        (baseline.host_name, TABLE),
        (baseline.host_name, "main"),  # the leak the plugin removes
    }, lab.routes()


@pytest.mark.parametrize("addr", [ADDR4, ADDR6])
def test_clients_in_table_and_in_main_both_reach_the_instance(
    baseline: Baseline, addr: str
) -> None:
    assert baseline.in_table.ping_within(addr, 5), "client routed into table 100"
    assert baseline.in_main.ping_within(addr, 5), "client in main (the leak)"


def test_table_client_is_strict(baseline: Baseline) -> None:
    # The lab's table-100 client must not fall through to main: a host reached
    # only through main is unreachable from it, as from a VRF.
    assert baseline.in_main.ping_within(baseline.in_main.gateway4, 3)
    assert not baseline.in_table.ping(baseline.in_main.address4)
    assert not baseline.in_table.ping(baseline.in_main.address6)


def test_stopped_instance_has_no_host_routes(lab: IncusLab, baseline: Baseline) -> None:
    lab.launch(
        "base2",
        devices={"eth0": {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.11"}},
    )
    try:
        assert len(lab.route_entries("198.51.100.11")) == 1
        lab.incus("stop", "--force", "base2")
        assert lab.route_entries("198.51.100.11") == []
    finally:
        lab.delete("base2")


def _netns_names() -> set[str]:
    try:
        return set(os.listdir("/run/netns"))
    except FileNotFoundError:
        return set()


def test_lab_teardown_leaves_nothing_even_after_a_failure() -> None:
    # A second, short-lived lab beside the session one.
    other = IncusLab("ihtt")
    with pytest.raises(RuntimeError, match="boom"), other:
        other.launch(
            "t1",
            devices={"eth0": {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.12"}},
        )
        other.add_client("c", table=7, v4="203.0.113.66/26", v6="2001:db8:c::2/64")
        assert other.netns in _netns_names()
        pid = other.incusd_pid
        assert pid > 0
        raise RuntimeError("boom")
    assert not {other.netns, f"{other.netns}-c"} & _netns_names()
    assert not os.path.exists(other.workdir)
    assert not os.path.exists(f"/proc/{pid}")
    other.stop()  # idempotent
