"""Fixtures of the kernel tests. Everything they change lives inside network
namespaces they create; the finalizers delete those even when a test fails.

These tests need root and iproute2; without them they fail (the test command,
scripts/test, installs iproute2 and runs as root), they never skip."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from incus_host_tables.engine import Engine
from lab.netns import Namespaces, NetNS, inside


@pytest.fixture(autouse=True)
def _kernel_environment(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    if os.geteuid() != 0:
        pytest.fail("kernel tests need root (they create network namespaces); run them as root")
    if shutil.which("ip") is None:
        pytest.fail("kernel tests need `ip` (iproute2): run scripts/install-deps")
    # The host lock file: ours, not the machine's /run/incus-host-tables.
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path_factory.mktemp("run")))


@pytest.fixture
def make_netns() -> Iterator[Callable[[], NetNS]]:
    """Factory of fresh namespaces (``ihtk<pid>_<n>``), all deleted at teardown."""
    with Namespaces("ihtk") as namespaces:
        yield namespaces.new


@pytest.fixture
def host(make_netns: Callable[[], NetNS]) -> NetNS:
    """Namespace H: the 'host' of the instances, with veth vh0 (its peer vc0
    stays in H: the engine only cares about the host end)."""
    ns = make_netns()
    ns.add_veth("vh0", "vc0")
    return ns


@pytest.fixture
def make_engine() -> Iterator[Callable[..., Engine]]:
    """Engine(**kwargs) whose netlink socket is bound to the given namespace."""
    engines: list[Engine] = []

    def make(ns: NetNS, **kwargs: int) -> Engine:
        with inside(ns.name):
            engine = Engine(**kwargs)
        engines.append(engine)
        return engine

    try:
        yield make
    finally:
        for engine in engines:
            engine.close()
