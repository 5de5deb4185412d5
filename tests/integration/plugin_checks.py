"""What the plugin's integration tests on Incus (tests/integration) and on
LXD (tests/integration/lxd) share: the same plugin leaves the same kernel
state in either lab, so the NICs that ask for it, the checks that read it
and the setup around it are written once here."""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from typing import TYPE_CHECKING, TypeVar

from lab import Client, IncusLab
from lab.plugin import PluginDaemon, run_cli

if TYPE_CHECKING:
    from conftest import PluginLab

L = TypeVar("L", bound=IncusLab)


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    # Like ^C: pytest ends the session and still runs every fixture's
    # teardown, so the lab is removed. (A SystemExit would only fail the
    # running test, and the session would go on.)
    raise KeyboardInterrupt(f"signal {signum}")


def serve_lab(make: Callable[[], AbstractContextManager[L]]) -> Iterator[L]:
    """The body of a session ``lab`` fixture: a SIGTERM tears the lab down too."""
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    with make() as the_lab:
        yield the_lab


@contextmanager
def environ(name: str, value: str) -> Iterator[None]:
    """``name=value`` in this process's environment (so in every daemon and
    CLI the tests start) until the end, then as it was."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = old


def host_tables(tables: str) -> dict[str, str]:
    """The plugin's table keys, the same ``tables`` for both families."""
    return {"user.ipv4.host_tables": tables, "user.ipv6.host_tables": tables}


def routed_nic(n: int, keys: Mapping[str, str] | None = None) -> dict[str, str]:
    """A routed NIC with 198.51.100.``n`` and 2001:db8:``n``::1, and ``keys``."""
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": f"198.51.100.{n}",
        "ipv6.address": f"2001:db8:{n}::1",
        **(keys or {}),
    }


def routed_in(n: int, tables: str) -> dict[str, str]:
    """The routed NIC ``n`` with both families in ``tables``."""
    return routed_nic(n, host_tables(tables))


def converged(plug: PluginLab, want: Mapping[str, set[str]]) -> bool:
    """Every address's host routes are exactly in the wanted tables, all
    outside main by the plugin (protocol 158)."""
    for addr, tables in want.items():
        entries = plug.entries(addr)
        if {e["table"] for e in entries} != tables:
            return False
        if any(e["table"] != "main" and str(e.get("protocol")) != "158" for e in entries):
            return False
    return True


def assert_routed_now(plug: PluginLab, addrs: Iterable[str], tables: set[str]) -> None:
    """Without polling: each address's host routes are exactly in ``tables``,
    every one of them the plugin's (protocol 158)."""
    for addr in addrs:
        entries = plug.entries(addr)
        assert {e["table"] for e in entries} == tables, entries
        assert all(str(e.get("protocol")) == "158" for e in entries), entries


def launch_hooked(
    plug: PluginLab, profile: str, name: str, n: int, with_daemon: bool
) -> PluginDaemon | None:
    """``name`` started on the hook ``profile``, its routed NIC ``n`` in
    tables 100 and 200; first a daemon of the test's own if ``with_daemon``
    (else the hook's fallback applies)."""
    d = None
    if with_daemon:
        d = PluginDaemon(plug.lab, plug.run_dir)
        d.start()
        plug.defer(d.stop)
    plug.launch(name, profiles=[profile], devices={"eth0": routed_in(n, "100,200")})
    return d


def assert_reach(clients: Mapping[str, Client], addrs: Iterable[str], reach: set[str]) -> None:
    """Each client in ``reach`` pings every address; every other pings none."""
    for label, client in clients.items():
        for addr in addrs:
            if label in reach:
                assert client.ping_within(addr, 5), f"{label} must reach {addr}"
            else:
                assert not client.ping(addr), f"{label} must not reach {addr}"


def show_log(plug: PluginLab, name: str) -> str:
    """``info --show-log`` of ``name``; right after a failed start the
    command may briefly fail ("Invalid PID"), so it is retried."""
    logs: list[str] = []

    def fetch() -> bool:
        res = plug.lab.incus("info", "--show-log", name, check=False)
        logs.append(res.stdout + res.stderr)
        return res.returncode == 0

    assert plug.until(fetch, 5.0), logs[-1]
    return logs[-1]


@contextmanager
def profile_with_hooks(
    lab: IncusLab, run_dir: str, profile: str, keep: str
) -> Iterator[subprocess.CompletedProcess[str]]:
    """A profile with the root disk, the raw.lxc line ``keep`` and the
    plugin's hooks (``enable --profile``, whose result it yields); deleted
    at the end."""
    lab.incus("profile", "create", profile)
    try:
        lab.incus("profile", "device", "add", profile, "root", "disk", "path=/", "pool=default")
        lab.incus("profile", "set", profile, "raw.lxc", keep + "\n")
        out = run_cli(lab, run_dir, "enable", "--profile", profile)
        assert out.returncode == 0, out.stderr
        yield out
    finally:
        lab.incus("profile", "delete", profile, check=False)


@contextmanager
def domain_clients(lab: IncusLab, prefix: str, subnet: int) -> Iterator[dict[str, Client]]:
    """One client per routing domain (t100, t200, main), in 198.18.``subnet``
    and the two /28s after it; table clients are strict (VRF-like)."""
    made = {
        "t100": lab.add_client(
            f"{prefix}t100", table=100, v4=f"198.18.{subnet}.2/28", v6=f"2001:db8:f{subnet}::2/64"
        ),
        "t200": lab.add_client(
            f"{prefix}t200",
            table=200,
            v4=f"198.18.{subnet + 1}.2/28",
            v6=f"2001:db8:f{subnet + 1}::2/64",
        ),
        "main": lab.add_client(
            f"{prefix}tmain",
            table=None,
            v4=f"198.18.{subnet + 2}.2/28",
            v6=f"2001:db8:f{subnet + 2}::2/64",
        ),
    }
    try:
        yield made
    finally:
        for c in made.values():
            lab.remove_client(c)
