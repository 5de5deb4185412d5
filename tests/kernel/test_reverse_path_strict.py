"""The reverse-path table with strict (VRF-style) tables, checked with real
packets, and the migration of a running host from the old per-table rules.

    A  (198.18.1.2) --ha0--+                    +--vh0== C1 (198.51.100.10), table 100 only
    D  (198.18.3.2) --hd0--+  H (forwarding,    |
    B  (198.18.2.2) --hb0--+   nft rp filter) --+--vh1== C2 (198.51.100.20), table 200 only

A's traffic enters H through `ip rule iif ha0 lookup 100`, D's through
`iif hd0 lookup 200`; both tables end in an unreachable default, as a VRF's
table does (docs/configuration.md, "Reverse path"). B lives in H's main
table, and so does 203.0.113.0/24 (via B).
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from incus_host_tables.engine import Engine
from lab.netns import NetNS

from .helpers import intent
from .test_reverse_path import STRICT_METRIC, client

pytestmark = pytest.mark.kernel

C1 = ("198.51.100.10", "2001:db8::10")
C2 = ("198.51.100.20", "2001:db8::20")
RP_FILTER = """
table inet t {
    chain c {
        type filter hook prerouting priority -300;
        iif { "vh0", "vh1" } fib saddr . iif oif missing counter drop
    }
}
"""
RP_RULE = "1100:\tfrom all iif lo lookup 1158 proto 158"


def instance(h: NetNS, c: NetNS, host_if: str, addresses: tuple[str, str]) -> None:
    """An instance ``c`` behind a routed NIC ``host_if``, as Incus sets it up."""
    v4, v6 = addresses
    h.add_veth(host_if, "eth0", peer_ns=c)
    h.ip("addr", "add", "169.254.0.1/32", "dev", host_if)
    h.ip("-6", "addr", "add", "fe80::1/64", "dev", host_if, "nodad")
    c.ip("addr", "add", f"{v4}/32", "dev", "eth0")
    c.ip("-6", "addr", "add", f"{v6}/128", "dev", "eth0", "nodad")
    c.ip("route", "add", "169.254.0.1", "dev", "eth0")
    c.ip("route", "add", "default", "via", "169.254.0.1", "dev", "eth0")
    c.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")


def strict_domain(h: NetNS, table: str, uplink: str, n: int) -> None:
    """Table ``table``: the routing domain of the client on ``uplink``, strict."""
    for fam, back in (("-4", f"198.18.{n}.0/24"), ("-6", f"2001:db8:{n}::/64")):
        h.ip(fam, "route", "add", "unreachable", "default", "table", table,
             "metric", STRICT_METRIC)  # fmt: skip
        h.ip(fam, "route", "add", back, "dev", uplink, "table", table)
        h.ip(fam, "rule", "add", "pref", "1000", "iif", uplink, "lookup", table)


Lab = tuple[NetNS, NetNS, NetNS, NetNS]


@pytest.fixture
def lab(make_netns: Callable[[], NetNS]) -> Lab:
    """(H, A, D, B); C1 and C2 run behind vh0 and vh1."""
    h, c1, c2, a, d, b = (make_netns() for _ in range(6))
    h.sysctl("net.ipv4.ip_forward", "1")
    h.sysctl("net.ipv6.conf.all.forwarding", "1")
    instance(h, c1, "vh0", C1)
    instance(h, c2, "vh1", C2)
    h.nft(RP_FILTER)
    client(h, a, "ha0", 1)
    client(h, b, "hb0", 2)
    client(h, d, "hd0", 3)
    strict_domain(h, "100", "ha0", 1)
    strict_domain(h, "200", "hd0", 3)
    h.ip("route", "add", "203.0.113.0/24", "via", "198.18.2.2")
    h.ip("-6", "route", "add", "2001:db8:203::/48", "via", "2001:db8:2::2")
    return h, a, d, b


def config(addresses: tuple[str, str], table: str) -> dict[str, str]:
    return {
        "ipv4.address": addresses[0],
        "ipv6.address": addresses[1],
        "user.ipv4.host_tables": table,
        "user.ipv6.host_tables": table,
    }


def reaches(ns: NetNS, addresses: tuple[str, str]) -> tuple[bool, bool]:
    """(IPv4, IPv6) pings answered."""
    return ns.ping(addresses[0], tries=2), ns.ping(addresses[1], tries=2)


def host_uses_main(h: NetNS) -> None:
    """The host's own lookups for other destinations still go by main."""
    assert "via 198.18.2.2 dev hb0" in h.ip("route", "get", "203.0.113.50")
    assert "via 2001:db8:2::2 dev hb0" in h.ip("-6", "route", "get", "2001:db8:203::50")
    assert h.ping("198.18.2.2", tries=2)
    assert h.ping("2001:db8:2::2", tries=2)


