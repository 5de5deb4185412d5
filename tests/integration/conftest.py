"""One real incusd per test session (starting one costs about a second).

Tests share it: each uses its own instance names, addresses and clients, and
removes what it created. A missing prerequisite makes the tests fail (the test
command installs everything), never skip.
"""

from __future__ import annotations

import signal
import sys
from collections.abc import Iterator

import pytest

from incus_host_tables.lab import IncusLab


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # A SystemExit unwinds pytest, so the lab's teardown (and atexit) still run.
    sys.exit(128 + signum)


@pytest.fixture(scope="session")
def lab() -> Iterator[IncusLab]:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    with IncusLab("iht") as the_lab:
        yield the_lab
