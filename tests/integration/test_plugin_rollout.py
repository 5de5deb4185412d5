"""Rolling the plugin out on a host that already runs instances: the
whole-host preview (`reconcile --all-projects --dry-run`) prints exactly
what enabling it then changes, and nothing else changes. Then the check
(`status --check`) and the list formats, on the same instances.

Instances as an operator has them before the plugin: one with the legacy
`ipv4.host_table=1001` (Incus put its routes in 1001 and main), one with no
table keys at all, and one with a near-miss key (`user.ipv4.host_table`)."""

from __future__ import annotations

import csv
import io
import json
import re
from typing import TYPE_CHECKING, Any

import pytest
import yaml
from plugin_checks import routed_nic

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration

PROTO = "158"


Route = tuple[str, str, str, str, str]  # family, table, dst, dev, protocol
Rule = tuple[str, str, str, str, str, str]  # family, pref, iif, dst, table, suppress


def kernel_state(plug: PluginLab) -> tuple[set[Route], set[Rule]]:
    """Every route of every table and every rule of H, numerically."""
    routes: set[Route] = set()
    rules: set[Rule] = set()
    for fam in ("4", "6"):
        out = plug.lab.ns_run("ip", "-N", "-j", f"-{fam}", "route", "show", "table", "all").stdout
        for r in json.loads(out or "[]"):
            dst = str(r.get("dst"))
            routes.add(
                (fam, str(r.get("table", "254")), dst, str(r.get("dev")), str(r.get("protocol")))
            )
        out = plug.lab.ns_run("ip", "-N", "-j", f"-{fam}", "rule", "show").stdout
        for r in json.loads(out or "[]"):
            dst = str(r.get("dst", "all"))
            if "dstlen" in r:
                dst = f"{dst}/{r['dstlen']}"
            rules.add(
                (
                    fam,
                    str(r.get("priority")),
                    str(r.get("iif", "")),
                    dst,
                    str(r.get("table")),
                    str(r.get("suppress_prefixlen", "")),
                )
            )
    return routes, rules


def sym_diff(a: tuple[set[Route], set[Rule]], b: tuple[set[Route], set[Rule]]) -> dict[str, object]:
    return {
        "routes only before": a[0] - b[0],
        "routes only after": b[0] - a[0],
        "rules only before": a[1] - b[1],
        "rules only after": b[1] - a[1],
    }


def settled_state(plug: PluginLab) -> tuple[set[Route], set[Rule]]:
    """The kernel state once freshly started instances' IPv6 link-local
    set-up is over (the kernel's own local routes come with it): no tentative
    address left, then two equal reads in a row."""

    def no_tentative() -> bool:
        return "tentative" not in plug.lab.ns_run("ip", "-6", "addr", "show").stdout

    assert plug.until(no_tentative, 10.0)
    states = [kernel_state(plug)]

    def settled() -> bool:
        states.append(kernel_state(plug))
        return states[-1] == states[-2]

    assert plug.until(settled, 10.0), sym_diff(states[-2], states[-1])
    return states[-1]


_ROUTE_LINE = re.compile(r"([-+~]) route (\S+) (?:via \S+ )?dev (\S+) table (\d+)")
_RULE_LINE = re.compile(r"([-+]) rule -([46]) pref (\d+) (.*)")


def _host(dst: str) -> str:
    return dst.removesuffix("/32").removesuffix("/128")


def apply_preview(
    preview: str, routes: set[Route], rules: set[Rule]
) -> tuple[set[Route], set[Rule]]:
    """The kernel state that the preview's lines promise, from ``routes``
    and ``rules`` (every line must be understood)."""
    routes, rules = set(routes), set(rules)
    for line in preview.splitlines():
        text = line.split(": ", 1)[1] if ": " in line else line
        text = text.removeprefix("isolate: ")
        if m := _ROUTE_LINE.match(text):
            sign, dst, dev, table = m.groups()
            fam, dst = ("6" if ":" in dst else "4"), _host(dst)
            mine = {r for r in routes if r[:4] == (fam, table, dst, dev)}
            if sign == "+":
                routes.add((fam, table, dst, dev, PROTO))
                continue
            assert mine, f"preview removes or adopts a route the kernel lacks: {line}"
            routes -= mine
            if sign == "~":
                routes.add((fam, table, dst, dev, PROTO))
        elif m := _RULE_LINE.match(text):
            sign, fam, pref, rest = m.groups()
            words = dict(zip(rest.split()[::2], rest.split()[1::2], strict=False))
            rule = (
                fam,
                pref,
                words.get("iif", ""),
                words.get("to", "all"),
                words["lookup"],
                words.get("suppress_prefixlength", ""),
            )
            if sign == "+":
                rules.add(rule)
            else:
                assert rule in rules, f"preview removes a rule the kernel lacks: {line}"
                rules.discard(rule)
        else:
            raise AssertionError(f"preview line not understood: {line!r}")
    return routes, rules


