"""`incus-host-tables device plan|apply|cleanup`, run for real inside a
namespace: exit codes, messages, and what reaches the kernel."""

from __future__ import annotations

import shutil

import pytest

from lab.netns import NetNS

from .helpers import cli_argv, incus_routes, run_cli

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"
CONFIG = {
    "ipv4.address": V4,
    "ipv6.address": V6,
    "user.ipv4.host_tables": "100,200",
    "user.ipv6.host_tables": "100,200",
}
PLAN = [
    "+ rule -4 pref 1100 iif lo lookup 1158",
    "+ rule -6 pref 1100 iif lo lookup 1158",
    f"+ route {V4}/32 dev vh0 table 200",
    f"+ route {V4}/32 dev vh0 table 1158",
    f"+ route {V6}/128 dev vh0 table 200",
    f"+ route {V6}/128 dev vh0 table 1158",
    f"~ route {V4}/32 dev vh0 table 100 (adopt: protocol 3 -> incus-host-tables)",
    f"~ route {V6}/128 dev vh0 table 100 (adopt: protocol 3 -> incus-host-tables)",
    f"- route {V4}/32 dev vh0 table 254",
    f"- route {V6}/128 dev vh0 table 254",
]


@pytest.fixture
def started(host: NetNS) -> NetNS:
    incus_routes(host, "vh0", [V4], [V6], table=100)
    return host


def test_invalid_config_exits_1_lists_every_problem_and_changes_nothing(
    started: NetNS,
) -> None:
    before = started.state()
    bad = {
        "ipv4.address": "198.51.100.300",
        "user.ipv4.host_tables": "100,0",
        "ipv6.host_table": "255",
        "ipv6.routes": "2001:db8:99::/48",
    }

    proc = run_cli(started, "apply", "vh0", bad)

    assert proc.returncode == 1
    errors = proc.stderr.splitlines()
    assert len(errors) == 4, proc.stderr
    assert all(line.startswith("error: ") for line in errors)
    for needle in (
        "ipv4.address='198.51.100.300'",
        "user.ipv4.host_tables='100,0'",
        "ipv6.host_table='255'",
        "ipv6.routes='2001:db8:99::/48' needs ipv6.address",
    ):
        assert any(needle in line for line in errors), (needle, proc.stderr)
    assert proc.stdout == ""
    assert started.state() == before


def test_table_out_of_range_is_invalid(started: NetNS) -> None:
    before = started.state()
    proc = run_cli(started, "apply", "vh0", {**CONFIG, "ipv4.host_tables": "100,300"})
    assert proc.returncode == 1
    assert "ipv4.host_tables='100,300': table '300' is out of range 0-255" in proc.stderr
    assert started.state() == before


def test_missing_interface_exits_5(started: NetNS) -> None:
    before = started.state()
    for action in ("plan", "apply"):
        proc = run_cli(started, action, "vnothere0", CONFIG)
        assert proc.returncode == 5, proc.stderr
        assert proc.stderr.strip() == "error: host interface 'vnothere0' does not exist"
    assert started.state() == before


def test_key_given_twice_is_a_usage_error(started: NetNS) -> None:
    before = started.state()
    proc = run_cli(started, "apply", "vh0", [f"ipv4.address={V4}", "ipv4.address=198.51.100.11"])
    assert proc.returncode == 2
    assert proc.stderr == "error: ipv4.address given twice\n"
    assert started.state() == before


def test_plan_prints_the_changes_and_changes_nothing(started: NetNS) -> None:
    before = started.state()

    proc = run_cli(started, "plan", "vh0", CONFIG)

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == PLAN
    assert started.state() == before


def test_apply_prints_what_it_did_then_plan_says_no_changes(started: NetNS) -> None:
    applied = run_cli(started, "apply", "vh0", CONFIG)
    assert applied.returncode == 0, applied.stderr
    assert applied.stdout.splitlines() == PLAN
    after = started.state()
    assert f"{V4} dev vh0 table 200 proto 158 scope link" in started.route_lines()

    plan = run_cli(started, "plan", "vh0", CONFIG)
    assert plan.returncode == 0
    assert plan.stdout == "no changes\n"
    again = run_cli(started, "apply", "vh0", CONFIG)
    assert again.returncode == 0
    assert again.stdout == ""
    assert started.state() == after


def test_cleanup_removes_routes_and_rules_of_the_device(host: NetNS) -> None:
    baseline = host.state()
    incus_routes(host, "vh0", [V4], [V6], table=100)
    assert run_cli(host, "apply", "vh0", CONFIG).returncode == 0

    proc = run_cli(host, "cleanup", "vh0", CONFIG)

    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(
        [f"- route {V4}/32 dev vh0 table {t}" for t in (100, 200, 1158)]
        + [f"- route {V6}/128 dev vh0 table {t}" for t in (100, 200, 1158)]
        + ["- rule -4 pref 1100 iif lo lookup 1158", "- rule -6 pref 1100 iif lo lookup 1158"]
    )
    assert host.state() == baseline


def test_deprecated_key_beside_the_new_one_warns_and_is_ignored(started: NetNS) -> None:
    config = {**CONFIG, "ipv4.host_table": "200", "user.ipv4.host_tables": "100"}
    proc = run_cli(started, "apply", "vh0", config)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.startswith("warning: ipv4.host_table='200' is deprecated and ignored")
    assert sorted(line for line in started.route_lines() if V4 in line) == [
        f"{V4} dev vh0 table 100 proto 158 scope link",
        f"{V4} dev vh0 table 1158 proto 158 scope link",
    ]


def test_rule_priority_option(started: NetNS) -> None:
    proc = run_cli(started, "apply", "vh0", CONFIG, "--rule-priority", "900")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in started.rule_lines() if "proto 158" in line] == [
        "900:\tfrom all iif lo lookup 1158 proto 158"
    ]
    bad = run_cli(started, "apply", "vh0", CONFIG, "--rule-priority", "32766")
    assert bad.returncode == 2
    assert "--rule-priority '32766' is out of range 1-32765" in bad.stderr


def test_rp_table_option(started: NetNS) -> None:
    proc = run_cli(started, "apply", "vh0", CONFIG, "--rp-table", "3000")
    assert proc.returncode == 0, proc.stderr
    assert [line for line in started.rule_lines() if "proto 158" in line] == [
        "1100:\tfrom all iif lo lookup 3000 proto 158"
    ]
    assert f"{V4} dev vh0 table 3000 proto 158 scope link" in started.route_lines()
    before = started.state()
    bad = run_cli(started, "apply", "vh0", CONFIG, "--rp-table", "254")
    assert bad.returncode == 2
    assert "--rp-table '254' is one of the kernel's own tables" in bad.stderr
    assert started.state() == before


def test_without_cap_net_admin_apply_is_an_environment_error(started: NetNS) -> None:
    """No permission is exit 5 ("interface missing, no permission, Incus
    unreachable"), not 3 ("the kernel refused a change")."""
    assert shutil.which("setpriv"), "needs setpriv (util-linux, part of every Debian)"
    before = started.state()
    no_admin = ("setpriv", "--bounding-set=-net_admin", "--inh-caps=-net_admin")

    plan = started.run(*no_admin, *cli_argv("plan", "vh0", CONFIG), check=False)
    applied = started.run(*no_admin, *cli_argv("apply", "vh0", CONFIG), check=False)

    assert plan.returncode == 0, plan.stderr  # reading needs no privilege
    assert plan.stdout.splitlines() == PLAN
    assert "Operation not permitted" in applied.stderr
    assert started.state() == before
    assert applied.returncode == 5, applied.stderr
