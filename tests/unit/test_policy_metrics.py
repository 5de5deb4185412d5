"""The policy's metrics: a rejected file shows as rejected (gauge) and is
counted; a good file clears the gauge and moves the load time."""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from incus_host_tables.metrics import Metrics
from incus_host_tables.policy import ActivePolicy, PolicyError
from incus_host_tables.policywatch import PolicyWatcher

GOOD = "projects:\n  a: {tables: [100]}\n"


def samples(metrics: Metrics) -> dict[str, float]:
    text = metrics.exposition().decode()
    return {
        s.name: s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if "policy" in s.name
    }


def wired(path: Path) -> tuple[ActivePolicy, PolicyWatcher, Metrics]:
    """The policy, its watcher and the metrics, connected as the daemon does."""
    active = ActivePolicy()
    active.use(str(path))
    active.load()
    metrics = Metrics(
        policy_rejected=lambda: active.rejected, policy_loaded_at=lambda: active.loaded_at
    )
    watcher = PolicyWatcher(active, on_rejected=metrics.policy_rejections.inc)
    return active, watcher, metrics


def test_rejected_file_then_fixed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text(GOOD)
    active, watcher, metrics = wired(path)
    first = samples(metrics)
    assert first["incus_host_tables_policy_rejected"] == 0
    assert first["incus_host_tables_policy_rejections_total"] == 0
    loaded = first["incus_host_tables_policy_loaded_timestamp_seconds"]
    assert loaded == active.loaded_at and loaded > 0

    path.write_text("projects:\n  a: {tables: [100\n")
    assert not watcher.check(forced=True)
    bad = samples(metrics)
    assert bad["incus_host_tables_policy_rejected"] == 1
    assert bad["incus_host_tables_policy_rejections_total"] == 1
    # The last good policy is in force: its load time stays.
    assert bad["incus_host_tables_policy_loaded_timestamp_seconds"] == loaded
    assert active.current() is not None

    assert not watcher.check(forced=True)  # SIGHUP on the same bad file: counted again
    assert samples(metrics)["incus_host_tables_policy_rejections_total"] == 2

    path.write_text("projects:\n  a: {tables: [200]}\n")
    assert watcher.check(forced=True)
    fixed = samples(metrics)
    assert fixed["incus_host_tables_policy_rejected"] == 0
    assert fixed["incus_host_tables_policy_rejections_total"] == 2
    assert fixed["incus_host_tables_policy_loaded_timestamp_seconds"] >= loaded


def test_never_loaded_then_removed(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("projects: [\n")
    active = ActivePolicy()
    active.use(str(path))
    metrics = Metrics(
        policy_rejected=lambda: active.rejected, policy_loaded_at=lambda: active.loaded_at
    )
    with pytest.raises(PolicyError):
        active.current()
    assert samples(metrics)["incus_host_tables_policy_rejected"] == 1
    # Never loaded: the load time says so.
    assert samples(metrics)["incus_host_tables_policy_loaded_timestamp_seconds"] == 0
    path.unlink()
    assert active.load() is None
    assert samples(metrics)["incus_host_tables_policy_rejected"] == 0