def test_preview_then_enable_changes_exactly_the_preview(plug: PluginLab) -> None:
    legacy, plain, near = "roll-legacy", "roll-plain", "roll-near"
    plug.launch(legacy, devices={"eth0": routed_nic(181, {"ipv4.host_table": "1001"})})
    # a second instance in table 1001: the rule they share shows once
    plug.launch("roll-legacy2", devices={"eth0": routed_nic(186, {"ipv4.host_table": "1001"})})
    # an invalid config (the RP table chosen): enabling isolates it
    bad = "roll-bad"
    plug.launch(bad, devices={"eth0": routed_nic(187, {"user.ipv4.host_tables": "1158"})})
    plug.launch(plain, devices={"eth0": routed_nic(182)})
    plug.launch(near, devices={"eth0": routed_nic(183, {"user.ipv4.host_table": "100"})})
    # Incus alone: the legacy table and main, the others in main.
    assert plug.tables("198.51.100.181") == {"1001", "main"}
    assert plug.tables("198.51.100.182") == {"main"}
    before = settled_state(plug)

    preview = plug.cli("reconcile", "--all-projects", "--dry-run")
    print(
        f"$ incus-host-tables reconcile --all-projects --dry-run\n{preview.stdout}{preview.stderr}"
    )

    assert preview.returncode == 1, preview.stderr  # the invalid instance
    after_preview = kernel_state(plug)
    assert after_preview == before, (
        f"the preview changed the kernel: {sym_diff(before, after_preview)}"
    )
    legacy_if = plug.host_name(legacy)
    assert (
        f"default/{legacy} eth0: - route 198.51.100.181/32 dev {legacy_if} table 254"
        in preview.stdout.splitlines()
    )
    assert "user.ipv4.host_table='100' is not a key incus-host-tables reads" in preview.stderr
    bad_if = plug.host_name(bad)
    assert f"error: default/{bad}: invalid configuration: device eth0: " in preview.stderr
    assert [line for line in preview.stdout.splitlines() if bad in line] == [
        f"default/{bad} eth0: isolate: - route 198.51.100.187/32 dev {bad_if} table 254",
        f"default/{bad} eth0: isolate: - route 2001:db8:187::1/128 dev {bad_if} table 254",
    ]
    rule_lines = [line for line in preview.stdout.splitlines() if "+ rule" in line]
    assert rule_lines == [f"default/{legacy} eth0: + rule -4 pref 1100 iif lo lookup 1158"]
    expected = apply_preview(preview.stdout, *before)

    enable = plug.cli("reconcile", "--all-projects")

    assert enable.returncode == 1, enable.stderr  # the invalid instance, isolated
    # What it prints is what the preview printed, isolation included.
    assert enable.stdout.splitlines() == preview.stdout.splitlines()
    after = kernel_state(plug)
    assert after == expected, sym_diff(expected, after)
    assert plug.tables("198.51.100.181") == {"1001"}
    assert plug.tables("2001:db8:181::1") == {"main"}
    assert plug.tables("198.51.100.182") == {"main"}
    assert plug.tables("198.51.100.187") == set()  # isolated
    again = plug.cli("reconcile", "--all-projects", "--dry-run")
    assert again.stdout == "no changes\n", again.stdout
    plug.lab.incus("delete", "--force", bad)

    # status --check: the near-miss key is a warning, so not all is fine...
    check = plug.cli("status", "--check")
    assert check.returncode == 1, check.stdout
    assert f"default/{near} eth0: warning: user.ipv4.host_table='100'" in check.stdout
    # ...the other two are
    check = plug.cli("status", legacy, plain, "--check")
    assert check.returncode == 0, check.stdout + check.stderr
    assert "1001" in check.stdout
    # drift (a route Incus would add back by hand) makes the check fail
    plug.lab.ns_run("ip", "route", "add", "198.51.100.181", "dev", legacy_if, "proto", "boot")
    check = plug.cli("status", legacy, plain, "--check")
    assert check.returncode == 1 and " drift" in check.stdout, check.stdout
    assert plug.cli("apply", legacy).returncode == 0


def test_list_formats(plug: PluginLab) -> None:
    one, two = "fmt-one", "fmt-two"
    plug.launch(one, devices={"eth0": routed_nic(184, {"user.ipv4.host_tables": "1001"})})
    plug.launch(two, devices={"eth0": routed_nic(185, {"user.IPv4.host_tables": "100"})})
    assert plug.cli("apply", one).returncode == 0
    assert plug.cli("apply", two).returncode == 0

    records: dict[str, list[dict[str, Any]]] = {}
    for fmt in ("json", "yaml", "csv"):
        out = plug.cli("status", one, two, "--format", fmt)
        assert out.returncode == 0, out.stderr
        if fmt == "json":
            records[fmt] = json.loads(out.stdout)
        elif fmt == "yaml":
            records[fmt] = yaml.safe_load(out.stdout)
        else:
            records[fmt] = list(csv.DictReader(io.StringIO(out.stdout)))
    assert records["json"] == records["yaml"]
    by_instance = {(r["instance"], r["family"]): r for r in records["csv"]}
    assert by_instance[(f"default/{one}", "ipv4")]["tables"] == "1001"
    assert by_instance[(f"default/{one}", "ipv4")]["state"] == "ok"
    assert "user.IPv4.host_tables" in by_instance[(f"default/{two}", "ipv4")]["warnings"]

    validate = plug.cli("validate", one, two, "--format", "json")
    assert validate.returncode == 0, validate.stderr
    assert json.loads(validate.stdout) == [
        {
            "instance": f"default/{two}",
            "device": "eth0",
            "kind": "warning",
            "text": "user.IPv4.host_tables='100' is not a key incus-host-tables reads and "
            "is ignored; did you mean user.ipv4.host_tables?",
        }
    ]
    plug.lab.incus("config", "device", "set", one, "eth0", "user.ipv4.host_tables=1001,100")
    plan = plug.cli("plan", one, two, "--format", "csv")
    assert plan.returncode == 0, plan.stderr
    rows = list(csv.DictReader(io.StringIO(plan.stdout)))
    assert {r["kind"] for r in rows} == {"change", "warning"}
    assert any(r["instance"] == f"default/{one}" and "table 100" in r["text"] for r in rows)
