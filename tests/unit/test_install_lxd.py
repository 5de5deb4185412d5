"""scripts/install-lxd refuses while an Incus daemon runs: installing
Debian's lxd rewrites /etc/subuid and /etc/subgid under it. The package
tools are stand-ins that only record their calls, so nothing can be
installed, whatever the outcome."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "install-lxd"


def fake_tools(bindir: Path, calls: Path) -> None:
    """`dpkg -s` says nothing is installed; `apt-get` only records; `id`
    says root (the script stops non-root users before its daemon check, and
    the unit tier runs as any user)."""
    bindir.mkdir()
    for tool, rc in (("dpkg", 1), ("apt-get", 0)):
        path = bindir / tool
        path.write_text(f'#!/bin/sh\necho "{tool} $*" >> {calls}\nexit {rc}\n')
        path.chmod(0o755)
    fake_id = bindir / "id"
    fake_id.write_text("#!/bin/sh\necho 0\n")
    fake_id.chmod(0o755)


def test_refuses_while_an_incus_daemon_runs(tmp_path: Path) -> None:
    calls = tmp_path / "calls"
    calls.touch()
    fake_tools(tmp_path / "bin", calls)
    # A process whose executable is named incusd, as the real daemon's is.
    daemon_exe = tmp_path / "incusd"
    sleep = shutil.which("sleep")
    assert sleep is not None
    shutil.copy(sleep, daemon_exe)
    daemon = subprocess.Popen([str(daemon_exe), "60"])
    try:
        env = {k: v for k, v in os.environ.items() if k != "IHT_INSTALL_LXD"}
        env["PATH"] = f"{tmp_path / 'bin'}:{env.get('PATH', '/usr/bin:/bin')}"
        proc = subprocess.run(
            ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
        )
    finally:
        daemon.kill()
        daemon.wait(timeout=10)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("install-lxd: refusing: an Incus or LXD daemon runs here"), (
        proc.stderr
    )
    assert f"{daemon.pid} ({daemon_exe})" in proc.stderr, proc.stderr
    assert "IHT_INSTALL_LXD=yes" in proc.stderr
    # Asked whether lxd is there, and nothing else: no package was touched.
    assert calls.read_text().splitlines() == ["dpkg -s lxd"]
