"""The daemon against LXD: it finds LXD's socket through LXD_DIR, follows
LXD's lifecycle event stream (start, device change, stop), and a restarted
daemon resyncs what changed while it was away."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import pytest
from plugin_checks import converged, routed_in

from lab.plugin import PluginDaemon

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.lxd

CONVERGE = 5.0


def only_ours_in(plug: PluginLab, addrs: tuple[str, ...], tables: set[str]) -> bool:
    # Tables without main: every route of the addresses is the plugin's.
    assert "main" not in tables
    return converged(plug, dict.fromkeys(addrs, tables))


def test_restarted_daemon_resyncs(plug: PluginLab) -> None:
    """First in the module: no other daemon of this module runs yet."""
    n, name = 82, "ldev82"
    addrs = (f"198.51.100.{n}", f"2001:db8:{n}::1")
    d = PluginDaemon(plug.lab, plug.run_dir)
    d.start()
    plug.defer(d.stop)
    plug.launch(name, devices={"eth0": routed_in(n, "100")})
    assert plug.until(lambda: only_ours_in(plug, addrs, {"100"}), CONVERGE)

    d.stop()
    # While nobody watches, the instance restarts with other tables: LXD
    # alone puts its routes in main.
    plug.lab.incus("stop", "--force", name)
    for fam in ("ipv4", "ipv6"):
        plug.lab.incus("config", "device", "set", name, "eth0", f"user.{fam}.host_tables=200")
    plug.lab.incus("start", name)
    assert {e["table"] for e in plug.entries(addrs[0])} == {"main"}

    d = PluginDaemon(plug.lab, plug.run_dir)
    d.start()
    plug.defer(d.stop)
    # Ready means reconciled: right at once, without any event.
    assert only_ours_in(plug, addrs, {"200"}), [plug.entries(a) for a in addrs]


def test_the_daemon_talks_to_lxd(plug: PluginLab, daemon: PluginDaemon) -> None:
    server = plug.lab.query("/1.0")["environment"]
    assert server["server"] == "lxd", server
    # The daemon's first reconcile went through LXD's socket.
    assert "reconciled" in daemon.log(), daemon.log()


def test_events_start_change_stop(plug: PluginLab, daemon: PluginDaemon) -> None:
    n, name = 81, "ldev81"
    addrs = (f"198.51.100.{n}", f"2001:db8:{n}::1")
    plug.launch(name, devices={"eth0": routed_in(n, "100")})
    assert plug.until(lambda: only_ours_in(plug, addrs, {"100"}), CONVERGE), [
        plug.entries(a) for a in addrs
    ]

    # LXD applies a change of a stopped instance's device at the next start.
    plug.lab.incus("stop", "--force", name)
    assert plug.until(lambda: all(plug.entries(a) == [] for a in addrs), CONVERGE)
    plug.lab.incus("config", "device", "set", name, "eth0", "user.ipv4.host_tables=200")
    plug.lab.incus("config", "device", "set", name, "eth0", "user.ipv6.host_tables=200")
    plug.lab.incus("start", name)
    assert plug.until(lambda: only_ours_in(plug, addrs, {"200"}), CONVERGE), [
        plug.entries(a) for a in addrs
    ]
    status = json.loads(plug.cli("status", name, "--format", "json").stdout)
    assert [(r["state"], [f["tables"] for f in r["families"]]) for r in status] == [
        ("ok", [[200], [200]])
    ], status
