"""Lost failure reports fail closed: when the socket's receive buffer
overflows (ENOBUFS) while an apply reads the kernel's reports, the engine
reads back what took effect and undoes exactly that. Provoked for real:
a receive buffer of the kernel's minimum size, and a batch many of whose
adds the kernel refuses (the routes appeared between plan and apply)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable

import pytest

from incus_host_tables.engine import Engine
from incus_host_tables.netlink.kernel import SO_RCVBUFFORCE, ApplyError
from lab.netns import NetNS

from .helpers import incus_routes, intent

pytestmark = pytest.mark.kernel

ADDRS = [f"198.51.100.{i}" for i in range(10, 90)]
CONFIG = {"ipv4.address": ",".join(ADDRS), "user.ipv4.host_tables": "100,200"}


def test_overflow_while_reading_the_reports_rolls_back_by_reading_the_kernel(
    host: NetNS, make_engine: Callable[..., Engine]
) -> None:
    incus_routes(host, "vh0", ADDRS, [], table=None)  # Incus's copies in main
    engine = make_engine(host)
    plan = engine.plan_device("vh0", intent(CONFIG))
    # Between the plan and the apply, the same prefixes appear in table 200
    # (another writer): each of those adds is refused with a report.
    host.batch([f"route add {a}/32 dev vh0 table 200" for a in ADDRS])
    before = host.state()
    # The smallest receive buffer the kernel allows: a few reports fill it.
    engine.nl._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 0)

    with pytest.raises(ApplyError) as caught:
        engine.apply(plan)

    err = caught.value
    assert err.errno == errno.ENOBUFS, err
    assert err.rolled_back, err
    assert "reports were lost" in str(err) and "every change of this apply was undone" in str(err)
    # The adds to 100 and the reverse-path table that went through are gone
    # again, main's copies and the other writer's routes are untouched.
    assert host.state() == before
    # The socket is usable afterwards: a fresh converge (routes of Incus's
    # shape on the interface are adopted) completes the job.
    engine.nl._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 8 << 20)
    engine.converge("vh0", intent(CONFIG))
    for table in ("100", "200", "1158"):
        assert len(host.route_lines("table", table, "proto", "158")) == len(ADDRS)
    assert not host.route_lines("table", "main", "dev", "vh0")
