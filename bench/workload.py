"""What the benchmarks install: documentation and benchmarking addresses only
(198.18.0.0/15, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

TABLES = (100, 200, 250)
RP_TABLE = 1158  # the plugin's reverse-path table: one more copy of each address
RULE_PRIORITY = 1100
PROTOCOL = 158
# The plugin's device: the host end of an instance's routed NIC.
DEV = "vh0"
PEER = "vc0"
# Another interface whose routes fill the same tables (the read test).
FOREIGN_DEV = "vf0"
FOREIGN_PEER = "vg0"

_OWN_V4 = int(ipaddress.IPv4Address("198.18.0.0"))  # 198.18.0.0/16: the device's
_FOREIGN_V4 = int(ipaddress.IPv4Address("198.19.0.0"))  # 198.19.0.0/16: others'
_FOREIGN_V6 = int(ipaddress.IPv6Address("2001:db8:f::"))


def own_addresses(count: int) -> list[str]:
    """``count`` IPv4 addresses of the instance, from 198.18.0.0/16."""
    if count > 65_000:
        raise ValueError("198.18.0.0/16 holds the device's addresses: at most 65,000")
    return [str(ipaddress.IPv4Address(_OWN_V4 + 1 + i)) for i in range(count)]


@dataclass(frozen=True)
class Workload:
    """``addresses`` IPv4 host routes in each of ``tables`` and in the
    reverse-path table, on ``dev``, and the one reverse-path rule."""

    addresses: tuple[str, ...]
    tables: tuple[int, ...] = TABLES
    dev: str = DEV

    @classmethod
    def of_routes(cls, routes: int, tables: tuple[int, ...] = TABLES) -> Workload:
        """The smallest workload of at least ``routes`` routes."""
        return cls(tuple(own_addresses(-(-routes // (len(tables) + 1)))), tables)

    @property
    def route_tables(self) -> tuple[int, ...]:
        """The tables the routes go to, in the plugin's order."""
        return (*self.tables, RP_TABLE)

    @property
    def routes(self) -> int:
        return len(self.addresses) * len(self.route_tables)

    @property
    def rules(self) -> int:
        return 1

    def device_config(self) -> dict[str, str]:
        """The NIC device keys, as Incus stores them."""
        return {
            "ipv4.address": ",".join(self.addresses),
            "user.ipv4.host_tables": ",".join(map(str, self.tables)),
        }

    def cli_args(self) -> list[str]:
        return [f"{k}={v}" for k, v in self.device_config().items()]

    # -- the same thing as iproute2 commands -----------------------------------

    def _rule_lines(self, verb: str) -> list[str]:
        return [f"rule {verb} iif lo lookup {RP_TABLE} pref {RULE_PRIORITY} protocol {PROTOCOL}"]

    def route_lines(self, verb: str) -> list[str]:
        """`ip` commands (without the leading `ip`) for every route, in the
        order the plugin sends them: table by table."""
        return [
            f"route {verb} {a}/32 dev {self.dev} table {t} protocol {PROTOCOL}"
            if verb == "add"
            else f"route {verb} {a}/32 dev {self.dev} table {t}"
            for t in self.route_tables
            for a in self.addresses
        ]

    def add_lines(self) -> list[str]:
        """Install: rules first, as the plugin does."""
        return self._rule_lines("add") + self.route_lines("add")

    def del_lines(self) -> list[str]:
        return self.route_lines("del") + self._rule_lines("del")


def foreign_lines(
    count: int, tables: tuple[int, ...] = (*TABLES, 254), ipv6_share: float = 0.0
) -> list[str]:
    """`ip -batch` lines for ``count`` routes of another interface, spread
    evenly over ``tables`` (the plugin's and main): IPv4 /32 from
    198.19.0.0/16 and, for ``ipv6_share`` of them, IPv6 /128 from
    2001:db8:f::/48."""
    v6 = int(count * ipv6_share)
    lines: list[str] = []
    for total, is_v6 in ((count - v6, False), (v6, True)):
        per_table = -(-total // len(tables))
        if not is_v6 and per_table > 65_000:
            raise ValueError("198.19.0.0/16 runs out: use more tables")
        left = total
        for t in tables:
            n = min(per_table, left)
            left -= n
            for i in range(n):
                if is_v6:
                    dst = f"{ipaddress.IPv6Address(_FOREIGN_V6 + 1 + i)}/128"
                else:
                    dst = f"{ipaddress.IPv4Address(_FOREIGN_V4 + 1 + i)}/32"
                lines.append(f"route add {dst} dev {FOREIGN_DEV} table {t}")
    return lines
