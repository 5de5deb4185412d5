"""doctor's judging of host facts (pure): levels, messages, exit codes."""

from __future__ import annotations

from types import MappingProxyType

from incus_host_tables.doctor import (
    Check,
    DoctorExit,
    HostFacts,
    InstanceFacts,
    Level,
    RouteLookup,
    check_daemon,
    check_forwarding,
    check_hooks,
    check_incus,
    check_policy,
    check_reverse_path,
    check_routing_managers,
    check_tables,
    exit_code,
    render,
    routing_managers,
)
from incus_host_tables.incus import InstanceSnapshot, NicSnapshot
from incus_host_tables.model import AF_INET, AF_INET6
from incus_host_tables.policy import parse_policy
from incus_host_tables.rulecheck import parse_ip_rules

HOOKS = "lxc.hook.start-host = /usr/bin/python3 -I -S /x/incus_host_tables/hookclient.py\n"
STANDARD = [
    {"priority": 0, "src": "all", "table": "255"},
    {"priority": 32766, "src": "all", "table": "254"},
]
RP = {"priority": 1100, "src": "all", "iif": "lo", "table": "1158", "protocol": "158"}
CLIENT = {"priority": 32765, "src": "all", "iif": "v-c", "table": "100"}


def instance(
    tables: str = "100",
    *,
    raw: str = HOOKS,
    own: str = "",
    kind: str = "container",
    project: str = "default",
) -> InstanceFacts:
    nic = NicSnapshot(
        "eth0",
        MappingProxyType({"ipv4.address": "198.51.100.10", "user.ipv4.host_tables": tables}),
        "vethA",
    )
    snap = InstanceSnapshot(project, "c1", kind, "Running", "none", (nic,))
    return InstanceFacts(snap, own, raw)


def facts(*extra_rules: dict[str, object], **kwargs: object) -> HostFacts:
    f = HostFacts(
        forwarding={AF_INET: "1", AF_INET6: "1"},
        server={"environment": {"server": "incus", "server_version": "6.0.4"}},
        instances=[instance()],
        rules={
            AF_INET: parse_ip_rules(
                AF_INET, sorted([*STANDARD, *extra_rules], key=lambda d: int(str(d["priority"])))
            ),
            AF_INET6: parse_ip_rules(AF_INET6, STANDARD),
        },
        lookups=[RouteLookup(AF_INET, "198.51.100.10", "vethA", "vethA", "default/c1 eth0")],
    )
    for key, value in kwargs.items():
        setattr(f, key, value)
    return f


def levels(checks: list[Check]) -> list[Level]:
    return [c.level for c in checks]


def test_forwarding_off_fails_for_a_used_family_and_warns_otherwise() -> None:
    checks = check_forwarding(facts(forwarding={AF_INET: "0", AF_INET6: "0"}))
    assert levels(checks) == [Level.FAIL, Level.WARN]
    assert "net.ipv4.ip_forward=0" in checks[0].message
    assert checks[0].action.startswith("sysctl -w net.ipv4.ip_forward=1")


def test_incus_version_and_native_keys() -> None:
    (old,) = check_incus(facts())
    assert old.level is Level.OK and "incus 6.0.4" in old.message
    assert "no native ipv4/ipv6.host_tables" in old.message
    new = facts()
    new.server = {
        "environment": {"server": "incus", "server_version": "6.13"},
        "api_extensions": ["instance_nic_routed_host_tables"],
    }
    assert "native ipv4/ipv6.host_tables supported" in check_incus(new)[0].message
    (down,) = check_incus(facts(server=None, incus_error="no socket"))
    assert down.level is Level.FAIL and "no socket" in down.message


def test_hooks_missing_because_own_raw_lxc_replaces_the_profiles() -> None:
    f = facts(instances=[instance(raw="lxc.mount.auto = proc\n", own="lxc.mount.auto = proc\n")])
    f.daemon_error = "no daemon"
    (check,) = check_hooks(f)
    assert check.level is Level.FAIL
    assert "its own raw.lxc replaces its profiles' raw.lxc" in check.message
    f.daemon_error = None
    assert levels(check_hooks(f)) == [Level.WARN]
    assert levels(check_hooks(facts())) == [Level.OK]


