"""The run directory and the file locks that hold across processes.

- The host lock, around read -> plan -> apply: the reverse-path rules are
  shared by devices, and deciding that a rule is no longer needed and
  deleting it must not interleave with another device adding routes that
  need it. Holding one lock for the few milliseconds of an apply keeps that
  simple across hooks, the daemon and the CLI.
- A per-instance lock, around all work on one instance.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager

DEFAULT_RUN_DIR = "/run/incus-host-tables"


def run_dir() -> str:
    return os.environ.get("INCUS_HOST_TABLES_RUN_DIR", DEFAULT_RUN_DIR)


@contextmanager
def file_lock(directory: str, name: str) -> Iterator[None]:
    """An exclusive flock on ``directory/name`` (both made, private, as needed)."""
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(os.path.join(directory, name), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def host_lock() -> AbstractContextManager[None]:
    return file_lock(run_dir(), "lock")


def instance_lock(project: str, name: str) -> AbstractContextManager[None]:
    return file_lock(os.path.join(run_dir(), "instances", project), f"{name}.lock")
