"""The repairer's scheduling against a fake engine (logic only; the real
kernel is in tests/kernel/test_drift_repair.py): coalescing, own changes,
link state, back-off and giving up, the resync triggers."""

from __future__ import annotations

import errno
import ipaddress
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from incus_host_tables import problems
from incus_host_tables.config import DeviceIntent, parse_device
from incus_host_tables.engine import SCOPED, InterfaceMissing, Reading
from incus_host_tables.model import KernelRoute, Route
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink.kernel import NetlinkError
from incus_host_tables.netlink.monitor import Link, Notification, NotificationKind
from incus_host_tables.repair import SETTLE, FightGuard, ManagedDevice, Repairer, RepairReason

INTENT = parse_device({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100"})
DEVICE = ManagedDevice("default", "c1", "eth0", "veth1", 7, INTENT)
OTHER = ManagedDevice("default", "c2", "eth0", "veth2", 8, INTENT)


@dataclass
class FakePlan:
    changes: list[str]

    @property
    def plan(self) -> bool:
        return bool(self.changes)

    def lines(self) -> list[str]:
        return self.changes

    def summary(self, limit: int = 20) -> list[str]:
        return self.changes


@dataclass
class FakeEngine:
    """Converges report one change (the route put back) unless told otherwise."""

    converged: list[str] = field(default_factory=list)
    full_reads: list[bool] = field(default_factory=list)
    tables_read: list[frozenset[int]] = field(default_factory=list)
    rules_resyncs: int = 0
    fail: Exception | None = None
    changes: list[str] = field(default_factory=lambda: ["+ route 198.51.100.10/32 table 100"])

    def converge(
        self,
        ifname: str,
        intent: DeviceIntent,
        *,
        how: Reading = SCOPED,
    ) -> FakePlan:
        self.converged.append(ifname)
        self.full_reads.append(how.full)
        self.tables_read.append(how.tables)
        if self.fail is not None:
            raise self.fail
        return FakePlan(list(self.changes))

    def resync_rules(self) -> FakePlan:
        self.rules_resyncs += 1
        return FakePlan([])

    def close(self) -> None:
        pass


@pytest.fixture(autouse=True)
def _run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path))


@pytest.fixture
def engine() -> FakeEngine:
    return FakeEngine()


def make(engine: FakeEngine, guard: Callable[[], FightGuard] = FightGuard) -> Repairer:
    r = Repairer(rule_priority=1100, resync_interval=3600, engine=engine, guard=guard)  # type: ignore[arg-type]
    r.manage("default", "c1", [DEVICE])
    r.manage("default", "c2", [OTHER])
    return r


@pytest.fixture
def repairer(engine: FakeEngine) -> Repairer:
    return make(engine)


def deleted(oif: int = 7, sender: int = 999, table: int = 100) -> Notification:
    route = Route(socket.AF_INET, table, ipaddress.ip_address("198.51.100.10").packed, 32, None, 0)
    return Notification(
        NotificationKind.ROUTE_DELETED, sender, route=KernelRoute(route, oif, 158, 253, 1, b"")
    )


def link(up: bool, index: int = 7) -> Notification:
    return Notification(
        NotificationKind.LINK_CHANGED, 0, link=Link(index, c.IFF_UP if up else 0, "veth1")
    )


def settle_and_run(repairer: Repairer) -> None:
    time.sleep(SETTLE * 2)
    repairer.run_due()


def repairs(repairer: Repairer, reason: str) -> float:
    value = repairer.metrics.registry.get_sample_value(
        "incus_host_tables_repairs_total", {"reason": reason}
    )
    return value or 0.0


def test_a_burst_is_one_converge_per_device(repairer: Repairer, engine: FakeEngine) -> None:
    repairer.notify([deleted(), deleted(), deleted(oif=8), deleted()])
    settle_and_run(repairer)
    assert sorted(engine.converged) == ["veth1", "veth2"]
    assert repairs(repairer, "route-deleted") == 2


def test_a_repair_reads_the_tables_of_its_burst(repairer: Repairer, engine: FakeEngine) -> None:
    repairer.notify([deleted(table=100), deleted(table=300), deleted(oif=8, table=200)])
    settle_and_run(repairer)
    reads = dict(zip(engine.converged, engine.tables_read, strict=True))
    assert reads == {"veth1": {100, 300}, "veth2": {200}}
    assert engine.full_reads == [False, False]


