"""Drift repair: keep every managed device's kernel state equal to its
desired state, from rtnetlink notifications (docs/operator-guide.md, "Drift
repair").

- Which device a notification concerns comes from the daemon's applied
  state: host interface index -> instance device. Notifications of the
  daemon's own changes (their netlink port is one of its sockets') and the
  kernel's own routes are not drift.
- A device is repaired with the engine's own converge: what is never ours
  (another protocol's route, another interface's) is never touched, and a
  converge that finds nothing to do changes nothing. A burst (a flush, a
  link flap) becomes one converge per device: work waits ``SETTLE`` for
  the rest of the burst.
- No fight: a device whose repairs keep being undone (``FightGuard``)
  waits exponentially longer each time, and after ``max_tries`` repairs it
  is left alone, reported in the log and in `status` (the problem store),
  naming the route and what undid it. A new Incus event for the instance,
  or a successful `apply`, takes it back. Fought-over rules wait for the
  next full resync.
- Safety nets: a full resync of every managed device and of the rules every
  ``resync_interval`` seconds, and at once when notifications were lost
  (the socket overflowed) or a dump stayed interrupted.
"""

from __future__ import annotations

import dataclasses
import errno
import functools
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from enum import Enum

from . import problems
from .config import ConfigError, DeviceIntent
from .desired import DEFAULT_RULE_PRIORITY
from .engine import PROTOCOL, RTPROT_KERNEL, Engine, InterfaceMissing, Reading
from .locking import instance_lock
from .metrics import Metrics
from .model import LOCAL_TABLE, describe_route, describe_rule
from .netlink.kernel import ApplyError, Netlink, NetlinkError
from .netlink.monitor import BUFFER_BYTES, Monitor, Notification, NotificationKind, Overflow
from .ownership import protocol_name

log = logging.getLogger("incus-host-tables")

SETTLE = 0.002  # seconds a burst of notifications gets to arrive in full
DEFAULT_RESYNC_INTERVAL = 60.0
RULES = -1  # the pending key of a rules resync (interface indexes are > 0)
PROBLEM_SOURCE = "drift repair"


class RepairReason(Enum):
    ROUTE_DELETED = "route-deleted"  # a route of ours went away
    ROUTE_ADDED = "route-added"  # a route appeared on the device (a copy in main...)
    LINK_FLAP = "link-flap"  # the interface came back up (down flushed its routes)
    RULE_CHANGED = "rule-changed"  # a rule of ours was deleted or one added by hand
    RESYNC = "resync"  # the periodic full resync found drift
    OVERFLOW = "overflow"  # notifications were lost: a full resync found drift
    DUMP_INTERRUPTED = "dump-interrupted"  # a dump kept being interrupted: full resync


_FULL = frozenset({RepairReason.RESYNC, RepairReason.OVERFLOW, RepairReason.DUMP_INTERRUPTED})


@dataclass(frozen=True)
class ManagedDevice:
    project: str
    instance: str
    device: str
    host_name: str
    ifindex: int
    intent: DeviceIntent

    @property
    def label(self) -> str:
        return f"{self.project}/{self.instance} device {self.device} ({self.host_name})"


@dataclass(frozen=True)
class Drift:
    """What a notification says happened, in words for the log and status."""

    reason: RepairReason
    what: str
    link_up: bool | None = None  # for link notifications: the state it reports
    # The tables the notified routes are in: read too by the repair, which
    # otherwise reads only where the device's routes may be (facts.py).
    tables: frozenset[int] = frozenset()


def sender_port(sender: int) -> str:
    return "the kernel" if sender == 0 else f"netlink port {sender}"


PID_MAX = 1 << 22  # the kernel's limit: a larger port is never a process's first socket


def sender_process(sender: int) -> str:
    """``sender_port``, plus the process whose PID the port is, if one runs:
    a process's first netlink socket gets its PID as port, so this names the
    culprit more often than not (hence "likely")."""
    text = sender_port(sender)
    if not 0 < sender < PID_MAX:
        return text
    try:
        with open(f"/proc/{sender}/comm", encoding="utf-8", errors="replace") as f:
            comm = f.read().strip()
    except OSError:
        return text
    return f"{text} (likely {comm}, pid {sender})"


