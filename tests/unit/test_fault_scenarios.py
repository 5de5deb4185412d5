"""Single faults converge: the real engine and lifecycle against a fake
kernel (fake_netlink.py) that fails one operation where a scenario says.

For every scenario: the same steps run on a kernel without the fault give
the desired state. With the fault, the first sync must report an error
naming it (unless the engine absorbs it: a dump retried); then at most 3
more syncs bring the kernel to exactly the desired state; and after every
sync, every foreign route and rule is still there, unchanged.
"""

from __future__ import annotations

import copy
import errno
import os
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import pytest
from fake_netlink import FakeKernel, FakeNetlink, Fault, Item, Op

from incus_host_tables.config import parse_device
from incus_host_tables.engine import Engine
from incus_host_tables.lifecycle import NIC_FAILURES, Lifecycle
from incus_host_tables.model import AF_INET, AF_INET6, KernelRoute, KernelRule, Route, Rule

RP = 1158
PRIO = 1100
BOOT, STATIC, BIRD, OURS = 3, 4, 12, 158


def v4(addr: str) -> bytes:
    return socket.inet_pton(AF_INET, addr)


def v6(addr: str) -> bytes:
    return socket.inet_pton(AF_INET6, addr)


@dataclass(frozen=True)
class Nic:
    device: str
    host_name: str | None
    config: Mapping[str, str]


C1_CONFIG = {
    "ipv4.address": "198.51.100.10",
    "ipv6.address": "2001:db8::10",
    "user.ipv4.host_tables": "100,200",
    "user.ipv6.host_tables": "100",
}
C2_CONFIG = {"ipv4.address": "198.51.100.20", "user.ipv4.host_tables": "200"}
C1 = [Nic("eth0", "veth1", C1_CONFIG)]
C1_INVALID = [Nic("eth0", "veth1", {**C1_CONFIG, "user.ipv4.host_tables": "1158x"})]
C1_FEWER = [Nic("eth0", "veth1", {**C1_CONFIG, "user.ipv4.host_tables": "100"})]
C2 = [Nic("eth0", "veth2", C2_CONFIG)]


def seed(kernel: FakeKernel) -> list[KernelRoute | KernelRule]:
    """Interfaces, Incus's boot routes for c1 and c2, and the foreign
    things no sync may touch (returned)."""
    uplink = kernel.add_link("uplink")
    veth1 = kernel.add_link("veth1")
    veth2 = kernel.add_link("veth2")
    kernel.seed_route(Route(AF_INET, 254, v4("198.51.100.10"), 32, None, 0), veth1, BOOT)
    kernel.seed_route(Route(AF_INET6, 254, v6("2001:db8::10"), 128, None, 1024), veth1, BOOT)
    kernel.seed_route(Route(AF_INET, 254, v4("198.51.100.20"), 32, None, 0), veth2, BOOT)
    return [
        # static route for an instance prefix, in main, on another interface
        kernel.seed_route(Route(AF_INET, 254, v4("198.51.100.10"), 32, None, 50), uplink, STATIC),
        # a routing daemon's route in a chosen table
        kernel.seed_route(Route(AF_INET, 100, v4("203.0.113.0"), 24, None, 0), uplink, BIRD),
        kernel.seed_route(Route(AF_INET6, 100, v6("2001:db8:ff::"), 48, None, 0), uplink, BIRD),
        # the operator's static route on the instance's own interface
        kernel.seed_route(Route(AF_INET, 100, v4("198.51.100.99"), 32, None, 0), veth1, STATIC),
        # the operator's own rules, one at the plugin's priority
        kernel.seed_rule(Rule(AF_INET, 100, 1000, None, 0, None), STATIC),
        kernel.seed_rule(Rule(AF_INET6, 200, PRIO, None, 0, None), BOOT),
    ]


class Harness:
    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.engine = Engine(FakeNetlink(kernel))
        self.lifecycle = Lifecycle(self.engine)


Step = Callable[[Harness], list[str]]


def start(nics: list[Nic]) -> Step:
    def run(h: Harness) -> list[str]:
        out = h.lifecycle.start("default", nics[0].device + "-owner", nics)
        return [out.error] if out.error else []

    return run


def stop(nics: list[Nic]) -> Step:
    def run(h: Harness) -> list[str]:
        out = h.lifecycle.stop("default", nics[0].device + "-owner", nics)
        return [out.error] if out.error else []

    return run


def resync(h: Harness) -> list[str]:
    try:
        h.engine.resync_rules()
    except NIC_FAILURES as err:
        return [str(err)]
    return []


