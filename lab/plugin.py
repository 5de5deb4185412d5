"""Running the plugin against a lab: its daemon inside the lab's namespace,
its CLI, and its hooks on a profile.

The plugin's run directory (locks, hook socket, problems) is private to the
lab, so a lab never meets a plugin running on the machine itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import IO

from incus_host_tables import hostfiles

from .incus import IncusLab
from .processes import LabError, terminate

PYTHON = sys.executable


def lab_hook(lab: IncusLab) -> str:
    """The hook executable for the lab's profiles: installed, as on a host,
    into a root directory inside the lab's work directory."""
    root = os.path.join(lab.workdir, "root")
    path = os.path.join(root, hostfiles.HOOK)
    if not os.path.exists(path):
        hostfiles.install(root, f"{PYTHON} -m incus_host_tables", PYTHON)
    return path


def plugin_env(lab: IncusLab, run_dir: str) -> dict[str, str]:
    env = lab.env()
    env["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
    env["INCUS_HOST_TABLES_HOOK"] = lab_hook(lab)
    return env


class PluginDaemon:
    """`incus-host-tables watch` in the lab's namespace, ended by its own PID."""

    def __init__(self, lab: IncusLab, run_dir: str) -> None:
        self.lab = lab
        self.run_dir = run_dir
        self.log_path = os.path.join(lab.workdir, f"plugin-daemon-{time.monotonic_ns()}.log")
        self._proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.lab.netns,
                PYTHON,
                "-m",
                "incus_host_tables",
                "watch",
                "--verbose",
            ],
            env=plugin_env(self.lab, self.run_dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        # Ready when the first reconcile is logged: hooks are served by then.
        if not self.wait_for_log("reconciled", timeout):
            self.stop()
            raise LabError(f"plugin daemon not ready; log:\n{self.log()}")

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_for_log(self, text: str, timeout: float, count: int = 1) -> bool:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.log().count(text) >= count:
                return True
            if self._proc is not None and self._proc.poll() is not None:
                return False
            time.sleep(0.05)
        return self.log().count(text) >= count

    @property
    def running(self) -> bool:
        """True while the daemon process runs."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int:
        if self._proc is None:
            raise LabError("daemon not started")
        return self._proc.pid

    def stop(self) -> None:
        if self._proc is not None:
            # `ip netns exec` execs the command: this PID is the daemon itself.
            terminate(self._proc, grace=10.0)
        self._proc = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> PluginDaemon:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_cli(
    lab: IncusLab, run_dir: str, *args: str, check: bool = False, timeout: float = 60.0
) -> subprocess.CompletedProcess[str]:
    """`incus-host-tables ARGS` inside the lab's namespace."""
    return subprocess.run(
        ["ip", "netns", "exec", lab.netns, PYTHON, "-m", "incus_host_tables", *args],
        env=plugin_env(lab, run_dir),
        capture_output=True,
        text=True,
        check=check,
        timeout=timeout,
    )
