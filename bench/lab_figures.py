"""Figures that need a real Incus: the start hook's cost (target 3), the
daemon under event storms (target 4; also on a host holding a million
foreign routes), its start-up resync of running instances, and
`reconcile --all-projects` as a process. Run as root:

    python -m bench.lab_figures [--starts 20] [--storm 50,200,500] [--resync 50,200]

Prints min/median/max and the verdicts; returns the figures as a dict for
the suite's JSON.

The storm instances are made once (in parallel) and started and stopped
for each figure. 500 busybox containers start with the machine's default
limits and take about 9 GB of memory (some 17 MB each, mostly LXC's
monitor and the container's init).
"""

from __future__ import annotations

import argparse
import contextlib
import ipaddress
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from incus_host_tables.model import AF_INET, MAIN_TABLE
from incus_host_tables.netlink.kernel import Netlink
from lab import IncusLab
from lab.netns import inside
from lab.plugin import PluginDaemon, plugin_env, run_cli

from .figures import cli_command
from .workload import growth_lines

HOOK_TARGET_MS = 30.0
STORM_TARGET_S = 2.0
STORM_RSS_MB = 80.0
RESYNC_TARGET_S = 1.0
STORMS = (50, 200, 500)
RESYNCS = (50, 200)
BIG_STORM = (200, 1_000_000)  # instances, foreign routes in incusd's namespace
PARALLEL = 8  # incus commands at a time (starts, stops, creations)
STORM_TABLE = 100
RTPROT_BOOT, RTPROT_STATIC, PLUGIN_PROTOCOL = 3, 4, 158


def _nic(addr: str, tables: str = "100") -> dict[str, str]:
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": addr,
        "user.ipv4.host_tables": tables,
    }


def _timed(lab: IncusLab, *args: str) -> float:
    t0 = time.perf_counter()
    lab.incus(*args)
    return time.perf_counter() - t0


def hook_cost(lab: IncusLab, run_dir: str, starts: int) -> dict[str, Any]:
    """`incus start` with and without the start-host hook, alternated."""
    lab.incus("profile", "copy", "default", "hooked")
    run_cli(lab, run_dir, "enable", "--profile", "hooked", check=True)
    lab.launch("bh", devices={"eth0": _nic("198.51.100.201")}, profiles=["hooked"], start=False)
    lab.launch("bp", devices={"eth0": _nic("198.51.100.202")}, start=False)
    # The floor any start-host hook pays: LXC running an empty command.
    lab.incus("profile", "copy", "default", "emptyhook")
    lab.incus("profile", "set", "emptyhook", "raw.lxc", "lxc.hook.start-host = /bin/true")
    lab.launch("be", devices={"eth0": _nic("198.51.100.203")}, profiles=["emptyhook"], start=False)
    with_hook: list[float] = []
    without: list[float] = []
    empty: list[float] = []
    try:
        for _ in range(starts):
            for name, bucket in (("bh", with_hook), ("bp", without), ("be", empty)):
                bucket.append(_timed(lab, "start", name))
                lab.incus("stop", "--force", name)
    finally:
        for name in ("bh", "bp", "be"):
            lab.incus("delete", "--force", name, check=False)
        for profile in ("hooked", "emptyhook"):
            lab.incus("profile", "delete", profile, check=False)
    extra = statistics.median(with_hook) - statistics.median(without)
    return {
        "starts_each": starts,
        "with_hook_s": _stats(with_hook),
        "without_hook_s": _stats(without),
        "empty_hook_s": _stats(empty),
        "empty_hook_extra_ms": (statistics.median(empty) - statistics.median(without)) * 1000,
        "median_extra_ms": extra * 1000,
        "target_ms": HOOK_TARGET_MS,
        "pass": extra * 1000 <= HOOK_TARGET_MS,
    }


def _stats(values: list[float]) -> dict[str, float]:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


