"""Which kernel routes and rules are the plugin's, which it may take over,
and which it must never touch. The one place that decides it: planning
(diff.py), the engine, status and drift repair all ask here. Pure.

- **Ours**: routing protocol 158 (`incus-host-tables`), routes and rules.
- **Adoptable**: a route Incus (or LXD) installed for the instance: protocol
  `boot` (3, what a route added without a protocol gets), on the instance's
  host interface, for one of the instance's prefixes, of the shape Incus
  gives it (unicast; scope link for an IPv4 route without gateway, universe
  otherwise). Adopting re-marks it as ours; a copy in a table not chosen
  (Incus's copy in main) is removed.
- **Never touched**: anything else -- static (4), ra (9), zebra (11),
  bird (12), dhcp (16), kernel (2), any other protocol, or a boot route of
  another shape -- whatever its prefix or table. A desired route that
  collides with one is a conflict, refused; it is never taken over.

Without a readable configuration (isolating an invalid instance) the
instance's prefixes are not known: then every adoptable-shaped route on its
interface counts as the instance's (fail closed), and still nothing else.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import NamedTuple

from .model import AF_INET, KernelRoute, KernelRule

PROTOCOL = 158
PROTOCOL_NAME = "incus-host-tables"
RTPROT_KERNEL = 2  # routes the kernel made itself (the IPv6 link-local one)
RTPROT_BOOT = 3  # a route added without a protocol: what Incus and LXD install
RTN_UNICAST = 1
RT_SCOPE_UNIVERSE = 0
RT_SCOPE_LINK = 253

# Names iproute2 gives the protocol numbers (rt_protos), for messages.
PROTOCOL_NAMES: dict[int, str] = {
    2: "kernel",
    3: "boot",
    4: "static",
    8: "gated",
    9: "ra",
    10: "mrt",
    11: "zebra",
    12: "bird",
    13: "dnrouted",
    14: "xorp",
    15: "ntk",
    16: "dhcp",
    42: "babel",
    186: "bgp",
    187: "isis",
    188: "ospf",
    189: "rip",
    192: "eigrp",
    PROTOCOL: PROTOCOL_NAME,
}

Prefix = tuple[int, bytes, int]  # (family, dst, prefixlen)


def protocol_name(protocol: int) -> str:
    name = PROTOCOL_NAMES.get(protocol)
    return f"{name} ({protocol})" if name else str(protocol)


def incus_scope(kr: KernelRoute) -> int:
    """The scope Incus gives a route of this family and kind."""
    route = kr.route
    if route.family == AF_INET and route.gateway is None:
        return RT_SCOPE_LINK
    return RT_SCOPE_UNIVERSE


class OwnershipPolicy(NamedTuple):
    """The rule above for one protocol number (158 unless a test says so).
    Routes handed to it are those of the instance's host interface."""

    protocol: int = PROTOCOL

    def route_is_ours(self, kr: KernelRoute) -> bool:
        return kr.protocol == self.protocol

    def rule_is_ours(self, kr: KernelRule) -> bool:
        return kr.protocol == self.protocol

    def incus_shaped(self, kr: KernelRoute) -> bool:
        """A boot-protocol unicast route of the scope Incus gives it."""
        return kr.protocol == RTPROT_BOOT and kr.type == RTN_UNICAST and kr.scope == incus_scope(kr)

    def adoptable(self, kr: KernelRoute, prefixes: Collection[Prefix] | None) -> bool:
        """Incus's route for one of the instance's ``prefixes`` (None: not
        known, see the module docstring)."""
        if not self.incus_shaped(kr):
            return False
        r = kr.route
        return prefixes is None or (r.family, r.dst, r.prefixlen) in prefixes

    def removable(self, kr: KernelRoute, prefixes: Collection[Prefix] | None) -> bool:
        """May the plugin delete this route when it is not wanted?"""
        return self.route_is_ours(kr) or self.adoptable(kr, prefixes)

    def instance_route(self, kr: KernelRoute) -> bool:
        """Does this route on an instance's interface place the instance
        somewhere (what status counts): ours, or Incus's."""
        return self.route_is_ours(kr) or self.incus_shaped(kr)


POLICY = OwnershipPolicy()
