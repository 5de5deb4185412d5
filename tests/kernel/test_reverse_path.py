"""The plugin's rule, checked with real packets: Incus's strict reverse-path
filter drops an instance's replies when its host route is only in an
isolated table, unless the plugin's reverse-path table and rule let the
filter's lookup (input interface lo) find it.

    A (198.18.1.2) --ha0--+                       +--vh0== eth0 C (198.51.100.10)
                          |   H (forwarding,       |
    B (198.18.2.2) --hb0--+    nft rp filter) -----+

A's traffic enters H through `ip rule iif ha0 lookup 100`; table 100 is
strict (an unreachable default), as in a VRF-like routing domain. B lives
in H's main table.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from lab.netns import NetNS

from .helpers import run_cli

pytestmark = pytest.mark.kernel

C4, C6 = "198.51.100.10", "2001:db8::10"
STRICT_METRIC = "4278198272"
RP_FILTER = """
table inet t {
    chain c {
        type filter hook prerouting priority -300;
        iif "vh0" fib saddr . iif oif missing counter drop
    }
}
"""


def rp_drops(h: NetNS) -> int:
    """Packets the reverse-path rule has dropped so far."""
    match = re.search(
        r"counter packets (\d+)", h.run("nft", "list", "chain", "inet", "t", "c").stdout
    )
    assert match is not None
    return int(match.group(1))


def client(h: NetNS, c: NetNS, uplink: str, n: int) -> None:
    """A client namespace ``c`` on H's ``uplink`` in 198.18.n.0/24, 2001:db8:n::/64."""
    h.add_veth(uplink, "eth0", peer_ns=c)
    h.ip("addr", "add", f"198.18.{n}.1/24", "dev", uplink)
    h.ip("-6", "addr", "add", f"2001:db8:{n}::1/64", "dev", uplink, "nodad")
    c.ip("addr", "add", f"198.18.{n}.2/24", "dev", "eth0")
    c.ip("-6", "addr", "add", f"2001:db8:{n}::2/64", "dev", "eth0", "nodad")
    c.ip("route", "add", "default", "via", f"198.18.{n}.1")
    c.ip("-6", "route", "add", "default", "via", f"2001:db8:{n}::1")


@pytest.fixture
def lab(make_netns: Callable[[], NetNS]) -> tuple[NetNS, NetNS, NetNS, NetNS]:
    h, c, a, b = make_netns(), make_netns(), make_netns(), make_netns()
    h.sysctl("net.ipv4.ip_forward", "1")
    h.sysctl("net.ipv6.conf.all.forwarding", "1")

    # The instance C behind a routed NIC, as Incus sets it up.
    h.add_veth("vh0", "eth0", peer_ns=c)
    h.ip("addr", "add", "169.254.0.1/32", "dev", "vh0")
    h.ip("-6", "addr", "add", "fe80::1/64", "dev", "vh0", "nodad")
    c.ip("addr", "add", f"{C4}/32", "dev", "eth0")
    c.ip("-6", "addr", "add", f"{C6}/128", "dev", "eth0", "nodad")
    c.ip("route", "add", "169.254.0.1", "dev", "eth0")
    c.ip("route", "add", "default", "via", "169.254.0.1", "dev", "eth0")
    c.ip("-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0")
    h.nft(RP_FILTER)

    client(h, a, "ha0", 1)
    client(h, b, "hb0", 2)
    # Table 100: A's routing domain, strict.
    for fam, unreachable, back in (
        ("-4", "default", "198.18.1.0/24"),
        ("-6", "default", "2001:db8:1::/64"),
    ):
        h.ip(fam, "route", "add", "unreachable", unreachable, "table", "100",
             "metric", STRICT_METRIC)  # fmt: skip
        h.ip(fam, "route", "add", back, "dev", "ha0", "table", "100")
        h.ip(fam, "rule", "add", "pref", "1000", "iif", "ha0", "lookup", "100")
    return h, c, a, b


def test_the_rule_lets_replies_pass_the_strict_reverse_path_filter(
    lab: tuple[NetNS, NetNS, NetNS, NetNS],
) -> None:
    h, _c, a, b = lab
    # Incus 6.0.4's host_table=100: table 100 and main. B reaches C: the leak.
    for table in (["table", "100"], []):
        h.ip("route", "add", f"{C4}/32", "dev", "vh0", *table)
        h.ip("-6", "route", "add", f"{C6}/128", "dev", "vh0", *table)
    assert b.ping(C4)
    assert b.ping(C6)
    assert a.ping(C4)
    assert rp_drops(h) == 0

    # Main's copy removed by hand, no rule: replies to A are dropped by the
    # filter (its lookup sees only main), and B is cut off.
    h.ip("route", "del", f"{C4}/32", "dev", "vh0", "table", "main")
    h.ip("-6", "route", "del", f"{C6}/128", "dev", "vh0", "table", "main")
    assert not a.ping(C4, tries=1)
    assert rp_drops(h) > 0
    assert not a.ping(C6, tries=1)
    dropped = rp_drops(h)

    proc = run_cli(
        h,
        "apply",
        "vh0",
        {
            "ipv4.address": C4,
            "ipv6.address": C6,
            "user.ipv4.host_tables": "100",
            "user.ipv6.host_tables": "100",
        },
    )
    assert proc.returncode == 0, proc.stderr
    assert "+ rule -4 pref 1100 iif lo lookup 1158" in proc.stdout
    assert "1100:\tfrom all iif lo lookup 1158 proto 158" in h.rule_lines()
    assert "1100:\tfrom all iif lo lookup 1158 proto 158" in h.rule_lines(v6=True)

    assert a.ping(C4)
    assert a.ping(C6)
    assert rp_drops(h) == dropped
    assert not b.ping(C4, tries=1)
    assert not b.ping(C6, tries=1)
