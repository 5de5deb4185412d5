"""The engine against real routing tables: where the routes end up, which
rules exist, and what it leaves alone."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from incus_host_tables.engine import Engine
from lab.netns import NetNS

from .helpers import incus_routes, intent

pytestmark = pytest.mark.kernel

V4 = "198.51.100.10"
V6 = "2001:db8::10"
PLAIN = {"ipv4.address": V4, "ipv6.address": V6}


def both(key: str, value: str) -> dict[str, str]:
    """V4 and V6 with ``key`` (``{fam}`` for ipv4 / ipv6) set to ``value``."""
    return {**PLAIN, key.format(fam="ipv4"): value, key.format(fam="ipv6"): value}


BOTH_100_200 = both("user.{fam}.host_tables", "100,200")
MAIN_RULES_V4 = [
    "0:\tfrom all lookup local",
    "32766:\tfrom all lookup main",
    "32767:\tfrom all lookup default",
]
MAIN_RULES_V6 = ["0:\tfrom all lookup local", "32766:\tfrom all lookup main"]


def rp_rule(pref: int = 1100) -> str:
    """The reverse-path rule of a family (the same text for both)."""
    return f"{pref}:\tfrom all iif lo lookup 1158 proto 158"


def assert_only_in(host: NetNS, table: int) -> None:
    """V4 and V6 are in ``table`` and the reverse-path table only, with the
    reverse-path rule of each family and no other plugin rule."""
    assert sorted(mentions(host.route_lines(), V4)) == sorted(
        f"{V4} dev vh0 table {t} proto 158 scope link" for t in (table, 1158)
    )
    assert sorted(mentions(host.route_lines(v6=True), V6)) == sorted(
        f"{V6} dev vh0 table {t} proto 158 metric 1024 pref medium" for t in (table, 1158)
    )
    assert mentions(host.rule_lines(), "proto 158") == [rp_rule()]
    assert mentions(host.rule_lines(v6=True), "proto 158") == [rp_rule()]


def assert_main_only(host: NetNS) -> None:
    """V4 and V6 in main only, as the plugin's routes, and no plugin rule."""
    assert sorted(mentions(host.route_lines(), V4)) == sorted(
        [f"{V4} dev vh0 proto 158 scope link"]
    )
    assert sorted(mentions(host.route_lines(v6=True), V6)) == sorted(
        [f"{V6} dev vh0 proto 158 metric 1024 pref medium"]
    )
    assert host.rule_lines() == MAIN_RULES_V4
    assert host.rule_lines(v6=True) == MAIN_RULES_V6


def mentions(lines: list[str], *needles: str) -> list[str]:
    """The lines with any of ``needles`` (route lines are compared sorted:
    `table all` lists IPv4 tables in the kernel's hash order)."""
    return [line for line in lines if any(n in line for n in needles)]


