"""`watch` under systemd's notify protocol, against the lab's real incusd:
READY=1 only after the first reconcile, watchdog pings, STOPPING=1 on SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lab.plugin import plugin_env

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration


def test_watch_reports_ready_after_reconcile_and_stopping(plug: PluginLab, tmp_path: Path) -> None:
    path = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    log = tmp_path / "daemon.log"
    env = plugin_env(plug.lab, plug.run_dir)
    env.update(NOTIFY_SOCKET=path, WATCHDOG_USEC="1000000")  # a ping every 0.5 s
    argv = ["ip", "netns", "exec", plug.lab.netns, sys.executable, "-m", "incus_host_tables"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*argv, "watch"],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
    try:
        messages: list[str] = []
        while not any(m.startswith("READY=1") for m in messages):
            messages.append(sock.recv(4096).decode())
        ready = next(m for m in messages if m.startswith("READY=1"))
        assert "STATUS=watching Incus events" in ready, messages
        # Ready means reconciled: the daemon had logged it by then.
        assert "reconciled" in log.read_text(), log.read_text()
        while "WATCHDOG=1" not in messages[messages.index(ready) :]:
            messages.append(sock.recv(4096).decode())
        # `ip netns exec` execs the daemon: this PID is the daemon itself.
        os.kill(proc.pid, signal.SIGTERM)
        while messages[-1] != "STOPPING=1":
            messages.append(sock.recv(4096).decode())
        assert proc.wait(timeout=15) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        sock.close()
