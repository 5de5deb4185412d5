"""Run a command as a child subreaper and reap every process it orphans.

incusd double-forks one LXC monitor per container; when a container stops its
monitor exits as an orphan that only PID 1 would reap, and not every PID 1
does so promptly. The lab runs incusd under this wrapper instead, so nothing of
the lab outlives it. Stdlib only; run as a script:

    python -I reaper.py PIDFILE COMMAND [ARG...]

PIDFILE receives COMMAND's PID. SIGTERM/SIGINT/SIGHUP are forwarded to it.
The wrapper exits, with COMMAND's status, once it has no children left.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print("usage: reaper.py PIDFILE COMMAND [ARG...]", file=sys.stderr)
        return 2
    pidfile, cmd = argv[1], argv[2:]
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl(PR_SET_CHILD_SUBREAPER): {os.strerror(err)}")

    pid = os.fork()
    if pid == 0:
        try:
            os.execv(cmd[0], cmd)
        finally:
            os._exit(127)

    tmp = f"{pidfile}.tmp"
    with open(tmp, "w") as f:
        f.write(f"{pid}\n")
    os.rename(tmp, pidfile)

    running = True

    def forward(signum: int, _frame: object) -> None:
        if running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, forward)

    status = 1
    while True:
        try:
            child, wstatus = os.wait()
        except ChildProcessError:
            break
        if child == pid:
            running = False
            code = os.waitstatus_to_exitcode(wstatus)
            status = code if code >= 0 else 128 - code
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv))
