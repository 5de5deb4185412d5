"""The LXC hook itself: hand the hook to the running daemon, or do the work
here when no daemon answers.

Every container start waits for this process, so it runs as a script with
`python3 -I -S` and imports nothing the interpreter has not loaded already
but the C module `_socket`: `socket` and `json` would pull in `enum`, `re`
and `collections` and cost more than everything else the hook does.

The protocol (hookserver.py is the other end; a unit test holds the two to
the same constants and messages): one tab-separated request line,
``VERSION\\thook\\tHOOK\\tLXC_NAME\\tLXC_CONFIG_FILE``, and one reply line,
``ok`` or ``error\\tMESSAGE``. Anything else -- no reply, a timeout, a
garbled line, a closed connection -- refuses the start (fail closed).
"""

import _socket
import os
import sys

PROTOCOL_VERSION = "1"
FIELD_SEPARATOR = "\t"
SOCKET_NAME = "hook.sock"
REQUEST_HOOK = "hook"
REPLY_OK = "ok"
REPLY_ERROR = "error"
RUN_DIR_ENV = "INCUS_HOST_TABLES_RUN_DIR"
DEFAULT_RUN_DIR = "/run/incus-host-tables"
TIMEOUT = 60.0  # seconds; LXC itself waits for the hook without a limit


# Host settings `enable` writes into the hook line when they are not the
# defaults; the full hook takes them as the command's global options.
SETTING_OPTIONS = ("--rp-table", "--rule-priority")


def fallback_argv(hook: str, settings: list[str] | None = None) -> list[str]:
    """No daemon: the full path, in a fresh interpreter with site-packages."""
    return [sys.executable, "-I", "-m", "incus_host_tables", *(settings or []), "hook", hook]


def request_line(fields: list[str]) -> bytes:
    return (FIELD_SEPARATOR.join([PROTOCOL_VERSION, REQUEST_HOOK, *fields]) + "\n").encode()


def parse_reply(data: bytes) -> tuple[bool, str]:
    """(started may go on, message). Only a complete ``ok`` line says yes."""
    if not data.endswith(b"\n"):
        return False, "no answer from the daemon (connection closed)"
    answer = data.decode(errors="replace")[:-1]
    if answer == REPLY_OK:
        return True, ""
    kind, sep, message = answer.partition(FIELD_SEPARATOR)
    if kind == REPLY_ERROR and sep and message:
        return False, message
    return False, f"unintelligible answer from the daemon: {answer[:80]!r}"


def _ask(path: str, fields: list[str]) -> bytes | None:
    """The daemon's reply; None when no daemon listens on ``path``."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        sock.settimeout(TIMEOUT)
        try:
            sock.connect(path)
        except OSError:
            return None
        sock.sendall(request_line(fields))
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data
    finally:
        sock.close()


def main() -> int:
    # LXC runs hooks with its own environment, so a run dir other than the
    # default comes as `--run-dir DIR`, written into raw.lxc by `enable`.
    # So do a reverse-path table and a rule priority other than the defaults.
    args = sys.argv[1:]
    run_dir = os.environ.get(RUN_DIR_ENV, DEFAULT_RUN_DIR)
    settings: list[str] = []
    while len(args) > 1 and (args[0] == "--run-dir" or args[0] in SETTING_OPTIONS):
        if args[0] == "--run-dir":
            run_dir = os.environ[RUN_DIR_ENV] = args[1]
        else:
            settings += args[:2]
        args = args[2:]
    # LXC appends: container name, section ("lxc"), hook type.
    hook = os.environ.get("LXC_HOOK_TYPE") or (args[2] if len(args) > 2 else "")
    fields = [hook, os.environ.get("LXC_NAME", ""), os.environ.get("LXC_CONFIG_FILE", "")]
    data = None
    if not any(FIELD_SEPARATOR in f or "\n" in f for f in fields):
        try:
            data = _ask(os.path.join(run_dir, SOCKET_NAME), fields)
        except OSError as err:  # a timeout or a reset after connecting
            print(f"incus-host-tables: no answer from the daemon: {err}", file=sys.stderr)
            return 1
    if data is None:
        argv = fallback_argv(hook, settings)
        os.execv(argv[0], argv)
    ok, message = parse_reply(data)
    if ok:
        return 0
    print(f"incus-host-tables: {message}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