def engine_call(call: Callable[[Engine], object]) -> Step:
    """A low-level engine call (`device apply`, `device cleanup`): no
    isolation policy, no retries by family."""

    def run(h: Harness) -> list[str]:
        try:
            call(h.engine)
        except NIC_FAILURES as err:
            return [str(err)]
        return []

    return run


converge_c1 = engine_call(lambda e: e.converge("veth1", parse_device(C1_CONFIG)))
# The device's config is unreadable: every route of Incus's shape on the
# interface and every route of ours goes (fail closed), nothing else.
cleanup_c1_unknown = engine_call(lambda e: e.cleanup("veth1", None))


def both(*steps: Step) -> Step:
    def run(h: Harness) -> list[str]:
        return [e for step in steps for e in step(h)]

    return run


def vanish(name: str, back: bool) -> Callable[[FakeKernel], None]:
    """The interface goes (its routes with it); ``back``: Incus makes it
    again at once, under a new index."""

    def run(kernel: FakeKernel) -> None:
        kernel.del_link(name)
        if back:
            kernel.add_link(name)

    return run


def in_table(table: int) -> Callable[[Item], bool]:
    return lambda item: isinstance(item, KernelRoute) and item.route.table == table


def v4_in_table(table: int) -> Callable[[Item], bool]:
    return lambda item: (
        isinstance(item, KernelRoute) and item.route.table == table and item.route.family == AF_INET
    )


def of_family(family: int) -> Callable[[Item], bool]:
    return lambda item: isinstance(item, KernelRule) and item.rule.family == family


def stale_rules(kernel: FakeKernel) -> None:
    """An old per-table rule of ours, and a needed rule gone missing."""
    kernel.seed_rule(Rule(AF_INET, 200, PRIO, None, 0, 31), OURS)
    kernel.rules = [
        r for r in kernel.rules if not (r.protocol == OURS and r.rule.family == AF_INET6)
    ]


@dataclass
class Scenario:
    name: str
    sync: Step
    fault: Fault
    prelude: list[Step] = field(default_factory=list)
    # Changes the kernel gets before the fault is armed (in both runs).
    environment: Callable[[FakeKernel], object] | None = None
    # What the first sync's error must say; None: the fault is absorbed.
    names: str | None = "from errno"
    # The fault's own change to the world (an interface gone) also
    # happens in the reference run.
    reference_environment: Callable[[FakeKernel], None] | None = None
    # A second fault that hits the rollback of the first one's batch.
    undo_fault: Fault | None = None
    # A second fault armed with the first (the report the overflow drops).
    second_fault: Fault | None = None
    # Fail closed: the faulty sync leaves the kernel exactly as it was.
    as_it_was: bool = False


def err(e: int) -> str:
    return os.strerror(e)


