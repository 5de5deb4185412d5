"""The LXC hook itself: hand the hook to the running daemon, or do the work
here when no daemon answers.

Every container start waits for this process, so it runs as a script with
`python3 -I -S` and imports nothing the interpreter has not loaded already
but the C module `_socket`: `socket` and `json` would pull in `enum`, `re`
and `collections` and cost more than everything else the hook does. The
request and the answer are single tab-separated lines.
"""

import _socket
import os
import sys

TIMEOUT = 60.0
FIELD_SEPARATOR = "\t"


def _fallback(hook: str) -> None:
    """No daemon: the full path, in a fresh interpreter with site-packages."""
    os.execv(sys.executable, [sys.executable, "-I", "-m", "incus_host_tables", "hook", hook])


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
    fields = [hook, os.environ.get("LXC_NAME", ""), os.environ.get("LXC_CONFIG_FILE", "")]
    if any(FIELD_SEPARATOR in f or "\n" in f for f in fields):
        _fallback(hook)
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        sock.connect(os.path.join(run_dir, "hook.sock"))
    except OSError:
        sock.close()
        _fallback(hook)
    try:
        sock.sendall((FIELD_SEPARATOR.join(fields) + "\n").encode())
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        sock.close()
    answer = data.decode(errors="replace").rstrip("\n")
    if answer == "ok":
        return 0
    # Fail closed: anything but a clear "ok" refuses the start.
    message = answer.partition(FIELD_SEPARATOR)[2]
    print(f"incus-host-tables: {message or 'no answer from the daemon'}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
