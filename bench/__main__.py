"""`python -m bench`: the performance figures of the issue, each with its
same-run reference, then a PASS/FAIL line per target.

Needs root (network namespaces) and iproute2; changes nothing outside the
namespaces it makes (``ihtb<pid>_*``), which it always deletes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from lab.netns import Namespaces

from . import figures, lab_figures, repair, report, rule_lookup
from .figures import Results

HERE = Path(__file__).resolve().parent


def _sizes(text: str) -> list[int]:
    return [int(x.replace("_", "").replace(",", "")) for x in text.split("/")]


def _counts(text: str) -> list[int]:
    """``50,200,500`` (or ``0/100_000/1_000_000``): a list of counts."""
    return [int(x.replace("_", "")) for x in text.replace("/", ",").split(",") if x]


PARTS = ("bulk", "exec", "read", "growth", "rules", "repair", "lab")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument("--reps", type=int, default=5, help="repetitions per figure (default 5)")
    p.add_argument(
        "--sizes",
        type=_sizes,
        default=[1000, 4000, 12000],
        help="route counts, e.g. 1000/4000/12000",
    )
    p.add_argument("--foreign", type=int, default=200_000, help="foreign routes for the read test")
    p.add_argument("--exec-sample", type=int, default=300, help="routes timed one process each")
    p.add_argument(
        "--only",
        choices=PARTS,
        action="append",
        help="run only these parts (growth: one NIC among 0 to 1,000,000 foreign routes; "
        "rules: route lookups from lo under three rule layouts; repair: drift-repair "
        "latency; lab: start hook, event storms, start-up resync on a real Incus)",
    )
    p.add_argument(
        "--growth",
        type=_counts,
        default=list(figures.GROWTH_SIZES),
        help="foreign routes for the growth figure (default 0/100000/1000000)",
    )
    p.add_argument(
        "--lookups", type=int, default=20_000, help="route lookups per rule-layout figure"
    )
    p.add_argument("--repair-samples", type=int, default=200, help="samples per repair scenario")
    p.add_argument("--starts", type=int, default=20, help="incus starts per variant (lab)")
    p.add_argument(
        "--storm", type=_counts, default=list(lab_figures.STORMS), help="event-storm sizes (lab)"
    )
    p.add_argument(
        "--resync",
        type=_counts,
        default=list(lab_figures.RESYNCS),
        help="running instances for the daemon's start-up resync (lab)",
    )
    p.add_argument(
        "--big-storm",
        type=_counts,
        default=list(lab_figures.BIG_STORM),
        help="INSTANCES,FOREIGN: a storm on a host with that many foreign routes (lab; "
        "default 200,1000000; 0,0 skips it)",
    )
    p.add_argument("--out", type=Path, default=HERE / "results", help="where results go")
    p.add_argument("--quick", action="store_true", help="3 reps, sizes 1000/12000, 50,000 foreign")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.sizes, args.foreign = 3, [1000, 12000], 50_000
        args.growth = [0, 100_000]
    if os.geteuid() != 0:
        print("python -m bench needs root (network namespaces)", file=sys.stderr)
        return 2
    if shutil.which("ip") is None:
        print("python -m bench needs iproute2 (ip)", file=sys.stderr)
        return 2
    parts = set(args.only or PARTS)

    def log(text: str) -> None:
        print(text, flush=True)

    m = report.machine()
    log(f"machine: {m['nproc']} CPUs, Linux {m['kernel']}, Python {m['python']}")
    log(f"command: {' '.join(figures.cli_command())}")
    res = Results()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="ihtb-run-") as run_dir, Namespaces("ihtb") as nss:
        if "exec" in parts:
            for s in figures.exec_per_route(nss, args.exec_sample, args.reps, run_dir, log).series:
                res.add(s)
        if "bulk" in parts:
            for s in figures.bulk(nss, args.sizes, args.reps, run_dir, log).series:
                res.add(s)
        if "read" in parts:
            for scenario in figures.READ_SCENARIOS:
                got = figures.reading(
                    nss, args.foreign, [6, max(args.sizes)], args.reps, run_dir, log, scenario
                )
                res.series += got.series
                res.facts.update(got.facts)
        if "growth" in parts:
            for s in figures.growth(nss, args.growth, args.reps, run_dir, log).series:
                res.add(s)
        if "rules" in parts:
            rules = rule_lookup.rule_lookup(
                nss, rule_lookup.ADDRESSES, args.lookups, args.reps, log
            )
            res.facts["rule_lookup"] = rules
            for line in rule_lookup.lines(rules):
                log(line)
        repair_results: dict[str, Any] | None = None
        if "repair" in parts:
            repair_results = repair.run(nss, args.repair_samples, 20_000, run_dir, log)
    lab_results: dict[str, Any] | None = None
    if "lab" in parts:
        log("")
        log("real Incus: start hook, event storms, start-up resync")
        big = tuple(args.big_storm) if len(args.big_storm) == 2 and all(args.big_storm) else None
        lab_results = lab_figures.run(args.starts, args.storm, args.resync, big)
    res.facts["bench_seconds"] = round(time.monotonic() - started, 1)

    log("")
    for line in report.table(res):
        log(line)
    log("")
    for line in report.ratio_lines(res, args.sizes):
        log(line)
    growth_table = report.growth_table(res)
    if growth_table:
        log("")
        for line in growth_table:
            log(line)
    verdicts = report.verdicts(res, max(args.sizes))
    config = {
        "reps": args.reps,
        "sizes": args.sizes,
        "foreign": args.foreign,
        "exec_sample": args.exec_sample,
        "growth": args.growth,
        "command": figures.cli_command(),
    }
    out = args.out
    report.write_json(out / "results.json", res, verdicts, config)
    plotted = report.plot(out / "time_vs_routes.png", res)
    log("")
    log(f"results: {out / 'results.json'}")
    log(f"plot: {out / 'time_vs_routes.png'}" if plotted else "plot: skipped (no matplotlib)")
    log("")
    for v in verdicts:
        log(v.line())
    repair_ok = True
    if repair_results is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "results_repair.json", "w", encoding="utf-8") as f:
            json.dump(repair_results, f, indent=2)
        for line in repair.verdict_lines(repair_results):
            log(line)
        repair_ok = repair.passed(repair_results)
    lab_ok = True
    if lab_results is not None:
        with open(out / "results_lab.json", "w", encoding="utf-8") as f:
            json.dump(lab_results, f, indent=2)
        for line in lab_figures.verdict_lines(lab_results):
            log(line)
        lab_ok = lab_figures.passed(lab_results)
    ok = all(v.ok or v.informational for v in verdicts) and lab_ok and repair_ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