def test_nothing_is_done_before_the_burst_settles(repairer: Repairer, engine: FakeEngine) -> None:
    repairer.notify([deleted()])
    repairer.run_due()  # at once: not yet due
    assert engine.converged == []


def test_own_changes_and_other_interfaces_are_not_drift(
    repairer: Repairer, engine: FakeEngine
) -> None:
    class Ports:
        def ports(self) -> tuple[int, int]:
            return (4242, 4243)

    repairer.own(Ports())  # type: ignore[arg-type]
    repairer.notify([deleted(sender=4242), deleted(sender=4243), deleted(oif=99)])
    settle_and_run(repairer)
    assert engine.converged == []


def test_a_converge_that_finds_nothing_is_no_repair(repairer: Repairer, engine: FakeEngine) -> None:
    engine.changes = []
    repairer.notify([deleted()])
    settle_and_run(repairer)
    assert engine.converged == ["veth1"]
    assert repairer.repairs == 0


def test_a_down_link_waits_for_up(repairer: Repairer, engine: FakeEngine) -> None:
    repairer.notify([link(up=False), deleted()])
    settle_and_run(repairer)
    assert engine.converged == []
    repairer.notify([link(up=True)])
    settle_and_run(repairer)
    assert engine.converged == ["veth1"]
    assert repairs(repairer, "link-flap") == 1


def test_an_interrupted_dump_triggers_a_full_resync(repairer: Repairer, engine: FakeEngine) -> None:
    engine.fail = NetlinkError(errno.EAGAIN, "dump interrupted by a change")
    repairer.notify([deleted()])
    settle_and_run(repairer)
    engine.fail = None
    repairer.run_due()  # the resync: every device, then the rules
    assert engine.converged == ["veth1", "veth1", "veth2"]
    # The notification's repair reads the record's tables; the resync every table.
    assert engine.full_reads == [False, True, True]
    assert engine.rules_resyncs == 1
    trigger = repairer.metrics.registry.get_sample_value(
        "incus_host_tables_resyncs_total", {"trigger": "dump-interrupted"}
    )
    assert trigger == 1


def test_a_vanished_interface_is_forgotten(repairer: Repairer, engine: FakeEngine) -> None:
    engine.fail = InterfaceMissing("veth1")
    repairer.notify([deleted()])
    settle_and_run(repairer)
    assert [d.host_name for d in repairer.managed()] == ["veth2"]


def test_a_fight_is_given_up_reported_and_taken_back(engine: FakeEngine) -> None:
    # No waiting between tries, to keep the test short; the back-off itself
    # is FightGuard's (tests/unit/test_repair_logic.py).
    repairer = make(engine, lambda: FightGuard(base=0.0))
    for _ in range(6):
        repairer.notify([deleted()])
        settle_and_run(repairer)
    assert repairer.repairs == 6
    assert list(repairer.parked()) == ["default/c1 device eth0 (veth1)"]
    record = problems.read("default", "c1")
    assert record is not None and "given up after 6 repairs" in str(record["message"])
    assert (
        repairer.metrics.registry.get_sample_value("incus_host_tables_repairs_abandoned_total") == 1
    )

    repairer.notify([deleted()])  # left alone now
    settle_and_run(repairer)
    assert repairer.repairs == 6

    # A resync leaves it alone while the problem is on record ...
    repairer.request_resync(RepairReason.RESYNC)
    repairer.run_due()
    assert engine.converged.count("veth1") == 6
    # ... and takes it back once a successful apply cleared it.
    problems.clear("default", "c1")
    repairer.request_resync(RepairReason.RESYNC)
    repairer.run_due()
    assert repairer.parked() == {}
    assert engine.converged.count("veth1") == 7


def test_managing_an_instance_again_takes_it_back(engine: FakeEngine) -> None:
    repairer = make(engine, lambda: FightGuard(base=0.0, max_tries=1))
    repairer.notify([deleted()])
    settle_and_run(repairer)
    assert list(repairer.parked())
    repairer.manage("default", "c1", [DEVICE])  # an Incus event synced it
    assert repairer.parked() == {}
    repairer.notify([deleted()])
    settle_and_run(repairer)
    assert engine.converged == ["veth1", "veth1"]
