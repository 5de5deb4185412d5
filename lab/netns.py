"""Throwaway network namespaces: the one helper of the kernel tests, the
benchmarks and the Incus lab.

Everything the tests, benchmarks and the lab change lives in namespaces made
here; ``Namespaces.close`` (reached through ``with`` or a fixture finalizer)
deletes them, and with them every route, rule and interface inside. The
machine's own namespace is only ever entered to come back to it.

``inside`` enters a namespace from Python (3.11 has no ``os.setns``), so
netlink sockets and child processes can be opened there without
``ip netns exec``.
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

from .processes import LabError, kill_pids, run

__all__ = ["NETNS_DIR", "Namespaces", "NetNS", "inside", "ping_command"]

CLONE_NEWNET = 0x40000000
NETNS_DIR = Path("/run/netns")
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count(1)


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


@contextmanager
def inside(name: str) -> Iterator[None]:
    """Run the body -- this thread, and the processes it starts -- inside
    namespace ``name``; sockets opened there stay bound to it afterwards."""
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        target = os.open(NETNS_DIR / name, os.O_RDONLY | os.O_CLOEXEC)
        try:
            _setns(target)
        finally:
            os.close(target)
        try:
            yield
        finally:
            _setns(home)
    finally:
        os.close(home)


def ping_command() -> list[str]:
    """iputils' ping, else busybox's (scripts/install-deps installs busybox-static)."""
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    raise LabError("neither ping nor busybox is installed (scripts/install-deps)")


class NetNS:
    """One named network namespace; commands run through ``ip -n`` and
    ``ip netns exec``, failures raise :class:`~lab.processes.LabCommandError`."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    # -- running things ------------------------------------------------------

    def inside(self) -> AbstractContextManager[None]:
        """Run the body (this thread, and the processes it starts) inside
        this namespace; see :func:`inside`."""
        return inside(self.name)

    def run(
        self, *cmd: str, check: bool = True, input: str | None = None, timeout: float = 20
    ) -> subprocess.CompletedProcess[str]:
        """``cmd`` inside the namespace (``ip netns exec``)."""
        return run(
            ["ip", "netns", "exec", self.name, *cmd], check=check, input=input, timeout=timeout
        )

    def ip(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        """``ip -n NAME ARGS``; its standard output."""
        return run(["ip", "-n", self.name, *args], check=check, timeout=timeout).stdout

    def batch(self, commands: list[str], *, force: bool = False, timeout: float = 600) -> None:
        """Many `ip` commands through one process (`ip -batch`); with
        ``force``, failing lines are skipped and not reported."""
        argv = ["ip", "-n", self.name, *(["-force"] if force else []), "-batch", "-"]
        run(argv, check=not force, input="\n".join(commands) + "\n", timeout=timeout)

    def sysctl(self, key: str, value: str) -> None:
        """Set a ``net.*`` sysctl of this namespace. /proc/sys/net belongs to
        the namespace of whoever opens it (no sysctl binary needed)."""
        path = Path("/proc/sys") / key.replace(".", "/")
        with self.inside():
            path.write_text(value)

    def nft(self, ruleset: str) -> None:
        self.run("nft", "-f", "-", input=ruleset)

    def ping(self, address: str, tries: int = 3) -> bool:
        """True when one of at most ``tries`` single, one-second pings is answered."""
        cmd = [*ping_command(), "-6" if ":" in address else "-4", "-c1", "-W1", address]
        return any(self.run(*cmd, check=False, timeout=5).returncode == 0 for _ in range(tries))

    def pids(self) -> list[int]:
        """The processes running in this namespace."""
        out = run(["ip", "netns", "pids", self.name], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

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

    def add_veth(
        self, name: str, peer: str, peer_ns: NetNS | None = None, *, settle: bool = True
    ) -> None:
        """A veth pair, both ends up; ``peer`` goes to ``peer_ns`` when given.
        With ``settle``, returns once the IPv6 link-local setup of both ends
        has settled, so that later snapshots of the kernel state are stable."""
        args = ["link", "add", name, "type", "veth", "peer", "name", peer]
        if peer_ns is not None:
            args += ["netns", peer_ns.name]
        self.ip(*args)
        self.ip("link", "set", name, "up")
        (peer_ns or self).ip("link", "set", peer, "up")
        if settle:
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
                raise LabError(f"{ifname} in {self.name}: no IPv6 link-local: {addr}")
            time.sleep(0.02)


class Namespaces:
    """Namespaces made on demand, all deleted on ``close`` (or leaving
    ``with``), in reverse order, even after an error."""

    def __init__(self, prefix: str = "ihtn") -> None:
        self.prefix = prefix
        self.made: list[str] = []

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def add(self, name: str) -> NetNS:
        """Namespace ``name``, loopback up.

        Names made here embed the PID of the process that makes them, so a
        namespace of that name that exists already was left by a process
        that had our PID and was killed before it could clean up: its
        processes are ended and it is replaced, so an interrupted run never
        blocks the next one.
        """
        if str(os.getpid()) not in name:
            raise ValueError(f"namespace {name!r}: the name must contain our PID {os.getpid()}")
        if (NETNS_DIR / name).exists():
            kill_pids(NetNS(name).pids())
            self.delete(name)
        run(["ip", "netns", "add", name])
        self.made.append(name)
        ns = NetNS(name)
        try:
            ns.ip("link", "set", "lo", "up")
        except BaseException:
            self.delete(name)
            raise
        return ns

    def new(self, tag: str = "") -> NetNS:
        """A namespace of a fresh name (``PREFIX<pid>_<tag><n>``) without
        duplicate address detection: link-local addresses settle at once, so
        its state only changes when the caller changes it."""
        ns = self.add(f"{self.prefix}{os.getpid()}_{tag}{next(_counter)}")
        try:
            ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
            ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        except BaseException:
            self.delete(ns.name)
            raise
        return ns

    def delete(self, name: str) -> None:
        """Delete one namespace made here (its interfaces go with it)."""
        for _ in range(3):
            proc = run(["ip", "netns", "delete", name], check=False)
            if proc.returncode == 0 or not (NETNS_DIR / name).exists():
                break
            time.sleep(0.2)
        if name in self.made:
            self.made.remove(name)

    def close(self) -> None:
        for name in reversed(list(self.made)):
            self.delete(name)
