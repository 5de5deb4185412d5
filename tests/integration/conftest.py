"""One real incusd per test session (starting one costs about a second).

Tests share it: each uses its own instance names, addresses and clients, and
removes what it created. A missing prerequisite makes the tests fail (the test
command installs everything), never skip.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from plugin_checks import environ, serve_lab

from lab import IncusLab, until


@pytest.fixture(scope="session")
def lab() -> Iterator[IncusLab]:
    yield from serve_lab(lambda: IncusLab("iht"))


# --------------------------------------------------------------------------
# The plugin in the lab (tests/integration/test_plugin_*.py).

import json  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from typing import Any  # noqa: E402

from lab.plugin import PluginDaemon, run_cli  # noqa: E402

PLUGIN_PROTO = "158"
RP_TABLE = "1158"  # the plugin's reverse-path table (default)
# Its rule, per family, as PluginLab.rules() reports it.
RP_RULES = {("4", RP_TABLE, -1), ("6", RP_TABLE, -1)}


@pytest.fixture(scope="session", autouse=True)
def plugin_run_dir() -> Iterator[str]:
    """The plugin's private run dir (locks, hook socket, problems).

    Autouse and session-scoped, so it is set before anything runs: the
    daemon and the CLI read it, and `enable` writes it into the hook command
    (LXC does not pass incusd's environment on to hooks).
    """
    path = tempfile.mkdtemp(prefix="iht-run-")
    try:
        with environ("INCUS_HOST_TABLES_RUN_DIR", path):
            yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def run_dir(plugin_run_dir: str) -> str:
    return plugin_run_dir


@pytest.fixture(scope="module")
def daemon(lab: IncusLab, run_dir: str) -> Iterator[PluginDaemon]:
    """`incus-host-tables watch` in the lab, for one test module."""
    d = PluginDaemon(lab, run_dir)
    d.start()
    try:
        yield d
    finally:
        d.stop()


class PluginLab:
    """Shortcuts the plugin tests share: routes and rules of H, the CLI,
    bounded polling, and instances removed at the end of the test."""

    def __init__(self, lab: IncusLab, run_dir: str) -> None:
        self.lab = lab
        self.run_dir = run_dir
        self._cleanups: list[Callable[[], object]] = []

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run_cli(self.lab, self.run_dir, *args)

    def defer(self, fn: Callable[[], object]) -> None:
        self._cleanups.append(fn)

    def launch(self, name: str, project: str = "default", **kwargs: Any) -> str:
        self.defer(
            lambda: self.lab.incus("delete", "--force", name, "--project", project, check=False)
        )
        self.lab.launch(name, project=project, **kwargs)
        return name

    def client(self, name: str, **kwargs: Any) -> Any:
        c = self.lab.add_client(name, **kwargs)
        self.defer(lambda: self.lab.remove_client(name))
        return c

    def close(self) -> None:
        while self._cleanups:
            fn = self._cleanups.pop()
            try:
                fn()
            except Exception as err:  # keep cleaning up
                print(f"cleanup failed: {err}")

    def tables(self, addr: str) -> set[str]:
        """Tables holding H's host route to exactly ``addr``, the
        reverse-path table aside (``rp_entries``)."""
        return {r["table"] for r in self.entries(addr)}

    def entries(self, addr: str) -> list[dict[str, Any]]:
        """H's routes to exactly ``addr``, the reverse-path table aside."""
        return [r for r in self.lab.route_entries(addr) if r["table"] != RP_TABLE]

    def rp_entries(self, addr: str) -> list[dict[str, Any]]:
        """H's routes to exactly ``addr`` in the reverse-path table."""
        return [r for r in self.lab.route_entries(addr) if r["table"] == RP_TABLE]

    def rules(self) -> set[tuple[str, str, int]]:
        """The plugin's rules in H: (family, table, suppress_prefixlength)."""
        found = set()
        for fam in ("-4", "-6"):
            out = self.lab.ns_run("ip", "-j", fam, "rule", "show").stdout
            for r in json.loads(out or "[]"):
                if str(r.get("protocol")) == PLUGIN_PROTO:
                    assert r.get("iif") == "lo", r
                    found.add((fam[1:], str(r.get("table")), int(r.get("suppress_prefixlen", -1))))
        return found

    def host_name(self, name: str, device: str = "eth0", project: str = "default") -> str:
        config = self.lab.query(f"/1.0/instances/{name}?project={project}")["config"]
        return str(config[f"volatile.{device}.host_name"])

    until = staticmethod(until)
    RP_TABLE = RP_TABLE
    RP_RULES = RP_RULES


@pytest.fixture
def plug(lab: IncusLab, run_dir: str) -> Iterator[PluginLab]:
    p = PluginLab(lab, run_dir)
    try:
        yield p
    finally:
        p.close()
