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


# -- a host with many foreign routes (the growth figure, the lab's big storm) ----

_GROWTH_V4 = int(ipaddress.IPv4Address("10.0.0.0"))  # main: 10.0.0.1 up
_GROWTH_V4_T300 = int(ipaddress.IPv4Address("10.128.0.0"))  # table 300
GROWTH_IPV6 = 200_000  # IPv6 /128 in main, from 2001:db8:f::/48, beyond 100,000
GROWTH_TABLE_300 = 50_000  # IPv4 /32 in table 300, beyond 100,000
GROWTH_TABLE = 300


def growth_mix(total: int) -> tuple[int, int, int]:
    """(IPv4 in main, IPv6 in main, IPv4 in table 300) of a host with
    ``total`` foreign routes: up to 100,000 all IPv4 in main (10.0.0.0/8);
    beyond, 200,000 of them IPv6 and 50,000 in another table (1,000,000:
    750,000 + 200,000 + 50,000)."""
    if total <= 100_000:
        return total, 0, 0
    if total < 100_000 + GROWTH_IPV6 + GROWTH_TABLE_300:
        raise ValueError(f"{total} foreign routes: 100,000 or fewer, or at least 350,000")
    return total - GROWTH_IPV6 - GROWTH_TABLE_300, GROWTH_IPV6, GROWTH_TABLE_300


def growth_lines(
    have: int, total: int, dev: str = FOREIGN_DEV, protocol: str | None = None
) -> list[str]:
    """`ip -batch` lines taking a host from ``have`` to ``total`` foreign
    routes of ``growth_mix`` on ``dev`` (``protocol``: a name or number for
    them, else iproute2's default, boot)."""
    proto = f" protocol {protocol}" if protocol else ""
    before, after = growth_mix(have), growth_mix(total)
    v4 = ipaddress.IPv4Address
    lines = [
        f"route add {v4(_GROWTH_V4 + 1 + i)}/32 dev {dev}{proto}"
        for i in range(before[0], after[0])
    ]
    lines += [
        f"route add {ipaddress.IPv6Address(_FOREIGN_V6 + 1 + i)}/128 dev {dev}{proto}"
        for i in range(before[1], after[1])
    ]
    lines += [
        f"route add {v4(_GROWTH_V4_T300 + 1 + i)}/32 dev {dev} table {GROWTH_TABLE}{proto}"
        for i in range(before[2], after[2])
    ]
    return lines
