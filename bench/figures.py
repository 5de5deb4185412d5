"""The measurements. Each figure is timed with its reference in the same run,
repetitions interleaved, so that the ratios compare like with like.

References:
- ``ip -batch``: iproute2 installing (deleting) the same routes and rules
  through one netlink socket, as a process;
- the kernel floor: the very messages the engine sends, prebuilt, in one
  ``sendto`` (no acks): what the kernel itself needs;
- exec-per-route: one ``ip route add``/``del`` process per route (what
  Incus 6.0 does), timed on a sample and counted per route.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from incus_host_tables.config import DeviceIntent, parse_device
from incus_host_tables.engine import DevicePlan, Engine
from incus_host_tables.model import AF_INET, AF_INET6
from incus_host_tables.netlink import codec, dump
from incus_host_tables.netlink.kernel import encode_runs
from lab.netns import Namespaces, NetNS

from .stats import Series, timed
from .workload import (
    DEV,
    FOREIGN_DEV,
    FOREIGN_PEER,
    PEER,
    PROTOCOL,
    RP_TABLE,
    RULE_PRIORITY,
    Workload,
    foreign_lines,
    growth_lines,
)

Log = Callable[[str], None]


def cli_command() -> list[str]:
    """The installed entry point next to this interpreter, as an operator or
    a hook runs it; ``python -m`` when there is none."""
    script = Path(sys.executable).with_name("incus-host-tables")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "incus_host_tables"]


# Settings of a developer's shell that an installed tool does not run with:
# no bytecode cache (every import compiled anew), a write per printed line.
_NOT_INHERITED = (
    "PYTHONDONTWRITEBYTECODE",
    "PYTHONUNBUFFERED",
    "PYTHONDEVMODE",
    "PYTHONTRACEMALLOC",
)


def child_environment(run_dir: str) -> dict[str, str]:
    """The environment of the timed processes: this one, less the Python
    debugging settings above, with the plugin's lock in ``run_dir``."""
    env = {k: v for k, v in os.environ.items() if k not in _NOT_INHERITED}
    env["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
    return env


@dataclass
class Results:
    series: list[Series] = field(default_factory=list)
    facts: dict[str, object] = field(default_factory=dict)

    def add(self, s: Series) -> Series:
        self.series.append(s)
        return s

    def get(self, name: str, routes: int) -> Series:
        for s in self.series:
            if s.name == name and s.routes == routes:
                return s
        raise KeyError((name, routes))


class Device:
    """The device's namespace, with the tools that act in it. Every method
    that talks to the kernel runs inside the namespace (this thread, and
    the processes it starts)."""

    def __init__(self, ns: NetNS, run_dir: str) -> None:
        self.ns = ns
        self.env = child_environment(run_dir)
        with ns.inside():
            self.engine = Engine(rule_priority=RULE_PRIORITY)
            self.raw = _RawSocket()
        index = self.engine.nl.ifindex(DEV)
        if index is None:
            raise RuntimeError(f"{DEV} missing in {ns.name}")
        self.ifindex = index

    def close(self) -> None:
        self.engine.close()
        self.raw.close()

    # -- state -----------------------------------------------------------------

    def plugin_routes(self) -> int:
        nl = self.engine.nl
        return sum(len(nl.routes(f, oif=self.ifindex, protocol=PROTOCOL)) for f in FAMILIES)

    def plugin_rules(self) -> int:
        return len(self.engine.plugin_rules())

    def expect(self, routes: int, rules: int, after: str) -> None:
        got = (self.plugin_routes(), self.plugin_rules())
        if got != (routes, rules):
            raise RuntimeError(f"after {after}: {got} routes and rules, not {(routes, rules)}")

    # -- the ways to install and remove ------------------------------------------

    def ip_batch(self, lines: list[str], family: str | None = None) -> float:
        """``ip -batch`` of ``lines`` (``family``: ``-4``/``-6`` for rules)."""
        text = "\n".join(lines) + "\n"
        argv = ["ip", *([family] if family else []), "-batch", "-"]
        with self.ns.inside():
            return timed(lambda: _run(argv, text, self.env))

    def ip_each(self, lines: list[str]) -> float:
        """One `ip` process per line."""
        with self.ns.inside():
            return timed(lambda: _run_each([["ip", *line.split()] for line in lines], self.env))

    def cli(self, action: str, w: Workload) -> float:
        return self.cli_config(action, w.device_config())

    def cli_config(self, action: str, config: dict[str, str]) -> float:
        args = [f"{k}={v}" for k, v in config.items()]
        argv = [*cli_command(), "device", action, "--host-name", DEV, *args]
        with self.ns.inside():
            return timed(lambda: _run(argv, None, self.env))

    def converge(self, intent: DeviceIntent) -> tuple[float, DevicePlan]:
        box: list[DevicePlan] = []
        seconds = timed(lambda: box.append(self.engine.converge(DEV, intent)))
        return seconds, box[0]

    def cleanup(self, intent: DeviceIntent) -> float:
        return timed(lambda: self.engine.cleanup(DEV, intent))

    def floor(self, dp: DevicePlan) -> float:
        """The messages of ``dp``, exactly as the engine encodes them, sent
        prebuilt in one sendto."""
        batch = encode_runs(dp.runs(), PROTOCOL, 1)
        return self.raw.send(batch.data(0, len(batch)), len(batch))


FAMILIES = (AF_INET, AF_INET6)


def _run_each(argvs: list[list[str]], env: dict[str, str]) -> None:
    for argv in argvs:
        _run(argv, None, env)


def _run(argv: list[str], stdin: str | None, env: dict[str, str]) -> None:
    proc = subprocess.run(argv, input=stdin, capture_output=True, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[0]} {argv[1:3]} exited {proc.returncode}: {proc.stderr[:300]}")


class _RawSocket:
    """A bare NETLINK_ROUTE socket for the kernel floor."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        self.sock.bind((0, 0))
        for opt in (32, 33):  # SO_SNDBUFFORCE, SO_RCVBUFFORCE
            self.sock.setsockopt(socket.SOL_SOCKET, opt, 64 << 20)

    def send(self, data: bytes, count: int) -> float:
        seconds = timed(lambda: self.sock.sendto(data, (0, 0)))
        # No acks were asked for: anything queued now is a failure report.
        errors = 0
        while True:
            try:
                buf = self.sock.recv(1 << 20, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            for kind, flags, _seq, start, end in codec.iter_messages(buf):
                if kind == codec.NLMSG_ERROR and codec.decode_error(buf, start, end, flags)[0]:
                    errors += 1
        if errors:
            raise RuntimeError(f"kernel floor: {errors} of {count} messages failed")
        return seconds

    def close(self) -> None:
        self.sock.close()


@contextmanager
def device_namespace(nss: Namespaces, tag: str, run_dir: str) -> Iterator[Device]:
    ns = nss.new(tag)
    ns.add_veth(DEV, PEER, settle=False)
    dev = Device(ns, run_dir)
    try:
        yield dev
    finally:
        dev.close()


# -- figure 1: bulk apply and cleanup --------------------------------------------


def bulk(nss: Namespaces, sizes: list[int], reps: int, run_dir: str, log: Log) -> Results:
    """Per size: ip -batch, kernel floor, engine in process, engine as a
    process; installing and removing. One warm-up round is not counted."""
    res = Results()
    with device_namespace(nss, "bulk", run_dir) as dev:
        for size in sizes:
            w = Workload.of_routes(size)
            n, nrules = w.routes, w.rules
            intent = parse_device(w.device_config())
            names = (
                "ip -batch add", "ip -batch del", "floor add", "floor del",
                "engine converge", "engine reconcile (no change)", "engine cleanup",
                "process device apply", "process device cleanup",
            )  # fmt: skip
            series = {name: Series(name, n) for name in names}
            log(f"bulk: {n} routes ({len(w.addresses)} addresses x tables {w.route_tables})")
            for rep in range(reps + 1):
                t: dict[str, float] = {}
                dev.expect(0, 0, "start")
                t["ip -batch add"] = dev.ip_batch(w.add_lines())
                dev.expect(n, nrules, "ip -batch add")
                t["ip -batch del"] = dev.ip_batch(w.del_lines())
                dev.expect(0, 0, "ip -batch del")

                t["floor add"] = dev.floor(dev.engine.plan_device(DEV, intent))
                dev.expect(n, nrules, "floor add")
                t["floor del"] = dev.floor(dev.engine.plan_cleanup(DEV, intent))
                dev.expect(0, 0, "floor del")

                t["engine converge"], dp = dev.converge(intent)
                if dp.plan.count() != n + nrules:
                    raise RuntimeError(f"converge planned {dp.plan.count()} changes")
                dev.expect(n, nrules, "engine converge")
                t["engine reconcile (no change)"], dp = dev.converge(intent)
                if dp.plan:
                    raise RuntimeError("a second converge planned changes")
                t["engine cleanup"] = dev.cleanup(intent)
                dev.expect(0, 0, "engine cleanup")

                t["process device apply"] = dev.cli("apply", w)
                dev.expect(n, nrules, "process device apply")
                t["process device cleanup"] = dev.cli("cleanup", w)
                dev.expect(0, 0, "process device cleanup")
                if rep == 0:
                    continue  # warm-up
                for name, seconds in t.items():
                    series[name].seconds.append(seconds)
                log(
                    f"  rep {rep}: "
                    + ", ".join(f"{k} {v * 1000:.1f}" for k, v in t.items())
                    + " (ms)"
                )
            for s in series.values():
                res.add(s)
    return res


def exec_per_route(nss: Namespaces, sample: int, reps: int, run_dir: str, log: Log) -> Results:
    """One `ip route add`/`del` process per route, on a sample of routes:
    seconds per route (times 1 route), to be multiplied up."""
    res = Results()
    w = Workload.of_routes(sample)
    adds = w.route_lines("add")
    dels = w.route_lines("del")
    add = Series("exec per route add", 1, extrapolated=True, note=f"sample of {len(adds)}")
    delete = Series("exec per route del", 1, extrapolated=True, note=f"sample of {len(dels)}")
    with device_namespace(nss, "exec", run_dir) as dev:
        for rep in range(reps + 1):
            ta = dev.ip_each(adds)
            dev.expect(len(adds), 0, "ip route add per route")
            td = dev.ip_each(dels)
            dev.expect(0, 0, "ip route del per route")
            if rep:
                add.seconds.append(ta / len(adds))
                delete.seconds.append(td / len(dels))
                log(
                    f"  exec rep {rep}: add {ta / len(adds) * 1000:.2f} ms/route, "
                    f"del {td / len(dels) * 1000:.2f} ms/route"
                )
    res.add(add)
    res.add(delete)
    return res


# -- figure 2: reading state among many foreign routes ---------------------------


class _MessageCounter:
    """Counts the route messages that reach Python (wraps the dump decoder
    for the duration)."""

    def __init__(self) -> None:
        self.count = 0
        self._orig = dump.decode_route_dump

    def __enter__(self) -> _MessageCounter:
        orig = self._orig

        def counting(buf, seq, out, layouts, skip_oif=None):  # type: ignore[no-untyped-def]
            self.count += sum(
                1 for kind, *_ in codec.iter_messages(buf) if kind == codec.RTM_NEWROUTE
            )
            return orig(buf, seq, out, layouts, skip_oif)

        dump.decode_route_dump = counting
        return self

    def __exit__(self, *exc: object) -> None:
        dump.decode_route_dump = self._orig


READ_SCENARIOS = {
    # The routes are IPv4 host routes: so are the foreign ones.
    "ipv4": 0.0,
    # Half IPv6: its walk costs the kernel about twice as much per route.
    "half ipv6": 0.5,
}


def reading(
    nss: Namespaces,
    foreign: int,
    own_sizes: list[int],
    reps: int,
    run_dir: str,
    log: Log,
    scenario: str = "ipv4",
) -> Results:
    """``foreign`` routes of another interface in the same tables (and main);
    read the device's routes (Engine.link_routes) and plan with no change."""
    res = Results()
    tag = f"{foreign} foreign, {scenario}"
    with device_namespace(nss, "read", run_dir) as dev:
        dev.ns.add_veth(FOREIGN_DEV, FOREIGN_PEER, settle=False)
        log(f"read: installing {foreign} foreign routes ({scenario}) with ip -batch ...")
        lines = foreign_lines(foreign, ipv6_share=READ_SCENARIOS[scenario])
        seconds = dev.ip_batch(lines)
        log(f"  ({seconds:.1f} s)")
        res.facts[f"foreign install seconds ({scenario})"] = round(seconds, 2)
        for own in own_sizes:
            if own <= 6:
                config = {
                    "ipv4.address": "198.51.100.10",
                    "ipv6.address": "2001:db8::10",
                    "user.ipv4.host_tables": "100,200,250",
                    "user.ipv6.host_tables": "100,200,250",
                }
            else:
                config = Workload.of_routes(own).device_config()
            intent = parse_device(config)
            dev.converge(intent)
            routes = dev.plugin_routes()
            read = Series(f"read link routes ({scenario})", routes, note=tag)
            plan = Series(f"engine reconcile ({scenario} foreign)", routes, note=tag)
            for rep in range(reps + 1):
                with _MessageCounter() as counted:
                    seconds = timed(lambda: dev.engine.link_routes(dev.ifindex))
                t_plan, dp = dev.converge(intent)
                if dp.plan:
                    raise RuntimeError("reconcile planned changes")
                if rep:
                    read.seconds.append(seconds)
                    plan.seconds.append(t_plan)
            present = len(dev.engine.link_routes(dev.ifindex))
            res.facts[f"route messages parsed reading {routes} own ({scenario})"] = counted.count
            res.facts[f"routes on the device, {routes} own ({scenario})"] = present
            log(
                f"  {routes} own routes: read {read.median * 1000:.2f} ms (median), "
                f"{counted.count} route messages reached Python for {present} routes on "
                f"the device; reconcile {plan.median * 1000:.1f} ms"
            )
            res.add(read)
            res.add(plan)
            dev.cleanup(intent)
    return res


# -- figure 3: one NIC as the host's foreign routes grow ---------------------------

# A typical NIC: one address per family, two chosen tables (6 routes). Another
# instance (RESIDENT, on its own veth) holds the two reverse-path rules, as on
# any host with instances running: the rules are not the measured NIC's to add
# and remove. (That matters: with 200,000 IPv6 routes on the host, the kernel
# takes some 40 ms to add or delete an IPv6 rule -- docs/performance.md.)
GROWTH_NIC = {
    "ipv4.address": "198.51.100.10",
    "ipv6.address": "2001:db8::10",
    "user.ipv4.host_tables": "100,200",
    "user.ipv6.host_tables": "100,200",
}
GROWTH_RESIDENT = {
    **GROWTH_NIC,
    "ipv4.address": "198.51.100.11",
    "ipv6.address": "2001:db8::11",
}
RESIDENT_DEV, RESIDENT_PEER = "vr0", "vs0"
GROWTH_SIZES = (0, 100_000, 1_000_000)
GROWTH_NAMES = (
    "growth ip -batch add+del",
    "growth floor add+del",
    "growth engine apply+cleanup",
    "growth process apply+cleanup",
)


def _nic_lines(verb: str) -> list[str]:
    """`ip -batch` lines for GROWTH_NIC's routes (the rules are the
    resident's; a route's family follows from its address)."""
    proto = f" protocol {PROTOCOL}" if verb == "add" else ""
    lines = []
    for key, host in (("ipv4", "/32"), ("ipv6", "/128")):
        addr = GROWTH_NIC[f"{key}.address"] + host
        for table in [*GROWTH_NIC[f"user.{key}.host_tables"].split(","), str(RP_TABLE)]:
            lines.append(f"route {verb} {addr} dev {DEV} table {table}{proto}")
    return lines


def growth(nss: Namespaces, sizes: list[int], reps: int, run_dir: str, log: Log) -> Results:
    """One NIC's apply + cleanup (GROWTH_NIC) while the host holds ``sizes``
    foreign routes (growth_mix), loaded with ``ip -batch``, growing from one
    size to the next: as a process, in process, with ``ip -batch`` and the
    kernel floor, repetitions interleaved. A resident NIC holds the
    reverse-path rules throughout (GROWTH_RESIDENT)."""
    res = Results()
    intent = parse_device(GROWTH_NIC)
    with device_namespace(nss, "grow", run_dir) as dev:
        dev.ns.add_veth(FOREIGN_DEV, FOREIGN_PEER, settle=False)
        dev.ns.add_veth(RESIDENT_DEV, RESIDENT_PEER, settle=False)
        dev.engine.converge(RESIDENT_DEV, parse_device(GROWTH_RESIDENT))
        loaded = 0
        for size in sorted(sizes):
            if size > loaded:
                lines = growth_lines(loaded, size)
                log(f"growth: loading {size - loaded} more foreign routes with ip -batch ...")
                seconds = dev.ip_batch(lines)
                log(f"  ({seconds:.1f} s; the host now holds {size} foreign routes)")
                loaded = size
            series = {name: Series(name, size, note="foreign routes") for name in GROWTH_NAMES}
            for rep in range(reps + 1):
                t: dict[str, float] = {}
                dev.expect(0, 2, "start")
                t["growth ip -batch add+del"] = dev.ip_batch(_nic_lines("add"))
                dev.expect(6, 2, "ip -batch add")
                t["growth ip -batch add+del"] += dev.ip_batch(_nic_lines("del"))
                dev.expect(0, 2, "ip -batch del")
                t["growth floor add+del"] = dev.floor(dev.engine.plan_device(DEV, intent))
                dev.expect(6, 2, "floor add")
                t["growth floor add+del"] += dev.floor(dev.engine.plan_cleanup(DEV, intent))
                dev.expect(0, 2, "floor del")
                converge, _ = dev.converge(intent)
                t["growth engine apply+cleanup"] = converge + dev.cleanup(intent)
                dev.expect(0, 2, "engine cleanup")
                t["growth process apply+cleanup"] = dev.cli_config("apply", GROWTH_NIC)
                dev.expect(6, 2, "process device apply")
                t["growth process apply+cleanup"] += dev.cli_config("cleanup", GROWTH_NIC)
                dev.expect(0, 2, "process device cleanup")
                if rep == 0:
                    continue  # warm-up
                for name, seconds in t.items():
                    series[name].seconds.append(seconds)
            log(
                f"  {size:>9,} foreign: "
                + ", ".join(f"{s.name[7:]} {s.median * 1000:.1f}" for s in series.values())
                + " ms (medians)"
            )
            for s in series.values():
                res.add(s)
    return res
