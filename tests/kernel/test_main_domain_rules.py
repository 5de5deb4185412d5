"""An operator's own policy rule can open a chosen table to the main routing
domain; the rule analysis says so exactly when packets prove it.

    A (198.18.1.2) --ha0--+                         +--vh0== eth0 C (198.51.100.10)
                          |   H (forwarding;         |
    B (198.18.2.2) --hb0--+    main: default via hu0)+

C's host route is only in table 100; A enters table 100 through `iif ha0`.
B lives in H's main domain; H's main table has a default route out of hu0
(a real host's uplink), so lookups for C in main never fall through.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from incus_host_tables.doctor import kernel_policy_rules
from incus_host_tables.model import AF_INET, AF_INET6
from incus_host_tables.rulecheck import analyze_table, intent_warnings
from lab.netns import inside

from .helpers import NetNS, intent
from .test_reverse_path import client

pytestmark = pytest.mark.kernel

C4, C6 = "198.51.100.10", "2001:db8::10"
INTENT = intent(
    {
        "ipv4.address": C4,
        "ipv6.address": C6,
        "user.ipv4.host_tables": "100",
        "user.ipv6.host_tables": "100",
    }
)


@pytest.fixture
def lab(make_netns: Callable[[], NetNS]) -> tuple[NetNS, NetNS, NetNS]:
    h, c, a, b = make_netns(), make_netns(), make_netns(), make_netns()
    h.sysctl("net.ipv4.ip_forward", "1")
    h.sysctl("net.ipv6.conf.all.forwarding", "1")
    h.add_veth("vh0", "eth0", peer_ns=c)
    h.ip("addr", "add", "169.254.0.1/32", "dev", "vh0")
    c.ip("addr", "add", f"{C4}/32", "dev", "eth0")
    c.ip("-6", "addr", "add", f"{C6}/128", "dev", "eth0", "nodad")
    c.ip("route", "add", "169.254.0.1", "dev", "eth0")
    c.ip("route", "add", "default", "via", "169.254.0.1", "dev", "eth0")
    c.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
    h.ip("-6", "addr", "add", "fe80::1/64", "dev", "vh0", "nodad")
    client(h, a, "ha0", 1)
    client(h, b, "hb0", 2)
    # H's uplink: a default route in main that leads nowhere near C.
    h.add_veth("hu0", "hu1")
    h.ip("addr", "add", "198.18.9.1/24", "dev", "hu0")
    h.ip("-6", "addr", "add", "2001:db8:9::1/64", "dev", "hu0", "nodad")
    h.ip("route", "add", "default", "via", "198.18.9.2")
    h.ip("-6", "route", "add", "default", "via", "2001:db8:9::2")
    for fam, addr, back in (("-4", C4, "198.18.1.0/24"), ("-6", C6, "2001:db8:1::/64")):
        h.ip(fam, "route", "add", addr, "dev", "vh0", "table", "100")
        h.ip(fam, "route", "add", back, "dev", "ha0", "table", "100")
        h.ip(fam, "rule", "add", "pref", "1000", "iif", "ha0", "lookup", "100")
    return h, a, b


def warnings(h: NetNS) -> list[str]:
    with inside(h.name):
        rules = kernel_policy_rules()
    return intent_warnings(rules, INTENT)


@pytest.mark.parametrize(
    ("rule", "b_reaches"),
    [
        (None, False),
        (["pref", "500", "from", "all", "lookup", "100"], True),
        (["pref", "500", "to", "198.51.100.0/24", "lookup", "100"], True),
        (["pref", "500", "from", "198.18.1.0/24", "lookup", "100"], False),
        (["pref", "500", "iif", "ha0", "lookup", "100"], False),
        (["pref", "32800", "from", "all", "lookup", "100"], False),
        (["pref", "500", "from", "all", "lookup", "100", "suppress_prefixlength", "32"], False),
    ],
    ids=["none", "catch-all", "to-prefix", "from-a", "iif-a", "after-main", "suppressed"],
)
def test_warning_exactly_when_main_domain_reaches_the_table(
    lab: tuple[NetNS, NetNS, NetNS], rule: list[str] | None, b_reaches: bool
) -> None:
    h, a, b = lab
    if rule is not None:
        h.ip("-4", "rule", "add", *rule)
    assert a.ping(C4), "A (table 100's client) must reach C"
    assert b.ping(C4, tries=1 if not b_reaches else 3) is b_reaches, h.state()
    found = warnings(h)
    if b_reaches:
        assert len(found) == 1, found
        assert found[0].startswith("table 100 (ipv4): the policy rule `-4 pref 500 "), found
        assert "main-domain traffic reaches this table's instances" in found[0]
    else:
        assert found == [], found


def test_ipv6_catch_all_rule(lab: tuple[NetNS, NetNS, NetNS]) -> None:
    h, a, b = lab
    assert a.ping(C6)
    assert not b.ping(C6, tries=1)
    assert warnings(h) == []
    h.ip("-6", "rule", "add", "pref", "600", "from", "all", "lookup", "100")
    assert b.ping(C6)
    (found,) = warnings(h)
    assert found.startswith("table 100 (ipv6): the policy rule `-6 pref 600 from all lookup 100`")
    with inside(h.name):
        reach = analyze_table(kernel_policy_rules()[AF_INET6], 100)
    assert [r.priority for r in reach.entries] == [600, 1000]
    with inside(h.name):
        assert analyze_table(kernel_policy_rules()[AF_INET], 100).main_domain == ()
