"""The daemon logs what isolating an instance removed, route by route (the
real daemon sync and engine against a fake kernel, fake_netlink.py)."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from unittest.mock import MagicMock

import pytest
from fake_netlink import FakeKernel, FakeNetlink

from incus_host_tables.daemon import Daemon
from incus_host_tables.engine import Engine
from incus_host_tables.incus import InstanceSnapshot, NicSnapshot
from incus_host_tables.model import AF_INET, Route

BOOT = 3  # Incus's routes


def test_isolation_is_logged_route_by_route(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path / "run"))
    kernel = FakeKernel()
    index = kernel.add_link("veth1")
    dst = socket.inet_pton(AF_INET, "198.51.100.10")
    kernel.seed_route(Route(AF_INET, 254, dst, 32, None, 0), index, BOOT)  # Incus's copy in main
    config = {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.10",
              "user.ipv4.host_tables": "0"}  # fmt: skip  # table 0: refused
    snapshot = InstanceSnapshot(
        "default", "c1", "container", "Running", "none", (NicSnapshot("eth0", config, "veth1"),)
    )
    daemon = Daemon(rule_priority=1100, connect=MagicMock())
    daemon._local.engine = Engine(FakeNetlink(kernel))

    with caplog.at_level(logging.INFO, logger="incus-host-tables"):
        daemon.sync(("default", "c1"), snapshot)

    assert kernel.routes == {}, kernel.routes  # isolated: not even Incus's copy in main
    lines = [r.getMessage() for r in caplog.records]
    assert any("isolating the instance" in line for line in lines), lines
    assert "default/c1 device eth0: isolated: - route 198.51.100.10/32 dev veth1 table 254" in (
        lines
    ), lines