def plugin_rules(h: NetNS) -> list[str]:
    return [line for v6 in (False, True) for line in h.rule_lines(v6=v6) if "proto 158" in line]


def check_domains(h: NetNS, a: NetNS, d: NetNS, b: NetNS) -> None:
    """Each instance answers its own domain's clients and no one else."""
    assert reaches(a, C1) == (True, True)
    assert reaches(d, C2) == (True, True)
    assert reaches(a, C2) == (False, False)
    assert reaches(d, C1) == (False, False)
    assert reaches(b, C1) == (False, False)
    assert reaches(b, C2) == (False, False)
    host_uses_main(h)


def test_instances_in_strict_tables_answer_their_own_domain_only(
    lab: Lab, make_engine: Callable[..., Engine]
) -> None:
    h, a, d, b = lab
    engine = make_engine(h)
    engine.converge("vh0", intent(config(C1, "100")))
    engine.converge("vh1", intent(config(C2, "200")))

    # One rule per family; every instance prefix once in the RP table.
    assert plugin_rules(h) == [RP_RULE, RP_RULE]
    assert h.route_lines("table", "1158") == [
        f"{C1[0]} dev vh0 proto 158 scope link",
        f"{C2[0]} dev vh1 proto 158 scope link",
    ]
    assert h.route_lines("table", "1158", v6=True) == [
        f"{C1[1]} dev vh0 proto 158 metric 1024 pref medium",
        f"{C2[1]} dev vh1 proto 158 metric 1024 pref medium",
    ]
    check_domains(h, a, d, b)

    # The rule lives as long as one instance needs it.
    engine.cleanup("vh0", intent(config(C1, "100")))
    assert plugin_rules(h) == [RP_RULE, RP_RULE]
    assert reaches(d, C2) == (True, True)
    engine.cleanup("vh1", intent(config(C2, "200")))
    assert plugin_rules(h) == []
    assert h.route_lines("table", "1158") == h.route_lines("table", "1158", v6=True) == []
    host_uses_main(h)


def old_scheme(h: NetNS) -> None:
    """What the plugin's previous versions left on a running host: the
    routes in the chosen tables, a `suppress_prefixlength` rule per table
    and family, a `to` rule per extra prefix."""
    for host_if, (v4, v6), table in (("vh0", C1, "100"), ("vh1", C2, "200")):
        h.ip("route", "add", f"{v4}/32", "dev", host_if, "table", table, "proto", "158")
        h.ip("-6", "route", "add", f"{v6}/128", "dev", host_if, "table", table, "proto", "158")
        h.ip("rule", "add", "pref", "1100", "iif", "lo", "lookup", table,
             "suppress_prefixlength", "31", "proto", "158")  # fmt: skip
        h.ip("-6", "rule", "add", "pref", "1100", "iif", "lo", "lookup", table,
             "suppress_prefixlength", "127", "proto", "158")  # fmt: skip
    h.ip("rule", "add", "pref", "1100", "iif", "lo", "to", "203.0.113.0/24", "lookup", "100",
         "proto", "158")  # fmt: skip


def test_migration_from_the_per_table_rules_leaves_no_stale_rule(
    lab: Lab, make_engine: Callable[..., Engine]
) -> None:
    h, a, d, b = lab
    old_scheme(h)
    # The bug of the old scheme: the strict table 100 stops every lookup
    # from lo that it cannot answer, the host's own included.
    assert "unreachable" in h.ip("route", "get", "203.0.113.50", check=False) or (
        h.run("ip", "route", "get", "203.0.113.50", check=False).returncode != 0
    )

    engine = make_engine(h)
    engine.converge("vh0", intent(config(C1, "100")))
    # Half-way: vh1 is not reconciled yet, so the rules of table 200 that
    # its routes need stay; those that served only vh0 may go.
    engine.resync_rules()
    rules = plugin_rules(h)
    assert RP_RULE in rules
    assert "1100:\tfrom all iif lo lookup 200 suppress_prefixlength 31 proto 158" in rules
    assert "1100:\tfrom all iif lo lookup 200 suppress_prefixlength 127 proto 158" in rules
    assert not [line for line in rules if re.search(r"lookup 100\b", line)]
    assert reaches(a, C1) == (True, True)
    assert reaches(d, C2) == (True, True)

    engine.converge("vh1", intent(config(C2, "200")))
    dp = engine.resync_rules()
    assert len(dp.plan.rule_delete) == 2
    assert plugin_rules(h) == [RP_RULE, RP_RULE]
    assert not engine.resync_rules().plan
    check_domains(h, a, d, b)
