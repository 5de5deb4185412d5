"""Helpers of the kernel tests: throwaway network namespaces, veth pairs,
entering a namespace from Python, and the real CLI run inside one.

Everything these tests change lives inside namespaces they create (named
``ihtk<pid>_<n>``); the finalizers delete them even when a test fails. The
machine's own namespace is only ever read (to find our way back to it).
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence

import pytest

from incus_host_tables.config import DeviceIntent, parse_device

PYTHON = sys.executable
_counter = itertools.count(1)


def _ping_command() -> list[str]:
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    pytest.skip("neither ping nor busybox is installed")


class NetNS:
    """One namespace made by the tests; commands run through ``ip -n`` and
    ``ip netns exec``."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    # -- running things ------------------------------------------------------

    def run(
        self, *cmd: str, check: bool = True, input: str | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(
            ["ip", "netns", "exec", self.name, *cmd],
            input=input,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} in {self.name} exited {proc.returncode}: {proc.stderr.strip()}"
            )
        return proc

    def ip(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, timeout=20
        )
        if check and proc.returncode != 0:
            raise AssertionError(f"ip {' '.join(args)} in {self.name}: {proc.stderr.strip()}")
        return proc.stdout

    def batch(self, commands: list[str]) -> None:
        """Many `ip` commands through one process (`ip -batch`)."""
        proc = subprocess.run(
            ["ip", "-n", self.name, "-batch", "-"],
            input="\n".join(commands) + "\n",
            capture_output=True,
            text=True,
            timeout=60,
        )
        if proc.returncode != 0:
            raise AssertionError(f"ip -batch in {self.name}: {proc.stderr.strip()[:500]}")

    def sysctl(self, key: str, value: str) -> None:
        self.run("sysctl", "-q", "-w", f"{key}={value}")

    def nft(self, ruleset: str) -> None:
        self.run("nft", "-f", "-", input=ruleset)

    def ping(self, address: str, tries: int = 3) -> bool:
        """True when one of at most ``tries`` single, one-second pings is answered."""
        cmd = [*_ping_command(), "-6" if ":" in address else "-4", "-c1", "-W1", address]
        return any(self.run(*cmd, check=False, timeout=5).returncode == 0 for _ in range(tries))

    # -- reading the kernel --------------------------------------------------

    def route_lines(self, *args: str, v6: bool = False) -> list[str]:
        """Lines of `ip [-6] route show table all ARGS`."""
        fam = ["-6"] if v6 else ["-4"]
        return [
            line.strip()
            for line in self.ip(*fam, "route", "show", "table", "all", *args).splitlines()
            if line.strip()
        ]

    def rule_lines(self, v6: bool = False) -> list[str]:
        fam = ["-6"] if v6 else ["-4"]
        return [line.strip() for line in self.ip(*fam, "rule", "show").splitlines() if line.strip()]

    def state(self) -> str:
        """The kernel's routes of every table and its policy rules, both
        families, as iproute2 prints them."""
        parts = []
        for args in (
            ("-4", "route", "show", "table", "all"),
            ("-6", "route", "show", "table", "all"),
            ("-4", "rule", "show"),
            ("-6", "rule", "show"),
        ):
            parts.append(f"### ip {' '.join(args)}\n{self.ip(*args)}")
        return "".join(parts)

    def ifindex(self, ifname: str) -> int:
        return int(self.run("cat", f"/sys/class/net/{ifname}/ifindex").stdout)

    # -- building ------------------------------------------------------------

    def add_veth(self, name: str, peer: str, peer_ns: NetNS | None = None) -> None:
        """A veth pair, both ends up; ``peer`` goes to ``peer_ns`` when given.
        Returns once the IPv6 link-local setup of the ends in this namespace
        has settled, so that later snapshots of the kernel state are stable."""
        args = ["link", "add", name, "type", "veth", "peer", "name", peer]
        if peer_ns is not None:
            args += ["netns", peer_ns.name]
        self.ip(*args)
        self.ip("link", "set", name, "up")
        (peer_ns or self).ip("link", "set", peer, "up")
        self.wait_link_local(name)
        (peer_ns or self).wait_link_local(peer)

    def wait_link_local(self, ifname: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            addr = self.ip("-6", "addr", "show", "dev", ifname, "scope", "link")
            routes = self.ip("-6", "route", "show", "table", "main", "dev", ifname)
            if "inet6 fe80" in addr and "tentative" not in addr and "fe80::/64" in routes:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"{ifname} in {self.name}: no IPv6 link-local: {addr}")
            time.sleep(0.02)


def new_namespace() -> NetNS:
    name = f"ihtk{os.getpid()}_{next(_counter)}"
    subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
    ns = NetNS(name)
    try:
        ns.ip("link", "set", "lo", "up")
        # No duplicate address detection: link-local addresses settle at once,
        # so the state text of a namespace only changes when a test changes it.
        for key in ("net.ipv6.conf.all.accept_dad", "net.ipv6.conf.default.accept_dad"):
            ns.sysctl(key, "0")
    except BaseException:
        delete_namespace(name)
        raise
    return ns


def delete_namespace(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], capture_output=True)


def intent(keys: Mapping[str, str]) -> DeviceIntent:
    """The device config as the plugin parses it at run time."""
    return parse_device(dict(keys))


def run_cli(
    ns: NetNS,
    action: str,
    host_name: str,
    config: Mapping[str, str] | Sequence[str],
    *options: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m incus_host_tables [OPTIONS] device ACTION --host-name IFACE KEY=VALUE...`
    inside ``ns``, as an operator or a hook would run it. ``config`` is a
    mapping, or KEY=VALUE words as given on the command line."""
    argv = ["ip", "netns", "exec", ns.name, *cli_argv(action, host_name, config, *options)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def cli_argv(
    action: str, host_name: str, config: Mapping[str, str] | Sequence[str], *options: str
) -> list[str]:
    """The command line of the plugin's `device` command."""
    words = [f"{k}={v}" for k, v in config.items()] if isinstance(config, Mapping) else config
    return [
        PYTHON, "-m", "incus_host_tables", *options,
        "device", action, "--host-name", host_name, *words,
    ]  # fmt: skip


def incus_routes(
    ns: NetNS, ifname: str, v4: list[str], v6: list[str], table: int | None = 100
) -> None:
    """The host routes Incus 6.0 installs for a routed NIC: each address in
    ``table`` (its ipv4.host_table) and in main, added by `ip route add`
    (protocol boot)."""
    commands = []
    for addr in v4 + v6:
        prefix = f"{addr}/128" if ":" in addr else f"{addr}/32"
        if table is not None:
            commands.append(f"route add {prefix} dev {ifname} table {table}")
        commands.append(f"route add {prefix} dev {ifname}")
    ns.batch(commands)
