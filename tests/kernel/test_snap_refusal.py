"""`enable` on a host where LXD is the snap: refused with exit 5 and one
line saying why, before anything talks to LXD. Run in a private mount
namespace whose /var is a fresh tmpfs holding a listening socket at the
snap's path, so the machine's own /var is neither seen nor touched."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.kernel

SNAP_SOCKET = "/var/snap/lxd/common/lxd/unix.socket"

# Runs inside the private mount namespace; prints one JSON result per case.
INSIDE = textwrap.dedent(
    f"""
    import json, os, socket, subprocess, sys
    subprocess.run(["mount", "-t", "tmpfs", "tmpfs", "/var"], check=True)
    os.makedirs(os.path.dirname({SNAP_SOCKET!r}))
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind({SNAP_SOCKET!r})
    server.listen(8)
    server.setblocking(False)
    env = {{k: v for k, v in os.environ.items() if not k.startswith(("INCUS_", "LXD_"))}}
    env["INCUS_HOST_TABLES_RUN_DIR"] = sys.argv[1]
    for extra in ([], ["--socket", {SNAP_SOCKET!r}]):
        cli = [sys.executable, "-m", "incus_host_tables", "enable", "--profile", "default"]
        proc = subprocess.run(cli + extra, env=env, capture_output=True, text=True, timeout=60)
        try:
            server.accept()
            contacted = True
        except BlockingIOError:
            contacted = False
        print(json.dumps([proc.returncode, proc.stdout, proc.stderr, contacted]))
    """
)


def test_enable_refuses_on_a_snap_host(tmp_path: object) -> None:
    argv = ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", INSIDE]
    proc = subprocess.run(
        [*argv, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    results = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(results) == 2, proc.stdout  # found by default, and named by --socket
    for rc, stdout, stderr, contacted in results:
        assert rc == 5, stderr
        assert stdout == ""
        lines = stderr.splitlines()
        assert len(lines) == 1, stderr
        assert lines[0].startswith(f"error: LXD runs from the snap (socket {SNAP_SOCKET})"), stderr
        assert "hooks not attached" in lines[0] and "incus-host-tables watch" in lines[0]
        assert not contacted, "the refusal must come before any request to LXD"