def test_vm_needs_the_daemon() -> None:
    f = facts(instances=[instance(kind="virtual-machine", raw="")], daemon_error="refused")
    assert levels(check_hooks(f)) == [Level.FAIL]
    assert levels(check_daemon(f)) == [Level.WARN]


def test_tables_ok_warn_and_unentered() -> None:
    (ok,) = check_tables(facts(RP, CLIENT))
    assert ok.level is Level.OK and "iif v-c lookup 100" in ok.message
    foreign = {"priority": 200, "src": "all", "table": "100"}
    (warn,) = check_tables(facts(RP, CLIENT, foreign))
    assert warn.level is Level.WARN
    assert "`-4 pref 200 from all lookup 100`" in warn.message
    assert "move it after 32766" in warn.action
    (lonely,) = check_tables(facts(RP))
    assert lonely.level is Level.WARN and "no policy rule leads into it" in lonely.message


def test_reverse_path_rule_and_lookups() -> None:
    (ok,) = check_reverse_path(facts(RP, CLIENT))
    assert ok.level is Level.OK and "iif lo lookup 1158" in ok.message
    (missing,) = check_reverse_path(facts(CLIENT))
    assert missing.level is Level.FAIL
    assert "no `iif lo lookup 1158` rule before main's rule (32766)" in missing.message
    lost = facts(RP, CLIENT)
    lost.lookups = [RouteLookup(AF_INET, "198.51.100.10", "vethA", None, "default/c1 eth0")]
    (bad,) = check_reverse_path(lost)
    assert bad.level is Level.FAIL and "goes to no route, not vethA" in bad.message


def test_routing_managers() -> None:
    found = routing_managers({"systemd-network", "bash"}, {})
    assert [m.flushes for m in found] == [True]
    assert routing_managers({"systemd-network"}, {
        "ManageForeignRoutes": "no", "ManageForeignRoutingPolicyRules": "no"
    })[0].flushes is False  # fmt: skip
    (warn,) = check_routing_managers(facts(managers=found))
    assert warn.level is Level.WARN and "ManageForeignRoutes=no" in warn.action
    assert levels(check_routing_managers(facts())) == [Level.OK]
    assert [m.name for m in routing_managers({"NetworkManager"}, {})] == ["NetworkManager"]


def test_policy_states() -> None:
    assert levels(check_policy(facts(policy_path="/p.yaml"))) == [Level.OK]
    bad = check_policy(facts(policy_path="/p.yaml", policy_error="policy /p.yaml: not valid"))
    assert levels(bad) == [Level.FAIL] and "validate --policy /p.yaml" in bad[0].action
    pol = parse_policy("projects:\n  default: {tables: [200]}\n", "/p.yaml")
    (viol,) = check_policy(facts(policy_path="/p.yaml", policy=pol))
    assert viol.level is Level.FAIL and "1 violation(s)" in viol.message
    loose = check_policy(facts(policy_path="/p.yaml", policy_loose_mode="mode 666"))
    assert levels(loose) == [Level.OK, Level.WARN]


def test_exit_codes_and_rendering() -> None:
    ok = Check("a", Level.OK, "fine")
    warn = Check("b", Level.WARN, "hm", "do x")
    fail = Check("c", Level.FAIL, "bad", "do y")
    assert exit_code([ok]) is DoctorExit.OK
    assert exit_code([ok, warn]) is DoctorExit.WARNINGS
    assert exit_code([warn, fail]) is DoctorExit.FAILURES
    assert render([ok, warn], "table").splitlines() == ["ok    a  fine", "warn  b  hm -> do x"]
    assert '"level": "warn"' in render([warn], "json")


def test_hook_line_with_another_rp_table_warns() -> None:
    line = "lxc.hook.start-host = /usr/libexec/incus-host-tables/hook --rp-table 2158\n"
    f = facts(instances=[instance(raw=line)])
    (check,) = check_hooks(f)
    assert check.level is Level.WARN, check
    assert "names reverse-path table 2158 and this host uses 1158" in check.message
    assert check.action.startswith("incus-host-tables --rp-table 1158 enable")
    f.rp_table = 2158
    assert levels(check_hooks(f)) == [Level.OK]