START_C1 = start(C1)
SCENARIOS = [
    # -- converge: an instance starts ---------------------------------------
    Scenario("start/EEXIST on first add", START_C1, Fault(Op.ADD_ROUTE, errno.EEXIST)),
    Scenario(
        "start/EEXIST on the reverse-path copy",
        START_C1,
        Fault(Op.ADD_ROUTE, errno.EEXIST, match=in_table(RP)),
    ),
    Scenario(
        "start/ESRCH removing Incus's copy in main",
        START_C1,
        Fault(Op.DEL_ROUTE, errno.ESRCH, match=in_table(254)),
    ),
    Scenario("start/ENODEV on an add", START_C1, Fault(Op.ADD_ROUTE, errno.ENODEV, nth=2)),
    Scenario("start/EBUSY on an add", START_C1, Fault(Op.ADD_ROUTE, errno.EBUSY)),
    Scenario("start/ENOBUFS on an add", START_C1, Fault(Op.ADD_ROUTE, errno.ENOBUFS, nth=2)),
    Scenario("start/EINTR on an add", START_C1, Fault(Op.ADD_ROUTE, errno.EINTR)),
    Scenario(
        "start/EBUSY adding the IPv6 rule",
        START_C1,
        Fault(Op.ADD_RULE, errno.EBUSY, match=of_family(AF_INET6)),
    ),
    Scenario(
        "start/partial batch: 3rd add fails after 2 went in",
        START_C1,
        Fault(Op.ADD_ROUTE, errno.ENOBUFS, nth=3),
    ),
    Scenario(
        "start/partial batch whose undo fails too",
        START_C1,
        Fault(Op.ADD_ROUTE, errno.ENOBUFS, nth=3),
        undo_fault=Fault(Op.DEL_ROUTE, errno.EBUSY),
        names="could NOT undo",
    ),
    Scenario(
        "start/route dump interrupted once (retried)",
        START_C1,
        Fault(Op.DUMP_ROUTES, dump_intr=True),
        names=None,
    ),
    Scenario(
        "start/route dump interrupted 5 times",
        START_C1,
        Fault(Op.DUMP_ROUTES, dump_intr=True, times=5),
        names="dump interrupted",
    ),
    Scenario(
        "start/receive buffer overflow (ENOBUFS) during the apply",
        START_C1,
        Fault(Op.RECV, errno.ENOBUFS, after_writes=2),
    ),
    Scenario(
        "start/receive buffer overflow (ENOBUFS) during a dump",
        START_C1,
        Fault(Op.RECV, errno.ENOBUFS, nth=2),
    ),
    Scenario("start/ENOBUFS on a route dump", START_C1, Fault(Op.DUMP_ROUTES, errno.ENOBUFS)),
    Scenario("start/EINTR on a rule dump", START_C1, Fault(Op.DUMP_RULES, errno.EINTR)),
    Scenario("start/EBUSY on the link query", START_C1, Fault(Op.GET_LINK, errno.EBUSY)),
    Scenario(
        "start/interface re-created between read and apply",
        START_C1,
        Fault(Op.ADD_ROUTE, before=vanish("veth1", back=True)),
        names=err(errno.ENODEV),
        reference_environment=vanish("veth1", back=True),
    ),
    Scenario(
        "start/interface gone between read and apply",
        START_C1,
        Fault(Op.ADD_ROUTE, before=vanish("veth1", back=False)),
        names=err(errno.ENODEV),
        reference_environment=vanish("veth1", back=False),
    ),
    Scenario(
        "device apply/ENOBUFS on an add (no isolation policy)",
        converge_c1,
        Fault(Op.ADD_ROUTE, errno.ENOBUFS, nth=2),
    ),
    Scenario(
        "device apply/receive buffer overflow (ENOBUFS) after the batch went in",
        converge_c1,
        Fault(Op.RECV, errno.ENOBUFS, after_writes=2),
        as_it_was=True,
    ),
    Scenario(
        "device apply/receive buffer overflow drops the report of a refused add",
        converge_c1,
        Fault(Op.RECV, errno.ENOBUFS, after_writes=1),
        second_fault=Fault(Op.ADD_ROUTE, errno.EEXIST, nth=2),
        as_it_was=True,
    ),
    Scenario(
        "device apply/receive buffer overflow while the rollback of a refused add runs",
        converge_c1,
        Fault(Op.ADD_ROUTE, errno.EBUSY, nth=3),
        # The batch's first send holds 7 changes (the deletions of main's
        # copies would come in the next); the undo's come next.
        second_fault=Fault(Op.RECV, errno.ENOBUFS, after_writes=8),
        as_it_was=True,
    ),
    Scenario(
        "device cleanup/receive buffer overflow (ENOBUFS) during the deletes",
        cleanup_c1_unknown,
        Fault(Op.RECV, errno.ENOBUFS, after_writes=1),
        prelude=[START_C1, start(C2)],
        as_it_was=True,
    ),
    Scenario(
        "change/EBUSY removing the route of a table no longer chosen",
        start(C1_FEWER),
        Fault(Op.DEL_ROUTE, errno.EBUSY, match=v4_in_table(200)),
        prelude=[START_C1],
    ),
    # -- adoption of Incus's routes ------------------------------------------
    Scenario(
        "adopt/ENOBUFS re-marking Incus's route in a chosen table",
        START_C1,
        Fault(Op.REPLACE_ROUTE, errno.ENOBUFS),
        environment=lambda k: k.seed_route(
            Route(AF_INET, 100, v4("198.51.100.10"), 32, None, 0), k.links["veth1"], BOOT
        ),
    ),
    Scenario(
        "adopt/partial: main copy removal fails after the adoption",
        START_C1,
        Fault(Op.DEL_ROUTE, errno.EBUSY, match=in_table(254)),
        environment=lambda k: k.seed_route(
            Route(AF_INET, 200, v4("198.51.100.10"), 32, None, 0), k.links["veth1"], BOOT
        ),
    ),
    # -- cleanup: an instance stops ------------------------------------------
    Scenario(
        "stop/ESRCH on a route delete, absorbed by the per-family retry",
        stop(C1),
        Fault(Op.DEL_ROUTE, errno.ESRCH),
        prelude=[START_C1, start(C2)],
        names=None,
    ),
    Scenario(
        "stop/ESRCH on a route delete, again in the family's retry",
        stop(C1),
        Fault(Op.DEL_ROUTE, errno.ESRCH, times=2, match=v4_in_table(100)),
        prelude=[START_C1, start(C2)],
    ),
    Scenario(
        "stop/ENOBUFS on a later route delete",
        stop(C1),
        Fault(Op.DEL_ROUTE, errno.ENOBUFS, times=2, match=v4_in_table(RP)),
        prelude=[START_C1, start(C2)],
    ),
    Scenario(
        "stop/EBUSY releasing the IPv6 rule",
        stop(C1),
        Fault(Op.DEL_RULE, errno.EBUSY, times=2, match=of_family(AF_INET6)),
        prelude=[START_C1, start(C2)],
    ),
    Scenario(
        "stop/interface gone between read and apply",
        stop(C1),
        Fault(Op.DEL_ROUTE, before=vanish("veth1", back=False)),
        prelude=[START_C1, start(C2)],
        names=None,  # what the apply wanted gone went with the interface
        reference_environment=vanish("veth1", back=False),
    ),
    Scenario(
        "stop/route dumps interrupted 10 times in a row",
        stop(C1),
        Fault(Op.DUMP_ROUTES, dump_intr=True, times=10),
        prelude=[START_C1, start(C2)],
        names="dump interrupted",
    ),
    Scenario(
        "device cleanup, config unreadable/ENOBUFS on a delete",
        cleanup_c1_unknown,
        Fault(Op.DEL_ROUTE, errno.ENOBUFS, nth=2),
        prelude=[START_C1, start(C2)],
    ),
    # -- isolation: the config turned invalid ----------------------------------
    Scenario(
        "isolate/ESRCH on a route delete, again in the family's retry",
        start(C1_INVALID),
        Fault(Op.DEL_ROUTE, errno.ESRCH, times=2, match=v4_in_table(100)),
        prelude=[START_C1, start(C2)],
    ),
    Scenario(
        "isolate/EBUSY releasing a rule, again in the retries",
        start(C1_INVALID),
        Fault(Op.DEL_RULE, errno.EBUSY, times=3),
        prelude=[START_C1, start(C2)],
    ),
    Scenario(
        "isolate/rule dumps interrupted 10 times in a row",
        start(C1_INVALID),
        Fault(Op.DUMP_RULES, dump_intr=True, times=10),
        prelude=[START_C1, start(C2)],
        names="dump interrupted",
    ),
    # -- rules resync ------------------------------------------------------------
    Scenario(
        "resync/EBUSY removing a stale rule",
        resync,
        Fault(Op.DEL_RULE, errno.EBUSY),
        prelude=[START_C1, start(C2)],
        environment=stale_rules,
    ),
    Scenario(
        "resync/ENOBUFS re-adding a missing rule",
        resync,
        Fault(Op.ADD_RULE, errno.ENOBUFS),
        prelude=[START_C1, start(C2)],
        environment=stale_rules,
    ),
    Scenario(
        "resync/route dump interrupted 5 times",
        resync,
        Fault(Op.DUMP_ROUTES, dump_intr=True, times=5),
        prelude=[START_C1, start(C2)],
        environment=stale_rules,
        names="dump interrupted",
    ),
]


