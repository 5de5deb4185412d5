"""The README's main job: a throwaway Incus, a container whose routed NIC
asks for tables 100 and 200, and the host's routing tables before and after
the plugin acts -- with real packets from a client in each routing domain.

Run as root: `python -m lab.demo` from the repository root (scripts/demo does it).
"""

from __future__ import annotations

import os
import sys
import tempfile

from .clients import Client
from .incus import IncusLab
from .plugin import PluginDaemon, run_cli

ADDR4, ADDR6 = "198.51.100.10", "2001:db8::10"


def _section(title: str) -> None:
    print(f"\n=== {title} ===", flush=True)


def _show(lab: IncusLab) -> None:
    for family in ("-4", "-6"):
        out = lab.ns_run("ip", family, "route", "show", "table", "all").stdout
        for line in out.splitlines():
            if ADDR4 in line.split()[:1] or ADDR6 in line.split()[:1]:
                print("  route:", line.strip())
        rules = lab.ns_run("ip", family, "rule", "show").stdout
        for line in rules.splitlines():
            if "iif lo" in line:
                print("  rule: ", line.strip())


def _pings(lab: IncusLab, clients: dict[str, Client]) -> None:
    for label, client in clients.items():
        v4 = client.ping_within(ADDR4, 3)
        v6 = client.ping_within(ADDR6, 3)
        print(
            f"  client {label:<22} ping {ADDR4}: {'yes' if v4 else 'no'}"
            f"   ping {ADDR6}: {'yes' if v6 else 'no'}"
        )


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="iht-run-") as run_dir:
        # The plugin's locks, hook socket and problem records, private to the demo.
        os.environ["INCUS_HOST_TABLES_RUN_DIR"] = run_dir
        return _demo(run_dir)


def _demo(run_dir: str) -> int:
    with IncusLab("ihtdemo") as lab:
        print(
            f"Incus lab up in namespace {lab.netns} "
            f"(incusd ready in {lab.timings.get('incusd_ready', 0):.1f}s)"
        )
        clients = {
            "in table 100": lab.add_client(
                "ta", table=100, v4="203.0.113.2/28", v6="2001:db8:a::2/64"
            ),
            "in table 200": lab.add_client(
                "tb", table=200, v4="203.0.113.18/28", v6="2001:db8:b::2/64"
            ),
            "in main (other tenant)": lab.add_client(
                "m", table=None, v4="203.0.113.34/28", v6="2001:db8:c::2/64"
            ),
        }
        nic = {
            "type": "nic",
            "nictype": "routed",
            "name": "eth0",
            "ipv4.address": ADDR4,
            "ipv6.address": ADDR6,
            "user.ipv4.host_tables": "100,200",
            "user.ipv6.host_tables": "100,200",
        }
        lab.launch("c1", devices={"eth0": nic})
        _section("Incus 6.0 alone: c1 asks for tables 100,200 (user.ipv4.host_tables)")
        _show(lab)
        _pings(lab, clients)

        with PluginDaemon(lab, run_dir):
            _section("with incus-host-tables watching (daemon reconciled c1)")
            _show(lab)
            _pings(lab, clients)
            print(run_cli(lab, run_dir, "status").stdout)

            _section("restart c1 with the LXC hooks enabled on the default profile")
            print(" ", run_cli(lab, run_dir, "enable", "--profile", "default").stdout.strip())
            lab.incus("restart", "--force", "c1")
            _show(lab)
            _pings(lab, clients)

            _section("stop c1: its routes and rules are gone")
            lab.incus("stop", "--force", "c1")
            _show(lab)
            print("  (nothing left)" if not _has_rules(lab) else "  rules remain!")
    return 0


def _has_rules(lab: IncusLab) -> bool:
    return any(
        "iif lo" in lab.ns_run("ip", family, "rule", "show").stdout for family in ("-4", "-6")
    )


if __name__ == "__main__":
    sys.exit(main())
