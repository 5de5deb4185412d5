"""`incus-host-tables watch`: the event daemon and the hooks' fast path.

- Subscribes to Incus lifecycle events; a full reconcile runs on every
  (re)connect, because events may have been missed meanwhile.
- Serves the LXC hooks on a root-only unix socket, so a container start pays
  for a socket round trip instead of importing pylxd.
- Work on one instance is coalesced: a burst of events for it becomes one
  sync that reads the instance's current state.
- Keeps the applied state true between events: the repairer (repair.py)
  repairs drift from kernel notifications and resyncs periodically.
- Counts what it does (metrics.py), for `incus-host-tables metrics` and
  node_exporter's textfile collector.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .config import ConfigError, parse_device
from .desired import DEFAULT_RP_TABLE
from .engine import Engine
from .hookrun import START_HOOKS, STOP_HOOKS, run_hook
from .hookserver import HookServer
from .incus import IncusClient, IncusError, InstanceNotFoundError, InstanceSnapshot
from .lifecycle import Lifecycle, Nic, Outcome
from .lxcconf import LxcConfError, parse_lxc_name
from .metrics import Metrics
from .netlink.kernel import Netlink
from .policy import ACTIVE as ACTIVE_POLICY
from .policy import PolicyError
from .policywatch import PolicyWatcher
from .repair import DEFAULT_RESYNC_INTERVAL, ManagedDevice, Repairer, RepairReason
from .sdnotify import ServiceNotifier

log = logging.getLogger("incus-host-tables")


def _log_policy() -> None:
    """Which tenant policy is in force (logged once the hooks are served, so
    a second daemon's refusal stays one line)."""
    try:
        policy = ACTIVE_POLICY.current()
    except PolicyError as err:
        log.warning("%s; refusing every routed NIC until it is fixed", err)
        return
    if policy is None:
        log.info("no policy file at %s: no tenant restriction", ACTIVE_POLICY.path)
    else:
        log.info("policy %s in force: %d project(s)", ACTIVE_POLICY.path, len(policy.projects))


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
# Reconnect back-off: from RECONNECT_FIRST, doubling, at most RECONNECT_MAX
# seconds. A connect attempt on the local unix socket costs next to nothing,
# and a restarted incusd must be met within seconds: changes made right
# after its restart are only seen by the reconcile that follows the reconnect.
RECONNECT_FIRST = 0.25
RECONNECT_MAX = 2.0
TEXTFILE_INTERVAL = 15.0  # seconds between two writes of --metrics-textfile


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
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        metrics_textfile: str | None = None,
    ) -> None:
        self.rule_priority = rule_priority
        self.rp_table = rp_table
        self.metrics = Metrics(
            managed_instances=self._managed_instances,
            reasons=[reason.value for reason in RepairReason],
            policy_rejected=lambda: ACTIVE_POLICY.rejected,
            policy_loaded_at=lambda: ACTIVE_POLICY.loaded_at,
        )
        self.metrics_textfile = metrics_textfile
        self.repairer = Repairer(
            new_engine=self._new_engine, metrics=self.metrics, resync_interval=resync_interval
        )
        self._connect = connect or (lambda: IncusClient(socket))
        self._local = threading.local()
        self._hook_engines: queue.SimpleQueue[Engine] = queue.SimpleQueue()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sync")
        self._state_lock = threading.Lock()
        self._applied: dict[Key, Sequence[Nic]] = {}
        self._queued: set[Key] = set()
        self._again: set[Key] = set()
        self._stop = threading.Event()
        self._events_client: IncusClient | None = None
        self.member: str | None = None
        self.reconciles = 0

    def _managed_instances(self) -> int:
        return len({(d.project, d.instance) for d in self.repairer.managed()})

    # -- per-thread resources ----------------------------------------------

    def _new_engine(self, netlink: Netlink) -> Engine:
        self.repairer.own(netlink)  # its changes are not drift
        return Engine(netlink, rule_priority=self.rule_priority, rp_table=self.rp_table)

    def engine(self) -> Engine:
        """The calling worker's engine (the workers are a fixed pool)."""
        engine = getattr(self._local, "engine", None)
        if engine is None:
            netlink = self._local.netlink = Netlink()
            engine = self._local.engine = self._new_engine(netlink)
        return engine

    @contextlib.contextmanager
    def hook_engine(self) -> Iterator[Engine]:
        """An engine for one hook: every hook has a thread of its own, so
        engines are lent from a pool as large as the most hooks at once
        (not one per thread, whose sockets would pile up)."""
        try:
            engine = self._hook_engines.get_nowait()
        except queue.Empty:
            engine = self._new_engine(Netlink())
        try:
            yield engine
        finally:
            self._hook_engines.put(engine)

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
            snapshot = self._read_instance(project, name)
        lifecycle = Lifecycle(self.engine(), source="daemon")
        with self._state_lock:
            previous = self._applied.get(key, ())
        local = snapshot is not None and self._is_local(snapshot)
        if snapshot is not None and not local and not previous:
            return  # another member's instance, never ours: nothing to do here
        running = local and snapshot is not None and snapshot.status == "Running"
        # No repair of this instance while it syncs: one that ran after the
        # sync would put back the state from before (see Repairer._repair).
        self.repairer.forget(project, name)
        if running:
            assert snapshot is not None
            nics = snapshot.nics
            started = time.perf_counter()
            out = lifecycle.start(project, name, nics, previous=previous)
            self.metrics.apply_seconds.observe(time.perf_counter() - started)
            with self._state_lock:
                self._applied[key] = nics
            for result in out.nics:
                for line in result.changes:
                    log.info("%s/%s device %s: %s", project, name, result.device, line)
                for line in result.isolated:
                    log.info("%s/%s device %s: isolated: %s", project, name, result.device, line)
            if out.ok:
                self.repairer.manage(project, name, self._managed(project, name, nics))
            else:
                self.metrics.isolations.inc()
            return
        gone = previous or (snapshot.nics if snapshot is not None else ())
        if gone:
            out = lifecycle.stop(project, name, gone, forget=snapshot is None)
            for result in out.nics:
                for line in result.changes:
                    log.info("%s/%s device %s: %s", project, name, result.device, line)
        with self._state_lock:
            self._applied.pop(key, None)

    def _read_instance(self, project: str, name: str) -> InstanceSnapshot | None:
        """The instance as Incus has it now; None when it is gone. A failed
        request is retried once on a fresh connection: the worker's old one
        may have gone with an incusd that was restarted since."""
        for attempt in (1, 2):
            try:
                return self.client().instance(name, project)
            except InstanceNotFoundError:
                return None
            except IncusError:
                self._local.client = None
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def _managed(self, project: str, name: str, nics: Sequence[Nic]) -> list[ManagedDevice]:
        """The devices as just applied, by host interface index."""
        self.engine()
        netlink: Netlink = self._local.netlink
        out = []
        for nic in nics:
            if nic.host_name is None:
                continue
            try:
                intent = parse_device(nic.config)
            except ConfigError:
                continue
            index = netlink.ifindex(nic.host_name)
            if index is not None:
                out.append(ManagedDevice(project, name, nic.device, nic.host_name, index, intent))
        return out

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
        self.metrics.reconciles.inc()
        log.info("reconciled %d instances", len(snapshots))

    # -- events --------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        self.metrics.event_received()
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
        delay = RECONNECT_FIRST
        while not self._stop.is_set():
            try:
                client = self._connect()
            except IncusError as err:
                log.warning("Incus unreachable: %s; retrying in %.2fs", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            self._events_client = client
            try:
                # Which member we are must be known before any event counts:
                # otherwise every member's instances would look local.
                self.member = client.server_name()
                client.subscribe(self.on_event, self._on_connected)
                if not self._stop.is_set():
                    log.warning("event stream ended; reconnecting")
                delay = RECONNECT_FIRST
            except IncusError as err:
                log.warning("event stream failed: %s; retrying in %.2fs", err, delay)
                self._stop.wait(delay)
                delay = min(delay * 2, RECONNECT_MAX)
            finally:
                client.close()
                self._events_client = None
            self._local.client = None  # the daemon may have restarted

    def _on_connected(self) -> None:
        try:
            self.reconcile()
        except Exception:
            log.exception("reconcile failed")

    # -- hooks -----------------------------------------------------------------

    def handle_hook(self, hook: str, lxc_name: str, config_file: str) -> tuple[bool, str]:
        if hook in STOP_HOOKS:
            # Its routes go now: removing them is not drift to repair.
            with contextlib.suppress(LxcConfError):
                self.repairer.forget(*parse_lxc_name(lxc_name))
        started = time.perf_counter()
        with self.hook_engine() as engine:
            out = run_hook(engine, hook, lxc_name, config_file)
        self._count_hook(hook, out, time.perf_counter() - started)
        log.info(
            "hook %s %s: %s in %.1f ms",
            hook,
            lxc_name,
            "ok" if out.ok else "refused",
            (time.perf_counter() - started) * 1000,
        )
        return out.ok, out.error or ""

    def _count_hook(self, hook: str, out: Outcome, seconds: float) -> None:
        if hook not in START_HOOKS:
            return
        self.metrics.apply_seconds.observe(seconds)
        if not out.ok:
            self.metrics.refusals.inc()
            self.metrics.isolations.inc()

    # -- main ------------------------------------------------------------------

    def run(self) -> int:
        server = HookServer(self.handle_hook, self.metrics.exposition)
        server.start()  # first: a second daemon stops here (AlreadyRunning)
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: self.stop())
        # Subscribed to the kernel's notifications before the first reconcile.
        self.repairer.start()
        # Tenant policy (policywatch.py): a new policy re-evaluates every instance.
        policy_watcher = PolicyWatcher(
            ACTIVE_POLICY, on_rejected=self.metrics.policy_rejections.inc
        )
        _log_policy()
        policy_watcher.start(lambda: self._pool.submit(self._on_connected))
        log.info("watching Incus events; hooks served on %s", server.path)
        events = threading.Thread(target=self.watch_events, name="events", daemon=True)
        events.start()
        notifier = ServiceNotifier(ready=lambda: self.reconciles > 0, healthy=events.is_alive)
        notifier.start()
        while not self._stop.wait(TEXTFILE_INTERVAL if self.metrics_textfile else 1.0):
            self.write_textfile()
        notifier.stopping()
        policy_watcher.stop()
        server.close()
        events.join(timeout=5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self.repairer.stop()
        self.write_textfile()
        return 0

    def write_textfile(self) -> None:
        if self.metrics_textfile is None:
            return
        try:
            self.metrics.write_textfile(self.metrics_textfile)
        except OSError as err:
            log.warning("cannot write the metrics to %s: %s", self.metrics_textfile, err)

    def stop(self) -> None:
        self._stop.set()
        client = self._events_client
        if client is not None:
            client.close()
