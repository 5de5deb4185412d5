"""The tenant policy file and its pure evaluation (docs/policy.md)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from incus_host_tables.config import parse_device
from incus_host_tables.policy import (
    ActivePolicy,
    Policy,
    PolicyError,
    device_violations,
    load_policy,
    parse_policy,
)
from incus_host_tables.rttables import SystemTableNames

SOURCE = "/etc/incus-host-tables/policy.yaml"
NAMES = {"tenant-a": 101, "main": 254}.get

GOOD = """
projects:
  tenant-a:
    tables: [100, tenant-a]
    ipv4: [198.51.100.0/25]
    ipv6: [2001:db8:a::/48]
  tenant-b:
    tables: [200]
"""


def policy(text: str = GOOD) -> Policy:
    return parse_policy(text, SOURCE, NAMES)


def test_parse_resolves_names_and_keeps_what_was_written() -> None:
    pol = policy()
    a = pol.projects["tenant-a"]
    assert a.table_ids == {100, 101}
    assert a.describe_tables() == "projects.tenant-a.tables [100, tenant-a=101]"
    assert [str(n) for n in a.prefixes["ipv4"] or ()] == ["198.51.100.0/25"]
    assert pol.projects["tenant-b"].prefixes == {"ipv4": None, "ipv6": None}
    assert pol.allowed_tables("tenant-b") == {200}
    assert pol.allowed_tables("unlisted") == {254}


def test_a_listed_project_without_tables_gets_main_only() -> None:
    pol = policy("projects:\n  p:\n    ipv4: [198.51.100.0/24]\n")
    assert pol.allowed_tables("p") == {254}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("projects: [", "not valid YAML"),
        ("tenants: {}\n", "one mapping `projects:`"),
        ("projects: {}\nextra: 1\n", "one mapping `projects:`"),
        ("projects: [a]\n", "`projects` must map project names"),
        ("projects:\n  a: {tables: [100]}\n  a: {tables: [200]}\n", "'a' appears twice"),
        ("projects:\n  a: {tabels: [100]}\n", "projects.a.tabels: unknown key"),
        ("projects:\n  a: {tables: 100}\n", "projects.a.tables must be a list"),
        ("projects:\n  a: {tables: [0]}\n", "out of range 1-4294967295"),
        ("projects:\n  a: {tables: [4294967296]}\n", "out of range 1-4294967295"),
        ("projects:\n  a: {tables: ['0100']}\n", "leading zero"),
        ("projects:\n  a: {tables: [yes]}\n", "True is not a table ID or name"),
        ("projects:\n  a: {tables: [1.5]}\n", "1.5 is not a table ID or name"),
        ("projects:\n  a: {tables: [nosuch]}\n", "table name 'nosuch' is not defined"),
        ("projects:\n  a: {tables: [101, tenant-a]}\n", "tenant-a (101) is listed twice"),
        ("projects:\n  a: {ipv4: [198.51.100.1/24]}\n", "'198.51.100.1/24' is not a prefix"),
        ("projects:\n  a: {ipv4: ['2001:db8::/32']}\n", "is not an IPV4 prefix"),
        ("projects:\n  a: {ipv6: 2001:db8::/32}\n", "projects.a.ipv6 must be a list"),
        ("projects:\n  123: {}\n", "project name 123 must be a non-empty string"),
    ],
)
def test_bad_files_are_refused_naming_the_entry(text: str, message: str) -> None:
    with pytest.raises(PolicyError) as err:
        policy(text)
    assert message in str(err.value), str(err.value)
    assert str(err.value).startswith(f"policy {SOURCE}: ")


def test_every_problem_is_listed() -> None:
    with pytest.raises(PolicyError) as err:
        policy("projects:\n  a: {tables: [0], ipv4: [x]}\n  b: {colour: red}\n")
    assert len(err.value.problems) == 3, err.value.problems


def test_no_policy_means_no_restriction() -> None:
    config = {"ipv4.address": "203.0.113.9", "user.ipv4.host_tables": "200"}
    assert device_violations(None, "tenant-a", "eth0", config, parse_device(config)) == []


@pytest.mark.parametrize(
    ("project", "config", "expected"),
    [
        # within the entry
        ("tenant-a", {"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "100,101"}, []),
        ("tenant-b", {"ipv4.address": "203.0.113.9", "user.ipv4.host_tables": "200"}, []),
        # a family without addresses has no routes, whatever its tables
        (
            "tenant-a",
            {
                "ipv4.address": "198.51.100.10",
                "user.ipv4.host_tables": "100",
                "user.ipv6.host_tables": "200",
            },
            [],
        ),
        ("unlisted", {"ipv4.address": "203.0.113.9"}, []),
        (
            "tenant-a",
            {"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": "200"},
            [
                "device eth0 user.ipv4.host_tables='200': table 200 not allowed: project "
                "'tenant-a' may use only projects.tenant-a.tables [100, tenant-a=101] "
                f"({SOURCE})"
            ],
        ),
        (
            "tenant-a",
            {"ipv4.address": "198.51.100.10", "ipv4.host_table": "200"},
            [
                "device eth0 ipv4.host_table='200': table 200 not allowed: project "
                "'tenant-a' may use only projects.tenant-a.tables [100, tenant-a=101] "
                f"({SOURCE})"
            ],
        ),
        (
            "tenant-a",
            {"ipv4.address": "198.51.100.10"},
            [
                "device eth0 no ipv4 table key (routes go to main): table 254 not allowed: "
                "project 'tenant-a' may use only projects.tenant-a.tables [100, tenant-a=101] "
                f"({SOURCE})"
            ],
        ),
        (
            "tenant-x",
            {"ipv6.address": "2001:db8:a::1", "user.ipv6.host_tables": "254,100"},
            [
                "device eth0 user.ipv6.host_tables='254,100': table 100 not allowed: project "
                f"'tenant-x' is not listed in policy {SOURCE}, so it may use only table 254 "
                "(main)"
            ],
        ),
        (
            "tenant-a",
            {"ipv4.address": "198.51.100.10,198.51.100.200", "user.ipv4.host_tables": "100"},
            [
                "device eth0 ipv4.address='198.51.100.10,198.51.100.200': 198.51.100.200 "
                "outside projects.tenant-a.ipv4 [198.51.100.0/25] of project 'tenant-a' "
                f"({SOURCE})"
            ],
        ),
        (
            "tenant-a",
            {
                "ipv4.address": "198.51.100.10",
                "user.ipv4.host_tables": "100",
                "ipv4.routes": "198.51.100.64/26,198.51.100.0/24",
            },
            [
                "device eth0 ipv4.routes='198.51.100.64/26,198.51.100.0/24': 198.51.100.0/24 "
                "outside projects.tenant-a.ipv4 [198.51.100.0/25] of project 'tenant-a' "
                f"({SOURCE})"
            ],
        ),
        (
            "tenant-a",
            {"ipv6.address": "2001:db8:b::1", "user.ipv6.host_tables": "100"},
            [
                "device eth0 ipv6.address='2001:db8:b::1': 2001:db8:b::1 outside "
                f"projects.tenant-a.ipv6 [2001:db8:a::/48] of project 'tenant-a' ({SOURCE})"
            ],
        ),
    ],
    ids=[
        "inside",
        "no-prefix-list",
        "family-without-addresses",
        "unlisted-main",
        "other-tenants-table",
        "legacy-key",
        "main-not-listed",
        "unlisted-project",
        "address-outside",
        "route-outside",
        "ipv6-outside",
    ],
)
def test_violations(project: str, config: dict[str, str], expected: list[str]) -> None:
    got = device_violations(policy(), project, "eth0", config, parse_device(config))
    assert got == expected


def test_vrf_is_refused_under_a_policy() -> None:
    config = {"ipv4.address": "198.51.100.10", "vrf": "vrf-a"}
    got = device_violations(policy(), "tenant-a", "eth0", config, parse_device(config))
    assert len(got) == 1 and "vrf='vrf-a'" in got[0] and "cannot be checked" in got[0], got


def test_load_policy_missing_file_is_no_restriction(tmp_path: Path) -> None:
    assert load_policy(str(tmp_path / "absent.yaml")) is None


def test_load_policy_unreadable_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as err:
        load_policy(str(tmp_path))  # a directory
    assert "cannot read it" in str(err.value)


def test_active_policy_keeps_the_last_good_one(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("projects:\n  a: {tables: [100]}\n")
    active = ActivePolicy()
    active.use(str(path))
    first = active.current()
    assert first is not None and first.allowed_tables("a") == {100}
    path.write_text("projects: [")
    with pytest.raises(PolicyError):
        active.load()
    assert active.error is not None and "not valid YAML" in active.error
    assert active.current() is first
    path.write_text("projects:\n  a: {tables: [200]}\n")
    assert active.load() is not None and active.error is None
    assert active.current() is not None and active.current().allowed_tables("a") == {200}  # type: ignore[union-attr]


def test_active_policy_refuses_everything_when_never_loaded(tmp_path: Path) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("projects: {a: {tables: [0]}}\n")
    active = ActivePolicy()
    active.use(str(path))
    config = {"ipv4.address": "198.51.100.10"}
    got = active.violations("a", "eth0", config, parse_device(config))
    assert len(got) == 1 and "refusing every routed NIC" in got[0], got


def test_policy_path_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    active = ActivePolicy()
    monkeypatch.setenv("INCUS_HOST_TABLES_POLICY", "/x/p.yaml")
    assert active.path == "/x/p.yaml"
    active.use("/y/q.yaml")
    assert active.path == "/y/q.yaml"
    monkeypatch.delenv("INCUS_HOST_TABLES_POLICY")
    active.use(None)
    assert active.path == "/etc/incus-host-tables/policy.yaml"
    assert os.path.isabs(active.path)


def test_policy_tables_take_the_hosts_iproute2_names(tmp_path: Path) -> None:
    # The same reader as the device keys (rttables.py): a name the host's
    # rt_tables defines is its ID in the policy.
    etc, usr = tmp_path / "etc", tmp_path / "usr"
    etc.mkdir()
    usr.mkdir()
    (etc / "rt_tables").write_text("101 tenant-a\n")
    names = SystemTableNames(str(etc), str(usr)).id_of
    pol = parse_policy("projects:\n  p: {tables: [tenant-a, 100]}\n", SOURCE, names)
    assert pol.allowed_tables("p") == {100, 101}
    with pytest.raises(PolicyError) as err:
        parse_policy("projects:\n  p: {tables: [tenant-z]}\n", SOURCE, names)
    assert any("tenant-z" in p for p in err.value.problems), err.value.problems
