"""Running commands and ending processes, for the lab.

One way to run a command (``run``: captured text output, a timeout, a clear
error), one way to wait (``until``: bounded polling), one way to end a
process we started (``terminate``: SIGTERM, then SIGKILL) and the subreaper
wrapper (``reaper.py``) the long-running daemons are started under.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence

__all__ = [
    "REAPER",
    "LabCommandError",
    "LabError",
    "kill_pids",
    "read_pidfile",
    "reaped",
    "run",
    "terminate",
    "until",
    "wait_gone",
]

REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "reaper.py")


class LabError(RuntimeError):
    """The lab could not be set up (missing prerequisite, daemon failure...)."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run by the lab failed; the message carries its stderr."""

    def __str__(self) -> str:
        argv = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        err = (self.stderr or "").strip() or (self.output or "").strip()
        return f"`{argv}` exited with {self.returncode}" + (f": {err}" if err else "")


def run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` to completion, output captured as text; raise
    :class:`LabCommandError` on a non-zero exit when ``check``."""
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def until(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass (bounded)."""
    end = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


def reaped(pidfile: str, *command: str) -> list[str]:
    """The command line running ``command`` under the subreaper wrapper,
    which writes ``command``'s own PID to ``pidfile`` (see reaper.py)."""
    return [sys.executable, "-I", REAPER, pidfile, *command]


def read_pidfile(path: str, proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """The PID the reaper wrapper ``proc`` wrote to ``path``; LabError when
    the wrapper exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(FileNotFoundError, ValueError), open(path) as f:
            return int(f.read())
        if proc.poll() is not None:
            break
        time.sleep(0.02)
    raise LabError(f"{path}: no PID written (wrapper exit status {proc.poll()})")


def kill_pids(pids: Iterable[int], sig: signal.Signals = signal.SIGKILL) -> None:
    """Send ``sig`` to each PID still there (never 0 or our own: that would
    signal our process group or ourselves)."""
    for pid in pids:
        if pid > 0 and pid != os.getpid():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)


def terminate(
    proc: subprocess.Popen[bytes],
    *,
    target: int | None = None,
    grace: float = 10.0,
    leftovers: Callable[[], Iterable[int]] | None = None,
) -> None:
    """End ``proc``, a process we started, by escalation.

    SIGTERM goes to ``target`` (the real daemon when ``proc`` is the reaper
    wrapper around it; default ``proc`` itself) and ``proc`` gets ``grace``
    seconds to exit. Then every PID of ``leftovers()`` but ``proc``'s own is
    killed, so that a wrapper left with nothing to reap exits (10 s). Last,
    ``proc`` itself is killed.
    """
    if proc.poll() is not None:
        return
    kill_pids([proc.pid if target is None else target], signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=grace)
    if proc.poll() is not None:
        return
    if leftovers is not None:
        kill_pids(p for p in leftovers() if p != proc.pid)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    if proc.poll() is None:
        proc.kill()
        proc.wait(timeout=10)


def wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until ``pids`` left the process table. Normally the reaper wrapper
    has reaped everything already; if it had to be killed, orphans fall to
    PID 1, and some inits take seconds to reap."""
    deadline = time.monotonic() + timeout
    pending = [p for p in pids if p != os.getpid()]
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if os.path.exists(f"/proc/{p}")]
        if pending:
            time.sleep(0.1)
