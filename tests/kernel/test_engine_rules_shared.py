"""The reverse-path rule of a family is shared by every device with a copy
in the reverse-path table: it lives as long as one of them needs it, and
resync repairs it and removes every other plugin rule."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from incus_host_tables.config import ConfigError, DeviceIntent, FamilyIntent
from incus_host_tables.engine import Engine
from lab.netns import NetNS

from .helpers import incus_routes, intent

pytestmark = pytest.mark.kernel

A4, A6 = "198.51.100.10", "2001:db8::10"
B4, B6 = "198.51.100.11", "2001:db8::11"
RP_RULE = "1100:\tfrom all iif lo lookup 1158 proto 158"


def config(v4: str, v6: str, tables: str = "100") -> dict[str, str]:
    return {
        "ipv4.address": v4,
        "ipv6.address": v6,
        "user.ipv4.host_tables": tables,
        "user.ipv6.host_tables": tables,
    }


def plugin_rules(ns: NetNS) -> tuple[list[str], list[str]]:
    return (
        [line for line in ns.rule_lines() if "proto 158" in line],
        [line for line in ns.rule_lines(v6=True) if "proto 158" in line],
    )


@pytest.fixture
def two(host: NetNS) -> NetNS:
    """H with a second instance interface vh1."""
    host.add_veth("vh1", "vc1")
    return host


def test_rule_outlives_the_first_of_two_devices(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine(two)
    engine.converge("vh0", intent(config(A4, A6)))
    engine.converge("vh1", intent(config(B4, B6)))
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])

    dp = engine.cleanup("vh0", intent(config(A4, A6)))
    assert dp.plan.rule_delete == []
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])
    assert sorted(line for line in two.route_lines() if "198.51.100." in line) == [
        f"{B4} dev vh1 table 100 proto 158 scope link",
        f"{B4} dev vh1 table 1158 proto 158 scope link",
    ]

    engine.cleanup("vh1", intent(config(B4, B6)))
    assert plugin_rules(two) == ([], [])
    assert [line for line in two.route_lines() if "198.51.100." in line] == []


def test_adopted_incus_routes_keep_the_rule_alive(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    # Incus put vh1's routes in table 100 and main; the plugin adopts them.
    incus_routes(two, "vh1", [B4], [B6], table=100)
    engine = make_engine(two)
    engine.converge("vh0", intent(config(A4, A6)))
    adopted = engine.converge("vh1", intent(config(B4, B6)))
    assert len(adopted.plan.route_adopt) == 2
    assert f"{B4} dev vh1 table 100 proto 158 scope link" in two.route_lines()

    engine.cleanup("vh0", intent(config(A4, A6)))

    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])


def test_cleanup_after_the_interface_is_gone_releases_the_rules(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine(two)
    engine.converge("vh0", intent(config(A4, A6, "100,200")))
    engine.converge("vh1", intent(config(B4, B6, "100")))
    two.ip("link", "del", "vh0")  # the instance stopped: its routes went with it
    assert [line for line in two.route_lines() if A4 in line] == []

    engine.cleanup("vh0", intent(config(A4, A6, "100,200")))
    # vh1 still has its copies in the reverse-path table.
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])

    two.ip("link", "del", "vh1")
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])  # left behind until cleanup
    engine.cleanup("vh1", intent(config(B4, B6)))
    assert plugin_rules(two) == ([], [])


def test_resync_removes_a_stale_rule_and_recreates_a_missing_one(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    engine = make_engine(two)
    engine.converge("vh0", intent(config(A4, A6)))
    wanted = two.state()
    # Someone deleted the plugin's IPv4 rule; a plugin rule for a table
    # nothing uses any more was left behind; an operator rule of another
    # protocol looks alike but is not the plugin's.
    two.ip("rule", "del", "pref", "1100", "iif", "lo", "lookup", "1158", "proto", "158")
    two.ip("-6", "rule", "add", "pref", "1100", "iif", "lo", "lookup", "150",
           "suppress_prefixlength", "127", "proto", "158")  # fmt: skip
    two.ip("rule", "add", "pref", "1100", "iif", "lo", "lookup", "150",
           "suppress_prefixlength", "31", "proto", "static")  # fmt: skip
    operator_rule = "1100:\tfrom all iif lo lookup 150 suppress_prefixlength 31 proto static"
    assert plugin_rules(two) == (
        [],
        [RP_RULE, "1100:\tfrom all iif lo lookup 150 suppress_prefixlength 127 proto 158"],
    )

    dp = engine.resync_rules()

    assert dp.plan.count() == 2
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])
    assert operator_rule in two.rule_lines()
    two.ip("rule", "del", "pref", "1100", "iif", "lo", "lookup", "150", "proto", "static")
    assert two.state() == wanted
    assert not engine.resync_rules().plan


def test_resync_moves_rules_to_a_new_priority(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    make_engine(two).converge("vh0", intent({**config(A4, A6), "ipv4.routes": "203.0.113.0/24"}))
    assert plugin_rules(two) == ([RP_RULE], [RP_RULE])

    make_engine(two, rule_priority=1200).resync_rules()

    moved = "1200:\tfrom all iif lo lookup 1158 proto 158"
    assert plugin_rules(two) == ([moved], [moved])


def test_a_new_rp_table_takes_over_at_each_devices_reconcile(
    two: NetNS, make_engine: Callable[..., Engine]
) -> None:
    make_engine(two).converge("vh0", intent(config(A4, A6)))
    engine = make_engine(two, rp_table=2000)

    engine.converge("vh0", intent(config(A4, A6)))
    engine.resync_rules()

    new = "1100:\tfrom all iif lo lookup 2000 proto 158"
    assert plugin_rules(two) == ([new], [new])
    assert [line for line in two.route_lines() if "table 1158" in line] == []
    assert f"{A4} dev vh0 table 2000 proto 158 scope link" in two.route_lines()


def test_the_rp_table_cannot_be_chosen(two: NetNS, make_engine: Callable[..., Engine]) -> None:
    engine = make_engine(two)
    before = two.state()
    base = intent(config(A4, A6))
    v4 = base.ipv4
    chosen = DeviceIntent(FamilyIntent(v4.family, (100, 1158), v4.addresses), base.ipv6)
    with pytest.raises(ConfigError, match="table 1158 is the plugin's reverse-path table"):
        engine.converge("vh0", chosen)
    assert two.state() == before
