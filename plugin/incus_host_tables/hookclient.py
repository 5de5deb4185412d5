"""The LXC hook itself: hand the hook to the running daemon, or do the work
here when no daemon answers.

Run as a script with `python3 -I -S`: standard library only, nothing from the
package at import time. Every container start waits for this process, so it
connects, sends one line and reads one line.
"""

import json
import os
import socket
import sys

TIMEOUT = 60.0


def main() -> int:
    # LXC runs hooks with its own environment, so a run dir other than the
    # default comes as `--run-dir DIR`, written into raw.lxc by `enable`.
    args = sys.argv[1:]
    run_dir = os.environ.get("INCUS_HOST_TABLES_RUN_DIR", "/run/incus-host-tables")
    if args[:1] == ["--run-dir"] and len(args) > 1:
        run_dir, args = args[1], args[2:]
        os.environ["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
    # LXC appends: container name, section ("lxc"), hook type.
    hook = os.environ.get("LXC_HOOK_TYPE") or (args[2] if len(args) > 2 else "")
    request = {
        "hook": hook,
        "lxc_name": os.environ.get("LXC_NAME", ""),
        "config_file": os.environ.get("LXC_CONFIG_FILE", ""),
    }
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(os.path.join(run_dir, "hook.sock"))
    except OSError:
        sock.close()
        # No daemon: the full path, in a fresh interpreter with site-packages.
        argv = [sys.executable, "-I", "-m", "incus_host_tables", "hook", hook]
        os.execv(sys.executable, argv)
    with sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    try:
        reply = json.loads(data)
    except ValueError:
        print("incus-host-tables: no answer from the daemon", file=sys.stderr)
        return 1
    if reply.get("ok"):
        return 0
    print(f"incus-host-tables: {reply.get('error')}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
