"""Tables, verdicts, the JSON file and the plot."""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from .figures import Results
from .stats import Verdict

READ_LIMIT = 0.020  # seconds: reading one interface's routes among 200,000 others


def machine() -> dict[str, Any]:
    return {
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "machine": platform.machine(),
    }


def table(res: Results) -> list[str]:
    lines = [f"{'figure':34} {'routes':>7} {'min':>10} {'median':>10} {'max':>10}  per route"]
    for s in res.series:
        unit = s.median if s.extrapolated else s.median / max(s.routes, 1)
        lines.append(
            f"{s.name:34} {s.routes:7d} {s.min * 1e3:8.2f}ms {s.median * 1e3:8.2f}ms "
            f"{s.max * 1e3:8.2f}ms  {unit * 1e6:8.2f} us" + (f"  ({s.note})" if s.note else "")
        )
    return lines


def ratio_lines(res: Results, sizes: list[int]) -> list[str]:
    """Every figure against its same-run references, per size (medians)."""
    pairs = (
        ("converge/ip-batch", "engine converge", "ip -batch add"),
        ("converge/floor", "engine converge", "floor add"),
        ("cleanup/ip-batch", "engine cleanup", "ip -batch del"),
        ("cleanup/floor", "engine cleanup", "floor del"),
        ("process apply/ip-batch", "process device apply", "ip -batch add"),
        ("process cleanup/ip-batch", "process device cleanup", "ip -batch del"),
        ("reconcile/ip-batch", "engine reconcile (no change)", "ip -batch add"),
    )
    out = []
    for s in res.series:
        if s.name != "engine converge":
            continue
        n = s.routes
        ratios = [
            f"{label} {res.get(a, n).median / res.get(b, n).median:.2f}" for label, a, b in pairs
        ]
        out.append(f"{n:6d} routes: " + ", ".join(ratios))
    return out


# (target, figure, its reference, limit on figure/reference), at the largest size
RATIO_TARGETS = (
    ("1 apply in process vs ip -batch", "engine converge", "ip -batch add", 0.5),
    ("1 apply in process vs kernel floor", "engine converge", "floor add", 2.0),
    ("1 apply as a process vs ip -batch", "process device apply", "ip -batch add", 1.0),
    ("1 cleanup in process vs ip -batch", "engine cleanup", "ip -batch del", 0.5),
    ("1 cleanup in process vs kernel floor", "engine cleanup", "floor del", 2.0),
    ("1 cleanup as a process vs ip -batch", "process device cleanup", "ip -batch del", 1.0),
    ("2 no-change reconcile vs ip -batch", "engine reconcile (no change)", "ip -batch add", 1.0),
)
# (target, figure, the one-process-per-route sample): at least 100x faster per route
EXEC_TARGETS = (
    ("1 apply vs exec per route", "engine converge", "exec per route add"),
    ("1 cleanup vs exec per route", "engine cleanup", "exec per route del"),
)


def verdicts(res: Results, n: int) -> list[Verdict]:
    """The issue's targets, at ``n`` routes (the largest size), on medians."""
    v: list[Verdict] = []
    have = {(s.name, s.routes): s for s in res.series}
    n = next((s.routes for s in res.series if s.name == "engine converge" and s.routes >= n), n)
    for target, name, ref_name, limit in RATIO_TARGETS:
        mine, ref = have.get((name, n)), have.get((ref_name, n))
        if mine and ref:
            detail = f"{n} routes: {mine.median * 1e3:.1f} ms vs {ref.median * 1e3:.1f} ms"
            v.append(Verdict(target, mine.median / ref.median, limit, detail + " (medians)"))
    for target, name, ref_name in EXEC_TARGETS:
        mine, per = have.get((name, n)), have.get((ref_name, 1))
        if mine and per:
            mine_per = mine.median / n
            detail = (
                f"{mine_per * 1e6:.2f} us/route vs {per.median * 1e3:.2f} ms/route "
                f"({per.note}, per route)"
            )
            v.append(Verdict(target, per.median / mine_per, 100, detail, unit="faster"))
    v += growth_verdicts(res)
    # The few routes of one NIC (the smallest read figure of each scenario).
    fewest: dict[str, int] = {}
    for s in res.series:
        if s.name.startswith("read link routes"):
            fewest[s.name] = min(fewest.get(s.name, s.routes), s.routes)
    for s in res.series:
        if s.name.startswith("read link routes") and s.routes == fewest[s.name]:
            scenario = s.name[len("read link routes (") : -1]
            parsed = res.facts.get(f"route messages parsed reading {s.routes} own ({scenario})")
            present = res.facts.get(f"routes on the device, {s.routes} own ({scenario})")
            v.append(
                Verdict(
                    f"2 read one interface among foreign routes ({scenario})",
                    s.median,
                    READ_LIMIT,
                    f"{s.note}; {s.routes} own; {parsed} route messages reached Python for "
                    f"{present} routes on the device (max {s.max * 1e3:.1f} ms)",
                    unit="s",
                )
            )
    return v


GROWTH_LIMIT = 1.1  # one NIC's apply + cleanup among 1,000,000 foreign routes vs none


def growth_table(res: Results) -> list[str]:
    """One NIC's apply + cleanup per number of foreign routes (medians, ms),
    and each size's ratio to the empty host."""
    sizes = sorted({s.routes for s in res.series if s.name == "growth process apply+cleanup"})
    if not sizes:
        return []
    names = (
        ("growth process apply+cleanup", "device apply+cleanup (processes)"),
        ("growth engine apply+cleanup", "engine apply+cleanup (in process)"),
        ("growth ip -batch add+del", "ip -batch add+del (processes)"),
        ("growth floor add+del", "kernel floor add+del"),
    )
    head = f"{'one NIC, ms (x empty host)':36}" + "".join(f"{n:>20,}" for n in sizes)
    lines = [head + "  foreign routes"]
    for name, label in names:
        base = res.get(name, sizes[0]).median
        cells = "".join(
            f"{res.get(name, n).median * 1e3:>10.1f} ({res.get(name, n).median / base:4.2f}x)"
            for n in sizes
        )
        lines.append(f"{label:36}{cells}")
    return lines