class Probe:
    """The lab namespace's kernel state, read through the plugin's own netlink
    code with the kernel's filters (table, protocol): quick even beside a
    million foreign routes, which the probe never sees."""

    def __init__(self, lab: IncusLab) -> None:
        with inside(lab.netns):
            self.nl = Netlink()

    def close(self) -> None:
        self.nl.close()

    def _dsts(self, table: int, protocol: int) -> set[bytes]:
        return {kr.route.dst for kr in self.nl.routes(AF_INET, table=table, protocol=protocol)}

    def converged(self, addrs: Sequence[str]) -> bool:
        """Every address in the storm table as the plugin's, none left by
        Incus in main (foreign routes there carry another protocol), and
        the reverse-path rule in place."""
        want = {ipaddress.IPv4Address(a).packed for a in addrs}
        if not want <= self._dsts(STORM_TABLE, PLUGIN_PROTOCOL):
            return False
        if want & self._dsts(MAIN_TABLE, RTPROT_BOOT):
            return False
        return any(kr.protocol == PLUGIN_PROTOCOL for kr in self.nl.rules(AF_INET))

    def incus_routes(self, addrs: Sequence[str]) -> int:
        """How many of ``addrs`` have Incus's own route in main."""
        want = {ipaddress.IPv4Address(a).packed for a in addrs}
        return len(want & self._dsts(MAIN_TABLE, RTPROT_BOOT))

    def any_left(self, addrs: Sequence[str]) -> bool:
        want = {ipaddress.IPv4Address(a).packed for a in addrs}
        return bool(
            want & (self._dsts(STORM_TABLE, PLUGIN_PROTOCOL) | self._dsts(MAIN_TABLE, RTPROT_BOOT))
        )


def _wait(check: Callable[[], bool], timeout: float, interval: float = 0.02) -> float | None:
    """Seconds until ``check()`` holds (polled), None if it never did."""
    t0 = time.perf_counter()
    while True:
        if check():
            return time.perf_counter() - t0
        if time.perf_counter() - t0 > timeout:
            return None
        time.sleep(interval)


def _rss_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


class Fleet:
    """The storm instances: ``count`` containers with one routed NIC each
    (198.18.0.0/15 addresses, table 100), made once, ``PARALLEL`` at a time
    (the lab's ``*_many``)."""

    def __init__(self, lab: IncusLab, count: int) -> None:
        self.lab = lab
        base = int(ipaddress.ip_address("198.18.0.0"))
        self.names = [f"f{i}" for i in range(count)]
        self.addrs = [str(ipaddress.ip_address(base + 1 + i)) for i in range(count)]
        devices = {n: {"eth0": _nic(a)} for n, a in zip(self.names, self.addrs, strict=True)}
        lab.launch_many(devices, start=False, workers=PARALLEL)

    def start(self, count: int) -> tuple[float, float]:
        """Start the first ``count``: (seconds it took, perf_counter when the
        last start returned)."""
        t0 = time.perf_counter()
        self.lab.start_many(self.names[:count], workers=PARALLEL)
        done = time.perf_counter()
        return done - t0, done

    def stop(self, count: int) -> None:
        with ThreadPoolExecutor(max_workers=PARALLEL) as pool:
            list(
                pool.map(
                    lambda n: self.lab.incus("stop", "--force", n, check=False, timeout=300),
                    self.names[:count],
                )
            )

    def delete(self) -> None:
        self.lab.delete_many(self.names, workers=PARALLEL)


def storm(fleet: Fleet, probe: Probe, daemon: PluginDaemon, count: int) -> dict[str, Any]:
    """``count`` containers started PARALLEL at a time; the daemon alone
    converges them (no hook on their profile)."""
    addrs = fleet.addrs[:count]
    try:
        starts, _ = fleet.start(count)
        after = _wait(lambda: probe.converged(addrs), timeout=60)
        return {
            "instances": count,
            "starts_s": starts,
            "converged_after_last_start_s": after,
            "daemon_peak_rss_mb": _rss_peak_mb(daemon.pid),
            "pass": after is not None and after <= STORM_TARGET_S,
        }
    finally:
        fleet.stop(count)
        _wait(lambda: not probe.any_left(addrs), timeout=60, interval=0.1)


@contextlib.contextmanager
def foreign_routes(lab: IncusLab, total: int) -> Iterator[float]:
    """``total`` foreign routes (bench.workload.growth_mix) on a veth of
    their own in incusd's namespace, protocol static (Incus's routes are
    boot); gone with the veth afterwards. Yields the seconds loading took."""
    ns = lab.host
    ns.add_veth("ihtf0", "ihtf1", settle=False)
    try:
        lines = growth_lines(0, total, dev="ihtf0", protocol="static")
        t0 = time.perf_counter()
        ns.batch(lines, timeout=1200)
        yield time.perf_counter() - t0
    finally:
        ns.ip("link", "del", "ihtf0", timeout=600)


