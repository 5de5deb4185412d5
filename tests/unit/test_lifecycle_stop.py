"""Robust stop: every NIC and every family is processed whatever fails, the
errors are collected, and the shared rules are still resynced. The engine
is a fake that fails where it is told to (real kernel: tests/kernel)."""

from __future__ import annotations

import errno
import socket
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field

import pytest

from incus_host_tables.engine import DevicePlan, InterfaceMissing
from incus_host_tables.lifecycle import Lifecycle
from incus_host_tables.netlink.kernel import ApplyError, NetlinkError

V4, V6 = socket.AF_INET, socket.AF_INET6


@dataclass(frozen=True)
class Nic:
    device: str
    host_name: str | None
    config: Mapping[str, str] = field(
        default_factory=lambda: {"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100"}
    )


class FakeEngine:
    """Records the cleanups; ``fail`` maps (host interface, families or
    None for the whole) to the exception that call raises."""

    def __init__(self, fail: Mapping[tuple[str | None, frozenset[int] | None], Exception]) -> None:
        self.fail = fail
        self.rp_table = 1158
        self.cleaned: list[tuple[str | None, frozenset[int] | None]] = []
        self.resyncs = 0
        self.resync_error: Exception | None = None

    def cleanup(
        self,
        ifname: str | None,
        intent: object,
        *,
        dry_run: bool = False,
        families: Collection[int] | None = None,
    ) -> DevicePlan:
        key = (ifname, frozenset(families) if families is not None else None)
        if key in self.fail:
            raise self.fail[key]
        self.cleaned.append(key)
        return DevicePlan(ifname, 1)

    def resync_rules(self, *, dry_run: bool = False) -> DevicePlan:
        self.resyncs += 1
        if self.resync_error is not None:
            raise self.resync_error
        return DevicePlan(None, None)


@pytest.fixture(autouse=True)
def _run_dir(tmp_path: object, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path))


NICS = [Nic("eth0", "vA"), Nic("eth1", "vB"), Nic("eth2", "vC")]


@pytest.mark.parametrize(
    "error",
    [
        NetlinkError(errno.EINVAL, "Invalid argument"),
        OSError(errno.EBADF, "Bad file descriptor"),
        InterfaceMissing("vA"),
        ApplyError("del-route 198.51.100.10/32 dev vA table 100", errno.EBUSY, ""),
    ],
    ids=["netlink", "oserror", "interface-missing", "apply"],
)
def test_a_failing_nic_does_not_stop_the_others(error: Exception) -> None:
    whole, v4, v6 = ("vA", None), ("vA", frozenset({V4})), ("vA", frozenset({V6}))
    engine = FakeEngine({whole: error, v4: error})
    out = Lifecycle(engine, source="test").stop("p", "i", NICS)  # type: ignore[arg-type]

    # vA: the whole failed, retried per family: IPv6 went, IPv4 failed.
    assert engine.cleaned == [v6, ("vB", None), ("vC", None)]
    assert out.error is not None and out.error.startswith("device eth0: ")
    assert str(error) in out.error and "ipv4: " in out.error
    assert [n.error is not None for n in out.nics] == [True, False, False]
    assert engine.resyncs == 1


def test_every_nic_failing_still_resyncs_and_reports_every_error() -> None:
    fail: dict[tuple[str | None, frozenset[int] | None], Exception] = {}
    for nic in NICS:
        for fams in (None, frozenset({V4}), frozenset({V6})):
            fail[nic.host_name, fams] = NetlinkError(errno.EIO, f"{nic.host_name} broke")
    engine = FakeEngine(fail)
    engine.resync_error = NetlinkError(errno.EIO, "resync broke")
    out = Lifecycle(engine, source="test").stop("p", "i", NICS)  # type: ignore[arg-type]
    assert engine.cleaned == []
    assert out.error is not None
    for nic in NICS:
        assert f"device {nic.device}: " in out.error and f"{nic.host_name} broke" in out.error
    assert out.error.endswith("rules resync failed: [Errno 5] resync broke")
    assert engine.resyncs == 1


def test_a_clean_stop_with_readable_configs_needs_no_resync() -> None:
    engine = FakeEngine({})
    out = Lifecycle(engine, source="test").stop("p", "i", NICS)  # type: ignore[arg-type]
    assert out.ok and engine.resyncs == 0
    assert engine.cleaned == [(n.host_name, None) for n in NICS]
