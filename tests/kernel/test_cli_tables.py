"""Table IDs above 255 and iproute2 table names, end to end: the real CLI in
a namespace puts the routes where the key says, and `ip` itself agrees on
what a name means. The names file lives in a temporary directory,
bind-mounted over /etc/iproute2 in a private mount namespace of the CLI
process only."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from .helpers import NetNS, cli_argv, incus_routes, run_cli

pytestmark = pytest.mark.kernel

V4, V6 = "198.51.100.10", "2001:db8::10"


def in_table(ns: NetNS, table: str, address: str) -> list[str]:
    fam = "-6" if ":" in address else "-4"
    lines = ns.ip(fam, "route", "show", "table", table).splitlines()
    return [line.strip() for line in lines if address in line]


def test_user_key_takes_table_1001(host: NetNS) -> None:
    incus_routes(host, "vh0", [V4], [V6], table=None)  # Incus without table keys: main
    config = {
        "ipv4.address": V4,
        "ipv6.address": V6,
        "user.ipv4.host_tables": "1001",
        "user.ipv6.host_tables": "1001",
    }

    proc = run_cli(host, "apply", "vh0", config)

    assert proc.returncode == 0, proc.stderr
    assert in_table(host, "1001", V4) == [f"{V4} dev vh0 proto 158 scope link"]
    assert in_table(host, "1001", V6) == [f"{V6} dev vh0 proto 158 metric 1024 pref medium"]
    assert in_table(host, "main", V4) == [] and in_table(host, "main", V6) == []
    assert run_cli(host, "plan", "vh0", config).stdout == "no changes\n"


def test_legacy_key_1001_means_that_table_only(host: NetNS) -> None:
    """What Incus 6.0 installs for ipv4.host_table=1001 (table 1001 and
    main) becomes table 1001 only, the route Incus put there adopted."""
    incus_routes(host, "vh0", [V4], [], table=1001)
    config = {"ipv4.address": V4, "ipv4.host_table": "1001"}

    proc = run_cli(host, "apply", "vh0", config)

    assert proc.returncode == 0, proc.stderr
    assert f"~ route {V4}/32 dev vh0 table 1001 (adopt" in proc.stdout
    assert in_table(host, "1001", V4) == [f"{V4} dev vh0 proto 158 scope link"]
    assert in_table(host, "main", V4) == []


def test_legacy_zero_keeps_the_route_in_main(host: NetNS) -> None:
    """Incus files table 0 into main: such an instance works today and keeps
    working, with a warning; its route in main becomes the plugin's."""
    incus_routes(host, "vh0", [V4], [], table=None)

    proc = run_cli(host, "apply", "vh0", {"ipv4.address": V4, "ipv4.host_table": "0"})

    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"~ route {V4}/32 dev vh0 table 254 (adopt: protocol 3 -> incus-host-tables)\n"
    )
    assert "warning: ipv4.host_table='0'" in proc.stderr
    assert in_table(host, "main", V4) == [f"{V4} dev vh0 proto 158 scope link"]
    assert [line for line in host.route_lines() if V4 in line] == in_table(host, "main", V4)


def run_with_names(
    ns: NetNS, names_dir: Path, action: str, config: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    """The CLI with ``names_dir`` as its /etc/iproute2 (private mount namespace)."""
    script = 'mount --bind "$0" /etc/iproute2 && exec "$@"'
    argv = ["ip", "netns", "exec", ns.name, *cli_argv(action, "vh0", config)]
    return subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, str(names_dir), *argv],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def names_dir(tmp_path: Path) -> Path:
    (tmp_path / "rt_tables").write_text("254 main\n100 tenant-a\n")
    (tmp_path / "rt_tables.d").mkdir()
    (tmp_path / "rt_tables.d" / "vrf.conf").write_text("1001 vrf-blue\n")
    return tmp_path


def test_table_names_resolve_like_ip(host: NetNS, names_dir: Path) -> None:
    incus_routes(host, "vh0", [V4], [], table=None)
    config = {"ipv4.address": V4, "user.ipv4.host_tables": "vrf-blue,tenant-a"}

    proc = run_with_names(host, names_dir, "apply", config)

    assert proc.returncode == 0, proc.stderr
    assert in_table(host, "1001", V4) == [f"{V4} dev vh0 proto 158 scope link"]
    assert in_table(host, "100", V4) == [f"{V4} dev vh0 proto 158 scope link"]
    assert in_table(host, "main", V4) == []
    # iproute2, reading the same files, finds the route under the same name
    script = 'mount --bind "$0" /etc/iproute2 && exec ip -n "$1" -4 route show table vrf-blue'
    shown = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script, str(names_dir), host.name],
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    ).stdout
    assert f"{V4} dev vh0 proto 158 scope link" in shown


def test_unknown_name_is_an_error_naming_key_and_value(host: NetNS, names_dir: Path) -> None:
    incus_routes(host, "vh0", [V4], [], table=None)
    before = host.state()

    proc = run_with_names(
        host, names_dir, "apply", {"ipv4.address": V4, "user.ipv4.host_tables": "vrf-red"}
    )

    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert line.startswith("error: user.ipv4.host_tables='vrf-red': 'vrf-red' is neither")
    assert host.state() == before


@pytest.mark.parametrize(
    ("options", "value", "reason"),
    [
        ((), "1158", "reverse-path"),
        (("--rp-table", "2000"), "2000", "reverse-path"),
        ((), "255", "local"),
        ((), "253", "32767"),
    ],
)
def test_reserved_tables_are_refused(
    host: NetNS, options: tuple[str, ...], value: str, reason: str
) -> None:
    before = host.state()
    config = {"ipv4.address": V4, "user.ipv4.host_tables": value}

    proc = run_cli(host, "apply", "vh0", config, *options)

    assert proc.returncode == 1
    (line,) = proc.stderr.splitlines()
    assert f"user.ipv4.host_tables={value!r}" in line and reason in line
    assert host.state() == before


def test_device_plan_as_json(host: NetNS) -> None:
    config = {"ipv4.address": V4, "user.ipv4.host_tables": "1001", "user.IPv4.host_tables": "7"}
    proc = run_cli(
        host,
        "plan",
        "vh0",
        config,
    )
    assert proc.returncode == 0
    table_lines = proc.stdout.splitlines()

    proc = run_cli(
        host, "plan", "vh0", [*(f"{k}={v}" for k, v in config.items()), "--format", "json"]
    )

    assert proc.returncode == 0 and proc.stderr == ""
    records = json.loads(proc.stdout)
    assert [r["text"] for r in records if r["kind"] == "change"] == table_lines
    (warning,) = [r for r in records if r["kind"] == "warning"]
    assert warning["interface"] == "vh0" and "user.IPv4.host_tables='7'" in warning["text"]
