"""Drift-repair latency: from an offending change to the repaired state.

The daemon's own repairer (``incus_host_tables.repair.Repairer``, the code
`watch` runs) is subscribed inside a namespace whose host interface carries
an instance's routes (two addresses per family, tables 100 and 200) among
foreign routes in main. For each sample an offender makes one change over
its own netlink socket -- it is not the daemon's, so the change is drift --
and a separate subscriber notes when the repairer's own notifications
complete the repair:

- route deleted: one of the instance's routes deleted from table 100;
- main copy added: an instance address added to main (protocol boot, as
  Incus and `ip route add` make it);
- link flap: the host interface set down (flushing its IPv4 routes) and up;
  timed from the "up".

Latency = time the last repairing notification arrives - time the
offending request returned. Samples are spaced so that no two repairs of
the device fall into one back-off window (a first repair is what is timed).

Usage: ``python -m bench --only repair`` or ``python -m bench.repair``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from incus_host_tables.config import parse_device
from incus_host_tables.desired import desired_routes
from incus_host_tables.engine import Engine
from incus_host_tables.model import AF_INET, AF_INET6, Route
from incus_host_tables.netlink import codec as c
from incus_host_tables.netlink.kernel import Change, Netlink
from incus_host_tables.netlink.monitor import Monitor, NotificationKind
from incus_host_tables.repair import FightGuard, ManagedDevice, Repairer
from lab.netns import Namespaces, NetNS

TARGET_P99_MS = 100.0
RTPROT_BOOT = 3
MAIN = 254
CONFIG = {
    "ipv4.address": "198.51.100.10,198.51.100.11",
    "ipv6.address": "2001:db8::10,2001:db8::11",
    "user.ipv4.host_tables": "100,200",
    "user.ipv6.host_tables": "100,200",
}


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _set_link(sock: socket.socket, index: int, up: bool, seq: int) -> None:
    """RTM_NEWLINK changing only IFF_UP, acknowledged (what `ip link set` sends)."""
    body = c.IFINFOMSG.pack(0, 0, index, c.IFF_UP if up else 0, c.IFF_UP)
    sock.send(c.message(c.RTM_NEWLINK, c.NLM_F_REQUEST | c.NLM_F_ACK, seq, body))
    while True:
        buf = sock.recv(65536)
        for kind, flags, mseq, start, end in c.iter_messages(buf):
            if kind == c.NLMSG_ERROR and mseq == seq:
                err, text = c.decode_error(buf, start, end, flags)
                if err:
                    raise OSError(err, f"link set: {os.strerror(err)} {text}")
                return


class Bench:
    def __init__(self, ns: NetNS, foreign: int) -> None:
        self.ns = ns
        ns.add_veth("vh0", "vc0")
        ns.add_veth("vf0", "vf1")  # where the foreign routes go
        if foreign:  # a host with a real routing table: foreign routes in main
            ns.batch([f"route add 10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/32 dev vf0"
                      for i in range(foreign)])  # fmt: skip
        self.intent = parse_device(CONFIG)
        self.desired = desired_routes(self.intent)
        with ns.inside():
            self.offender = Netlink()  # not the daemon's: its changes are drift
            self.watcher = Monitor()
            self.link_sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
            self.link_sock.bind((0, 0))
            self.ifindex = self.offender.ifindex("vh0") or 0
            # One repair per sample, each the first of its series: no back-off.
            self.repairer = Repairer(
                rule_priority=1100, resync_interval=3600, guard=lambda: FightGuard(window=0.0)
            )
            self.repairer.start()
        device = ManagedDevice("default", "c1", "eth0", "vh0", self.ifindex, self.intent)
        self.repairer.manage("default", "c1", [device])
        # Converged to start with.
        with ns.inside():
            engine = Engine(rule_priority=1100)
        engine.converge("vh0", self.intent)
        engine.close()
        time.sleep(0.2)
        self.ours = self.repairer.own_ports()
        self.seq = 1

    def close(self) -> None:
        self.repairer.stop()
        self.offender.close()
        self.watcher.close()
        self.link_sock.close()

    def _drain(self) -> None:
        while self.watcher.read(timeout=0):
            pass

    def _wait(self, done: Callable[[NotificationKind, Route, int], bool], pending: int) -> float:
        """Read notifications until ``done`` accepted ``pending`` of them;
        the arrival time of the last one."""
        deadline = time.monotonic() + 5.0
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError("no repair within 5 s")
            for note in self.watcher.read(timeout=0.5):
                if note.route is None or note.sender not in self.ours:
                    continue
                if done(note.kind, note.route.route, note.route.oif):
                    pending -= 1
        return time.perf_counter()

    def route_deleted(self) -> float:
        victim = next(r for r in self.desired if r.table == 100 and r.family == AF_INET)
        (kr,) = [k for k in self.offender.link_routes(self.ifindex) if k.route == victim]
        self._drain()
        self.offender.apply([Change("del-route", kr)], 0)
        t0 = time.perf_counter()
        t1 = self._wait(
            lambda kind, r, oif: kind is NotificationKind.ROUTE_ADDED and r == victim, 1
        )
        return t1 - t0

    def main_copy_added(self) -> float:
        first = next(r for r in self.desired if r.family == AF_INET6)
        copy = first._replace(table=MAIN)
        self._drain()
        self.offender.apply([Change("add-route", copy, self.ifindex)], RTPROT_BOOT)
        t0 = time.perf_counter()
        t1 = self._wait(
            lambda kind, r, oif: kind is NotificationKind.ROUTE_DELETED and r.table == MAIN
            and r.dst == copy.dst, 1
        )  # fmt: skip
        return t1 - t0

    def link_flap(self) -> float:
        self._drain()
        self.seq += 1
        _set_link(self.link_sock, self.ifindex, False, self.seq)
        present = {k.route for k in self.offender.link_routes(self.ifindex)}
        missing = {r for r in self.desired if r not in present}
        if not missing:
            raise RuntimeError("link down flushed nothing")
        self.seq += 1
        _set_link(self.link_sock, self.ifindex, True, self.seq)
        t0 = time.perf_counter()
        left = set(missing)

        def restored(kind: NotificationKind, r: Route, oif: int) -> bool:
            if kind is NotificationKind.ROUTE_ADDED and r in left:
                left.discard(r)
                return True
            return False

        t1 = self._wait(restored, len(missing))
        return t1 - t0


SCENARIOS = ("route deleted", "main copy added", "link flap")


def run(
    nss: Namespaces, samples: int, foreign: int, run_dir: str, log: Callable[[str], None]
) -> dict[str, Any]:
    os.environ["INCUS_HOST_TABLES_RUN_DIR"] = run_dir  # the repairer's locks: not the host's
    logging.getLogger("incus-host-tables").setLevel(logging.ERROR)  # a line per repair otherwise
    ns = nss.new("rep")
    bench = Bench(ns, foreign)
    results: dict[str, Any] = {"samples": samples, "foreign_routes": foreign, "scenarios": {}}
    try:
        for name, fn in zip(
            SCENARIOS, (bench.route_deleted, bench.main_copy_added, bench.link_flap), strict=True
        ):
            values = []
            for _ in range(samples):
                values.append(fn() * 1000)
                time.sleep(0.005)  # let the repairer settle between samples
            p50, p99 = statistics.median(values), _percentile(values, 0.99)
            results["scenarios"][name] = {
                "p50_ms": round(p50, 2),
                "p99_ms": round(p99, 2),
                "max_ms": round(max(values), 2),
                "pass": p99 <= TARGET_P99_MS,
            }
            log(f"repair after {name}: p50 {p50:.1f} ms, p99 {p99:.1f} ms ({samples} samples)")
        results["repairs"] = bench.repairer.repairs
    finally:
        bench.close()
    return results


def verdict_lines(results: dict[str, Any]) -> list[str]:
    return [
        f"{'PASS' if s['pass'] else 'FAIL'}  repair after {name}: p99 {s['p99_ms']:.1f} ms"
        f" (<= {TARGET_P99_MS:.0f} ms; p50 {s['p50_ms']:.1f} ms, {results['samples']} samples,"
        f" {results['foreign_routes']} foreign routes)"
        for name, s in results["scenarios"].items()
    ]


def passed(results: dict[str, Any]) -> bool:
    return all(s["pass"] for s in results["scenarios"].values())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.repair", description=__doc__)
    parser.add_argument("--samples", type=int, default=200)
    parser.add_argument("--foreign", type=int, default=20_000)
    parser.add_argument("--json", type=Path, help="write the figures here")
    args = parser.parse_args(argv)
    if os.geteuid() != 0:
        print("python -m bench.repair needs root (network namespaces)", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="ihtb-run-") as run_dir, Namespaces() as nss:
        results = run(nss, args.samples, args.foreign, run_dir, lambda t: print(t, flush=True))
    for line in verdict_lines(results):
        print(line)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0 if passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
