"""The daemon's policy watcher: a changed file or SIGHUP re-reads it; a bad
file is rejected whole and the last good policy stays in force."""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from incus_host_tables.policy import ActivePolicy
from incus_host_tables.policywatch import PolicyWatcher
from lab import until


@pytest.fixture
def path(tmp_path: Path) -> Path:
    p = tmp_path / "policy.yaml"
    p.write_text("projects:\n  a: {tables: [100]}\n")
    return p


@pytest.fixture
def active(path: Path) -> ActivePolicy:
    a = ActivePolicy()
    a.use(str(path))
    a.load()
    return a


@pytest.fixture
def watched(active: ActivePolicy) -> Iterator[tuple[PolicyWatcher, threading.Event]]:
    old = signal.getsignal(signal.SIGHUP)
    watcher = PolicyWatcher(active, interval=0.05)
    changed = threading.Event()
    watcher.start(changed.set)
    try:
        yield watcher, changed
    finally:
        watcher.stop()
        signal.signal(signal.SIGHUP, old)


def tables(active: ActivePolicy) -> set[int]:
    pol = active.current()
    assert pol is not None
    return set(pol.allowed_tables("a"))


def test_a_changed_file_is_put_in_force(
    path: Path, active: ActivePolicy, watched: tuple[PolicyWatcher, threading.Event]
) -> None:
    watcher, changed = watched
    path.write_text("projects:\n  a: {tables: [200]}\n")
    assert changed.wait(5)
    assert tables(active) == {200}
    assert watcher.reloads == 1


def test_a_bad_file_keeps_the_last_good_policy(
    path: Path, active: ActivePolicy, watched: tuple[PolicyWatcher, threading.Event]
) -> None:
    watcher, changed = watched
    path.write_text("projects:\n  a: {tables: [0]}\n")
    assert until(lambda: watcher.rejections == 1, 5)
    assert not changed.is_set()
    assert tables(active) == {100}
    assert active.error is not None and "out of range" in active.error
    path.write_text("projects:\n  a: {tables: [300]}\n")
    assert changed.wait(5)
    assert tables(active) == {300} and active.error is None


def test_sighup_re_reads_an_unchanged_looking_file(
    path: Path, active: ActivePolicy, watched: tuple[PolicyWatcher, threading.Event]
) -> None:
    watcher, changed = watched
    watcher.interval = 3600.0  # only the signal can wake it now
    watcher._wake.set()  # let the current wait pick up the new interval
    assert until(lambda: not watcher._wake.is_set(), 5)
    stat = path.stat()
    path.write_text("projects:\n  a: {tables: [400]}\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    os.kill(os.getpid(), signal.SIGHUP)
    assert changed.wait(5)
    assert tables(active) == {400}


def test_removing_the_file_lifts_the_restriction(
    path: Path, active: ActivePolicy, watched: tuple[PolicyWatcher, threading.Event]
) -> None:
    _, changed = watched
    path.unlink()
    assert changed.wait(5)
    assert active.current() is None


def test_an_unchanged_policy_does_not_trigger(path: Path, active: ActivePolicy) -> None:
    watcher = PolicyWatcher(active)
    path.write_text("projects:\n  a:\n    tables: [100]\n")  # same policy, new text
    assert watcher.check() is False
    assert watcher.reloads == 1
