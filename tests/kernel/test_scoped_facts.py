"""Scoped reads see what a full read sees (facts.py, applied.py).

For each state of an interface -- fresh; the plugin's routes in a table no
longer chosen, with and without the applied-tables record; Incus's copies
in main and in the table of its own key; a foreign more specific route over
an instance prefix in main; foreign routes in the chosen tables; a plugin
route in a table no record names -- the plan made from the scoped read
equals the plan made from a full read (every table, filtered by interface),
byte for byte, for an apply and for a cleanup. Then the scoped apply
reaches exactly the desired routes, and every foreign route stays as it was.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import pytest

from incus_host_tables.applied import AppliedStore, RecordState
from incus_host_tables.config import DeviceIntent
from incus_host_tables.desired import desired_routes
from incus_host_tables.engine import DevicePlan, Engine
from incus_host_tables.facts import FULL, MAIN_PROBE_LIMIT, ReadScope
from incus_host_tables.model import AF_INET, AF_INET6, KernelRoute
from incus_host_tables.netlink.dump import DumpedRoutes
from incus_host_tables.netlink.kernel import Netlink, RouteQuery

from .helpers import NetNS, incus_routes, intent

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"
ISOLATED = {"ipv4.address": V4, "ipv6.address": V6, "user.ipv4.host_tables": "100",
            "user.ipv6.host_tables": "100"}  # fmt: skip


def norm(dp: DevicePlan) -> tuple[object, ...]:
    """A plan as a value that ignores the order of reading."""
    p = dp.plan
    return (
        sorted(p.rule_add),
        sorted(p.route_add, key=repr),
        sorted(p.route_adopt),
        sorted(p.route_delete),
        sorted(p.rule_delete),
        sorted(p.rule_move),
        sorted(p.route_conflict, key=repr),
    )


def everything(engine: Engine) -> list[KernelRoute]:
    return [kr for fam in (AF_INET, AF_INET6) for kr in engine.nl.routes(fam)]


def foreign(engine: Engine) -> set[bytes]:
    """Every route that is neither the plugin's nor Incus's (boot) copy, exactly."""
    return {kr.raw for kr in everything(engine) if kr.protocol not in (158, 3)}


def main_dumps(engine: Engine, ifname: str, want: DeviceIntent) -> set[int]:
    """The families whose main table a scoped read of ``want`` dumps (the
    others it probes), and no dump without a table filter."""
    seen: list[RouteQuery] = []
    real = engine.nl.dumps_many

    def spy(queries: Sequence[RouteQuery]) -> list[DumpedRoutes]:
        seen.extend(queries)
        return real(queries)

    engine.nl.dumps_many = spy  # type: ignore[method-assign]
    try:
        engine.device_facts(ifname, want)
    finally:
        del engine.nl.dumps_many
    assert seen, "the read made no dump at all: the spy sees nothing"
    assert all(q.table for q in seen), seen
    return {q.family for q in seen if q.table == 254}


def assert_scoped_equals_full(
    engine: Engine,
    ifname: str,
    want: DeviceIntent,
    scope: ReadScope,
    main_dumped: set[int] | None = None,
) -> DevicePlan:
    scoped = engine.plan_device(ifname, want)
    full = engine.plan_device(ifname, want, how=FULL)
    assert norm(scoped) == norm(full)
    assert scoped.plan or not full.plan
    facts, _ = engine.device_facts(ifname, want)
    assert facts.scope is scope
    if scope is ReadScope.SCOPED:
        assert main_dumps(engine, ifname, want) == (main_dumped or set())
    assert norm(engine.plan_cleanup(ifname, want)) == norm(
        engine.plan_cleanup(ifname, want, how=FULL)
    )
    return scoped


def converge_exactly(engine: Engine, host: NetNS, ifname: str, want: DeviceIntent) -> None:
    """Apply (scoped); the interface then holds exactly the desired routes
    of the plugin's, no copy of Incus's is left where it is not wanted, and
    every foreign route is byte-identical."""
    before = foreign(engine)
    engine.converge(ifname, want)
    index = host.ifindex(ifname)
    on_it = [kr for kr in everything(engine) if kr.oif == index]
    assert {kr.route for kr in on_it if kr.protocol == 158} == set(desired_routes(want))
    assert not [kr for kr in on_it if kr.protocol == 3]
    assert foreign(engine) == before
    assert not engine.plan_device(ifname, want, how=FULL).plan
    engine.cleanup(ifname, want)
    assert not [kr for kr in everything(engine) if kr.oif == index and kr.protocol == 158]
    assert foreign(engine) == before
    assert AppliedStore().read(ifname, index).state is RecordState.NONE


def foreign_routes(host: NetNS) -> None:
    """Routes of other interfaces and protocols in main, in the chosen
    table, and in a table of their own."""
    host.add_veth("vo0", "vo1")
    host.batch(
        [f"route add 10.{i}.0.0/16 dev vo0 proto static" for i in range(20)]
        + [f"route add 10.{i}.0.0/16 dev vo0 table 100 proto bird" for i in range(5)]
        + [f"route add 10.{i}.0.0/16 dev vo0 table 300 proto zebra" for i in range(5)]
        + ["route add default dev vo0 proto static", "route add ::/0 dev vo0 proto static"]
        + [f"route add 2001:db8:{i}::/48 dev vo0 table 100 proto bird" for i in range(5, 9)]
        + ["route add 203.0.113.77/32 dev vh0 table 100 proto static"]
    )


def test_a_fresh_interface_is_read_scoped(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    foreign_routes(host)
    engine = make_engine(host)
    want = intent(ISOLATED)
    assert_scoped_equals_full(engine, "vh0", want, ReadScope.SCOPED)
    converge_exactly(engine, host, "vh0", want)


def test_incus_copies_in_main_and_in_its_own_key_table(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """Incus's copies in main (probed) and in the table of the deprecated
    key that the new key overrides (dumped): both removed, as a full read
    has them removed."""
    foreign_routes(host)
    incus_routes(host, "vh0", [V4], [V6], table=300)
    engine = make_engine(host)
    want = intent({**ISOLATED, "ipv4.host_table": "300", "ipv6.host_table": "300"})
    plan = assert_scoped_equals_full(engine, "vh0", want, ReadScope.SCOPED)
    assert {kr.route.table for kr in plan.plan.route_delete} == {254, 300}
    converge_exactly(engine, host, "vh0", want)


def test_main_chosen_adopts_by_probe(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    """Only main chosen (no reverse-path copy): the probes see Incus's copy
    and later the plugin's own, in main."""
    foreign_routes(host)
    incus_routes(host, "vh0", [V4], [V6], table=None)
    engine = make_engine(host)
    want = intent({"ipv4.address": V4, "ipv6.address": V6})
    plan = assert_scoped_equals_full(engine, "vh0", want, ReadScope.SCOPED)
    assert len(plan.plan.route_adopt) == 2
    engine.converge("vh0", want)
    # The address moves: the old one, the plugin's in main, is found by the
    # record's prefixes and removed.
    moved = intent({"ipv4.address": "198.51.100.11", "ipv6.address": V6})
    plan = assert_scoped_equals_full(engine, "vh0", moved, ReadScope.SCOPED)
    assert [kr.route.table for kr in plan.plan.route_delete] == [254]
    converge_exactly(engine, host, "vh0", moved)