def classify(
    note: Notification,
    devices: Mapping[int, ManagedDevice],
    own_ports: Collection[int],
    protocol: int = PROTOCOL,
    who: Callable[[int], str] = sender_port,
) -> tuple[int, Drift] | None:
    """(the interface index to repair, or RULES; the drift), or None when
    the notification cannot mean drift of a managed device. Pure, unless
    ``who`` (how the sender is named) is not."""

    def _by(sender: int) -> str:
        return f"by {who(sender)}"

    if note.sender and note.sender in own_ports:
        return None  # the daemon's own change
    if note.route is not None:
        kr = note.route
        device = devices.get(kr.oif)
        if device is None or kr.route.table == LOCAL_TABLE or kr.protocol == RTPROT_KERNEL:
            return None
        text = (
            f"route {describe_route(kr.route, device.host_name)} (protocol "
            f"{protocol_name(kr.protocol)}) "
        )
        tables = frozenset({kr.route.table})
        if note.kind is NotificationKind.ROUTE_DELETED:
            what = text + f"deleted {_by(note.sender)}"
            return kr.oif, Drift(RepairReason.ROUTE_DELETED, what, tables=tables)
        what = text + f"added {_by(note.sender)}"
        return kr.oif, Drift(RepairReason.ROUTE_ADDED, what, tables=tables)
    if note.rule is not None:
        if note.rule.protocol != protocol:
            return None
        change = "deleted" if note.kind is NotificationKind.RULE_DELETED else "added"
        what = f"rule {describe_rule(note.rule.rule)} {change} {_by(note.sender)}"
        return RULES, Drift(RepairReason.RULE_CHANGED, what)
    if note.link is not None and note.kind is NotificationKind.LINK_CHANGED:
        if note.link.index not in devices:
            return None
        state = "up" if note.link.up else "down"
        what = f"interface {note.link.name} went {state}"
        return note.link.index, Drift(RepairReason.LINK_FLAP, what, link_up=note.link.up)
    return None


@dataclass
class FightGuard:
    """How long a device's next repair waits, and when to give up on it.

    A repair is part of a fight when it redoes some of the changes of the
    previous repair (so something undid them) within ``window`` seconds;
    anything else -- new drift, a slow flush deleting route after route --
    starts afresh. In a fight the n-th repair is followed by a wait of
    ``base * 2**(n-1)`` (none after the first), and the ``max_tries``-th
    gives up. Pure: the caller passes the time and the changes (as text)."""

    base: float = 0.1
    window: float = 10.0
    max_tries: int = 6
    tries: int = 0
    last: float = float("-inf")
    last_changes: frozenset[str] = frozenset()

    def repaired(self, now: float, changes: frozenset[str]) -> float | None:
        """Note a repair at ``now`` that made ``changes``: the earliest time
        of the next one, or None when the device is to be given up."""
        undone = now - self.last <= self.window and not changes.isdisjoint(self.last_changes)
        self.tries = self.tries + 1 if undone else 1
        self.last, self.last_changes = now, changes
        if self.tries >= self.max_tries:
            return None
        return now if self.tries == 1 else now + self.base * 2 ** (self.tries - 1)


@dataclass
class _Pending:
    due: float
    drift: Drift
    tables: frozenset[int] = frozenset()  # of every notification of the burst


