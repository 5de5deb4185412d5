"""The daemon's live policy: re-read the file when it changes or on SIGHUP.

A file that does not load is rejected whole: the last good policy stays in
force and the rejection goes to the log. A good file that differs from the
one in force replaces it, and ``on_change`` runs (the daemon re-evaluates
every running instance). Polling the file's identity every half second
bounds the delay without inotify, and also sees the file appear or vanish.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from .policy import ActivePolicy, PolicyError

log = logging.getLogger("incus-host-tables")

POLL_SECONDS = 0.5
FileIdentity = tuple[int, int, int, int] | None  # inode, size, mtime, ctime; None: no file


def file_identity(path: str) -> FileIdentity:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


class PolicyWatcher:
    def __init__(
        self,
        active: ActivePolicy,
        *,
        interval: float = POLL_SECONDS,
        on_rejected: Callable[[], object] = lambda: None,
    ) -> None:
        self.active = active
        self.on_rejected = on_rejected  # counts it (metrics.py)
        self.interval = interval
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._seen: FileIdentity = file_identity(active.path)
        self._thread: threading.Thread | None = None
        self.reloads = 0  # good files put in force
        self.rejections = 0  # bad files refused

    def start(self, on_change: Callable[[], object]) -> None:
        """Watch from now on. Call from the main thread: it installs the
        SIGHUP handler (a forced re-read)."""
        signal.signal(signal.SIGHUP, lambda *_: self._wake.set())
        self._thread = threading.Thread(
            target=self._run, args=(on_change,), name="policy", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _run(self, on_change: Callable[[], object]) -> None:
        while not self._stop.is_set():
            forced = self._wake.wait(self.interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                if self.check(forced):
                    on_change()
            except Exception:  # the watcher must outlive any one reload
                log.exception("policy reload failed")

    def check(self, forced: bool = False) -> bool:
        """Re-read the file if it changed (or ``forced``); True when another
        policy is now in force."""
        identity = file_identity(self.active.path)
        if identity == self._seen and not forced:
            return False
        self._seen = identity
        try:
            before = self.active.current()
        except PolicyError:
            before = None
        try:
            after = self.active.load()
        except PolicyError as err:
            self.rejections += 1
            self.on_rejected()
            log.error("%s; rejected whole, the last good policy stays in force", err)
            return False
        self.reloads += 1
        if after == before:
            log.info("policy %s re-read: unchanged", self.active.path)
            return False
        if after is None:
            log.warning("policy %s removed: no tenant restriction any more", self.active.path)
        else:
            log.info(
                "policy %s in force: %d project(s); re-evaluating every instance",
                self.active.path,
                len(after.projects),
            )
        return True
