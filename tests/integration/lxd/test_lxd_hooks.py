"""The plugin's LXC hooks on an LXD profile (`incus-host-tables enable
--profile`): routes right when `lxc start` returns, with and without the
daemon; an invalid config refused with the reason in `lxc info --show-log`
and `status`; and a start the kernel refuses fails closed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pytest
from plugin_checks import (
    assert_routed_now,
    launch_hooked,
    profile_with_hooks,
    routed_in,
    show_log,
)

from lab import IncusLab

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.lxd

PROFILE = "ihtlxd"
KEEP = "lxc.environment = IHT_KEEP=1"


@pytest.fixture(scope="module")
def hook_profile(lab: IncusLab, run_dir: str) -> Iterator[str]:
    """An LXD profile with the root disk, one other raw.lxc line and the hooks."""
    with profile_with_hooks(lab, run_dir, PROFILE, KEEP) as out:
        assert out.stdout.strip() == f"hooks attached to profile {PROFILE}", out.stdout
        yield PROFILE


def protocol158(plug: PluginLab) -> list[str]:
    """Every protocol-158 route and rule in the LXD lab's namespace."""
    found = []
    for fam in ("-4", "-6"):
        for what in (("route", "show", "table", "all"), ("rule", "show")):
            out = plug.lab.ns_run("ip", "-j", fam, *what).stdout
            found += [
                json.dumps(item, sort_keys=True)
                for item in json.loads(out or "[]")
                if str(item.get("protocol")) == "158"
            ]
    return found


def test_enable_writes_both_hooks_into_the_lxd_profile(plug: PluginLab, hook_profile: str) -> None:
    raw = str(plug.lab.query(f"/1.0/profiles/{hook_profile}")["config"]["raw.lxc"])
    lines = raw.splitlines()
    assert lines[0] == KEEP
    keys = sorted(line.split("=")[0].strip() for line in lines[1:])
    assert keys == ["lxc.hook.post-stop", "lxc.hook.start-host"], raw
    out = plug.cli("enable", "--profile", hook_profile)
    assert out.returncode == 0 and "unchanged" in out.stdout, out


@pytest.mark.parametrize("with_daemon", [False, True], ids=["fallback", "daemon"])
def test_routes_right_when_lxc_start_returns(
    plug: PluginLab, hook_profile: str, with_daemon: bool
) -> None:
    n = 61 if with_daemon else 62
    name = f"lhook{n}"
    a4, a6 = f"198.51.100.{n}", f"2001:db8:{n}::1"
    d = launch_hooked(plug, hook_profile, name, n, with_daemon)
    # No polling: LXD ran the start-host hook before `lxc start` returned.
    assert_routed_now(plug, (a4, a6), {"100", "200"})
    if d is not None:
        assert plug.until(lambda: f"hook start-host {name}: ok" in d.log(), 2.0), d.log()
    client = plug.client(f"lh{n}", table=200, v4=f"198.18.{n}.2/28", v6=f"2001:db8:f{n}::2/64")
    assert client.ping_within(a4, 5)
    assert client.ping_within(a6, 5)

    plug.lab.incus("stop", "--force", name)
    # post-stop hook: nothing of the plugin's is left.
    assert plug.until(lambda: protocol158(plug) == [], 2.0), protocol158(plug)
    assert plug.entries(a4) == [] and plug.entries(a6) == []


def test_invalid_config_refused_with_the_reason_in_show_log(
    plug: PluginLab, hook_profile: str
) -> None:
    name, a4, a6 = "lhbad", "198.51.100.63", "2001:db8:63::1"
    plug.launch(name, profiles=[hook_profile], devices={"eth0": routed_in(63, "0")}, start=False)
    out = plug.lab.incus("start", name, check=False)
    assert out.returncode != 0, out
    assert "lxc info --show-log" in out.stderr, out.stderr
    log = show_log(plug, name)
    assert "Failed to run lxc.hook.start-host" in log, log
    assert f"refusing to start default/{name}" in log, log
    assert "user.ipv4.host_tables='0'" in log, log
    # Never reachable: no route to it anywhere once LXD removed the veth.
    assert plug.until(lambda: plug.entries(a4) == [] and plug.entries(a6) == [], 3.0)
    assert protocol158(plug) == []
    status = plug.cli("status", name, "--format", "json")
    assert status.returncode == 0, status.stderr
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["error"], rows
    assert "table 0" in rows[0]["detail"], rows


def test_start_refused_by_the_kernel_fails_closed(plug: PluginLab, hook_profile: str) -> None:
    """Table 200 already routes the address elsewhere (not the plugin's):
    the apply fails and is rolled back, the start is refused, the instance is
    reachable from no client, and the other route is left as it was."""
    name, n = "lhclosed", 64
    a4, a6 = f"198.51.100.{n}", f"2001:db8:{n}::1"
    foreign = ["ip", "route", "add", f"{a4}/32", "dev", "lo", "table", "200", "proto", "static"]
    plug.lab.ns_run(*foreign)
    plug.defer(lambda: plug.lab.ns_run(*[w if w != "add" else "del" for w in foreign], check=False))
    t100 = plug.client("lhc100", table=100, v4="198.18.64.2/28", v6="2001:db8:f64::2/64")
    main = plug.client("lhcmain", table=None, v4="198.18.65.2/28", v6="2001:db8:f65::2/64")
    plug.launch(
        name, profiles=[hook_profile], devices={"eth0": routed_in(n, "100,200")}, start=False
    )

    out = plug.lab.incus("start", name, check=False)
    assert out.returncode != 0, out
    log = show_log(plug, name)
    assert f"refusing to start default/{name}" in log, log
    assert f"{a4}/32" in log, log
    # Only the foreign route remains, untouched.
    assert plug.until(lambda: plug.entries(a6) == [], 3.0), plug.entries(a6)
    entries = plug.entries(a4)
    assert [(e["table"], e["dev"], e.get("protocol")) for e in entries] == [
        ("200", "lo", "static")
    ], entries
    for client in (t100, main):
        assert not client.ping(a4), f"{client.name} must not reach {a4}"
        assert not client.ping(a6), f"{client.name} must not reach {a6}"
    status = plug.cli("status", name, "--format", "json")
    rows = json.loads(status.stdout)
    assert [r["state"] for r in rows] == ["error"], rows
