"""Warnings about a device's keys reach the log (the daemon's and the
hooks') and the outcome the commands print, and table names are looked up
when the config is applied, not before. The engine is a stand-in: what is
checked is what the lifecycle hands to it and reports."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from unittest.mock import MagicMock

import pytest

from incus_host_tables.config import TableSettings
from incus_host_tables.lifecycle import Lifecycle
from incus_host_tables.rttables import SystemTableNames


@dataclass(frozen=True)
class Nic:
    device: str
    config: dict[str, str] = field(hash=False)
    host_name: str | None = "veth1"


@pytest.fixture(autouse=True)
def _run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path / "run"))


def engine() -> MagicMock:
    fake = MagicMock()
    fake.rp_table = 1158
    fake.intent_problems.return_value = []
    fake.converge.return_value.lines.return_value = []
    return fake


def test_near_miss_key_is_logged_and_reported(caplog: pytest.LogCaptureFixture) -> None:
    nic = Nic("eth0", {"ipv4.address": "198.51.100.10", "user.ipv4.host-tables": "100"})
    with caplog.at_level(logging.WARNING, logger="incus-host-tables"):
        out = Lifecycle(engine(), source="daemon").start("default", "c1", [nic])
    assert out.ok
    (warning,) = out.nics[0].warnings
    assert "user.ipv4.host-tables='100'" in warning and "user.ipv4.host_tables" in warning
    assert [r.getMessage() for r in caplog.records] == [f"default/c1 device eth0: {warning}"]


def test_names_are_read_when_applied(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    names = TableSettings(names=SystemTableNames(str(etc), str(tmp_path / "usr")))
    fake = engine()
    lifecycle = Lifecycle(fake, tables=names)
    nic = Nic("eth0", {"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "blue"})
    etc.mkdir()
    (etc / "rt_tables").write_text("1001 blue\n")  # written after the Lifecycle was made

    out = lifecycle.start("default", "c1", [nic])

    assert out.ok, out.error
    intent = fake.converge.call_args.args[1]
    assert intent.ipv4.tables == (1001,)