def prepared(scenario: Scenario) -> tuple[FakeKernel, Harness, list[KernelRoute | KernelRule]]:
    kernel = FakeKernel()
    foreign = seed(kernel)
    h = Harness(kernel)
    for step in scenario.prelude:
        assert step(h) == [], "the prelude runs clean"
    if scenario.environment is not None:
        scenario.environment(kernel)
    return kernel, h, foreign


def assert_foreign_intact(kernel: FakeKernel, foreign: list[KernelRoute | KernelRule]) -> None:
    for item in foreign:
        if isinstance(item, KernelRoute) and item.oif not in kernel.links.values():
            continue  # its interface went away in the scenario, and it with it
        if isinstance(item, KernelRoute):
            assert item in kernel.routes.values(), f"foreign route changed: {item}"
        else:
            assert item in kernel.rules, f"foreign rule changed: {item}"


@pytest.fixture(autouse=True)
def _run_dir(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path))


def test_scenario_count() -> None:
    assert len(SCENARIOS) >= 20
    assert len({s.name for s in SCENARIOS}) == len(SCENARIOS)


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_single_fault_converges(scenario: Scenario) -> None:
    # Faults count their hits: a fresh copy, so a re-run in the same process fires them again.
    scenario = copy.deepcopy(scenario)
    # The desired state: the same steps, no fault.
    ref_kernel, ref, _ = prepared(scenario)
    if scenario.reference_environment is not None:
        scenario.reference_environment(ref_kernel)
    ref_errors = scenario.sync(ref)
    desired = ref_kernel.state()
    assert scenario.sync(ref) == [] or ref_errors, "the clean sync is stable"
    assert ref_kernel.state() == desired

    kernel, h, foreign = prepared(scenario)
    before = kernel.state()
    kernel.faults.append(scenario.fault)
    for extra in (scenario.undo_fault, scenario.second_fault):
        if extra is not None:
            kernel.faults.append(extra)
    for fault in kernel.faults:
        fault.after_writes += kernel.writes  # counted from here, not from the prelude
    errors = scenario.sync(h)
    assert scenario.fault.fired, "the fault was never reached"
    for extra in (scenario.undo_fault, scenario.second_fault):
        assert extra is None or extra.fired
    if scenario.as_it_was:
        assert kernel.state() == before, "the failed apply left changes behind"
    assert_foreign_intact(kernel, foreign)
    if scenario.names is None:
        assert errors == ref_errors
    else:
        expected = err(scenario.fault.errno) if scenario.names == "from errno" else scenario.names
        assert errors and expected in "; ".join(errors), errors
    kernel.faults.clear()

    for _ in range(3):
        if kernel.state() == desired:
            break
        scenario.sync(h)
        assert_foreign_intact(kernel, foreign)
    assert kernel.state() == desired, f"not converged after 3 syncs (started from {before})"


