"""Why table 253 (`default`) is refused unless main is listed too, with
packets: the kernel's standard rule 32767 sends every lookup that main did
not answer to table 253, so a client of the main routing domain reaches an
instance whose route is only there, as if it were in main. Table 100 is not
consulted and keeps it out.

    B (198.18.2.2) --hb0-- H (forwarding) --vh0== eth0 C (198.51.100.10)
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from .helpers import NetNS, run_cli

pytestmark = pytest.mark.kernel

C4 = "198.51.100.10"


@pytest.fixture
def lab(make_netns: Callable[[], NetNS]) -> tuple[NetNS, NetNS, NetNS]:
    h, c, b = make_netns(), make_netns(), make_netns()
    h.sysctl("net.ipv4.ip_forward", "1")
    h.add_veth("vh0", "eth0", peer_ns=c)
    h.ip("addr", "add", "169.254.0.1/32", "dev", "vh0")
    c.ip("addr", "add", f"{C4}/32", "dev", "eth0")
    c.ip("route", "add", "169.254.0.1", "dev", "eth0")
    c.ip("route", "add", "default", "via", "169.254.0.1", "dev", "eth0")
    h.add_veth("hb0", "eth0", peer_ns=b)
    h.ip("addr", "add", "198.18.2.1/24", "dev", "hb0")
    b.ip("addr", "add", "198.18.2.2/24", "dev", "eth0")
    b.ip("route", "add", "default", "via", "198.18.2.1")
    return h, c, b


def test_table_253_is_reachable_from_main_and_refused(lab: tuple[NetNS, NetNS, NetNS]) -> None:
    h, _c, b = lab
    assert "32767:\tfrom all lookup default" in h.rule_lines()

    h.ip("route", "add", f"{C4}/32", "dev", "vh0", "table", "100")
    assert not b.ping(C4, tries=1)  # a table no rule consults: isolated
    h.ip("route", "del", f"{C4}/32", "dev", "vh0", "table", "100")

    h.ip("route", "add", f"{C4}/32", "dev", "vh0", "table", "253")
    assert b.ping(C4)  # only in `default`, yet main's domain reaches it
    h.ip("route", "del", f"{C4}/32", "dev", "vh0", "table", "253")

    before = h.state()
    proc = run_cli(h, "apply", "vh0", {"ipv4.address": C4, "user.ipv4.host_tables": "253"})
    assert proc.returncode == 1
    assert "rule 32767" in proc.stderr and "list 254 too" in proc.stderr
    assert h.state() == before
