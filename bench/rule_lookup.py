"""What a route lookup from lo costs with 10,000 instance addresses outside
main, under three rule layouts, measured in one run:

- ``per-address rules``: one rule ``iif lo to X/32 lookup 100`` per address
  (the smallest scheme that is correct with strict tables without a table
  of the plugin's own): 10,000 rules, routes in table 100;
- ``reverse-path table``: the plugin's scheme: one rule
  ``iif lo lookup 1158``, the 10,000 routes in table 1158 (and in 100);
- ``no rules``: the same 10,000 routes in main, no rule at all (Incus
  alone): the floor.

A lookup is an RTM_GETROUTE request without an input interface, which the
kernel resolves as the host's own traffic does (input interface lo, the
same lookup Incus's reverse-path filter makes). Requests go in batches of
``BATCH`` per system call and every reply is read, so a figure is the
kernel's lookup plus the reply it builds; the reply part is the same in
every layout. Three kinds of lookup: of an instance address (drawn at
random), of an address that only main knows (with per-address rules every
rule is tried before main is reached), and of a packet forwarded from
another interface (no `iif lo` rule matches it, but the kernel walks the
rule list all the same: every forwarded packet pays for the rules).
"""

from __future__ import annotations

import ipaddress
import random
import socket
import struct
from collections.abc import Callable
from functools import partial
from typing import Any

from incus_host_tables.netlink import codec
from lab.netns import Namespaces, NetNS

from .stats import timed

Log = Callable[[str], None]

ADDRESSES = 10_000
BATCH = 500
TABLE, RP_TABLE, PRIORITY = 100, 1158, 1100
ELSEWHERE = "203.0.113.50"  # routed by main only (via the client link)
_BASE = int(ipaddress.IPv4Address("10.0.0.0"))  # 10.0.0.0/8: big tables, namespaces only

LAYOUTS = ("no rules", "reverse-path table", "per-address rules")


def addresses(count: int) -> list[str]:
    return [str(ipaddress.IPv4Address(_BASE + 1 + i)) for i in range(count)]


def _setup(ns: NetNS, layout: str, addrs: list[str]) -> None:
    ns.add_veth("vh0", "vc0")
    ns.add_veth("ha0", "hc0")
    ns.sysctl("net.ipv4.conf.all.forwarding", "1")
    ns.ip("addr", "add", "198.18.1.1/24", "dev", "ha0")
    ns.ip("route", "add", "203.0.113.0/24", "via", "198.18.1.2", "dev", "ha0")
    if layout == "no rules":
        ns.batch([f"route add {a}/32 dev vh0" for a in addrs])
        return
    # The chosen table is strict, as a VRF's: the scheme must not depend on it.
    ns.ip("route", "add", "unreachable", "default", "table", str(TABLE), "metric", "4278198272")
    lines = [f"route add {a}/32 dev vh0 table {TABLE} proto 158" for a in addrs]
    if layout == "reverse-path table":
        lines += [f"route add {a}/32 dev vh0 table {RP_TABLE} proto 158" for a in addrs]
        lines.append(f"rule add pref {PRIORITY} iif lo lookup {RP_TABLE} proto 158")
    else:
        lines += [
            f"rule add pref {PRIORITY} iif lo to {a}/32 lookup {TABLE} proto 158" for a in addrs
        ]
    ns.batch(lines)


RTA_SRC, RTA_IIF = 2, 3
CLIENT = "198.18.1.2"  # the forwarded packets' source, behind ha0


def _requests(dsts: list[str], first_seq: int, iif: int | None = None) -> bytes:
    """One RTM_GETROUTE request per destination, back to back; with ``iif``
    as a packet from CLIENT arriving on that interface."""
    out = []
    for i, dst in enumerate(dsts):
        body = codec.RTMSG.pack(socket.AF_INET, 32, 0, 0, 0, 0, 0, 0, 0)
        body += struct.pack("=HH", 8, codec.RTA_DST) + socket.inet_aton(dst)
        if iif is not None:
            body += struct.pack("=HH", 8, RTA_SRC) + socket.inet_aton(CLIENT)
            body += struct.pack("=HHI", 8, RTA_IIF, iif)
        out.append(codec.message(codec.RTM_GETROUTE, codec.NLM_F_REQUEST, first_seq + i, body))
    return b"".join(out)


