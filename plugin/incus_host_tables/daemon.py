"""`incus-host-tables watch`: the event daemon and the hooks' fast path.

- Subscribes to Incus lifecycle events; a full reconcile runs on every
  (re)connect, because events may have been missed meanwhile.
- Serves the LXC hooks on a root-only unix socket, so a container start pays
  for a socket round trip instead of importing pylxd.
- Work on one instance is coalesced: a burst of events for it becomes one
  sync that reads the instance's current state.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socketserver
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

from .desired import DEFAULT_RP_TABLE
from .engine import Engine
from .hookrun import run_hook
from .incus import IncusClient, IncusError, InstanceNotFoundError, InstanceSnapshot
from .lifecycle import Lifecycle, Nic
from .locking import run_dir
from .policy import ACTIVE as ACTIVE_POLICY
from .policywatch import PolicyWatcher

log = logging.getLogger("incus-host-tables")

HOOK_SOCKET = "hook.sock"
SYNC_ACTIONS = {
    "instance-started",
    "instance-restarted",
    "instance-stopped",
    "instance-shutdown",
    "instance-updated",
    "instance-created",
    "instance-deleted",
    "instance-renamed",
    "instance-resumed",
}
Key = tuple[str, str]  # (project, name)


def event_target(event: dict[str, Any]) -> tuple[str, Key, str | None] | None:
    """(action, (project, name), old name) of an instance lifecycle event."""
    meta = event.get("metadata") or {}
    action = meta.get("action")
    if action not in SYNC_ACTIONS:
        return None
    parts = urlsplit(str(meta.get("source") or ""))
    segments = parts.path.strip("/").split("/")
    if len(segments) != 3 or segments[:2] != ["1.0", "instances"]:
        return None  # snapshots, backups, ...
    query = parse_qs(parts.query).get("project") or [""]
    project = query[0] or str(event.get("project") or "default")
    old = (meta.get("context") or {}).get("old_name")
    return action, (project, segments[2]), old


class Daemon:
    def __init__(
        self,
        *,
        socket: str | None = None,
        rule_priority: int,
        rp_table: int = DEFAULT_RP_TABLE,
        workers: int = 4,
        connect: Callable[[], IncusClient] | None = None,
    ) -> None:
        self.rule_priority = rule_priority
        self.rp_table = rp_table
        self._connect = connect or (lambda: IncusClient(socket))
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")
        self._state_lock = threading.Lock()
        self._applied: dict[Key, Sequence[Nic]] = {}
        self._queued: set[Key] = set()
        self._again: set[Key] = set()
        self._stop = threading.Event()
        self._events_client: IncusClient | None = None
        self.member: str | None = None
        self.reconciles = 0

    # -- per-thread resources ----------------------------------------------

    def engine(self) -> Engine:
        engine = getattr(self._local, "engine", None)
        if engine is None:
            engine = Engine(rule_priority=self.rule_priority, rp_table=self.rp_table)
            self._local.engine = engine
        return engine

    def client(self) -> IncusClient:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._local.client = self._connect()
        return client

    # -- syncing one instance ------------------------------------------------

    def schedule(self, key: Key) -> None:
        with self._state_lock:
            if key in self._queued:
                self._again.add(key)  # rerun after the sync in progress
                return
            self._queued.add(key)
        self._pool.submit(self._run_sync, key)

    def _run_sync(self, key: Key) -> None:
        while True:
            try:
                self.sync(key)
            except Exception:  # one instance must not stop the daemon
                log.exception("%s/%s: sync failed", *key)
            with self._state_lock:
                if key in self._again:
                    self._again.discard(key)
                    continue
                self._queued.discard(key)
                return

    def sync(self, key: Key, snapshot: InstanceSnapshot | None = None) -> None:
        project, name = key
        if snapshot is None:
            try:
                snapshot = self.client().instance(name, project)
            except InstanceNotFoundError:
                snapshot = None
            except IncusError:
                self._local.client = None  # reconnect next time
                raise
        lifecycle = Lifecycle(self.engine(), source="daemon")
        with self._state_lock:
            previous = self._applied.get(key, ())
        local = snapshot is not None and self._is_local(snapshot)
        if snapshot is not None and not local and not previous:
            return  # another member's instance, never ours: nothing to do here
        running = local and snapshot is not None and snapshot.status == "Running"
        if running:
            assert snapshot is not None
            nics = snapshot.nics
            out = lifecycle.start(project, name, nics, previous=previous)
            with self._state_lock:
                self._applied[key] = nics
            for result in out.nics:
                for line in result.changes:
                    log.info("%s/%s device %s: %s", project, name, result.device, line)
            return
        gone = previous or (snapshot.nics if snapshot is not None else ())
        if gone:
            out = lifecycle.stop(project, name, gone, forget=snapshot is None)
            for result in out.nics:
                for line in result.changes:
                    log.info("%s/%s device %s: %s", project, name, result.device, line)
        with self._state_lock:
            self._applied.pop(key, None)

    def _is_local(self, snapshot: InstanceSnapshot) -> bool:
        return self.member is None or snapshot.location == self.member

    def reconcile(self) -> None:
        """Converge every local instance and resync the plugin's rules."""
        client = self.client()
        self.member = client.server_name()
        snapshots = client.instances(all_projects=True)
        seen = {(s.project, s.name) for s in snapshots}
        for snap in snapshots:
            self.sync((snap.project, snap.name), snap)
        with self._state_lock:
            vanished = [key for key in self._applied if key not in seen]
        for key in vanished:
            self.sync(key, None)
        self.engine().resync_rules()
        self.reconciles += 1
        log.info("reconciled %d instances", len(snapshots))

    # -- events --------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        target = event_target(event)
        if target is None:
            return
        location = event.get("location")
        if self.member is not None and location not in (None, "", "none", self.member):
            return
        action, key, old = target
        if action == "instance-renamed" and old:
            self.schedule((key[0], old))
        self.schedule(key)

    def watch_events(self) -> None:
        """Subscribe, reconcile, handle events; reconnect with backoff."""
        delay = 0.5
        while not self._stop.is_set():
            try:
                client = self._connect()
            except IncusError as err:
                log.warning("Incus unreachable: %s; retrying in %.1fs", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
                continue
            self._events_client = client
            try:
                # Which member we are must be known before any event counts:
                # otherwise every member's instances would look local.
                self.member = client.server_name()
                client.subscribe(self.on_event, self._on_connected)
                if not self._stop.is_set():
                    log.warning("event stream ended; reconnecting")
                delay = 0.5
            except IncusError as err:
                log.warning("event stream failed: %s; retrying in %.1fs", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, 30.0)
            finally:
                client.close()
                self._events_client = None
            self._local.client = None  # the daemon may have restarted

    def _on_connected(self) -> None:
        try:
            self.reconcile()
        except Exception:
            log.exception("reconcile failed")

    # -- hook server -----------------------------------------------------------

    def handle_hook(self, request: dict[str, Any]) -> dict[str, Any]:
        hook = str(request.get("hook") or "")
        lxc_name = str(request.get("lxc_name") or "")
        config_file = str(request.get("config_file") or "")
        started = time.perf_counter()
        try:
            out = run_hook(self.engine(), hook, lxc_name, config_file)
        except Exception as err:
            log.exception("hook %s for %s failed", hook, lxc_name)
            return {"ok": False, "error": f"internal error: {err}"}
        log.info(
            "hook %s %s: %s in %.1f ms",
            hook,
            lxc_name,
            "ok" if out.ok else "refused",
            (time.perf_counter() - started) * 1000,
        )
        return {"ok": out.ok, "error": out.error}

    def serve_hooks(self) -> socketserver.BaseServer:
        path = os.path.join(run_dir(), HOOK_SOCKET)
        os.makedirs(run_dir(), mode=0o700, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        daemon = self

        class Handler(socketserver.StreamRequestHandler):
            # One line each way, tab-separated (see hookclient.py):
            # "HOOK\tLXC_NAME\tLXC_CONFIG_FILE" -> "ok" | "error\tMESSAGE".
            def handle(self) -> None:
                fields = self.rfile.readline().decode(errors="replace").rstrip("\n").split("\t")
                if len(fields) != 3:
                    reply = {"ok": False, "error": "malformed request"}
                else:
                    hook, lxc_name, config_file = fields
                    reply = daemon.handle_hook(
                        {"hook": hook, "lxc_name": lxc_name, "config_file": config_file}
                    )
                if reply["ok"]:
                    answer = "ok"
                else:
                    message = str(reply["error"]).replace("\t", " ").replace("\n", " ")
                    answer = f"error\t{message}"
                self.wfile.write(answer.encode() + b"\n")

        old_umask = os.umask(0o077)  # root-only socket
        try:
            server = socketserver.ThreadingUnixStreamServer(path, Handler)
        finally:
            os.umask(old_umask)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="hooks", daemon=True).start()
        return server

    # -- main ------------------------------------------------------------------

    def run(self) -> int:
        server = self.serve_hooks()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        # Tenant policy (policywatch.py): a new policy re-evaluates every instance.
        policy_watcher = PolicyWatcher(ACTIVE_POLICY)
        policy_watcher.start(lambda: self._pool.submit(self._on_connected))
        log.info("watching Incus events; hooks served on %s", server.server_address)
        events = threading.Thread(target=self.watch_events, name="events", daemon=True)
        events.start()
        while not self._stop.wait(1.0):
            pass
        policy_watcher.stop()
        server.shutdown()
        server.server_close()
        events.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        return 0

    def stop(self) -> None:
        self._stop.set()
        client = self._events_client
        if client is not None:
            client.close()


def setup_logging(verbose: bool = False) -> None:
    """stderr, in a form journald understands (<N> priority prefixes)."""
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(_JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger("incus-host-tables")
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class _JournalFormatter(logging.Formatter):
    LEVELS: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{self.LEVELS.get(record.levelno, 2)}>"
        return "\n".join(prefix + line for line in text.splitlines())
