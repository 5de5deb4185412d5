"""Throwaway network namespaces for the benchmarks.

Everything a benchmark changes lives in namespaces made here, named
``ihtb<pid>_<n>``; ``Namespaces.close`` (always reached through ``with``)
deletes them, and with them every route, rule and interface the run made.
The machine's own namespace is only ever entered to come back to it.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import time
from contextlib import AbstractContextManager
from pathlib import Path

from incus_host_tables.lab.netns import NETNS_DIR, inside

_counter = itertools.count(1)


class NetNS:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"NetNS({self.name!r})"

    def inside(self) -> AbstractContextManager[None]:
        """Run the body (this thread, and the processes it starts) inside
        the namespace: sockets opened and children spawned there belong to it,
        so in-process and whole-process figures pay no `ip netns exec`."""
        return inside(self.name)

    def ip(self, *args: str, check: bool = True) -> str:
        proc = subprocess.run(
            ["ip", "-n", self.name, *args], capture_output=True, text=True, timeout=120
        )
        if check and proc.returncode != 0:
            raise RuntimeError(f"ip {' '.join(args)} in {self.name}: {proc.stderr.strip()}")
        return proc.stdout

    def batch(self, lines: list[str], *, force: bool = False) -> None:
        """`ip -batch` in the namespace (setup and teardown; not timed)."""
        args = ["ip", "-n", self.name, *(["-force"] if force else []), "-batch", "-"]
        proc = subprocess.run(
            args, input="\n".join(lines) + "\n", capture_output=True, text=True, timeout=600
        )
        if proc.returncode != 0 and not force:
            raise RuntimeError(f"ip -batch in {self.name}: {proc.stderr.strip()[:500]}")

    def sysctl(self, key: str, value: str) -> None:
        # /proc/sys/net is the namespace of whoever opens it (not so /sys).
        path = Path("/proc/sys") / key.replace(".", "/")
        with self.inside():
            path.write_text(value)

    def add_veth(self, name: str, peer: str) -> None:
        """A veth pair, both ends up and both ends here: Incus's host end is a
        veth, and only the host end matters to the routes."""
        self.ip("link", "add", name, "type", "veth", "peer", "name", peer)
        self.ip("link", "set", name, "up")
        self.ip("link", "set", peer, "up")


class Namespaces:
    """Factory of namespaces, all deleted on exit, even after an error."""

    def __init__(self) -> None:
        self.made: list[str] = []

    def __enter__(self) -> Namespaces:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def new(self, tag: str) -> NetNS:
        name = f"ihtb{os.getpid()}_{tag}{next(_counter)}"
        subprocess.run(["ip", "netns", "add", name], check=True, capture_output=True)
        self.made.append(name)
        ns = NetNS(name)
        ns.ip("link", "set", "lo", "up")
        # No duplicate address detection: nothing settles behind our back.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")
        return ns

    def close(self) -> None:
        for name in reversed(self.made):
            for _ in range(3):
                proc = subprocess.run(["ip", "netns", "delete", name], capture_output=True)
                if proc.returncode == 0 or not (NETNS_DIR / name).exists():
                    break
                time.sleep(0.2)
        self.made.clear()
