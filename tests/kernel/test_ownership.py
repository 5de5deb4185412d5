"""Ownership with real routes (ownership.py): only what Incus installed for
the instance is adopted; a route of any other protocol is never adopted,
changed or deleted, and a desired route that collides with one is refused
(exit 3), with nothing changed."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from incus_host_tables.engine import Engine, RouteConflict
from lab.netns import NetNS

from .helpers import incus_routes, intent, run_cli

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"
CONFIG = {"ipv4.address": V4, "user.ipv4.host_tables": "100,200"}


def test_a_static_route_in_a_chosen_table_is_a_conflict_not_a_takeover(host: NetNS) -> None:
    """The reproduction of the rollout issue: an operator's static route for
    the instance's address in table 100."""
    host.ip("route", "add", f"{V4}/32", "dev", "vh0", "table", "100", "proto", "static")
    static = f"{V4} dev vh0 table 100 proto static scope link"
    before = host.state()

    for action in ("plan", "apply"):
        proc = run_cli(host, action, "vh0", CONFIG)
        assert proc.returncode == 3, (action, proc.stdout, proc.stderr)
        assert proc.stderr.strip() == (
            f"error: add-route {V4}/32 dev vh0 table 100: a route of protocol static (4) "
            "is there, not incus-host-tables's to take over; nothing changed"
        )
        assert host.state() == before

    cleanup = run_cli(host, "cleanup", "vh0", CONFIG)
    assert cleanup.returncode == 0, cleanup.stderr
    assert static in host.route_lines()
    assert host.state() == before


def test_copies_of_other_protocols_are_never_deleted(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """A static copy in main, a routing daemon's copy in a table not chosen,
    a route of the instance's prefix of another metric: all stay through
    apply and cleanup. Incus's own copy in main goes."""
    incus_routes(host, "vh0", [V4], [V6], table=None)  # Incus: main, proto boot
    foreign = [
        ("-4", f"{V4}/32", "table", "300", "proto", "static"),
        ("-4", f"{V4}/32", "table", "100", "metric", "50", "proto", "bird"),
        ("-6", f"{V6}/128", "table", "300", "proto", "zebra"),
    ]
    for fam, *args in foreign:
        host.ip(fam, "route", "add", *args[:1], "dev", "vh0", *args[1:])
    kept = [
        f"{V4} dev vh0 table 100 proto bird scope link metric 50",
        f"{V4} dev vh0 table 300 proto static scope link",
    ]
    kept6 = [f"{V6} dev vh0 table 300 proto zebra metric 1024 pref medium"]
    config = {**CONFIG, "ipv6.address": V6, "user.ipv6.host_tables": "100"}
    engine = make_engine(host)

    engine.converge("vh0", intent(config))
    lines, lines6 = host.route_lines(), host.route_lines(v6=True)
    assert all(line in lines for line in kept), lines
    assert all(line in lines6 for line in kept6), lines6
    assert host.route_lines("table", "main", V4) == []  # Incus's copy: gone
    assert host.route_lines("table", "main", V6, v6=True) == []

    engine.cleanup("vh0", intent(config))
    assert sorted(line for line in host.route_lines() if V4 in line) == kept
    assert [line for line in host.route_lines(v6=True) if V6 in line] == kept6


def test_a_static_copy_in_main_survives_isolation(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """Cleanup without a readable config (an invalid instance is isolated):
    Incus's and the plugin's routes go, an operator's static route stays."""
    engine = make_engine(host)
    engine.converge("vh0", intent(CONFIG))
    host.ip("route", "add", f"{V4}/32", "dev", "vh0", "proto", "static")
    host.ip("route", "add", "198.51.100.11/32", "dev", "vh0")  # Incus's, address unknown

    engine.cleanup("vh0", None)

    assert [line for line in host.route_lines() if "198.51.100." in line] == [
        f"{V4} dev vh0 proto static scope link"
    ]


def test_an_incus_route_of_another_shape_is_not_adopted(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    """Protocol boot, but scope global where Incus gives a host route scope
    link: not what Incus installed, so not adoptable; it collides."""
    host.ip("route", "add", f"{V4}/32", "dev", "vh0", "table", "100", "scope", "global")
    before = host.state()
    with pytest.raises(RouteConflict) as caught:
        make_engine(host).converge("vh0", intent(CONFIG))
    assert "protocol boot (3)" in str(caught.value)
    assert caught.value.rolled_back
    assert host.state() == before
