"""`reconcile --dry-run --policy FILE` tells what the policy would do and
changes nothing; the real run then does exactly that. The real engine and
lifecycle against a fake kernel (fake_netlink.py)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from fake_netlink import FakeKernel, FakeNetlink

from incus_host_tables import commands
from incus_host_tables.config import TableSettings
from incus_host_tables.engine import Engine
from incus_host_tables.incus import InstanceSnapshot, NicSnapshot
from incus_host_tables.lifecycle import Lifecycle
from incus_host_tables.model import AF_INET, Route
from incus_host_tables.policy import ACTIVE

OURS, BOOT = 158, 3
TABLES = TableSettings()


def snapshot(name: str, veth: str, addr: str) -> InstanceSnapshot:
    config = {"type": "nic", "nictype": "routed", "ipv4.address": addr,
              "user.ipv4.host_tables": "100"}  # fmt: skip
    nic = NicSnapshot("eth0", config, veth)
    return InstanceSnapshot("tenant", name, "container", "Running", "none", (nic,))


@pytest.fixture
def host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[FakeKernel, Engine]]:
    """Two running instances of project `tenant` in table 100, converged
    without a policy."""
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path / "run"))
    kernel = FakeKernel()
    for i, veth in ((10, "veth1"), (20, "veth2")):
        index = kernel.add_link(veth)
        dst = socket.inet_pton(AF_INET, f"198.51.100.{i}")
        kernel.seed_route(Route(AF_INET, 254, dst, 32, None, 0), index, BOOT)
    engine = Engine(FakeNetlink(kernel))
    ACTIVE.use(str(tmp_path / "none.yaml"))
    for snap in SNAPSHOTS:
        assert Lifecycle(engine, tables=TABLES).start(snap.project, snap.name, snap.nics).ok
    try:
        yield kernel, engine
    finally:
        ACTIVE.use(None)


SNAPSHOTS = [snapshot("c1", "veth1", "198.51.100.10"), snapshot("c2", "veth2", "198.51.100.20")]


def test_isolating_every_holder_previews_the_rule_going(
    host: tuple[FakeKernel, Engine], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    kernel, engine = host
    assert [kr.rule.table for kr in kernel.rules if kr.protocol == OURS] == [1158]
    strict = tmp_path / "strict.yaml"
    strict.write_text("projects:\n  tenant: {tables: [200]}\n")
    ACTIVE.use(str(strict))
    before = kernel.state()

    rc = commands.act(engine, SNAPSHOTS, "reconcile", tables=TABLES, dry_run=True)
    out = capsys.readouterr()
    assert rc == commands.EXIT_PROBLEM
    assert kernel.state() == before
    assert out.err.count("table 100 not allowed") == 2, out.err
    # Each instance's plan sees the other still holding the reverse-path
    # rule; the whole run releases it.
    rule_lines = [line for line in out.out.splitlines() if "rule" in line]
    assert rule_lines == ["- rule -4 pref 1100 iif lo lookup 1158"], out.out

    previewed = [line for line in out.out.splitlines() if ": isolate: " in line]
    assert len(previewed) == 4, out.out

    rc = commands.act(engine, SNAPSHOTS, "reconcile", tables=TABLES)
    assert rc == commands.EXIT_PROBLEM
    assert [kr for kr in kernel.rules if kr.protocol == OURS] == []
    assert [kr for kr in kernel.routes.values() if kr.protocol == OURS] == []
    # The real run tells what it removed, as the preview said it would; the
    # rule goes with the isolation of its last holder.
    done = capsys.readouterr().out.splitlines()
    rule = "tenant/c2 eth0: isolate: - rule -4 pref 1100 iif lo lookup 1158"
    assert [line for line in done if ": isolate: " in line] == [*previewed, rule], done
    assert not [line for line in done if ": isolate: " not in line], done
    rc = commands.act(engine, SNAPSHOTS, "reconcile", tables=TABLES, dry_run=True)
    assert "rule" not in capsys.readouterr().out
