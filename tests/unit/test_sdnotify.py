"""sd_notify over a real unix datagram socket standing in for systemd's."""

from __future__ import annotations

import os
import socket
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from incus_host_tables.sdnotify import ServiceNotifier, notify, watchdog_interval


@pytest.fixture
def systemd_socket() -> Iterator[tuple[socket.socket, str]]:
    directory = tempfile.mkdtemp(prefix="iht-notify-")
    path = os.path.join(directory, "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(5)
    try:
        yield sock, path
    finally:
        sock.close()
        os.unlink(path)
        os.rmdir(directory)


def receive(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_notify_sends_one_datagram(systemd_socket: tuple[socket.socket, str]) -> None:
    sock, path = systemd_socket
    assert notify("READY=1", {"NOTIFY_SOCKET": path})
    assert receive(sock) == "READY=1"


def test_abstract_socket_name() -> None:
    name = f"iht-notify-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        assert notify("STOPPING=1", {"NOTIFY_SOCKET": "@" + name})
        assert receive(sock) == "STOPPING=1"


@pytest.mark.parametrize("value", ["", "relative/path", None])
def test_no_socket_sends_nothing(value: str | None) -> None:
    env = {} if value is None else {"NOTIFY_SOCKET": value}
    assert notify("READY=1", env) is False


def test_missing_socket_is_not_an_error() -> None:
    assert notify("READY=1", {"NOTIFY_SOCKET": "/nonexistent/iht/notify"}) is False


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert watchdog_interval(env) == expected


def test_ready_after_reconcile_then_watchdog_while_healthy_then_stopping(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, path = systemd_socket
    reconciled = threading.Event()
    healthy = threading.Event()
    healthy.set()
    notifier = ServiceNotifier(
        ready=reconciled.is_set,
        healthy=healthy.is_set,
        environ={"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "100000"},  # ping every 50 ms
        grace=60,
        tick=0.01,
    )
    notifier.start()
    try:
        # Watchdog pings come before readiness; READY=1 only once reconciled.
        assert receive(sock) == "WATCHDOG=1"
        reconciled.set()
        messages = [receive(sock) for _ in range(5)]
        ready = [m for m in messages if m.startswith("READY=1")]
        assert len(ready) == 1 and "STATUS=watching Incus events" in ready[0], messages
        assert "WATCHDOG=1" in messages
        # An unhealthy daemon gets no pings: systemd's watchdog will fire.
        healthy.clear()
        time.sleep(0.1)
        sock.settimeout(0.3)
        drained = []
        try:
            while True:
                drained.append(receive(sock))
        except TimeoutError:
            pass
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            receive(sock)
    finally:
        notifier.stopping()
    sock.settimeout(5)
    assert receive(sock) == "STOPPING=1"
    assert notifier.sent.count("STOPPING=1") == 1


def test_ready_after_grace_when_incus_is_unreachable(
    systemd_socket: tuple[socket.socket, str],
) -> None:
    sock, path = systemd_socket
    reconciled = threading.Event()
    notifier = ServiceNotifier(
        ready=reconciled.is_set,
        healthy=lambda: True,
        environ={"NOTIFY_SOCKET": path},
        grace=0.05,
        tick=0.01,
    )
    notifier.start()
    try:
        first = receive(sock)
        assert first.startswith("READY=1") and "Incus not reached yet" in first
        reconciled.set()
        # Later reconcile: only the status changes; no second READY=1.
        assert receive(sock) == "STATUS=watching Incus events, serving hooks"
    finally:
        notifier.stopping()
    assert receive(sock) == "STOPPING=1"


def test_without_systemd_nothing_runs() -> None:
    notifier = ServiceNotifier(ready=lambda: True, healthy=lambda: True, environ={})
    notifier.start()
    notifier.stopping()
    assert notifier.sent == []