def resync(lab: IncusLab, run_dir: str, fleet: Fleet, probe: Probe, count: int) -> dict[str, Any]:
    """``count`` instances started with no daemon (Incus's routes in main,
    none in table 100); then the daemon starts: from its "watching Incus
    events" line (it connects right after) to every instance converged.
    Then `reconcile --all-projects` as a process (nothing left to change)."""
    addrs = fleet.addrs[:count]
    try:
        fleet.start(count)
        if _wait(lambda: probe.incus_routes(addrs) == count, timeout=60) is None:
            raise RuntimeError(f"resync {count}: Incus did not install its routes")
        daemon = PluginDaemon(lab, run_dir)
        marks: dict[str, float] = {}

        def watch() -> None:
            while "started" not in marks:
                if "watching Incus events" in _read(daemon.log_path):
                    marks["watching"] = time.perf_counter()
                    return
                time.sleep(0.002)

        t0 = time.perf_counter()
        watcher = threading.Thread(target=watch, daemon=True)
        starter = threading.Thread(target=daemon.start, daemon=True)
        starter.start()
        watcher.start()
        converged = _wait(lambda: probe.converged(addrs), timeout=120, interval=0.01)
        t_converged = time.perf_counter()
        starter.join(timeout=60)
        marks["started"] = t0
        watcher.join(timeout=5)
        try:
            reconcile = _reconcile_process(lab, run_dir)
            rss = _rss_peak_mb(daemon.pid) if daemon.running else 0.0
        finally:
            daemon.stop()
        after_connect = t_converged - marks["watching"] if "watching" in marks else None
        return {
            "instances": count,
            "from_daemon_start_s": converged,
            "from_connect_s": after_connect if converged is not None else None,
            "daemon_peak_rss_mb": rss,
            "reconcile_all_projects_process_s": reconcile,
            "pass": converged is not None
            and after_connect is not None
            and after_connect <= RESYNC_TARGET_S,
        }
    finally:
        fleet.stop(count)
        _wait(lambda: not probe.any_left(addrs), timeout=60, interval=0.1)


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except FileNotFoundError:
        return ""


def _reconcile_process(lab: IncusLab, run_dir: str, reps: int = 3) -> dict[str, float]:
    """`incus-host-tables reconcile --all-projects` as an operator runs it
    (the installed entry point, in incusd's namespace): min/median/max."""
    argv = [*cli_command(), "reconcile", "--all-projects"]
    env = plugin_env(lab, run_dir)
    times = []
    with inside(lab.netns):
        for _ in range(reps):
            t0 = time.perf_counter()
            subprocess.run(argv, env=env, capture_output=True, check=True, timeout=300)
            times.append(time.perf_counter() - t0)
    return _stats(times)