def test_a_table_no_longer_chosen_is_read_from_the_record(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    foreign_routes(host)
    engine = make_engine(host)
    engine.converge("vh0", intent({**ISOLATED, "user.ipv4.host_tables": "200"}))
    plan = assert_scoped_equals_full(engine, "vh0", intent(ISOLATED), ReadScope.SCOPED)
    assert {kr.route.table for kr in plan.plan.route_delete} == {200}
    converge_exactly(engine, host, "vh0", intent(ISOLATED))


@pytest.mark.parametrize("damage", ["missing", "corrupt", "other-index"])
def test_a_lost_record_means_a_full_read(
    host: NetNS, make_engine: Callable[..., Engine], damage: str
) -> None:
    """The plugin's routes in table 200 (no longer chosen) and their
    reverse-path copies, but no usable record: the reverse-path copies give
    them away, and the read is a full one."""
    foreign_routes(host)
    engine = make_engine(host)
    engine.converge("vh0", intent({**ISOLATED, "user.ipv4.host_tables": "200"}))
    path = os.path.join(os.environ["INCUS_HOST_TABLES_RUN_DIR"], "applied", "vh0")
    if damage == "missing":
        os.unlink(path)
    elif damage == "corrupt":
        with open(path, "a", encoding="ascii") as f:
            f.write("garbage\n")
    else:
        with open(path, encoding="ascii") as f:
            text = f.read()
        index = host.ifindex("vh0")
        with open(path, "w", encoding="ascii") as f:
            f.write(text.replace(f"ifindex {index}\n", f"ifindex {index + 100}\n"))
    plan = assert_scoped_equals_full(engine, "vh0", intent(ISOLATED), ReadScope.FULL)
    assert 200 in {kr.route.table for kr in plan.plan.route_delete}
    converge_exactly(engine, host, "vh0", intent(ISOLATED))


def test_an_earlier_versions_route_in_an_unrecorded_table(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """A plugin route in table 500 with its reverse-path copy, made without
    a record (as an earlier version did): a full read."""
    foreign_routes(host)
    host.batch(
        [
            f"route add {V4}/32 dev vh0 table 500 proto 158",
            f"route add {V4}/32 dev vh0 table 1158 proto 158",
        ]
    )
    engine = make_engine(host)
    plan = assert_scoped_equals_full(engine, "vh0", intent(ISOLATED), ReadScope.FULL)
    assert 500 in {kr.route.table for kr in plan.plan.route_delete}
    converge_exactly(engine, host, "vh0", intent(ISOLATED))


def test_a_more_specific_foreign_route_over_an_instance_prefix(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """Incus's copy of the extra route 203.0.113.0/24 in main, and an
    operator's 203.0.113.0/25 over it (v6 alike): the probes cannot tell
    what is at the /24, so main is dumped for the device."""
    foreign_routes(host)
    config = {**ISOLATED, "ipv4.routes": "203.0.113.0/24", "ipv6.routes": "2001:db8:99::/48"}
    incus_routes(host, "vh0", [V4], [V6], table=None)
    host.batch(
        [
            f"route add 203.0.113.0/24 via {V4} dev vh0 onlink",
            "route add 203.0.113.0/25 dev vo0 proto static",
            f"route add 2001:db8:99::/48 via {V6} dev vh0",
            "route add 2001:db8:99::/64 dev vo0 proto static",
        ]
    )
    engine = make_engine(host)
    plan = assert_scoped_equals_full(
        engine, "vh0", intent(config), ReadScope.SCOPED, {AF_INET, AF_INET6}
    )
    assert len([kr for kr in plan.plan.route_delete if kr.route.table == 254]) == 4
    converge_exactly(engine, host, "vh0", intent(config))


def test_many_prefixes_dump_main(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    """More prefixes than MAIN_PROBE_LIMIT: main is dumped, table-scoped."""
    foreign_routes(host)
    addresses = [f"198.51.100.{i}" for i in range(1, MAIN_PROBE_LIMIT + 2)]
    incus_routes(host, "vh0", addresses, [], table=None)
    engine = make_engine(host)
    want = intent({**ISOLATED, "ipv4.address": ",".join(addresses)})
    plan = assert_scoped_equals_full(engine, "vh0", want, ReadScope.SCOPED, {AF_INET})
    assert len(plan.plan.route_delete) == len(addresses)
    converge_exactly(engine, host, "vh0", want)


def test_probe_answers_are_the_dumped_routes(host: NetNS) -> None:
    """What a probe shows of a route is what a dump shows, byte for byte
    (it is sent back as is to delete or restore it)."""
    incus_routes(host, "vh0", [V4], [V6], table=None)
    index = host.ifindex("vh0")
    with host.inside():
        nl = Netlink()
    with nl:
        for family, address, iif in ((AF_INET, V4, None), (AF_INET6, V6, index)):
            dumped = [kr for kr in nl.routes(family, oif=index, table=254) if kr.protocol == 3]
            (answer,) = nl.probe(family, [dumped[0].route.dst], iif=iif)
            assert answer == dumped[0], address
        assert nl.fib_lookup(254, [dumped[0].route.dst[:0] + bytes([198, 51, 100, 10])]) == [32]
        assert nl.fib_lookup(254, [bytes([198, 51, 100, 99])]) == [-1]


def test_what_only_a_full_read_sees(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    """A protocol-158 route made by hand in a table no record names, with no
    reverse-path copy, next to a recorded device: the scoped read cannot see
    it (it is not where the plugin puts routes); the full read -- status,
    the periodic resync -- removes it, and nothing else."""
    foreign_routes(host)
    engine = make_engine(host)
    engine.converge("vh0", intent(ISOLATED))
    host.ip("route", "add", f"{V4}/32", "dev", "vh0", "table", "500", "proto", "158")
    assert not engine.plan_device("vh0", intent(ISOLATED)).plan
    full = engine.plan_device("vh0", intent(ISOLATED), how=FULL)
    assert [kr.route.table for kr in full.plan.route_delete] == [500]
    engine.converge("vh0", intent(ISOLATED), how=FULL)
    assert host.route_lines("table", "500") == []
    converge_exactly(engine, host, "vh0", intent(ISOLATED))