class Repairer:
    """Two threads: one reads notifications, one repairs. ``manage`` and
    ``forget`` keep its view of the applied state."""

    def __init__(
        self,
        *,
        rule_priority: int = DEFAULT_RULE_PRIORITY,
        new_engine: Callable[[Netlink], Engine] | None = None,
        metrics: Metrics | None = None,
        resync_interval: float = DEFAULT_RESYNC_INTERVAL,
        guard: Callable[[], FightGuard] = FightGuard,
        notification_buffer: int = BUFFER_BYTES,
        engine: Engine | None = None,
    ) -> None:
        # The daemon's own engine settings (start() makes the repair engine).
        self._new_engine = new_engine or (lambda nl: Engine(nl, rule_priority=rule_priority))
        self.metrics = metrics or Metrics()
        self.resync_interval = resync_interval
        self._new_guard = guard
        self._notification_buffer = notification_buffer
        self._cond = threading.Condition()
        self._devices: dict[int, ManagedDevice] = {}
        self._pending: dict[int, _Pending] = {}
        self._down: set[int] = set()
        self._guards: dict[int, FightGuard] = {}
        self._not_before: dict[int, float] = {}
        self._parked: dict[int, str] = {}
        self._own_ports: set[int] = set()
        self._resync: RepairReason | None = None
        self._next_resync = time.monotonic() + resync_interval
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._monitor: Monitor | None = None
        self._engine = engine  # made by start() unless given (tests)
        self.repairs = 0  # converges that changed something (tests, bench)

    # -- the applied state -----------------------------------------------------

    def own(self, netlink: Netlink) -> None:
        """Changes made through ``netlink`` are the daemon's own."""
        with self._cond:
            self._own_ports.update(netlink.ports())

    def own_ports(self) -> frozenset[int]:
        with self._cond:
            return frozenset(self._own_ports)

    def manage(self, project: str, instance: str, devices: Collection[ManagedDevice]) -> None:
        """The instance's devices as just applied (replaces what it had):
        repaired from now on, and taken back if they were given up."""
        with self._cond:
            self._forget((project, instance))
            for device in devices:
                self._drop(device.ifindex)
                self._devices[device.ifindex] = device

    def forget(self, project: str, instance: str) -> None:
        with self._cond:
            self._forget((project, instance))

    def _forget(self, key: tuple[str, str]) -> None:
        for index in [i for i, d in self._devices.items() if (d.project, d.instance) == key]:
            self._drop(index)

    def _drop(self, index: int) -> None:
        self._devices.pop(index, None)
        self._pending.pop(index, None)
        self._guards.pop(index, None)
        self._not_before.pop(index, None)
        self._parked.pop(index, None)
        self._down.discard(index)

    def managed(self) -> list[ManagedDevice]:
        with self._cond:
            return list(self._devices.values())

    def parked(self) -> dict[str, str]:
        """Devices given up: label -> why."""
        with self._cond:
            return {
                self._devices[i].label if i != RULES else "rules": why
                for i, why in self._parked.items()
            }

    # -- notifications -----------------------------------------------------------

    def notify(self, notes: list[Notification]) -> None:
        now = time.monotonic()
        who = functools.cache(sender_process)  # one look in /proc per sender and batch
        with self._cond:
            for note in notes:
                found = classify(note, self._devices, self._own_ports, who=who)
                if found is None:
                    continue
                index, drift = found
                if drift.link_up is False:
                    self._down.add(index)  # nothing can be added to it now: wait for up
                    continue
                if drift.link_up:
                    self._down.discard(index)
                if index in self._parked:
                    continue
                pending = self._pending.get(index)
                if pending is None:
                    due = max(now + SETTLE, self._not_before.get(index, now))
                    self._pending[index] = _Pending(due, drift, drift.tables)
                    continue
                pending.tables |= drift.tables
                if drift.reason is RepairReason.LINK_FLAP:
                    pending.drift = drift  # the flap explains the rest of the burst
            self._cond.notify()

    def request_resync(self, reason: RepairReason) -> None:
        with self._cond:
            self._resync = reason
            self._cond.notify()

    # -- threads -----------------------------------------------------------------

    def start(self) -> None:
        """Subscribe first, then work: nothing that happens after this
        returns goes unseen."""
        self._monitor = Monitor(self._notification_buffer)
        if self._engine is None:
            netlink = Netlink()
            self.own(netlink)
            self._engine = self._new_engine(netlink)
        for target, name in ((self._read, "notifications"), (self._work, "repair")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._monitor is not None:
            self._monitor.close()
        if self._engine is not None:
            self._engine.close()

    def _read(self) -> None:
        assert self._monitor is not None
        while not self._stop.is_set():
            try:
                notes = self._monitor.read(timeout=0.5)
            except Overflow:
                log.warning("kernel notifications were lost (socket overflow): full resync")
                self.request_resync(RepairReason.OVERFLOW)
                continue
            except OSError as err:
                log.error("reading kernel notifications failed: %s; full resync", err)
                self.request_resync(RepairReason.OVERFLOW)
                self._stop.wait(1.0)
                continue
            if notes:
                self.notify(notes)

    def _work(self) -> None:
        while not self._stop.is_set():
            with self._cond:
                wait = self._wait_time(time.monotonic())
                if wait > 0:
                    self._cond.wait(timeout=wait)
                    continue
            try:
                self.run_due()
            except Exception:  # the repair thread must live on
                log.exception("drift repair failed; full resync")
                self.request_resync(RepairReason.RESYNC)
                self._stop.wait(1.0)

    def _wait_time(self, now: float) -> float:
        """Seconds until something is due (0: now). Under the condition."""
        if self._resync is not None:
            return 0.0
        return max(min([p.due for p in self._pending.values()] + [self._next_resync]) - now, 0.0)

    def run_due(self) -> None:
        """Do what is due now: a full resync, or the device repairs due and
        then the rules (a repaired route may need its rule)."""
        with self._cond:
            now = time.monotonic()
            resync = self._resync
            if resync is None and now >= self._next_resync:
                resync = RepairReason.RESYNC
            self._resync = None
            due = [i for i, p in self._pending.items() if p.due <= now]
            popped = [(i, self._pending.pop(i)) for i in due]
        work = {i: dataclasses.replace(p.drift, tables=p.tables) for i, p in popped}
        if resync is not None:
            self.resync(resync)
            return
        rules = work.pop(RULES, None)
        for index, drift in work.items():
            self._repair(index, drift)
        if rules is not None:
            self._repair_rules(rules)

    # -- repairing -----------------------------------------------------------------

    def resync(self, reason: RepairReason) -> None:
        """Converge every managed device, then the rules."""
        with self._cond:
            self._next_resync = time.monotonic() + self.resync_interval
            self._pending.clear()  # the resync covers them
            if reason is RepairReason.OVERFLOW:
                self._down.clear()  # a lost "up" must not keep a device unrepaired
            if self._parked.pop(RULES, None) is not None:
                self._guards.pop(RULES, None)  # the rules get another series of tries
            for index in list(self._parked):
                device = self._devices[index]
                recorded = problems.read(device.project, device.instance)
                if recorded is None or recorded.get("source") != PROBLEM_SOURCE:
                    del self._parked[index]  # cleared by a successful apply: ours again
                    self._guards.pop(index, None)
                    log.info("%s: repairs resumed (problem cleared)", device.label)
            indexes = [i for i in self._devices if i not in self._parked and i not in self._down]
        self.metrics.resyncs.labels(reason.value).inc()
        what = {
            RepairReason.RESYNC: "found by the periodic resync",
            RepairReason.OVERFLOW: "found by the resync after lost notifications",
            RepairReason.DUMP_INTERRUPTED: "found by the resync after an interrupted dump",
        }.get(reason, "found by a resync")
        for index in indexes:
            self._repair(index, Drift(reason, what))
        self._repair_rules(Drift(reason, what))

    def _repair(self, index: int, drift: Drift) -> None:
        engine = self._engine
        assert engine is not None
        device = self._devices.get(index)
        if device is None:
            return
        started = time.perf_counter()
        try:
            # The instance's lock, as every start and stop takes it: the
            # daemon forgets an instance before it syncs it, so a repair
            # with an intent that is no longer current never runs after it.
            with instance_lock(device.project, device.instance):
                with self._cond:
                    if (
                        self._devices.get(index) is not device
                        or index in self._parked
                        or index in self._down
                    ):
                        return
                # A resync reads every table: it also catches what a read
                # scoped by the applied-tables record cannot see (facts.py).
                how = Reading(drift.reason in _FULL, drift.tables)
                dp = engine.converge(device.host_name, device.intent, how=how)
        except InterfaceMissing:
            log.debug("%s: interface gone; no longer repaired", device.label)
            self.forget(device.project, device.instance)
            return
        except NetlinkError as err:
            if err.errno == errno.EAGAIN:  # a dump kept being interrupted
                self.request_resync(RepairReason.DUMP_INTERRUPTED)
                return
            log.error("%s: repair failed: %s", device.label, err)
            return
        except (ApplyError, ConfigError) as err:
            log.error("%s: repair failed (%s): %s", device.label, drift.what, err)
            return
        if not dp.plan:
            return  # nothing drifted after all (an echo, a harmless change)
        self.metrics.apply_seconds.observe(time.perf_counter() - started)
        self.metrics.repairs.labels(drift.reason.value).inc()
        self.repairs += 1
        log.warning(
            "%s: repaired drift (%s): %s", device.label, drift.what, "; ".join(dp.summary(5))
        )
        now = time.monotonic()
        with self._cond:
            guard = self._guards.setdefault(index, self._new_guard())
            next_at = guard.repaired(now, frozenset(dp.lines()))
            if next_at is not None:
                self._not_before[index] = next_at
                return
            message = (
                f"drift repair of device {device.device} ({device.host_name}) given up after "
                f"{guard.tries} repairs, each undone again within {guard.window:g} s: "
                f"something keeps undoing it; last: {drift.what}"
            )
            # Recorded before it shows as parked: whoever sees it given up
            # finds the reason in `status` too.
            problems.record(device.project, device.instance, message, PROBLEM_SOURCE)
            self._parked[index] = message
        self.metrics.repairs_abandoned.inc()
        log.error("%s/%s: %s", device.project, device.instance, message)

    def _repair_rules(self, drift: Drift) -> None:
        """Resync the rules. Fought over, they are left until the next full
        resync (rules are the host's, not one instance's: nothing to park)."""
        engine = self._engine
        assert engine is not None
        with self._cond:
            if RULES in self._parked:
                return
        try:
            dp = engine.resync_rules()
        except (ApplyError, NetlinkError) as err:
            log.error("rules resync failed: %s", err)
            return
        if not dp.plan:
            return
        self.metrics.repairs.labels(drift.reason.value).inc()
        self.repairs += 1
        log.warning("repaired rules (%s): %s", drift.what, "; ".join(dp.lines()))
        with self._cond:
            guard = self._guards.setdefault(RULES, self._new_guard())
            next_at = guard.repaired(time.monotonic(), frozenset(dp.lines()))
            if next_at is not None:
                self._not_before[RULES] = next_at
                return
            self._parked[RULES] = drift.what
        self.metrics.repairs_abandoned.inc()
        log.error(
            "rules repair given up until the next full resync after %d repairs, each undone "
            "again within %g s: something keeps undoing it; last: %s",
            guard.tries,
            guard.window,
            drift.what,
        )
