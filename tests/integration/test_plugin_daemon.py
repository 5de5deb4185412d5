"""The plugin's daemon (`incus-host-tables watch`) against a real incusd:
instance start / stop / restart, live device changes, the table keys,
several addresses and routes, profiles and projects, and a daemon that was
away while instances changed."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING

import pytest
from plugin_checks import converged

from lab import IncusLab
from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration

CONVERGE = 5.0  # seconds the daemon gets to act on an event


def routed(addr4: str, addr6: str | None = None, **keys: str) -> dict[str, str]:
    nic = {"type": "nic", "nictype": "routed", "name": "eth0", "ipv4.address": addr4}
    if addr6:
        nic["ipv6.address"] = addr6
    nic.update({k.replace("_", "."): v for k, v in keys.items()})
    return nic


def host_tables(v4: str, v6: str | None = None) -> dict[str, str]:
    keys = {"user.ipv4.host_tables": v4}
    if v6 is not None:
        keys["user.ipv6.host_tables"] = v6
    return keys


def assert_converged(plug: PluginLab, want: Mapping[str, set[str]]) -> None:
    assert plug.until(lambda: converged(plug, want), CONVERGE), {a: plug.entries(a) for a in want}


def test_start_stop_restart(plug: PluginLab, daemon: PluginDaemon) -> None:
    a4, a6 = "198.51.100.101", "2001:db8:101::1"
    nic = routed(a4, a6) | host_tables("100,200", "100,200")
    plug.launch("dss1", devices={"eth0": nic})
    want = {a4: {"100", "200"}, a6: {"100", "200"}}
    rules = plug.RP_RULES
    assert_converged(plug, want)
    assert plug.until(lambda: plug.rules() == rules, CONVERGE), plug.rules()

    plug.lab.incus("stop", "--force", "dss1")
    assert plug.until(lambda: plug.rules() == set(), CONVERGE), plug.rules()
    assert plug.entries(a4) == [] and plug.entries(a6) == []

    plug.lab.incus("start", "dss1")
    assert_converged(plug, want)
    assert plug.until(lambda: plug.rules() == rules, CONVERGE), plug.rules()
    plug.lab.incus("restart", "--force", "dss1")
    assert_converged(plug, want)
    assert plug.until(lambda: plug.rules() == rules, CONVERGE), plug.rules()
    assert {e["dev"] for e in plug.entries(a4)} == {plug.host_name("dss1")}


def test_live_change_moves_routes_and_drops_old_rules(
    plug: PluginLab, daemon: PluginDaemon
) -> None:
    a4, a6 = "198.51.100.102", "2001:db8:102::1"
    nic = routed(a4, a6) | host_tables("100,200", "100,200")
    plug.launch("dlive1", devices={"eth0": nic})
    assert_converged(plug, {a4: {"100", "200"}, a6: {"100", "200"}})
    old_if = plug.host_name("dlive1")

    plug.lab.incus(
        "config",
        "device",
        "set",
        "dlive1",
        "eth0",
        "user.ipv4.host_tables=150",
        "user.ipv6.host_tables=150",
    )
    assert_converged(plug, {a4: {"150"}, a6: {"150"}})
    rules = plug.RP_RULES
    assert plug.until(lambda: plug.rules() == rules, CONVERGE), plug.rules()
    new_if = plug.host_name("dlive1")
    assert {e["dev"] for e in plug.entries(a4)} == {new_if}
    # Incus 6.0.4 re-created the device; nothing may be left on the old one.
    if new_if != old_if:
        out = plug.lab.ns_run("ip", "link", "show", old_if, check=False)
        assert out.returncode != 0, "old host interface still exists"

    # Packets: Incus 6.0.4 leaves the re-created eth0 down until a restart.
    client = plug.client("dlc150", table=150, v4="198.18.2.2/28", v6="2001:db8:f150::2/64")
    plug.lab.incus("restart", "--force", "dlive1")
    assert_converged(plug, {a4: {"150"}, a6: {"150"}})
    assert client.ping_within(a4, 5)
    assert client.ping_within(a6, 5)


@pytest.mark.parametrize(
    ("name", "keys", "tables", "rp_rule"),
    [
        (
            "dlegacy",
            {"ipv4.host_table": "100", "ipv6.host_table": "100"},
            {"100"},
            True,
        ),
        ("ddefault", {}, {"main"}, False),
        (
            "dmain100",
            host_tables("254,100", "254,100"),
            {"main", "100"},
            True,
        ),
    ],
)
def test_table_keys(
    plug: PluginLab,
    daemon: PluginDaemon,
    name: str,
    keys: dict[str, str],
    tables: set[str],
    rp_rule: bool,
) -> None:
    n = {"dlegacy": 111, "ddefault": 112, "dmain100": 113}[name]
    a4, a6 = f"198.51.100.{n}", f"2001:db8:{n}::1"
    plug.launch(name, devices={"eth0": routed(a4, a6) | keys})
    assert_converged(plug, {a4: tables, a6: tables})
    # A table other than main: a reverse-path copy and rule per family.
    rules = plug.RP_RULES if rp_rule else set()
    assert plug.until(lambda: plug.rules() == rules, CONVERGE), plug.rules()
    assert len(plug.rp_entries(a4)) == len(plug.rp_entries(a6)) == int(rp_rule)


def test_several_addresses_and_routes(plug: PluginLab, daemon: PluginDaemon) -> None:
    nic = routed("198.51.100.121,198.51.100.122") | host_tables("100,200")
    nic["ipv4.routes"] = "203.0.113.64/26"
    plug.launch("dmulti", devices={"eth0": nic})
    want = {"198.51.100.121": {"100", "200"}, "198.51.100.122": {"100", "200"}}
    assert_converged(plug, want)

    def routes() -> list[dict[str, object]]:
        out = plug.lab.ns_run("ip", "-j", "-4", "route", "show", "table", "all").stdout
        found = [r for r in json.loads(out or "[]") if r.get("dst") == "203.0.113.64/26"]
        for r in found:
            r.setdefault("table", "main")
        return found

    def ok() -> bool:
        found = routes()
        return {r["table"] for r in found} == {"100", "200", plug.RP_TABLE} and all(
            r.get("gateway") == "198.51.100.121" for r in found
        )

    assert plug.until(ok, CONVERGE), routes()


def test_profile_nic_and_projects(plug: PluginLab, daemon: PluginDaemon, lab: IncusLab) -> None:
    profile, project = "ihtdprof", "ihtdpa"
    lab.incus("profile", "create", profile)
    plug.defer(lambda: lab.incus("profile", "delete", profile, check=False))
    nic = routed("198.51.100.131", "2001:db8:131::1") | host_tables("100", "100")
    lab.incus(
        "profile",
        "device",
        "add",
        profile,
        "eth0",
        "nic",
        *(f"{k}={v}" for k, v in nic.items() if k != "type"),
    )
    lab.create_project(project)
    plug.defer(lambda: lab.incus("project", "delete", project, check=False))
    plug.launch("dprof", profiles=["default", profile])
    nic2 = routed("198.51.100.132", "2001:db8:132::1") | host_tables("200", "200")
    plug.launch("dproj", project=project, devices={"eth0": nic2})
    assert_converged(
        plug,
        {
            "198.51.100.131": {"100"},
            "2001:db8:131::1": {"100"},
            "198.51.100.132": {"200"},
            "2001:db8:132::1": {"200"},
        },
    )
    out = plug.cli("status", "--all-projects", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = {(r["project"], r["instance"]): r for r in json.loads(out.stdout)}
    assert rows[("default", "dprof")]["state"] == "ok", rows
    assert rows[(project, "dproj")]["state"] == "ok", rows
    tables = {
        key: {f["family"]: f["actual_tables"] for f in row["families"]}
        for key, row in rows.items()
        if key in {("default", "dprof"), (project, "dproj")}
    }
    assert tables == {
        ("default", "dprof"): {"ipv4": [100], "ipv6": [100]},
        (project, "dproj"): {"ipv4": [200], "ipv6": [200]},
    }


def test_daemon_away_while_instances_change(
    plug: PluginLab, daemon: PluginDaemon, lab: IncusLab
) -> None:
    nic = routed("198.51.100.141") | host_tables("100")
    plug.launch("daway1", devices={"eth0": nic})  # stopped while the daemon is away
    plug.launch("daway2", devices={"eth0": routed("198.51.100.142") | host_tables("200")})
    assert_converged(plug, {"198.51.100.141": {"100"}, "198.51.100.142": {"200"}})

    daemon.stop()
    try:
        lab.incus("stop", "--force", "daway1")
        lab.incus("config", "device", "set", "daway2", "eth0", "user.ipv4.host_tables=150")
        plug.launch("daway3", devices={"eth0": routed("198.51.100.143") | host_tables("200")})
        # Incus alone ignores user.* keys: the route sits in main.
        assert plug.tables("198.51.100.143") == {"main"}
    finally:
        daemon.start()
    assert_converged(
        plug,
        {"198.51.100.141": set(), "198.51.100.142": {"150"}, "198.51.100.143": {"200"}},
    )
    want_rules = {("4", plug.RP_TABLE, -1)}
    assert plug.until(lambda: plug.rules() == want_rules, CONVERGE), plug.rules()


def test_delete_and_rename_release_what_the_instance_held(
    plug: PluginLab, daemon: PluginDaemon
) -> None:
    """instance-deleted of a running instance and instance-renamed: the
    daemon forgets the old name and no rule is left behind for it."""
    a4 = "198.51.100.109"
    plug.launch("dsd1", devices={"eth0": routed(a4) | host_tables("170")})
    assert_converged(plug, {a4: {"170"}})
    assert plug.until(lambda: plug.rules() == {("4", plug.RP_TABLE, -1)}, CONVERGE), plug.rules()

    plug.lab.incus("delete", "--force", "dsd1")
    assert plug.until(lambda: plug.rules() == set(), CONVERGE), plug.rules()
    assert plug.entries(a4) == []

    a4 = "198.51.100.110"
    plug.launch("dsr1", devices={"eth0": routed(a4) | host_tables("171")})
    assert_converged(plug, {a4: {"171"}})
    plug.lab.incus("stop", "--force", "dsr1")
    assert plug.until(lambda: plug.rules() == set(), CONVERGE), plug.rules()
    plug.lab.incus("rename", "dsr1", "dsr2")
    plug.defer(lambda: plug.lab.incus("delete", "--force", "dsr2", check=False))
    plug.lab.incus("start", "dsr2")
    assert_converged(plug, {a4: {"171"}})
    assert plug.until(lambda: plug.rules() == {("4", plug.RP_TABLE, -1)}, CONVERGE), plug.rules()
    status = json.loads(plug.cli("status", "dsr2", "--format", "json").stdout)
    assert [(row["instance"], row["state"]) for row in status] == [("dsr2", "ok")]
