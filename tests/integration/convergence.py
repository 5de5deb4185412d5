"""What "converged" means for the fault tests, read from H's kernel: every
instance address in exactly its chosen tables (no copy in a table not
chosen, main included), each route the plugin's (protocol 158) with its one
copy in the reverse-path table, no route missing, and exactly the plugin
rules those routes need (no orphan rule)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from lab import IncusLab

if TYPE_CHECKING:
    from conftest import PluginLab

RP_TABLE = "1158"
REPAIR = 5.0  # seconds a repair may take, at most (the bench measures the real figure)


def routed(addr4: str, addr6: str, tables: str) -> dict[str, str]:
    """A routed NIC in ``tables`` for both families."""
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": addr4,
        "ipv6.address": addr6,
        "user.ipv4.host_tables": tables,
        "user.ipv6.host_tables": tables,
    }


def rules_for(tables: set[str]) -> set[tuple[str, str, int]]:
    """The plugin's rules that instances of both families in ``tables`` need:
    the reverse-path table's one rule per family (docs/architecture.md)."""
    return {("4", RP_TABLE, -1), ("6", RP_TABLE, -1)} if tables - {"main"} else set()


def routes_by_dst(lab: IncusLab, dsts: set[str]) -> dict[str, list[dict[str, Any]]]:
    """H's routes to each of ``dsts``, every table (``table`` always set),
    from one dump per family: fast enough to poll hundreds of instances."""
    out: dict[str, list[dict[str, Any]]] = {d: [] for d in dsts}
    for family in ("-4", "-6"):
        dump = lab.ns_run("ip", "-j", family, "route", "show", "table", "all").stdout
        for r in json.loads(dump or "[]"):
            dst = str(r.get("dst", ""))
            key = dst if dst in out else dst.rsplit("/", 1)[0]
            if key in out and (dst == key or dst.endswith(("/32", "/128"))):
                r.setdefault("table", "main")
                out[key].append(r)
    return out


def mismatches(
    plug: PluginLab, want: Mapping[str, set[str]], rules: set[tuple[str, str, int]]
) -> list[str]:
    """What differs from the converged state (empty: converged)."""
    found = routes_by_dst(plug.lab, set(want))
    problems = []
    for addr, tables in want.items():
        entries = [r for r in found[addr] if str(r["table"]) != RP_TABLE]
        rp = [r for r in found[addr] if str(r["table"]) == RP_TABLE]
        have = sorted(str(r["table"]) for r in entries)
        if have != sorted(tables):
            problems.append(f"{addr}: in tables {have}, want {sorted(tables)}")
        elif any(str(r.get("protocol")) != "158" for r in entries + rp):
            problems.append(f"{addr}: a route not of protocol 158: {entries + rp}")
        elif tables - {"main"} and len(rp) != 1:
            problems.append(f"{addr}: {len(rp)} reverse-path copies")
    have_rules = plug.rules()
    if have_rules != rules:
        problems.append(f"rules {sorted(have_rules)}, want {sorted(rules)}")
    return problems


def exact(plug: PluginLab, want: Mapping[str, set[str]], rules: set[tuple[str, str, int]]) -> bool:
    return not mismatches(plug, want, rules)


def assert_exact(
    plug: PluginLab, want: Mapping[str, set[str]], rules: set[tuple[str, str, int]]
) -> None:
    assert plug.until(lambda: exact(plug, want, rules), REPAIR), mismatches(plug, want, rules)