def test_incus_start_state_moves_to_chosen_tables(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    assert host.route_lines("table", "main", V4) == [f"{V4} dev vh0 scope link"]
    assert host.route_lines("table", "main", V6, v6=True) == [
        f"{V6} dev vh0 metric 1024 pref medium"
    ]

    make_engine(host).converge("vh0", intent(BOTH_100_200))

    assert host.route_lines("table", "main", V4) == []
    assert host.route_lines("table", "main", V6, v6=True) == []
    for table in (100, 200):
        assert host.route_lines("table", str(table), V4) == [f"{V4} dev vh0 proto 158 scope link"]
        assert host.route_lines("table", str(table), V6, v6=True) == [
            f"{V6} dev vh0 proto 158 metric 1024 pref medium"
        ]
    # The protocol marks them as the plugin's, in every table (iproute2
    # leaves out the protocol it filters on), and no Incus-made (proto boot)
    # copy of them is left anywhere.
    # One copy in the reverse-path table, whatever the number of tables.
    assert sorted(host.route_lines("proto", "158")) == sorted(
        [
            f"{V4} dev vh0 table 100 scope link",
            f"{V4} dev vh0 table 200 scope link",
            f"{V4} dev vh0 table 1158 scope link",
        ]
    )
    assert sorted(host.route_lines("proto", "158", v6=True)) == sorted(
        [
            f"{V6} dev vh0 table 100 metric 1024 pref medium",
            f"{V6} dev vh0 table 200 metric 1024 pref medium",
            f"{V6} dev vh0 table 1158 metric 1024 pref medium",
        ]
    )
    assert host.route_lines("proto", "boot", "dev", "vh0") == []
    assert host.route_lines("proto", "boot", "dev", "vh0", v6=True) == []
    # One rule per family, whatever the number of tables.
    assert host.rule_lines() == [MAIN_RULES_V4[0], rp_rule(), *MAIN_RULES_V4[1:]]
    assert host.rule_lines(v6=True) == [MAIN_RULES_V6[0], rp_rule(), *MAIN_RULES_V6[1:]]


def test_second_apply_plans_nothing_and_changes_nothing(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    engine = make_engine(host)
    first = engine.converge("vh0", intent(BOTH_100_200))
    # Per family: the rule, add to 200 and to the reverse-path table, adopt
    # in 100, delete from main.
    assert first.plan.count() == 10
    after_first = host.state()

    second = engine.converge("vh0", intent(BOTH_100_200))

    assert not second.plan
    assert second.lines() == []
    assert host.state() == after_first


def test_legacy_host_table_key_means_that_table_only(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    make_engine(host).converge("vh0", intent(both("{fam}.host_table", "100")))

    assert_only_in(host, 100)


def test_no_table_keys_keeps_main_only_without_rules(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=None)
    engine = make_engine(host)

    engine.converge("vh0", intent(PLAIN))
    assert_main_only(host)

    # Tables chosen, then the keys removed again: back to main, rules gone.
    engine.converge("vh0", intent(BOTH_100_200))
    assert sorted(mentions(host.route_lines("table", "main"), V4)) == sorted([])
    engine.converge("vh0", intent(PLAIN))
    assert_main_only(host)


def test_main_listed_explicitly_keeps_main_and_table(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    make_engine(host).converge("vh0", intent(both("user.{fam}.host_tables", "254,100")))

    assert sorted(mentions(host.route_lines(), V4)) == sorted(
        [
            f"{V4} dev vh0 table 100 proto 158 scope link",
            f"{V4} dev vh0 proto 158 scope link",
            f"{V4} dev vh0 table 1158 proto 158 scope link",
        ]
    )
    assert sorted(mentions(host.route_lines(v6=True), V6)) == sorted(
        [
            f"{V6} dev vh0 table 100 proto 158 metric 1024 pref medium",
            f"{V6} dev vh0 proto 158 metric 1024 pref medium",
            f"{V6} dev vh0 table 1158 proto 158 metric 1024 pref medium",
        ]
    )
    # Table 100 is not main: the reverse-path copy and rule are there.
    assert mentions(host.rule_lines(), "proto 158") == [rp_rule()]
    assert mentions(host.rule_lines(v6=True), "proto 158") == [rp_rule()]


def test_extra_routes_go_via_the_instance_in_every_table(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    # Incus 6.0.4 installs ipv4.routes in main only.
    host.ip("route", "add", "203.0.113.0/24", "via", V4, "dev", "vh0")
    host.ip("-6", "route", "add", "2001:db8:99::/48", "via", V6, "dev", "vh0")
    config = {
        **BOTH_100_200,
        "ipv4.routes": "203.0.113.0/24",
        "ipv6.routes": "2001:db8:99::/48",
    }
    make_engine(host).converge("vh0", intent(config))

    assert sorted(mentions(host.route_lines(), "203.0.113.0")) == sorted(
        [
            f"203.0.113.0/24 via {V4} dev vh0 table 100 proto 158",
            f"203.0.113.0/24 via {V4} dev vh0 table 200 proto 158",
            f"203.0.113.0/24 via {V4} dev vh0 table 1158 proto 158",
        ]
    )
    assert sorted(mentions(host.route_lines(v6=True), "2001:db8:99::")) == sorted(
        [
            f"2001:db8:99::/48 via {V6} dev vh0 table 100 proto 158 metric 1024 pref medium",
            f"2001:db8:99::/48 via {V6} dev vh0 table 200 proto 158 metric 1024 pref medium",
            f"2001:db8:99::/48 via {V6} dev vh0 table 1158 proto 158 metric 1024 pref medium",
        ]
    )
    # No rule per prefix: the extra routes' copies share the family's rule.
    assert host.rule_lines() == [MAIN_RULES_V4[0], rp_rule(), *MAIN_RULES_V4[1:]]
    assert host.rule_lines(v6=True) == [MAIN_RULES_V6[0], rp_rule(), *MAIN_RULES_V6[1:]]
    # The host's own lookups (input interface lo) find it through the rule.
    assert host.ip("route", "get", "203.0.113.7").startswith(
        f"203.0.113.7 via {V4} dev vh0 table 1158"
    )


def test_several_addresses(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    v4 = ["198.51.100.10", "198.51.100.11", "198.18.0.5"]
    v6 = ["2001:db8::10", "2001:db8:1::77"]
    incus_routes(host, "vh0", v4, v6, table=100)
    config = {
        "ipv4.address": ",".join(v4),
        "ipv6.address": ",".join(v6),
        "user.ipv4.host_tables": "100,200",
        "user.ipv6.host_tables": "100,200",
    }
    make_engine(host).converge("vh0", intent(config))

    # (iproute2 leaves out the device it filters on)
    assert sorted(host.route_lines("dev", "vh0")) == sorted(
        f"{a} table {t} proto 158 scope link" for a in v4 for t in (100, 200, 1158)
    )
    assert sorted(mentions(host.route_lines("dev", "vh0", v6=True), "2001:db8:")) == sorted(
        f"{a} table {t} proto 158 metric 1024 pref medium" for a in v6 for t in (100, 200, 1158)
    )
    assert mentions(host.rule_lines(), "proto 158") == [rp_rule()]


def test_changing_tables_removes_old_copies_and_rules(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    engine = make_engine(host)
    config = {**BOTH_100_200, "ipv4.routes": "203.0.113.0/24"}
    engine.converge("vh0", intent(config))
    assert mentions(host.rule_lines(), "proto 158") == [rp_rule()]

    moved = {
        **config,
        "user.ipv4.host_tables": "250",
        "user.ipv6.host_tables": "250",
    }
    engine.converge("vh0", intent(moved))

    assert sorted(mentions(host.route_lines(), V4)) == sorted(
        [
            f"{V4} dev vh0 table 250 proto 158 scope link",
            f"203.0.113.0/24 via {V4} dev vh0 table 250 proto 158",
            f"{V4} dev vh0 table 1158 proto 158 scope link",
            f"203.0.113.0/24 via {V4} dev vh0 table 1158 proto 158",
        ]
    )
    assert sorted(mentions(host.route_lines(v6=True), V6)) == sorted(
        [
            f"{V6} dev vh0 table 250 proto 158 metric 1024 pref medium",
            f"{V6} dev vh0 table 1158 proto 158 metric 1024 pref medium",
        ]
    )
    assert mentions(host.rule_lines(), "proto 158") == [rp_rule()]
    assert mentions(host.rule_lines(v6=True), "proto 158") == [rp_rule()]

    # Back to main only: no reverse-path copy, no rule.
    engine.converge("vh0", intent(PLAIN))
    assert sorted(mentions(host.route_lines(), V4)) == sorted(
        [f"{V4} dev vh0 proto 158 scope link"]
    )
    assert mentions(host.rule_lines(), "proto 158") == []
    assert mentions(host.rule_lines(v6=True), "proto 158") == []


def test_other_interfaces_and_kernel_routes_are_left_alone(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    host.add_veth("vo0", "vp0")
    incus_routes(host, "vh0", [V4], [V6], table=100)
    # Another instance's and an operator's routes in the same tables.
    incus_routes(host, "vo0", ["198.51.100.20"], ["2001:db8::20"], table=100)
    host.ip("route", "add", "198.18.7.0/24", "dev", "vo0", "table", "200", "proto", "static")
    host.ip("-6", "route", "add", "2001:db8:7::/64", "dev", "vo0", "table", "200")
    host.ip("route", "add", "198.18.8.0/24", "dev", "vo0")
    # An unrelated route on the instance's own interface (not an instance
    # prefix, not the plugin's): not the plugin's to remove.
    host.ip("route", "add", "198.18.9.0/24", "dev", "vh0", "table", "100", "proto", "static")

    def unrelated() -> list[str]:
        lines = host.state().splitlines()
        return [line for line in lines if V4 not in line and V6 not in line]

    before = unrelated()
    assert any(line.startswith("fe80::/64 dev vh0 proto kernel") for line in before)
    assert any(line.startswith("local fe80::") and "dev vh0" in line for line in before)
    engine = make_engine(host)

    engine.converge("vh0", intent(BOTH_100_200))
    assert [line for line in unrelated() if "proto 158" not in line] == before

    engine.cleanup("vh0", intent(BOTH_100_200))
    assert unrelated() == before
    assert "198.51.100.20 dev vo0 table 100 scope link" in host.route_lines()


def test_cleanup_removes_everything_of_the_device(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    baseline = host.state()
    incus_routes(host, "vh0", [V4], [V6], table=100)
    engine = make_engine(host)
    config = {**BOTH_100_200, "ipv4.routes": "203.0.113.0/24", "ipv6.routes": "2001:db8:99::/48"}
    engine.converge("vh0", intent(config))

    engine.cleanup("vh0", intent(config))

    assert host.state() == baseline


def test_tables_above_255_reach_the_kernel(host: NetNS, make_engine: Callable[..., Engine]) -> None:
    """The user. keys take 32-bit table IDs. Moving 100,200 -> 1001 must use
    RTA_TABLE / FRA_TABLE, not the 8-bit field."""
    incus_routes(host, "vh0", [V4], [V6], table=100)
    engine = make_engine(host)
    engine.converge("vh0", intent(BOTH_100_200))
    moved = intent(both("user.{fam}.host_tables", "1001"))

    engine.converge("vh0", moved)

    assert_only_in(host, 1001)
    assert not engine.plan_device("vh0", moved).plan
