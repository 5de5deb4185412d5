"""The host-wide lock around read -> plan -> apply.

Per-table rules are shared by devices: deciding that a rule is no longer
needed and deleting it must not interleave with another device adding routes
that need it. Holding one lock for the few milliseconds of an apply keeps
that simple across hooks, the daemon and the CLI.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

DEFAULT_RUN_DIR = "/run/incus-host-tables"


def run_dir() -> str:
    return os.environ.get("INCUS_HOST_TABLES_RUN_DIR", DEFAULT_RUN_DIR)


@contextmanager
def host_lock() -> Iterator[None]:
    directory = run_dir()
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, "lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