class _Resolver:
    """A netlink socket in the namespace that sends prebuilt lookups and
    reads every reply (an error reply fails the figure)."""

    def __init__(self, ns: NetNS) -> None:
        with ns.inside():
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 32 << 20)

    def resolve(self, batches: list[bytes], count: int) -> None:
        for data in batches:
            self.sock.send(data)
            got = 0
            while got < count:
                buf = self.sock.recv(1 << 20)
                for kind, flags, _seq, start, end in codec.iter_messages(buf):
                    if kind == codec.NLMSG_ERROR:
                        err, text = codec.decode_error(buf, start, end, flags)
                        raise RuntimeError(f"route lookup failed: {err} {text}")
                    got += 1

    def close(self) -> None:
        self.sock.close()


def rule_lookup(nss: Namespaces, count: int, lookups: int, reps: int, log: Log) -> dict[str, Any]:
    """Per-lookup microseconds (median of ``reps``) per layout and kind of
    destination, and the ratios to the no-rule floor."""
    addrs = addresses(count)
    rng = random.Random(1158)
    batches = lookups // BATCH
    n = batches * BATCH
    kinds = {
        "instance address": ([rng.choice(addrs) for _ in range(n)], False),
        "main's destination": ([ELSEWHERE] * n, False),
        "forwarded packet": ([ELSEWHERE] * n, True),
    }
    resolvers: dict[str, _Resolver] = {}
    iifs: set[int] = set()
    try:
        for layout in LAYOUTS:
            ns = nss.new("rl")
            log(f"rule lookup: setting up {layout} ({count:,} addresses)")
            _setup(ns, layout, addrs)
            iifs.add(int(ns.ip("-j", "link", "show", "ha0").split('"ifindex":')[1].split(",")[0]))
            resolvers[layout] = _Resolver(ns)
        (iif,) = iifs  # the same in every namespace: the requests are shared
        seconds: dict[tuple[str, str], list[float]] = {}
        for kind, (dsts, forwarded) in kinds.items():
            requests = [
                _requests(
                    dsts[i * BATCH : (i + 1) * BATCH], i * BATCH + 1, iif if forwarded else None
                )
                for i in range(batches)
            ]
            for _rep in range(reps):  # interleaved: every layout sees the same machine
                for layout, resolver in resolvers.items():
                    took = timed(partial(resolver.resolve, requests, BATCH))
                    seconds.setdefault((layout, kind), []).append(took)
    finally:
        for resolver in resolvers.values():
            resolver.close()
    per_lookup = {
        f"{layout} / {kind}": sorted(s)[len(s) // 2] / (batches * BATCH) * 1e6
        for (layout, kind), s in seconds.items()
    }
    result: dict[str, Any] = {"addresses": count, "lookups": batches * BATCH, "reps": reps}
    result["us_per_lookup"] = {k: round(v, 3) for k, v in per_lookup.items()}
    result["ratio_to_no_rules"] = {
        k: round(v / per_lookup[f"no rules / {k.split(' / ')[1]}"], 2)
        for k, v in per_lookup.items()
    }
    return result


def lines(result: dict[str, Any]) -> list[str]:
    out = [
        f"route lookup from lo, {result['addresses']:,} instance addresses "
        f"({result['lookups']:,} lookups, median of {result['reps']}):"
    ]
    for key, us in result["us_per_lookup"].items():
        ratio = result["ratio_to_no_rules"][key]
        out.append(f"  {key:<45} {us:8.2f} us/lookup  {ratio:6.2f}x no rules")
    for kind in ("instance address", "main's destination", "forwarded packet"):
        per_address = result["us_per_lookup"][f"per-address rules / {kind}"]
        rp = result["us_per_lookup"][f"reverse-path table / {kind}"]
        out.append(
            f"  {kind}: per-address rules cost {per_address / rp:.1f}x the reverse-path table"
        )
    return out