def growth_verdicts(res: Results) -> list[Verdict]:
    """The largest host against the empty one: the processes (the target),
    and in process (for information)."""
    out: list[Verdict] = []
    for name, what, informational in (
        ("growth process apply+cleanup", "device apply + device cleanup (processes)", False),
        ("growth engine apply+cleanup", "engine apply + cleanup (in process)", True),
    ):
        sizes = sorted(s.routes for s in res.series if s.name == name)
        if len(sizes) < 2 or sizes[0] != 0:
            continue
        empty, big = res.get(name, 0), res.get(name, sizes[-1])
        out.append(
            Verdict(
                f"growth: one NIC's {what} among {sizes[-1]:,} foreign routes vs an empty host",
                big.median / empty.median,
                GROWTH_LIMIT,
                f"{big.median * 1e3:.1f} ms vs {empty.median * 1e3:.1f} ms (medians; max "
                f"{big.max * 1e3:.1f} vs {empty.max * 1e3:.1f})",
                informational=informational,
            )
        )
    return out


def write_json(
    path: Path, res: Results, verdict_list: list[Verdict], config: dict[str, Any]
) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = {
        "machine": machine(),
        "config": config,
        "series": [s.as_json() for s in res.series],
        "facts": res.facts,
        "verdicts": [v.as_json() for v in verdict_list],
    }
    path.write_text(json.dumps(data, indent=2) + "\n")


def plot(path: Path, res: Results) -> bool:
    """Time vs routes, log-log; False when matplotlib is missing or there
    is nothing to plot."""
    if not any(s.name == "engine converge" for s in res.series):
        return False
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    growth = sorted(
        (s for s in res.series if s.name == "growth process apply+cleanup"), key=lambda s: s.routes
    )
    if growth:
        fig, (ax, gx) = plt.subplots(1, 2, figsize=(15, 5.5), gridspec_kw={"width_ratios": [3, 2]})
        _plot_growth(gx, res)
    else:
        fig, ax = plt.subplots(figsize=(10.5, 5.5))
    styles = {
        "exec per route add": ("exec per route (ip route add; extrapolated)", "tab:red", ":"),
        "ip -batch add": ("ip -batch (add)", "tab:orange", "-"),
        "ip -batch del": ("ip -batch (del)", "tab:orange", "--"),
        "process device apply": ("incus-host-tables device apply (process)", "tab:purple", "-"),
        "process device cleanup": (
            "incus-host-tables device cleanup (process)",
            "tab:purple",
            "--",
        ),
        "engine converge": ("engine converge (in process)", "tab:blue", "-"),
        "engine cleanup": ("engine cleanup (in process)", "tab:blue", "--"),
        "engine reconcile (no change)": ("engine reconcile, no change", "tab:cyan", "-."),
        "floor add": ("kernel floor (add, one sendto)", "tab:gray", "-"),
        "floor del": ("kernel floor (del, one sendto)", "tab:gray", "--"),
    }
    xs = sorted(s.routes for s in res.series if s.name == "engine converge")
    for name, (label, color, ls) in styles.items():
        if name.startswith("exec"):  # measured per route on a sample: a line
            try:
                per = res.get(name, 1)
            except KeyError:
                continue
            ax.plot(xs, [per.median * x for x in xs], color=color, ls=ls, label=label)
            continue
        found = sorted(
            (s for s in res.series if s.name == name and s.routes in xs), key=lambda s: s.routes
        )
        if found:
            ax.errorbar(
                [s.routes for s in found],
                [s.median for s in found],
                yerr=[[s.median - s.min for s in found], [s.max - s.median for s in found]],
                color=color,
                ls=ls,
                marker="o",
                ms=3,
                capsize=2,
                label=label,
            )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("routes (IPv4 /32 host routes, 3 tables)")
    ax.set_ylabel("seconds (median; bars: min-max)")
    m = machine()
    ax.set_title(
        f"incus-host-tables: time vs routes ({m['nproc']} CPUs, Linux {m['kernel']}, "
        f"Python {m['python']})",
        fontsize=9,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot_growth(ax: Any, res: Results) -> None:
    """One NIC's apply + cleanup against the number of foreign routes."""
    styles = {
        "growth process apply+cleanup": ("device apply+cleanup (processes)", "tab:purple"),
        "growth engine apply+cleanup": ("engine apply+cleanup (in process)", "tab:blue"),
        "growth ip -batch add+del": ("ip -batch add+del (processes)", "tab:orange"),
        "growth floor add+del": ("kernel floor add+del", "tab:gray"),
    }
    for name, (label, color) in styles.items():
        found = sorted((s for s in res.series if s.name == name), key=lambda s: s.routes)
        if not found:
            continue
        ax.errorbar(
            [s.routes for s in found],
            [s.median * 1e3 for s in found],
            yerr=[
                [(s.median - s.min) * 1e3 for s in found],
                [(s.max - s.median) * 1e3 for s in found],
            ],
            color=color,
            marker="o",
            ms=3,
            capsize=2,
            label=label,
        )
    ax.set_xscale("symlog", linthresh=100_000)
    ax.set_yscale("log")
    ax.set_xlabel("foreign routes on the host (IPv4 and IPv6, main and table 300)")
    ax.set_ylabel("ms for one NIC (median; bars: min-max)")
    ax.set_title("one NIC (6 routes) as the host's tables grow", fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=7)
