"""The daemon's metrics, in Prometheus text exposition (docs/operator-guide.md
lists them with an example alert).

``incus-host-tables metrics`` asks the running daemon over its socket;
``watch --metrics-textfile PATH`` also writes them for node_exporter's
textfile collector, atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client import write_to_textfile as _write_to_textfile

from .locking import run_dir

PREFIX = "incus_host_tables"
# An apply takes a millisecond for a few routes, ~0.3 s for 12,000.
APPLY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


def instances_in_error() -> int:
    """Instances with a recorded problem (refused, isolated, repair abandoned):
    those `status` shows as error, whichever process recorded it."""
    root = os.path.join(run_dir(), "problems")
    try:
        projects = os.listdir(root)
    except FileNotFoundError:
        return 0
    count = 0
    for project in projects:
        try:
            count += sum(n.endswith(".json") for n in os.listdir(os.path.join(root, project)))
        except (FileNotFoundError, NotADirectoryError):
            continue
    return count


# The *_created series only double the output; nothing here needs them.
disable_created_metrics()  # type: ignore[no-untyped-call]


class Metrics:
    def __init__(
        self,
        managed_instances: Callable[[], int] = lambda: 0,
        reasons: Iterable[str] = (),
        *,
        policy_rejected: Callable[[], bool] = lambda: False,
        policy_loaded_at: Callable[[], float | None] = lambda: None,
    ) -> None:
        self.registry = CollectorRegistry()
        self.repairs = self._counter(
            "repairs",
            "Repairs of kernel state that drifted from the desired state, by what caused them",
            "reason",
        )
        for reason in reasons:  # every reason from the start: rate() sees the first one
            self.repairs.labels(reason)
        self.repairs_abandoned = self._counter(
            "repairs_abandoned",
            "Devices whose repair was given up because something kept undoing it",
        )
        self.reconciles = self._counter("reconciles", "Full reconciles against Incus")
        self.resyncs = self._counter("resyncs", "Full resyncs of the kernel state", "trigger")
        self.isolations = self._counter(
            "isolations", "Instances isolated (host routes removed everywhere) after a failed start"
        )
        self.refusals = self._counter("refusals", "Instance starts refused by the start hook")
        self.apply_seconds = Histogram(
            f"{PREFIX}_apply_seconds",
            "Time to converge one instance or device (read, plan, apply)",
            buckets=APPLY_BUCKETS,
            registry=self.registry,
        )
        self.managed_instances = self._gauge(
            "managed_instances",
            "Running local instances whose routed NICs the daemon keeps converged",
            managed_instances,
        )
        self.instances_in_error = self._gauge(
            "instances_in_error",
            "Instances with a recorded problem (shown as error by status)",
            instances_in_error,
        )
        self.last_event = self._gauge(
            "last_event_timestamp_seconds",
            "When the last Incus lifecycle event was received (Unix time)",
        )
        # The tenant policy (policywatch.py): a bad edit keeps the last good
        # policy in force, which only the log would tell without these.
        self.policy_rejected = self._gauge(
            "policy_rejected",
            "1 while the policy file on disk is rejected and the last good policy is in force",
            lambda: int(policy_rejected()),
        )
        self.policy_rejections = self._counter(
            "policy_rejections", "Re-reads of the policy file that rejected it"
        )
        self.policy_loaded = self._gauge(
            "policy_loaded_timestamp_seconds",
            "When the policy file was last loaded and put in force (Unix time; 0: never)",
            lambda: policy_loaded_at() or 0.0,
        )

    def _counter(self, name: str, text: str, *labels: str) -> Counter:
        return Counter(f"{PREFIX}_{name}", text, labels, registry=self.registry)

    def _gauge(self, name: str, text: str, value: Callable[[], float] | None = None) -> Gauge:
        gauge = Gauge(f"{PREFIX}_{name}", text, registry=self.registry)
        if value is not None:
            gauge.set_function(lambda: float(value()))
        return gauge

    def event_received(self) -> None:
        self.last_event.set(time.time())

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def write_textfile(self, path: str) -> None:
        _write_to_textfile(path, self.registry)
