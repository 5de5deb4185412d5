"""Which lifecycle events make the daemon sync which instance (logic only:
the daemon's real behaviour is in tests/integration)."""

from __future__ import annotations

from typing import Any
from unittest.mock import MagicMock

import pytest

from incus_host_tables.daemon import Daemon, event_target


def event(action: str, source: str, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {"action": action, "source": source}
    if "context" in extra:
        meta["context"] = extra.pop("context")
    return {"type": "lifecycle", "metadata": meta, **extra}


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        pytest.param(
            event("instance-started", "/1.0/instances/c1"),
            ("instance-started", ("default", "c1"), None),
            id="default-project",
        ),
        pytest.param(
            event("instance-updated", "/1.0/instances/c1?project=p1"),
            ("instance-updated", ("p1", "c1"), None),
            id="project-in-source",
        ),
        pytest.param(
            event("instance-stopped", "/1.0/instances/c1", project="p2"),
            ("instance-stopped", ("p2", "c1"), None),
            id="project-field",
        ),
        pytest.param(
            event("instance-renamed", "/1.0/instances/new", context={"old_name": "old"}),
            ("instance-renamed", ("default", "new"), "old"),
            id="renamed",
        ),
        pytest.param(
            event("instance-snapshot-created", "/1.0/instances/c1/snapshots/s"),
            None,
            id="snapshot-action",
        ),
        pytest.param(
            event("instance-updated", "/1.0/instances/c1/snapshots/s"), None, id="snapshot-source"
        ),
        pytest.param(event("network-updated", "/1.0/networks/n"), None, id="other-entity"),
        pytest.param({"type": "lifecycle"}, None, id="no-metadata"),
    ],
)
def test_event_target(ev: dict[str, Any], expected: object) -> None:
    assert event_target(ev) == expected


def make_daemon(member: str | None) -> tuple[Daemon, MagicMock]:
    daemon = Daemon(rule_priority=1100, connect=MagicMock())
    daemon.member = member
    schedule = MagicMock()
    daemon.schedule = schedule  # type: ignore[method-assign]
    return daemon, schedule


@pytest.mark.parametrize(
    ("member", "location", "synced"),
    [
        (None, "none", True),
        ("m1", "m1", True),
        ("m1", "m2", False),  # another cluster member's instance
        ("m1", None, True),
    ],
)
def test_only_local_instances_are_synced(
    member: str | None, location: str | None, synced: bool
) -> None:
    daemon, schedule = make_daemon(member)
    extra = {} if location is None else {"location": location}
    daemon.on_event(event("instance-started", "/1.0/instances/c1", **extra))
    assert schedule.called is synced


def test_rename_syncs_old_and_new_name() -> None:
    daemon, schedule = make_daemon(None)
    daemon.on_event(event("instance-renamed", "/1.0/instances/b", context={"old_name": "a"}))
    assert [c.args[0] for c in schedule.call_args_list] == [("default", "a"), ("default", "b")]


def test_bursts_for_one_instance_coalesce() -> None:
    """A second event while a sync is queued runs the sync again once, not twice in parallel."""
    daemon = Daemon(rule_priority=1100, connect=MagicMock())
    calls: list[tuple[str, str]] = []
    daemon._pool = MagicMock()  # keep submitted work from running
    daemon.sync = lambda key, snapshot=None: calls.append(key)  # type: ignore[method-assign]
    daemon.schedule(("default", "c1"))
    daemon.schedule(("default", "c1"))
    daemon.schedule(("default", "c1"))
    assert daemon._pool.submit.call_count == 1
    (fn, key), _ = daemon._pool.submit.call_args
    fn(key)
    assert calls == [("default", "c1"), ("default", "c1")]


def test_another_members_instance_is_left_alone() -> None:
    """A snapshot located elsewhere, never applied here: no cleanup either
    (its NICs live in another member's kernel)."""
    daemon = Daemon(rule_priority=1100, connect=MagicMock())
    daemon.member = "m1"
    engine = MagicMock()
    daemon._local.engine = engine
    snapshot = MagicMock(status="Running", location="m2", nics=(MagicMock(),))
    daemon.sync(("default", "c1"), snapshot)
    assert engine.method_calls == []


class _StopAfter:
    """The daemon's stop event: records the back-off waits, and is set at
    the ``waits``-th one."""

    def __init__(self, waits: int) -> None:
        self.limit = waits
        self.waits: list[float] = []

    def is_set(self) -> bool:
        return len(self.waits) >= self.limit

    def wait(self, delay: float) -> bool:
        self.waits.append(delay)
        return self.is_set()


def test_reconnect_back_off_stays_within_two_seconds() -> None:
    """Incus gone for a while: attempts 0.25 s apart, doubling, never more
    than 2 s apart; after a stream that ran, the back-off starts over."""
    from incus_host_tables.incus import IncusError

    reachable = iter([False] * 7 + [True] + [False] * 2)

    def connect() -> MagicMock:
        if not next(reachable):
            raise IncusError("nobody listens")
        return MagicMock()  # its subscribe returns at once: the stream ended

    daemon = Daemon(rule_priority=1100, connect=connect)
    stop = daemon._stop = _StopAfter(9)  # type: ignore[assignment]
    daemon.watch_events()
    assert stop.waits == [0.25, 0.5, 1.0, 2.0, 2.0, 2.0, 2.0, 0.25, 0.5]


def test_a_failed_instance_read_is_retried_on_a_fresh_connection() -> None:
    """A worker's connection that died with a restarted incusd: one retry
    on a new connection, not a lost sync."""
    from incus_host_tables.incus import IncusError

    dead, fresh = MagicMock(), MagicMock()
    dead.instance.side_effect = IncusError("connection reset")
    fresh.instance.return_value = "snapshot"
    connections = iter([dead, fresh])
    daemon = Daemon(rule_priority=1100, connect=lambda: next(connections))
    assert daemon._read_instance("default", "c1") == "snapshot"
    fresh.instance.assert_called_once_with("c1", "default")
