"""A change the kernel refuses rolls back the whole apply: the kernel's
routes and rules read exactly as before, byte for byte."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from incus_host_tables.engine import PROTOCOL, Engine
from incus_host_tables.netlink.kernel import CHUNK_MESSAGES, ApplyError, Change
from lab.netns import NetNS

from .helpers import incus_routes, intent, run_cli

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"
CONFIG = {
    "ipv4.address": V4,
    "ipv6.address": V6,
    "user.ipv4.host_tables": "100,200",
    "user.ipv6.host_tables": "100,200",
}


@pytest.fixture
def conflicted(host: NetNS) -> NetNS:
    """Incus's start state for vh0 (table 100 + main) and, in table 200, the
    same IPv4 prefix already routed to another interface."""
    host.add_veth("vo0", "vp0")
    incus_routes(host, "vh0", [V4], [V6], table=100)
    host.ip("route", "add", f"{V4}/32", "dev", "vo0", "table", "200")
    return host


def test_conflict_fails_naming_route_and_reason_and_rolls_back(
    conflicted: NetNS, make_engine: Callable[..., Engine]
) -> None:
    before = conflicted.state()
    engine = make_engine(conflicted)

    with pytest.raises(ApplyError) as caught:
        engine.converge("vh0", intent(CONFIG))

    err = caught.value
    assert err.change == f"add-route {V4}/32 dev vh0 table 200"
    assert err.errno == 17
    assert "File exists" in str(err)
    assert err.rolled_back
    assert "every change of this apply was undone" in str(err)
    # Whatever else of the batch went through (the adds before it; the adopt
    # in table 100 and the delete from main after it, if sent) is undone.
    assert conflicted.state() == before


def test_conflict_in_ipv6_rolls_back_too(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    host.add_veth("vo0", "vp0")
    incus_routes(host, "vh0", [V4], [V6], table=100)
    host.ip("-6", "route", "add", f"{V6}/128", "dev", "vo0", "table", "200")
    before = host.state()

    with pytest.raises(ApplyError) as caught:
        make_engine(host).converge("vh0", intent(CONFIG))

    assert caught.value.change == f"add-route {V6}/128 dev vh0 table 200"
    assert "File exists" in str(caught.value)
    assert host.state() == before


def test_cli_exits_3_and_names_the_route(conflicted: NetNS) -> None:
    before = conflicted.state()

    proc = run_cli(conflicted, "apply", "vh0", CONFIG)

    assert proc.returncode == 3, proc.stderr
    assert f"add-route {V4}/32 dev vh0 table 200: File exists" in proc.stderr
    assert proc.stdout == ""
    assert conflicted.state() == before


def test_later_failure_undoes_an_adopt_and_a_main_delete(
    conflicted: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """One batch, in this order: re-mark table 100's copy as the plugin's,
    delete main's copy, then add to table 200 (refused). The rollback must
    put main's route back and give table 100's copy its protocol back."""
    before = conflicted.state()
    engine = make_engine(conflicted)
    oif = conflicted.ifindex("vh0")
    present = {kr.route.table: kr for kr in engine.link_routes(oif) if kr.route.family == 2}
    in_100, in_main = present[100], present[254]
    assert (in_100.protocol, in_main.protocol) == (3, 3)  # boot, as `ip route add` makes
    changes = [
        Change("adopt-route", in_100),
        Change("del-route", in_main),
        Change("add-route", in_100.route._replace(table=200), oif),
    ]

    with pytest.raises(ApplyError) as caught:
        engine.nl.apply(changes, PROTOCOL, "vh0")

    assert caught.value.change == f"add-route {V4}/32 dev vh0 table 200"
    assert caught.value.rolled_back
    assert conflicted.state() == before
    after = {kr.route.table: kr for kr in engine.link_routes(oif) if kr.route.family == 2}
    assert after[254].protocol == 3
    assert after[100].protocol == 3


def test_failed_rule_delete_is_undone_in_place(
    conflicted: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """Tables 150,200 -> 200,120 where the add to 120 conflicts: the same
    batch deletes the copies and rule of table 150, and the rollback must
    restore them. The kernel appends a re-added rule after the rules of
    equal preference, so `ip rule` only reads the same if the rollback
    keeps their order."""
    conflicted.ip("route", "del", f"{V4}/32", "dev", "vo0", "table", "200")
    engine = make_engine(conflicted)
    tables = {"user.ipv4.host_tables": "150,200", "user.ipv6.host_tables": "150,200"}
    engine.converge("vh0", intent({**CONFIG, **tables}))
    conflicted.ip("route", "add", f"{V4}/32", "dev", "vo0", "table", "120")
    before = conflicted.state()

    moved = {"user.ipv4.host_tables": "200,120", "user.ipv6.host_tables": "200,120"}
    with pytest.raises(ApplyError) as caught:
        engine.converge("vh0", intent({**CONFIG, **moved}))

    assert caught.value.change == f"add-route {V4}/32 dev vh0 table 120"
    assert caught.value.rolled_back
    assert conflicted.state() == before


def test_large_apply_rolls_back_every_chunk(
    host: NetNS, make_engine: Callable[..., Engine], capsys: pytest.CaptureFixture[str]
) -> None:
    """2,000 addresses x tables 100,200 and the reverse-path table = 6,000
    route adds over more than one chunk; the last one of table 200
    conflicts. The batch also deletes Incus's 2,000 main copies after the
    adds: whatever went through is undone."""
    host.add_veth("vo0", "vp0")
    addresses = [f"198.18.{i // 250}.{i % 250 + 1}" for i in range(2000)]
    incus_routes(host, "vh0", addresses, [], table=None)
    host.ip("route", "add", f"{addresses[-1]}/32", "dev", "vo0", "table", "200")
    config = {"ipv4.address": ",".join(addresses), "user.ipv4.host_tables": "100,200"}
    before = host.state()
    engine = make_engine(host)

    dp = engine.plan_device("vh0", intent(config))
    changes = dp.changes()
    assert len(changes) == 1 + 6000 + 2000  # rule, adds, deletes from main
    assert (
        changes[1 + 4000 - 1].describe("vh0") == f"add-route {addresses[-1]}/32 dev vh0 table 200"
    )
    assert CHUNK_MESSAGES < 1 + 4000  # the failure is not in the first chunk
    started = time.perf_counter()
    with pytest.raises(ApplyError) as caught:
        engine.apply(dp)
    failed_after = time.perf_counter() - started

    assert caught.value.change == f"add-route {addresses[-1]}/32 dev vh0 table 200"
    assert caught.value.rolled_back
    assert host.state() == before

    # And without the conflict the same apply goes through.
    host.ip("route", "del", f"{addresses[-1]}/32", "dev", "vo0", "table", "200")
    started = time.perf_counter()
    engine.converge("vh0", intent(config))
    applied_after = time.perf_counter() - started
    routes = host.route_lines("proto", "158")
    assert len(routes) == 6000
    assert host.route_lines("table", "main", "dev", "vh0") == []
    with capsys.disabled():
        print(
            f"\n[kernel] 2,000 x 2 tables: failed apply + rollback {failed_after:.3f} s; "
            f"plan + apply {applied_after:.3f} s"
        )