def test_desired_state_is_the_documented_one() -> None:
    """The reference the scenarios converge to is right in itself: c1's
    routes in its tables and the reverse-path table, Incus's copy in main
    gone, one rule per family, the foreign things as they were."""
    kernel = FakeKernel()
    foreign = seed(kernel)
    h = Harness(kernel)
    assert START_C1(h) == []
    veth1 = kernel.links["veth1"]
    c1_v4, c1_v6 = v4("198.51.100.10"), v6("2001:db8::10")
    mine = {
        (kr.route.family, kr.route.table, kr.protocol)
        for kr in kernel.routes.values()
        if kr.oif == veth1 and kr.protocol != STATIC
    }
    assert mine == {
        (AF_INET, 100, OURS),
        (AF_INET, 200, OURS),
        (AF_INET, RP, OURS),
        (AF_INET6, 100, OURS),
        (AF_INET6, RP, OURS),
    }
    assert all(
        kr.route.dst in (c1_v4, c1_v6)
        for kr in kernel.routes.values()
        if kr.oif == veth1 and kr.protocol == OURS
    )
    ours = [kr.rule for kr in kernel.rules if kr.protocol == OURS]
    assert sorted(ours) == sorted(
        [Rule(AF_INET, RP, PRIO, None, 0, None), Rule(AF_INET6, RP, PRIO, None, 0, None)]
    )
    assert_foreign_intact(kernel, foreign)
    assert stop(C1)(h) == []
    assert not [kr for kr in kernel.routes.values() if kr.protocol == OURS]
    assert not [kr for kr in kernel.rules if kr.protocol == OURS]
    assert_foreign_intact(kernel, foreign)


def test_fake_kernel_refuses_and_the_real_rollback_undoes() -> None:
    """The fake answers as the kernel does, and the real batch code above
    it rolls back: a duplicate add (EEXIST) after a good add leaves nothing;
    a delete of a missing route is ESRCH."""
    from incus_host_tables.netlink.kernel import ApplyError, Change, ChangeKind

    kernel = FakeKernel()
    seed(kernel)
    nl = FakeNetlink(kernel)
    veth1 = kernel.links["veth1"]
    before = kernel.state()
    fresh = Route(AF_INET, 300, v4("198.51.100.10"), 32, None, 0)
    taken = Route(AF_INET, 100, v4("203.0.113.0"), 24, None, 0)  # bird's key
    with pytest.raises(ApplyError) as info:
        nl.apply(
            [
                Change(ChangeKind.ADD_ROUTE, fresh, veth1),
                Change(ChangeKind.ADD_ROUTE, taken, veth1),
            ],
            OURS,
            "veth1",
        )
    assert info.value.errno == errno.EEXIST and info.value.rolled_back
    assert "203.0.113.0/24" in str(info.value)
    assert kernel.state() == before
    missing = kernel.seed_route(fresh, veth1, OURS)
    del kernel.routes[(AF_INET, 300, fresh.dst, 32, 0)]
    with pytest.raises(ApplyError) as info:
        nl.apply([Change(ChangeKind.DEL_ROUTE, missing, veth1)], OURS, "veth1")
    assert info.value.errno == errno.ESRCH
    assert kernel.state() == before
    # What the engine reads back is what the codec encoded.
    assert (
        nl.routes(AF_INET, table=100, protocol=BIRD)[0].raw
        == kernel.routes[(AF_INET, 100, taken.dst, 24, 0)].raw
    )
