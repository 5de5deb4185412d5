"""One daemon per run directory: a second `watch` exits non-zero with a
clear message, and the first keeps its socket and keeps serving hooks.
Real processes (the CLI); Incus is unreachable, which the daemon tolerates."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from incus_host_tables import hookclient
from incus_host_tables.exitcodes import ExitCode


def watch(run_dir: Path) -> list[str]:
    return [sys.executable, "-m", "incus_host_tables", "watch", "--socket", str(run_dir / "none")]


def test_second_watch_exits_and_first_keeps_serving(tmp_path: Path) -> None:
    env = {**os.environ, "INCUS_HOST_TABLES_RUN_DIR": str(tmp_path)}
    first = subprocess.Popen(watch(tmp_path), env=env, stderr=subprocess.PIPE, text=True)
    try:
        sock = tmp_path / hookclient.SOCKET_NAME
        deadline = time.monotonic() + 20
        while not sock.exists():
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the first daemon never made its socket"
            time.sleep(0.05)
        inode = sock.stat().st_ino

        second = subprocess.run(
            watch(tmp_path), env=env, capture_output=True, text=True, timeout=30
        )
        assert second.returncode == ExitCode.ENVIRONMENT
        assert second.stderr.strip() == (
            f"error: another incus-host-tables daemon (pid {first.pid}) already serves "
            f"{tmp_path}; stop it first, or give this one another INCUS_HOST_TABLES_RUN_DIR"
        )

        assert first.poll() is None
        assert sock.stat().st_ino == inode  # not unlinked, not replaced
        hook_env = {
            **env,
            "LXC_HOOK_TYPE": "post-stop",
            "LXC_NAME": "c1",
            "LXC_CONFIG_FILE": str(tmp_path / "missing.conf"),
        }
        client = subprocess.run(
            [sys.executable, "-I", "-S", hookclient.__file__, "c1", "lxc", "post-stop"],
            env=hook_env,
            capture_output=True,
            text=True,
            timeout=30,
        )
        # Answered by the first daemon: the config it was pointed at is missing.
        assert client.returncode == 1
        assert "cannot read the instance's config" in client.stderr
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
