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


def watch(run_dir: Path, *options: str) -> list[str]:
    # No resync during the test: this daemon runs in the machine's namespace.
    return [
        sys.executable, "-m", "incus_host_tables", "watch", "--socket", str(run_dir / "none"),
        "--resync-interval", "3600", *options,
    ]  # fmt: skip


def cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "incus_host_tables", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_second_watch_exits_and_first_keeps_serving(tmp_path: Path) -> None:
    env = {**os.environ, "INCUS_HOST_TABLES_RUN_DIR": str(tmp_path)}
    textfile = tmp_path / "incus_host_tables.prom"
    first = subprocess.Popen(
        watch(tmp_path, "--metrics-textfile", str(textfile)),
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
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

        metrics = cli(env, "metrics")
        assert metrics.returncode == ExitCode.OK, metrics.stderr
        for line in (
            'incus_host_tables_repairs_total{reason="link-flap"} 0.0',
            'incus_host_tables_repairs_total{reason="route-deleted"} 0.0',
            "incus_host_tables_reconciles_total 0.0",
            "incus_host_tables_isolations_total 0.0",
            "incus_host_tables_refusals_total 0.0",
            'incus_host_tables_apply_seconds_bucket{le="+Inf"} 0.0',
            "incus_host_tables_managed_instances 0.0",
            "incus_host_tables_instances_in_error 0.0",
            "incus_host_tables_last_event_timestamp_seconds 0.0",
        ):
            assert line in metrics.stdout.splitlines()
    finally:
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=20) == 0
    # The textfile holds the same metrics; the daemon wrote it on its way out.
    assert "incus_host_tables_reconciles_total 0.0" in textfile.read_text().splitlines()


def test_metrics_without_a_daemon(tmp_path: Path) -> None:
    env = {**os.environ, "INCUS_HOST_TABLES_RUN_DIR": str(tmp_path)}
    out = cli(env, "metrics")
    assert out.returncode == ExitCode.ENVIRONMENT
    assert out.stderr.startswith(f"error: no daemon answers on {tmp_path}: ")
    assert out.stdout == ""


def test_resync_interval_takes_whole_seconds(tmp_path: Path) -> None:
    env = {**os.environ, "INCUS_HOST_TABLES_RUN_DIR": str(tmp_path)}
    for bad in ("0", "1.5", "-1", "86401"):
        out = cli(env, "watch", "--resync-interval", bad)
        assert out.returncode == ExitCode.USAGE
        assert f"resync interval '{bad}'" in out.stderr
