"""What the host's policy rules make of a chosen table. Pure.

A table is only as isolated as the rules that lead into it. The kernel walks
the rules by preference; a rule without an input-interface (``iif``) or
source (``from``) selector placed before main's own rule (32766) matches the
host's ordinary traffic -- the main routing domain -- so every instance whose
routes sit in that table becomes reachable from main, as if the routes were
in main itself. The reverse-path rule (``iif lo lookup RP-TABLE``, one per
family, see docs/architecture.md) is what lets Incus's strict reverse-path
filter and the host find isolated instances; without it their replies are
dropped.

Input is iproute2's JSON (``ip -N -j rule show``), read by doctor.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .config import DeviceIntent
from .model import AF_INET, AF_INET6, HOST_PREFIXLEN, MAIN_TABLE

MAIN_RULE_PRIORITY = 32766  # the kernel's `from all lookup main`
FAMILY_NAME = {AF_INET: "ipv4", AF_INET6: "ipv6"}
FAMILY_FLAG = {AF_INET: "-4", AF_INET6: "-6"}


class RuleAction(Enum):
    LOOKUP = "lookup"
    GOTO = "goto"
    NOP = "nop"
    L3MDEV = "l3mdev"  # lookup in the table of the packet's VRF device
    BLACKHOLE = "blackhole"
    UNREACHABLE = "unreachable"
    PROHIBIT = "prohibit"


@dataclass(frozen=True)
class PolicyRule:
    """One kernel policy rule, as much of it as the analysis needs."""

    family: int
    priority: int
    action: RuleAction
    table: int | None = None  # LOOKUP only
    iif: str | None = None
    src: str | None = None  # "198.51.100.0/24"; None: from all
    invert: bool = False  # `not`: the selectors match everything else
    suppress_prefixlength: int | None = None
    protocol: str | None = None
    other: tuple[str, ...] = ()  # oif, to, fwmark, ipproto, ports...: narrow, not isolate

    @property
    def selects_source(self) -> bool:
        """Does an ``iif``/``from`` selector keep main-domain traffic out?
        Inverted, it lets nearly all of it in."""
        return (self.iif is not None or self.src is not None) and not self.invert

    def describe(self) -> str:
        parts = [f"{FAMILY_FLAG[self.family]} pref {self.priority}"]
        if self.invert:
            parts.append("not")
        parts.append(f"from {self.src or 'all'}")
        if self.iif is not None:
            parts.append(f"iif {self.iif}")
        parts += self.other
        if self.action is RuleAction.LOOKUP:
            parts.append(f"lookup {self.table}")
        else:
            parts.append(self.action.value)
        if self.suppress_prefixlength is not None:
            parts.append(f"suppress_prefixlength {self.suppress_prefixlength}")
        if self.protocol is not None:
            parts.append(f"proto {self.protocol}")
        return " ".join(parts)


_NARROWING = ("oif", "fwmark", "fwmask", "tos", "ipproto", "sport", "dport", "uidrange")


def parse_ip_rules(family: int, data: Iterable[Mapping[str, Any]]) -> list[PolicyRule]:
    """``ip -N -j rule show`` objects of one family, in kernel order."""
    out: list[PolicyRule] = []
    for d in data:
        if "table" in d:
            action, table = RuleAction.LOOKUP, int(d["table"])
        elif "goto" in d:
            action, table = RuleAction.GOTO, None
        elif "l3mdev" in d:
            action, table = RuleAction.L3MDEV, None
        else:
            action = RuleAction(str(d.get("action", "nop")))
            table = None
        src = d.get("src")
        other = [f"to {d['dst']}/{d.get('dstlen', HOST_PREFIXLEN[family])}"] if "dst" in d else []
        other += [f"{key} {d[key]}" for key in _NARROWING if key in d]
        suppress = d.get("suppress_prefixlen")
        out.append(
            PolicyRule(
                family=family,
                priority=int(d.get("priority", 0)),
                action=action,
                table=table,
                iif=d.get("iif"),
                src=None if src in (None, "all") else f"{src}/{d.get('srclen', '')}".rstrip("/"),
                invert="not" in d,
                suppress_prefixlength=None if suppress is None else int(suppress),
                protocol=None if d.get("protocol") is None else str(d["protocol"]),
                other=tuple(other),
            )
        )
    return out


def main_priority(rules: Sequence[PolicyRule]) -> int | None:
    """Preference of the rule by which ordinary traffic looks up main."""
    for rule in rules:
        main = rule.action is RuleAction.LOOKUP and rule.table == MAIN_TABLE
        if main and not rule.selects_source and not rule.other:
            return rule.priority
    return None


def _shows_host_routes(rule: PolicyRule) -> bool:
    """A suppress_prefixlength at or above the host prefix length hides the
    instances' host routes from whatever the rule matches."""
    plen = rule.suppress_prefixlength
    return plen is None or plen < HOST_PREFIXLEN[rule.family]


@dataclass(frozen=True)
class TableReach:
    """How traffic gets into one chosen table of one family."""

    family: int
    table: int
    entries: tuple[PolicyRule, ...]  # every rule that looks it up
    main_domain: tuple[PolicyRule, ...]  # ...of which those main-domain traffic takes

    @property
    def name(self) -> str:
        return f"table {self.table} ({FAMILY_NAME[self.family]})"


def analyze_table(rules: Sequence[PolicyRule], table: int) -> TableReach:
    """Which rules lead into ``table``, and which of them main-domain
    traffic takes: no iif/from selector, before main's rule (anywhere, if
    the host has no main rule), showing host routes."""
    family = rules[0].family if rules else AF_INET
    before = main_priority(rules)
    entries = tuple(r for r in rules if r.action is RuleAction.LOOKUP and r.table == table)
    main_domain = tuple(
        r
        for r in entries
        if not r.selects_source
        and (before is None or r.priority < before)
        and _shows_host_routes(r)
    )
    return TableReach(family, table, entries, main_domain)


def main_domain_warnings(
    rules: Sequence[PolicyRule], family: int, tables: Iterable[int]
) -> list[str]:
    """A warning per chosen (non-main) table that main-domain traffic reaches
    through a policy rule: instances there are as reachable as from main."""
    fam = [r for r in rules if r.family == family]
    out = []
    for table in tables:
        if table == MAIN_TABLE:
            continue
        reach = analyze_table(fam, table)
        for rule in reach.main_domain:
            out.append(
                f"{reach.name}: the policy rule `{rule.describe()}` has no iif/from selector "
                f"and comes before main's rule, so main-domain traffic reaches this table's "
                f"instances; give the rule an iif or from selector, or move it after "
                f"{main_priority(fam) or MAIN_RULE_PRIORITY}"
            )
    return out


def reverse_path_rule(rules: Sequence[PolicyRule], rp_table: int) -> PolicyRule | None:
    """The rule ``iif lo lookup RP-TABLE`` if it is where it works: before
    main's rule, with no other selector."""
    before = main_priority(rules)
    for rule in rules:
        if (
            rule.action is RuleAction.LOOKUP
            and rule.table == rp_table
            and rule.iif == "lo"
            and rule.src is None
            and not rule.invert
            and not rule.other
            and (before is None or rule.priority < before)
        ):
            return rule
    return None


def intent_warnings(rules: Mapping[int, Sequence[PolicyRule]], intent: DeviceIntent) -> list[str]:
    """``main_domain_warnings`` for every table a NIC's intent chooses."""
    out: list[str] = []
    for fam in intent.families():
        if fam.addresses:
            family = AF_INET if fam.family == "ipv4" else AF_INET6
            out += main_domain_warnings(rules.get(family, []), family, fam.tables)
    return out
