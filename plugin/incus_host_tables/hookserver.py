"""The daemon's end of the hook protocol (hookclient.py is the other end),
and the lock that makes it one daemon per run directory.

Requests are single tab-separated lines that start with the protocol
version and a request kind:

- ``1\\thook\\tHOOK\\tLXC_NAME\\tLXC_CONFIG_FILE`` -> ``ok`` | ``error\\tMESSAGE``
- ``1\\tmetrics`` -> ``ok``, then the Prometheus text exposition until the
  connection closes | ``error\\tMESSAGE``

The socket is root-only (mode 0600 in a 0700 directory). A second daemon
on the same run directory finds the lock taken and stops before touching
the socket: the first one keeps serving.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import socketserver
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum

# The protocol's constants are the client's (it cannot import anything).
from .hookclient import (
    FIELD_SEPARATOR,
    PROTOCOL_VERSION,
    REPLY_ERROR,
    REPLY_OK,
    REQUEST_HOOK,
    SOCKET_NAME,
)
from .locking import run_dir

log = logging.getLogger("incus-host-tables")

LOCK_NAME = "daemon.lock"


class RequestKind(Enum):
    HOOK = REQUEST_HOOK
    METRICS = "metrics"


@dataclass(frozen=True)
class Request:
    kind: RequestKind
    hook: str = ""
    lxc_name: str = ""
    config_file: str = ""


class BadRequest(ValueError):
    pass


def parse_request(line: bytes) -> Request:
    fields = line.decode(errors="replace").rstrip("\n").split(FIELD_SEPARATOR)
    if fields[0] != PROTOCOL_VERSION:
        raise BadRequest(
            f"hook protocol version {fields[0][:20]!r} is not {PROTOCOL_VERSION!r}: "
            "restart the daemon after an upgrade"
        )
    try:
        kind = RequestKind(fields[1] if len(fields) > 1 else "")
    except ValueError:
        raise BadRequest(f"unknown request {fields[1][:20]!r}") from None
    if kind is RequestKind.HOOK:
        if len(fields) != 5:
            raise BadRequest("malformed hook request")
        return Request(kind, *fields[2:])
    if len(fields) != 2:
        raise BadRequest("malformed metrics request")
    return Request(kind)


def encode_reply(ok: bool, message: str = "") -> bytes:
    if ok:
        return (REPLY_OK + "\n").encode()
    text = " ".join(message.split()) or "refused"  # one line, no separator in it
    return f"{REPLY_ERROR}{FIELD_SEPARATOR}{text}\n".encode()


class AlreadyRunning(RuntimeError):
    def __init__(self, directory: str, pid: str) -> None:
        holder = f" (pid {pid})" if pid else ""
        super().__init__(
            f"another incus-host-tables daemon{holder} already serves {directory}; "
            "stop it first, or give this one another INCUS_HOST_TABLES_RUN_DIR"
        )


def take_daemon_lock(directory: str) -> int:
    """The run directory's daemon lock, held until the process ends (the
    returned descriptor). AlreadyRunning when another process holds it."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
        os.close(fd)
        raise AlreadyRunning(directory, pid) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


HookHandler = Callable[[str, str, str], tuple[bool, str]]  # (hook, lxc name, config) -> reply


class HookServer:
    """Serves the hook socket in its own threads until ``close``."""

    def __init__(self, handle_hook: HookHandler, metrics: Callable[[], bytes]) -> None:
        self.directory = run_dir()
        self.path = os.path.join(self.directory, SOCKET_NAME)
        self._handle_hook = handle_hook
        self._metrics = metrics
        self._lock_fd: int | None = None
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> None:
        self._lock_fd = take_daemon_lock(self.directory)
        # The lock is ours: a socket file left there is a dead daemon's.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        server = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                self.wfile.write(server.answer(self.rfile.readline()))

        old_umask = os.umask(0o077)  # root-only socket
        try:
            self._server = socketserver.ThreadingUnixStreamServer(self.path, Handler)
        finally:
            os.umask(old_umask)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="hooks", daemon=True).start()

    def answer(self, line: bytes) -> bytes:
        try:
            request = parse_request(line)
        except BadRequest as err:
            log.warning("hook socket: %s", err)
            return encode_reply(False, str(err))
        if request.kind is RequestKind.METRICS:
            return encode_reply(True) + self._metrics()
        try:
            ok, message = self._handle_hook(request.hook, request.lxc_name, request.config_file)
        except Exception as err:  # fail closed, and keep serving
            log.exception("hook %s for %s failed", request.hook, request.lxc_name)
            return encode_reply(False, f"internal error: {err}")
        return encode_reply(ok, message)

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        if self._lock_fd is not None:
            os.close(self._lock_fd)


def ask_metrics(timeout: float = 10.0) -> bytes:
    """The running daemon's metrics (``incus-host-tables metrics``).
    OSError when no daemon answers; ValueError when it refuses."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(os.path.join(run_dir(), SOCKET_NAME))
        sock.sendall(f"{PROTOCOL_VERSION}{FIELD_SEPARATOR}{RequestKind.METRICS.value}\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    data = b"".join(chunks)
    head, _, body = data.partition(b"\n")
    if head.decode(errors="replace") != REPLY_OK:
        raise ValueError(head.decode(errors="replace").partition(FIELD_SEPARATOR)[2] or "no answer")
    return body
