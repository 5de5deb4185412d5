"""systemd's readiness and watchdog protocol (sd_notify), for `watch`.

One datagram per message on the unix socket named by ``$NOTIFY_SOCKET``
(a path, or ``@name`` for the abstract namespace). Without that variable
(not started by systemd as ``Type=notify``) every call does nothing.

:class:`ServiceNotifier` runs one thread: it sends ``READY=1`` once the
daemon reports ready (or, at the latest, after a grace time: the hooks are
served meanwhile, so the service is useful even while Incus is unreachable),
then ``WATCHDOG=1`` every half watchdog interval while the daemon reports
itself healthy. A stuck or dead daemon thread therefore stops the pings and
systemd restarts the service.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Callable, Mapping

__all__ = ["ServiceNotifier", "notify", "watchdog_interval"]

READY_GRACE = 20.0  # seconds; below the unit's TimeoutStartSec


def _address(environ: Mapping[str, str]) -> str | None:
    path = environ.get("NOTIFY_SOCKET", "")
    if not path or path[0] not in "/@":
        return None
    return "\0" + path[1:] if path[0] == "@" else path


def notify(message: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send one sd_notify message; False when there is no socket or it failed."""
    address = _address(environ)
    if address is None:
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def watchdog_interval(environ: Mapping[str, str] = os.environ) -> float | None:
    """Seconds between watchdog pings (half of ``WatchdogSec``), or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid != str(os.getpid()):
        return None  # meant for another process
    return int(usec) / 2_000_000


class ServiceNotifier:
    """READY=1, WATCHDOG=1 and STOPPING=1 for a long-running service."""

    def __init__(
        self,
        *,
        ready: Callable[[], bool],
        healthy: Callable[[], bool],
        environ: Mapping[str, str] = os.environ,
        grace: float = READY_GRACE,
        tick: float = 0.5,
    ) -> None:
        self._ready = ready
        self._healthy = healthy
        self._environ = dict(environ)
        self._grace = grace
        self._tick = tick
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.sent: list[str] = []  # what was sent, for the log and tests

    @property
    def active(self) -> bool:
        return _address(self._environ) is not None

    def _send(self, message: str) -> None:
        if notify(message, self._environ):
            self.sent.append(message)

    def start(self) -> None:
        if not self.active:
            return
        self._thread = threading.Thread(target=self._run, name="sd-notify", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        started = time.monotonic()
        interval = watchdog_interval(self._environ)
        ready = reconciled = False
        last_ping = 0.0
        while not self._stop.wait(self._tick):
            now = time.monotonic()
            if not reconciled and self._ready():
                status = "STATUS=watching Incus events, serving hooks"
                self._send(status if ready else "READY=1\n" + status)
                ready = reconciled = True
            elif not ready and now - started >= self._grace:
                self._send("READY=1\nSTATUS=serving hooks; Incus not reached yet")
                ready = True
            if interval is not None and now - last_ping >= interval and self._healthy():
                self._send("WATCHDOG=1")
                last_ping = now

    def stopping(self) -> None:
        """Tell systemd the service is shutting down, and end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self.active:
            self._send("STOPPING=1")
