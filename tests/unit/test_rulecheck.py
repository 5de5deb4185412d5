"""The policy-rule analysis on iproute2's JSON (`ip -N -j rule show`)."""

from __future__ import annotations

from typing import Any

import pytest

from incus_host_tables.config import parse_device
from incus_host_tables.model import AF_INET, AF_INET6
from incus_host_tables.rulecheck import (
    RuleAction,
    analyze_table,
    intent_warnings,
    main_domain_warnings,
    main_priority,
    parse_ip_rules,
    reverse_path_rule,
)

STANDARD = [
    {"priority": 0, "src": "all", "table": "255"},
    {"priority": 32766, "src": "all", "table": "254"},
    {"priority": 32767, "src": "all", "table": "253"},
]


def rules(*extra: dict[str, Any], family: int = AF_INET) -> list[Any]:
    data = sorted([*STANDARD, *extra], key=lambda d: int(d["priority"]))
    return parse_ip_rules(family, data)


def test_parse_every_kind() -> None:
    parsed = parse_ip_rules(
        AF_INET,
        [
            {"priority": 9, "src": "all", "fwmark": "0x1", "fwmask": "0xff", "table": "100",
             "suppress_prefixlen": 0},
            {"priority": 10, "not": None, "src": "10.0.0.0", "srclen": 8, "table": "100"},
            {"priority": 20, "src": "all", "dst": "198.51.100.0", "dstlen": 24, "goto": 32766},
            {"priority": 30, "src": "all", "iif": "eth9", "action": "unreachable"},
            {"priority": 1000, "src": "all", "l3mdev": None},
            {"priority": 1100, "src": "all", "iif": "lo", "table": "1158", "protocol": "158"},
        ],
    )  # fmt: skip
    assert [r.action for r in parsed] == [
        RuleAction.LOOKUP,
        RuleAction.LOOKUP,
        RuleAction.GOTO,
        RuleAction.UNREACHABLE,
        RuleAction.L3MDEV,
        RuleAction.LOOKUP,
    ]
    assert parsed[0].describe() == (
        "-4 pref 9 from all fwmark 0x1 fwmask 0xff lookup 100 suppress_prefixlength 0"
    )
    assert parsed[1].describe() == "-4 pref 10 not from 10.0.0.0/8 lookup 100"
    assert parsed[1].invert and not parsed[1].selects_source
    assert parsed[2].describe() == "-4 pref 20 from all to 198.51.100.0/24 goto"
    assert parsed[5].describe() == "-4 pref 1100 from all iif lo lookup 1158 proto 158"


@pytest.mark.parametrize(
    ("extra", "entries", "main_domain"),
    [
        # a client's uplink routed into the table: a selector, not main
        ([{"priority": 32765, "src": "all", "iif": "v-a", "table": "100"}], [32765], []),
        ([{"priority": 500, "src": "203.0.113.0", "srclen": 24, "table": "100"}], [500], []),
        # the operator's own catch-all before main: main-domain traffic gets in
        ([{"priority": 100, "src": "all", "table": "100"}], [100], [100]),
        # narrowing by destination or mark is still main-domain traffic
        ([{"priority": 100, "src": "all", "dst": "198.51.100.0", "dstlen": 24, "table": "100"}],
         [100], [100]),
        ([{"priority": 100, "src": "all", "fwmark": "0x1", "table": "100"}], [100], [100]),
        # inverted selectors let nearly everything in
        ([{"priority": 100, "not": None, "src": "all", "iif": "v-a", "table": "100"}],
         [100], [100]),
        # after main: only what main has no route for
        ([{"priority": 32800, "src": "all", "table": "100"}], [32800], []),
        # host routes suppressed: instances stay out of reach
        ([{"priority": 100, "src": "all", "table": "100", "suppress_prefixlen": 32}], [100], []),
        ([{"priority": 100, "src": "all", "table": "100", "suppress_prefixlen": 31}],
         [100], [100]),
        # nothing leads into it
        ([{"priority": 100, "src": "all", "table": "200"}], [], []),
    ],
    ids=[
        "iif", "from", "catch-all", "to", "fwmark", "not-iif", "after-main",
        "suppress-32", "suppress-31", "other-table",
    ],
)  # fmt: skip
def test_analyze_table(
    extra: list[dict[str, Any]], entries: list[int], main_domain: list[int]
) -> None:
    reach = analyze_table(rules(*extra), 100)
    assert [r.priority for r in reach.entries] == entries
    assert [r.priority for r in reach.main_domain] == main_domain


def test_without_a_main_rule_any_unselected_rule_is_main_domain() -> None:
    parsed = parse_ip_rules(AF_INET, [{"priority": 40000, "src": "all", "table": "100"}])
    assert main_priority(parsed) is None
    assert [r.priority for r in analyze_table(parsed, 100).main_domain] == [40000]


def test_main_priority_follows_a_moved_main_rule() -> None:
    parsed = parse_ip_rules(
        AF_INET,
        [
            {"priority": 100, "src": "all", "iif": "x", "table": "254"},
            {"priority": 2000, "src": "all", "table": "254"},
            {"priority": 3000, "src": "all", "table": "100"},
        ],
    )
    assert main_priority(parsed) == 2000
    assert analyze_table(parsed, 100).main_domain == ()


def test_main_domain_warning_text() -> None:
    parsed = rules({"priority": 100, "src": "all", "table": "100"})
    assert main_domain_warnings(parsed, AF_INET, [254, 100, 200]) == [
        "table 100 (ipv4): the policy rule `-4 pref 100 from all lookup 100` has no iif/from "
        "selector and comes before main's rule, so main-domain traffic reaches this table's "
        "instances; give the rule an iif or from selector, or move it after 32766"
    ]


def test_intent_warnings_per_family() -> None:
    v6 = rules({"priority": 100, "src": "all", "table": "100"}, family=AF_INET6)
    v4 = rules()
    intent = parse_device(
        {
            "ipv4.address": "198.51.100.10",
            "ipv6.address": "2001:db8::10",
            "user.ipv4.host_tables": "100",
            "user.ipv6.host_tables": "100",
        }
    )
    got = intent_warnings({AF_INET: v4, AF_INET6: v6}, intent)
    assert len(got) == 1 and got[0].startswith("table 100 (ipv6): "), got
    no_v6 = parse_device({"ipv4.address": "198.51.100.10", "user.ipv6.host_tables": "100"})
    assert intent_warnings({AF_INET: v4, AF_INET6: v6}, no_v6) == []


@pytest.mark.parametrize(
    ("extra", "found"),
    [
        ([{"priority": 1100, "src": "all", "iif": "lo", "table": "1158", "protocol": "158"}],
         1100),
        ([], None),
        # after main it comes too late: main's routes win for the host's lookups
        ([{"priority": 32770, "src": "all", "iif": "lo", "table": "1158"}], None),
        ([{"priority": 1100, "src": "all", "iif": "eth0", "table": "1158"}], None),
        ([{"priority": 1100, "src": "all", "iif": "lo", "table": "100"}], None),
    ],
    ids=["present", "missing", "after-main", "wrong-iif", "wrong-table"],
)  # fmt: skip
def test_reverse_path_rule(extra: list[dict[str, Any]], found: int | None) -> None:
    rule = reverse_path_rule(rules(*extra), 1158)
    assert (rule.priority if rule is not None else None) == found
