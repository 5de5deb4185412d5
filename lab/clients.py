"""Clients of a lab: network namespaces standing for hosts that talk to the
lab's instances, each joined to the lab's namespace H by a veth and placed
in one of H's routing domains (main, or a table made strict like a VRF's).
"""

from __future__ import annotations

import ipaddress
import re
import subprocess

from .netns import Namespaces, NetNS
from .processes import run, until

__all__ = ["STRICT_TABLE_METRIC", "Client", "connect_client", "disconnect_client"]

# "unreachable default" with the highest metric a VRF table gets: lookups that
# find nothing else in the table stop there instead of falling through to main.
STRICT_TABLE_METRIC = 4278198272

_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class Client:
    """A network namespace standing for a host that talks to H's instances."""

    def __init__(
        self,
        *,
        name: str,
        netns: str,
        host_ifname: str,
        table: int | None,
        address4: str,
        gateway4: str,
        address6: str,
        gateway6: str,
        busybox: str,
    ) -> None:
        self.name = name
        self.netns = netns
        self.host_ifname = host_ifname  # its uplink's end in H
        self.ifname = "eth0"
        self.table = table
        self.address4 = address4
        self.gateway4 = gateway4
        self.address6 = address6
        self.gateway6 = gateway6
        self.busybox = busybox

    def __repr__(self) -> str:
        return f"Client({self.name!r}, netns={self.netns!r}, table={self.table})"

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def ping(self, addr: str, count: int = 1, timeout: int = 1) -> bool:
        """One bounded ping run (busybox ping: iputils may be absent)."""
        family = "-6" if ":" in addr else "-4"
        deadline = max(count - 1, 0) + timeout
        argv = [self.busybox, "ping", family, "-q", "-c", str(count)]
        argv += ["-W", str(timeout), "-w", str(deadline), addr]
        try:
            return self.run(*argv, check=False, timeout=deadline + 10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ping_within(self, addr: str, seconds: float = 5.0) -> bool:
        """Ping until one answer or ``seconds`` pass (IPv6 DAD, neighbour setup)."""
        return until(lambda: self.ping(addr), seconds, interval=0)


def split_iface(value: str, default_prefix: int) -> tuple[str, str, int]:
    """``"203.0.113.2/24"`` -> (client address, gateway address, prefix length).

    The gateway is the network's first host address that is not the client's.
    """
    iface = ipaddress.ip_interface(value if "/" in value else f"{value}/{default_prefix}")
    if iface.network.prefixlen >= iface.max_prefixlen - 1:
        raise ValueError(f"{value}: need a network with room for a gateway")
    for host in iface.network.hosts():
        if host != iface.ip:
            return str(iface.ip), str(host), iface.network.prefixlen
    raise ValueError(f"{value}: no gateway address available")  # pragma: no cover


def connect_client(
    namespaces: Namespaces,
    host: NetNS,
    name: str,
    *,
    table: int | None,
    v4: str,
    v6: str,
    busybox: str,
) -> Client:
    """A client namespace ``<host>-<name>`` with a veth to ``host`` and
    default routes via ``host``. See :meth:`lab.incus.IncusLab.add_client`."""
    if not _NAME.match(name):
        raise ValueError(f"client name {name!r}: 1-10 of [a-z0-9], starting with a letter")
    a4, gw4, len4 = split_iface(v4, 24)
    a6, gw6, len6 = split_iface(v6, 64)
    if ":" in a4 or ":" not in a6:
        raise ValueError("v4 must be IPv4 and v6 IPv6")
    netns, hif = f"{host.name}-{name}", f"v-{name}"
    client_ns = namespaces.add(netns)
    h, c = host.ip, client_ns.ip
    h("link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", netns)
    h("link", "set", hif, "up")
    c("link", "set", "eth0", "up")
    h("addr", "add", f"{gw4}/{len4}", "dev", hif)
    h("addr", "add", f"{gw6}/{len6}", "dev", hif, "nodad")
    c("addr", "add", f"{a4}/{len4}", "dev", "eth0")
    c("addr", "add", f"{a6}/{len6}", "dev", "eth0", "nodad")
    c("route", "add", "default", "via", gw4)
    c("-6", "route", "add", "default", "via", gw6)
    if table is not None:
        for fam in ("-4", "-6"):
            h(fam, "rule", "add", "iif", hif, "lookup", str(table))
            h(fam, "route", "replace", "unreachable", "default",
              "table", str(table), "metric", str(STRICT_TABLE_METRIC))  # fmt: skip
    return Client(
        name=name,
        netns=netns,
        host_ifname=hif,
        table=table,
        address4=a4,
        gateway4=gw4,
        address6=a6,
        gateway6=gw6,
        busybox=busybox,
    )


def disconnect_client(namespaces: Namespaces, host: NetNS, client: Client) -> None:
    """Delete a client's namespace (its veth goes with it) and its rules in ``host``."""
    if client.table is not None:
        for fam in ("-4", "-6"):
            host.ip(fam, "rule", "del", "iif", client.host_ifname,
                    "lookup", str(client.table), check=False)  # fmt: skip
    namespaces.delete(client.netns)
