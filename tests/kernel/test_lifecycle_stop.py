"""Robust stop against the real kernel: a NIC whose interface cannot even be
looked up (a name the kernel refuses) does not keep the other NICs' routes
or the shared rules in place."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest

from incus_host_tables.engine import Engine
from incus_host_tables.lifecycle import Lifecycle
from lab.netns import NetNS

from .helpers import intent

pytestmark = pytest.mark.kernel

A4, B4 = "198.51.100.10", "198.51.100.11"


@dataclass(frozen=True)
class Nic:
    device: str
    host_name: str | None
    config: dict[str, str] = field(default_factory=dict)


def config(address: str) -> dict[str, str]:
    return {"ipv4.address": address, "user.ipv4.host_tables": "100"}


def test_stop_goes_on_after_a_netlink_error(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    host.add_veth("vh1", "vc1")
    engine = make_engine(host)
    engine.converge("vh0", intent(config(A4)))
    engine.converge("vh1", intent(config(B4)))
    bogus = Nic("eth0", "vethABCDEFGHIJKLMNOP", config(A4))  # 20 bytes: the kernel refuses it

    out = Lifecycle(engine, source="test").stop("p", "i", [bogus, Nic("eth1", "vh0", config(A4))])

    assert out.error is not None and out.error.startswith("device eth0: "), out.error
    assert [line for line in host.route_lines() if A4 in line] == []
    assert f"{B4} dev vh1 table 100 proto 158 scope link" in host.route_lines()
    # vh1 still needs the reverse-path rule: the resync after the failure kept it.
    assert [line for line in host.rule_lines() if "proto 158" in line] == [
        "1100:\tfrom all iif lo lookup 1158 proto 158"
    ]

    out = Lifecycle(engine, source="test").stop("p", "j", [Nic("eth0", "vh1", config(B4))])
    assert out.ok, out.error
    assert [line for line in host.rule_lines() if "proto 158" in line] == []
