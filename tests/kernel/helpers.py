"""Helpers of the kernel tests: the device config as the plugin parses it,
the real CLI run inside a namespace, and the routes Incus would install.

The namespaces themselves come from ``lab.netns`` (see conftest.py).
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence

from incus_host_tables.config import DeviceIntent, parse_device
from lab.netns import NetNS

PYTHON = sys.executable


def intent(keys: Mapping[str, str]) -> DeviceIntent:
    """The device config as the plugin parses it at run time."""
    return parse_device(dict(keys))


def run_cli(
    ns: NetNS,
    action: str,
    host_name: str,
    config: Mapping[str, str] | Sequence[str],
    *options: str,
) -> subprocess.CompletedProcess[str]:
    """`python -m incus_host_tables [OPTIONS] device ACTION --host-name IFACE KEY=VALUE...`
    inside ``ns``, as an operator or a hook would run it. ``config`` is a
    mapping, or KEY=VALUE words as given on the command line."""
    argv = ["ip", "netns", "exec", ns.name, *cli_argv(action, host_name, config, *options)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


def cli_argv(
    action: str, host_name: str, config: Mapping[str, str] | Sequence[str], *options: str
) -> list[str]:
    """The command line of the plugin's `device` command."""
    words = [f"{k}={v}" for k, v in config.items()] if isinstance(config, Mapping) else config
    return [
        PYTHON, "-m", "incus_host_tables", *options,
        "device", action, "--host-name", host_name, *words,
    ]  # fmt: skip


def incus_routes(
    ns: NetNS, ifname: str, v4: list[str], v6: list[str], table: int | None = 100
) -> None:
    """The host routes Incus 6.0 installs for a routed NIC: each address in
    ``table`` (its ipv4.host_table) and in main, added by `ip route add`
    (protocol boot)."""
    commands = []
    for addr in v4 + v6:
        prefix = f"{addr}/128" if ":" in addr else f"{addr}/32"
        if table is not None:
            commands.append(f"route add {prefix} dev {ifname} table {table}")
        commands.append(f"route add {prefix} dev {ifname}")
    ns.batch(commands)
