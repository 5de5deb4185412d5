"""Figures that need a real Incus: the start hook's cost (target 3) and the
daemon under an event storm (target 4). Run as root:

    python -m bench.lab_figures [--starts 20] [--storm 50,100,200]

Prints min/median/max and the verdicts; returns the figures as a dict for
the suite's JSON.
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from lab import IncusLab
from lab.plugin import PluginDaemon, run_cli

HOOK_TARGET_MS = 30.0
STORM_TARGET_S = 2.0
STORM_RSS_MB = 80.0


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


def _converged(lab: IncusLab, addrs: set[str]) -> bool:
    out = lab.ns_run("ip", "-j", "-4", "route", "show", "table", "all").stdout
    tables: dict[str, set[str]] = {}
    for r in json.loads(out or "[]"):
        if r.get("dst") in addrs:
            tables.setdefault(r["dst"], set()).add(str(r.get("table", "main")))
    if any(tables.get(a) != {"100"} for a in addrs):
        return False
    return "lookup 100 suppress_prefixlength 31" in lab.ns_run("ip", "rule").stdout


def _rss_peak_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return 0.0


def storm(lab: IncusLab, daemon: PluginDaemon, count: int) -> dict[str, Any]:
    """`count` containers started 8 at a time (IncusLab.FLEET_WORKERS); the
    daemon alone converges them."""
    base = int(ipaddress.ip_address("198.18.0.0"))
    names = [f"s{count}x{i}" for i in range(count)]
    addrs = {str(ipaddress.ip_address(base + 1 + i)) for i in range(count)}
    ordered = sorted(addrs, key=ipaddress.ip_address)
    lab.launch_many(
        {name: {"eth0": _nic(addr)} for name, addr in zip(names, ordered, strict=True)},
        start=False,
    )
    try:
        t0 = time.perf_counter()
        lab.start_many(names)
        last_return = time.perf_counter()
        deadline = last_return + 30
        while not _converged(lab, addrs) and time.perf_counter() < deadline:
            time.sleep(0.02)
        converged_at = time.perf_counter()
        ok = _converged(lab, addrs)
        after = converged_at - last_return
        return {
            "instances": count,
            "starts_s": last_return - t0,
            "converged_after_last_start_s": after if ok else None,
            "daemon_peak_rss_mb": _rss_peak_mb(daemon.pid),
            "pass": ok and after <= STORM_TARGET_S,
        }
    finally:
        lab.delete_many(names)


def run(starts: int, sizes: list[int]) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="iht-bench-run-") as run_dir:
        os.environ["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
        return _run(run_dir, starts, sizes)


def _run(run_dir: str, starts: int, sizes: list[int]) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with IncusLab("ihtbl") as lab, PluginDaemon(lab, run_dir) as daemon:
        results["hook"] = hook_cost(lab, run_dir, starts)
        h = results["hook"]
        print(
            f"start hook: incus start with hook median {h['with_hook_s']['median'] * 1000:.0f} ms,"
            f" without {h['without_hook_s']['median'] * 1000:.0f} ms"
            f" -> extra {h['median_extra_ms']:.1f} ms (target <= {HOOK_TARGET_MS:.0f} ms;"
            f" an empty /bin/true hook adds {h['empty_hook_extra_ms']:.1f} ms)"
            f" {'PASS' if h['pass'] else 'FAIL'}",
            flush=True,
        )
        results["storm"] = []
        for size in sizes:
            s = storm(lab, daemon, size)
            results["storm"].append(s)
            after = s["converged_after_last_start_s"]
            print(
                f"event storm {size:>3}: starts {s['starts_s']:.1f} s, converged "
                f"{'NEVER' if after is None else f'{after:.2f} s'} after the last start "
                f"(target <= {STORM_TARGET_S} s), daemon peak RSS "
                f"{s['daemon_peak_rss_mb']:.0f} MB (target <= {STORM_RSS_MB:.0f} MB) "
                f"{'PASS' if s['pass'] and s['daemon_peak_rss_mb'] <= STORM_RSS_MB else 'FAIL'}",
                flush=True,
            )
    return results


def passed(results: dict[str, Any]) -> bool:
    storms = results.get("storm", [])
    return bool(results["hook"]["pass"]) and all(
        s["pass"] and s["daemon_peak_rss_mb"] <= STORM_RSS_MB for s in storms
    )


def verdict_lines(results: dict[str, Any]) -> list[str]:
    h = results["hook"]
    lines = [
        f"{'PASS' if h['pass'] else 'FAIL'}  start hook adds {h['median_extra_ms']:.1f} ms"
        f" median to incus start (<= {HOOK_TARGET_MS:.0f} ms; {h['starts_each']} starts each,"
        f" an empty hook adds {h['empty_hook_extra_ms']:.1f} ms)"
    ]
    for s in results.get("storm", []):
        ok = s["pass"] and s["daemon_peak_rss_mb"] <= STORM_RSS_MB
        after = s["converged_after_last_start_s"]
        lines.append(
            f"{'PASS' if ok else 'FAIL'}  event storm {s['instances']}: converged "
            f"{'never' if after is None else f'{after:.2f} s'} after the last start"
            f" (<= {STORM_TARGET_S:.0f} s), daemon peak RSS {s['daemon_peak_rss_mb']:.0f} MB"
            f" (<= {STORM_RSS_MB:.0f} MB)"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--storm", default="50,100,200")
    parser.add_argument("--json", help="write the figures here")
    args = parser.parse_args(argv)
    results = run(args.starts, [int(x) for x in args.storm.split(",") if x])
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