def run(
    starts: int,
    storms: Sequence[int],
    resyncs: Sequence[int] = (),
    big_storm: tuple[int, int] | None = None,
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iht-bench-run-") as run_dir:
        os.environ["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
        return _run(run_dir, starts, storms, resyncs, big_storm)


def _say(text: str) -> None:
    print(text, flush=True)


def _run(
    run_dir: str,
    starts: int,
    storms: Sequence[int],
    resyncs: Sequence[int],
    big_storm: tuple[int, int] | None,
) -> dict[str, Any]:
    results: dict[str, Any] = {"storm": [], "resync": []}
    with IncusLab("ihtbl") as lab:
        probe = Probe(lab)
        try:
            with PluginDaemon(lab, run_dir) as daemon:
                results["hook"] = h = hook_cost(lab, run_dir, starts)
                _say(
                    f"start hook: incus start with hook median "
                    f"{h['with_hook_s']['median'] * 1000:.0f} ms, without "
                    f"{h['without_hook_s']['median'] * 1000:.0f} ms -> extra "
                    f"{h['median_extra_ms']:.1f} ms (target <= {HOOK_TARGET_MS:.0f} ms; an empty "
                    f"/bin/true hook adds {h['empty_hook_extra_ms']:.1f} ms) "
                    f"{'PASS' if h['pass'] else 'FAIL'}"
                )
                need = max([*storms, *resyncs, big_storm[0] if big_storm else 0, 0])
                t0 = time.perf_counter()
                fleet = Fleet(lab, need)
                _say(f"made {need} storm instances in {time.perf_counter() - t0:.0f} s")
                try:
                    for size in storms:
                        s = storm(fleet, probe, daemon, size)
                        results["storm"].append(s)
                        _say(_storm_line(s))
                    if big_storm is not None:
                        count, foreign = big_storm
                        with foreign_routes(lab, foreign) as seconds:
                            _say(f"loaded {foreign:,} foreign routes into incusd's namespace "
                                 f"in {seconds:.0f} s")  # fmt: skip
                            s = storm(fleet, probe, daemon, count)
                        s["foreign_routes"] = foreign
                        results["big_storm"] = s
                        _say(_storm_line(s))
                    daemon.stop()  # the resyncs start their own
                    for size in resyncs:
                        r = resync(lab, run_dir, fleet, probe, size)
                        results["resync"].append(r)
                        _say(_resync_line(r))
                finally:
                    fleet.delete()
        finally:
            probe.close()
    return results


def _storm_line(s: dict[str, Any]) -> str:
    after = s["converged_after_last_start_s"]
    foreign = f" among {s['foreign_routes']:,} foreign routes" if "foreign_routes" in s else ""
    ok = s["pass"] and s["daemon_peak_rss_mb"] <= STORM_RSS_MB
    return (
        f"{'PASS' if ok else 'FAIL'}  event storm {s['instances']}{foreign}: converged "
        f"{'never' if after is None else f'{after:.2f} s'} after the last start returned"
        f" (<= {STORM_TARGET_S:.0f} s; starts took {s['starts_s']:.1f} s), daemon peak RSS "
        f"{s['daemon_peak_rss_mb']:.0f} MB (<= {STORM_RSS_MB:.0f} MB)"
    )


def _resync_line(r: dict[str, Any]) -> str:
    after, total = r["from_connect_s"], r["from_daemon_start_s"]
    rec = r["reconcile_all_projects_process_s"]
    return (
        f"{'PASS' if r['pass'] else 'FAIL'}  start-up resync of {r['instances']} running "
        f"instances: converged {'never' if after is None else f'{after:.2f} s'} after the "
        f"daemon connected (<= {RESYNC_TARGET_S:.0f} s; "
        f"{'-' if total is None else f'{total:.2f} s'} from its start); "
        f"reconcile --all-projects as a process {rec['median']:.2f} s (no change; "
        f"{rec['min']:.2f}-{rec['max']:.2f})"
    )


def passed(results: dict[str, Any]) -> bool:
    storms = [
        *results.get("storm", []),
        *([results["big_storm"]] if "big_storm" in results else []),
    ]
    return (
        bool(results["hook"]["pass"])
        and all(s["pass"] and s["daemon_peak_rss_mb"] <= STORM_RSS_MB for s in storms)
        and all(r["pass"] for r in results.get("resync", []))
    )


def verdict_lines(results: dict[str, Any]) -> list[str]:
    h = results["hook"]
    lines = [
        f"{'PASS' if h['pass'] else 'FAIL'}  start hook adds {h['median_extra_ms']:.1f} ms"
        f" median to incus start (<= {HOOK_TARGET_MS:.0f} ms; {h['starts_each']} starts each,"
        f" an empty hook adds {h['empty_hook_extra_ms']:.1f} ms)"
    ]
    lines += [_storm_line(s) for s in results.get("storm", [])]
    if "big_storm" in results:
        lines.append(_storm_line(results["big_storm"]))
    lines += [_resync_line(r) for r in results.get("resync", [])]
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--storm", default=",".join(map(str, STORMS)))
    parser.add_argument("--resync", default=",".join(map(str, RESYNCS)))
    parser.add_argument(
        "--big-storm", default="200,1000000", help="INSTANCES,FOREIGN_ROUTES (0,0: none)"
    )
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    count, foreign = (int(x) for x in args.big_storm.split(","))
    results = run(
        args.starts,
        [int(x) for x in args.storm.split(",") if x],
        [int(x) for x in args.resync.split(",") if x],
        (count, foreign) if count and foreign else None,
    )
    for line in verdict_lines(results):
        print(line)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0 if passed(results) else 1


if __name__ == "__main__":
    sys.exit(main())
