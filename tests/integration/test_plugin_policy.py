"""The tenant policy on a real Incus, with packets (docs/policy.md).

Two projects: ihtpa may use table 100 and 198.51.100.128/26,
2001:db8:a0::/48; ihtpb may use table 200. The daemon runs with the policy
file and serves the hooks, which a profile shared by both projects carries.
One client per routing domain: tables 100 and 200 (strict, VRF-like) and main.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from plugin_checks import domain_clients, environ

from lab import Client, IncusLab, until
from lab.plugin import PYTHON, PluginDaemon, plugin_env, run_cli

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration

PROJECT_A, PROJECT_B = "ihtpa", "ihtpb"
PROFILE = "ihtpolicy"
POLICY = f"""
projects:
  {PROJECT_A}:
    tables: [100]
    ipv4: [198.51.100.128/26]
    ipv6: [2001:db8:a0::/48]
  {PROJECT_B}:
    tables: [200]
"""
WITHOUT_100 = POLICY.replace("tables: [100]", "tables: [150]")
BROKEN = POLICY.replace("tables: [100]", "tables: [100")
NAME_100, NAME_200 = "tenant-a-net", "tenant-b-net"  # the daemon's rt_tables names


def nic(v4: str, tables: str, v6: str | None = None) -> dict[str, str]:
    keys = {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": v4,
        "user.ipv4.host_tables": tables,
    }
    if v6 is not None:
        keys |= {"ipv6.address": v6, "user.ipv6.host_tables": tables}
    return keys


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = tmp_path_factory.mktemp("policy") / "policy.yaml"
    path.write_text(POLICY)
    # The daemon and the CLI started by these tests inherit it.
    with environ("INCUS_HOST_TABLES_POLICY", str(path)):
        yield path


class NamedTablesDaemon(PluginDaemon):
    """The daemon with its own /etc/iproute2 (a private mount namespace), so
    that table names exist for it without touching the machine's files."""

    def __init__(self, lab: IncusLab, run_dir: str, names_dir: Path) -> None:
        super().__init__(lab, run_dir)
        self.names_dir = names_dir

    def start(self, timeout: float = 30.0) -> None:
        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        script = 'mount --bind "$0" /etc/iproute2 && exec "$@"'
        argv = ["ip", "netns", "exec", self.lab.netns, PYTHON, "-m", "incus_host_tables"]
        # unshare and sh exec: the PID stays the daemon's.
        self._proc = subprocess.Popen(
            ["unshare", "--mount", "sh", "-c", script, str(self.names_dir), *argv, "watch",
             "--verbose"],
            env=plugin_env(self.lab, self.run_dir),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
        if not self.wait_for_log("reconciled", timeout):
            self.stop()
            raise AssertionError(f"plugin daemon not ready; log:\n{self.log()}")


@pytest.fixture(scope="module")
def setup(
    lab: IncusLab, run_dir: str, policy_file: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PluginDaemon]:
    """Projects, the hook profile and the daemon with the policy."""
    made_projects = []
    lab.incus("profile", "create", PROFILE)
    try:
        lab.incus("profile", "device", "add", PROFILE, "root", "disk", "path=/", "pool=default")
        out = run_cli(lab, run_dir, "enable", "--profile", PROFILE)
        assert out.returncode == 0, out.stderr
        for project in (PROJECT_A, PROJECT_B):
            lab.create_project(project)
            made_projects.append(project)
        names = tmp_path_factory.mktemp("iproute2")
        (names / "rt_tables").write_text(f"254 main\n100 {NAME_100}\n200 {NAME_200}\n")
        daemon = NamedTablesDaemon(lab, run_dir, names)
        daemon.start()
        try:
            yield daemon
        finally:
            daemon.stop()
    finally:
        for project in made_projects:
            for name in lab.query(f"/1.0/instances?project={project}"):
                lab.incus("delete", "--force", name.rsplit("/", 1)[-1], "--project", project,
                          check=False)  # fmt: skip
            lab.incus("project", "delete", project, check=False)
        lab.incus("profile", "delete", PROFILE, check=False)


@pytest.fixture(scope="module")
def clients(lab: IncusLab, setup: PluginDaemon) -> Iterator[dict[str, Client]]:
    with domain_clients(lab, "p", 40) as made:
        yield made


@pytest.fixture
def policy(policy_file: Path, setup: PluginDaemon) -> Iterator[Path]:
    """The policy file, restored to POLICY (and re-read) after each test."""
    yield policy_file
    if policy_file.read_text() != POLICY:

        def reads() -> int:
            log = setup.log()
            return log.count("in force") + log.count("re-read: unchanged")

        seen = reads()
        policy_file.write_text(POLICY)
        os.kill(setup.pid, signal.SIGHUP)
        assert until(lambda: reads() > seen, 5), setup.log()


def launch(plug: PluginLab, name: str, project: str, keys: dict[str, str]) -> None:
    plug.launch(name, project=project, profiles=[PROFILE], devices={"eth0": keys})


def refused_start(plug: PluginLab, name: str, project: str, keys: dict[str, str]) -> str:
    """Create, try to start (refused by the hook), return `incus info --show-log`."""
    plug.launch(name, project=project, profiles=[PROFILE], devices={"eth0": keys}, start=False)
    out = plug.lab.incus("start", name, "--project", project, check=False)
    assert out.returncode != 0, out
    logs: list[str] = []

    def show_log() -> bool:
        res = plug.lab.incus("info", "--show-log", name, "--project", project, check=False)
        logs.append(res.stdout + res.stderr)
        return res.returncode == 0 and "incus-host-tables" in res.stdout

    assert until(show_log, 5.0), logs[-1]
    return logs[-1]


def reach(clients: dict[str, Client], addr: str) -> set[str]:
    return {label for label, c in clients.items() if c.ping(addr)}


def test_own_table_reachable_from_its_client_only(
    plug: PluginLab, clients: dict[str, Client]
) -> None:
    a4, a6 = "198.51.100.140", "2001:db8:a0::140"
    launch(plug, "pa1", PROJECT_A, nic(a4, "100", a6))
    assert plug.tables(a4) == {"100"} and plug.tables(a6) == {"100"}
    assert clients["t100"].ping_within(a4, 5) and clients["t100"].ping_within(a6, 5)
    assert reach(clients, a4) == {"t100"}
    assert reach(clients, a6) == {"t100"}


def test_other_tenants_table_is_refused(
    plug: PluginLab, setup: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.141"
    log = refused_start(plug, "pa2", PROJECT_A, nic(a4, "200"))
    expected = (
        "policy violation: device eth0 user.ipv4.host_tables='200': table 200 not allowed: "
        f"project '{PROJECT_A}' may use only projects.{PROJECT_A}.tables [100]"
    )
    assert expected in log, log
    assert f"refusing to start {PROJECT_A}/pa2" in setup.log()
    # No route anywhere (Incus's own main copy goes with the veth it removes).
    assert until(lambda: plug.entries(a4) == [], 3.0), plug.entries(a4)
    assert not clients["t200"].ping(a4)
    # validate and status name it too.
    out = plug.cli("validate", "pa2", "--project", PROJECT_A)
    assert out.returncode == 1 and expected.split("policy violation: ")[1] in out.stderr, out
    out = plug.cli("status", "pa2", "--project", PROJECT_A, "--format", "json")
    (row,) = json.loads(out.stdout)
    assert row["state"] == "error" and "table 200 not allowed" in row["detail"], row
    # Tenant B may use table 200.
    b4 = "198.51.100.50"
    launch(plug, "pb1", PROJECT_B, nic(b4, "200"))
    assert plug.tables(b4) == {"200"}
    assert clients["t200"].ping_within(b4, 5)


def test_a_name_for_the_other_tenants_table_is_refused(
    plug: PluginLab, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.147"
    log = refused_start(plug, "pa9", PROJECT_A, nic(a4, NAME_200))
    assert (
        f"policy violation: device eth0 user.ipv4.host_tables='{NAME_200}': table 200 not "
        f"allowed: project '{PROJECT_A}' may use only projects.{PROJECT_A}.tables [100]"
    ) in log, log
    assert until(lambda: plug.entries(a4) == [], 3.0), plug.entries(a4)
    assert not clients["t200"].ping(a4)
    # Its own table by name is fine.
    launch(plug, "pa10", PROJECT_A, nic("198.51.100.148", NAME_100))
    assert plug.tables("198.51.100.148") == {"100"}
    assert clients["t100"].ping_within("198.51.100.148", 5)


def test_address_outside_the_tenants_prefixes_is_refused(
    plug: PluginLab, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.10"  # outside 198.51.100.128/26
    log = refused_start(plug, "pa3", PROJECT_A, nic(a4, "100"))
    assert (
        "device eth0 ipv4.address='198.51.100.10': 198.51.100.10 outside "
        f"projects.{PROJECT_A}.ipv4 [198.51.100.128/26] of project '{PROJECT_A}'"
    ) in log, log
    assert until(lambda: plug.entries(a4) == [], 3.0), plug.entries(a4)
    assert not clients["t100"].ping(a4)


def test_removing_the_table_isolates_the_running_instance(
    plug: PluginLab, policy: Path, setup: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.142"
    launch(plug, "pa4", PROJECT_A, nic(a4, "100"))
    assert clients["t100"].ping_within(a4, 5)
    started = time.monotonic()
    policy.write_text(WITHOUT_100)
    assert until(lambda: plug.entries(a4) == [], 2.0), plug.entries(a4)
    print(f"isolated {time.monotonic() - started:.2f}s after the policy change")
    assert not clients["t100"].ping(a4)
    assert "table 100 not allowed" in setup.log()
    # Put back: the daemon brings the instance back the same way.
    policy.write_text(POLICY)
    assert until(lambda: plug.tables(a4) == {"100"}, 2.0), plug.entries(a4)
    assert clients["t100"].ping_within(a4, 5)


def policy_metrics(plug: PluginLab) -> dict[str, float]:
    """The policy's samples in the running daemon's `metrics` output."""
    out = plug.cli("metrics")
    assert out.returncode == 0, out
    found = {}
    for line in out.stdout.splitlines():
        if line.startswith("incus_host_tables_policy_"):
            name, value = line.split()
            found[name] = float(value)
    return found


def test_a_broken_file_keeps_the_last_good_policy(
    plug: PluginLab, policy: Path, setup: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.143"
    launch(plug, "pa5", PROJECT_A, nic(a4, "100"))
    rejections = setup.log().count("rejected whole")
    before = policy_metrics(plug)
    assert before["incus_host_tables_policy_rejected"] == 0, before
    assert before["incus_host_tables_policy_loaded_timestamp_seconds"] > 0, before
    policy.write_text(BROKEN)
    assert setup.wait_for_log("rejected whole", 5, count=rejections + 1), setup.log()
    # The metrics tell it too (what an alert watches).
    broken = policy_metrics(plug)
    print(*(line for line in plug.cli("metrics").stdout.splitlines() if "_policy_" in line),
          sep="\n")  # fmt: skip
    assert broken["incus_host_tables_policy_rejected"] == 1, broken
    assert (
        broken["incus_host_tables_policy_rejections_total"]
        == before["incus_host_tables_policy_rejections_total"] + 1
    ), broken
    loaded = broken["incus_host_tables_policy_loaded_timestamp_seconds"]
    assert loaded == before["incus_host_tables_policy_loaded_timestamp_seconds"], broken
    # Still in force: the instance stays, a violation is still refused.
    assert clients["t100"].ping_within(a4, 5)
    log = refused_start(plug, "pa6", PROJECT_A, nic("198.51.100.144", "200"))
    assert "table 200 not allowed" in log, log
    out = plug.cli("status", "--project", PROJECT_A)
    assert "not valid YAML" in out.stderr and "last good policy" in out.stderr, out
    out = plug.cli("validate", "--policy", str(policy))
    assert out.returncode == 1 and "not valid YAML" in out.stderr, out
    # Nor can a fresh daemon start with it.
    out = plug.cli("watch", "--policy", str(policy))
    assert out.returncode == 1, out
    assert out.stderr.startswith(f"error: policy {policy}: not valid YAML"), out.stderr
    # Fixed: in force again, no longer rejected, the count stays.
    policy.write_text(POLICY)
    assert until(lambda: policy_metrics(plug)["incus_host_tables_policy_rejected"] == 0, 5)
    fixed = policy_metrics(plug)
    assert fixed["incus_host_tables_policy_loaded_timestamp_seconds"] > loaded, fixed
    assert (
        fixed["incus_host_tables_policy_rejections_total"]
        == broken["incus_host_tables_policy_rejections_total"]
    ), fixed


def test_validate_and_preview_a_policy_file(plug: PluginLab, tmp_path: Path) -> None:
    a4 = "198.51.100.145"
    launch(plug, "pa7", PROJECT_A, nic(a4, "100"))
    candidate = tmp_path / "candidate.yaml"
    candidate.write_text(WITHOUT_100)
    out = plug.cli("validate", "--policy", str(candidate))
    assert out.returncode == 0, out
    assert out.stdout.strip() == f"policy {candidate}: valid, 2 project(s)"
    # The preview: what the candidate would do, nothing changed.
    out = plug.cli("plan", "pa7", "--project", PROJECT_A, "--policy", str(candidate))
    assert out.returncode == 1, out
    assert "table 100 not allowed" in out.stderr and str(candidate) in out.stderr, out
    assert plug.tables(a4) == {"100"}


def doctor(plug: PluginLab) -> tuple[int, dict[str, list[dict[str, str]]]]:
    out = plug.cli("doctor", "--format", "json")
    by_check: dict[str, list[dict[str, str]]] = {}
    for check in json.loads(out.stdout):
        by_check.setdefault(check["check"], []).append(check)
    return out.returncode, by_check


def test_doctor_healthy_and_broken(
    plug: PluginLab, setup: PluginDaemon, clients: dict[str, Client]
) -> None:
    a4 = "198.51.100.146"
    launch(plug, "pa8", PROJECT_A, nic(a4, "100"))
    assert clients["t100"].ping_within(a4, 5)
    code, checks = doctor(plug)
    text = plug.cli("doctor").stdout
    print(text)
    assert code == 0, text
    assert {c["level"] for group in checks.values() for c in group} == {"ok"}, text
    assert "table 100 (ipv4)" in checks and "reverse path ipv4" in checks, text
    assert f"hooks {PROJECT_A}/pa8" in checks, text

    # Break it: the reverse-path rule goes, a foreign catch-all rule comes.
    # The daemon is stopped first: it would put its rule back at once.
    setup.stop()
    plug.defer(setup.start)
    plug.defer(lambda: plug.cli("reconcile", "--all-projects"))
    plug.lab.ns_run("ip", "-4", "rule", "del", "iif", "lo", "lookup", "1158")

    def host_pings() -> bool:
        ping = [plug.lab.busybox, "ping", "-4", "-q", "-c", "1", "-W", "1", a4]
        return plug.lab.ns_run(*ping, check=False).returncode == 0

    # Packets: the host (main domain) no longer finds the instance...
    assert not host_pings()
    plug.lab.ns_run("ip", "-4", "rule", "add", "pref", "500", "from", "all", "lookup", "100")
    plug.defer(
        lambda: plug.lab.ns_run(
            "ip", "-4", "rule", "del", "pref", "500", "from", "all", "lookup", "100", check=False
        )
    )
    # ...until the foreign rule lets main-domain traffic into table 100.
    assert until(host_pings, 5)
    code, checks = doctor(plug)
    text = plug.cli("doctor").stdout
    print(text)
    assert code == 2, text
    assert checks["daemon"][0]["level"] == "warn", text
    (rp,) = checks["reverse path ipv4"]
    assert rp["level"] == "fail" and "no `iif lo lookup 1158` rule" in rp["message"], rp
    (table,) = checks["table 100 (ipv4)"]
    assert table["level"] == "warn", table
    assert "`-4 pref 500 from all lookup 100`" in table["message"], table
    # validate and status warn about the same rule.
    warning = "table 100 (ipv4): the policy rule `-4 pref 500 from all lookup 100`"
    out = plug.cli("validate", "pa8", "--project", PROJECT_A)
    assert out.returncode == 0 and warning in out.stderr, out
    out = plug.cli("status", "pa8", "--project", PROJECT_A)
    assert warning in out.stdout, out


STRICT = f"""
projects:
  {PROJECT_A}:
    tables: [150]
  {PROJECT_B}:
    tables: [200]
    ipv4: [198.51.100.56/30]
"""


def kernel_state(plug: PluginLab) -> str:
    """Every route and rule of H, as `ip` prints them."""
    return "".join(
        plug.lab.ns_run("ip", fam, what, "show", *extra).stdout
        for fam in ("-4", "-6")
        for what, extra in (("route", ("table", "all")), ("rule", ()))
    )


def settled_kernel_state(plug: PluginLab) -> str:
    """``kernel_state`` once the kernel itself is done with the instances
    just started: the local routes of the veths' IPv6 link-local addresses
    come when duplicate address detection ends."""

    def tentative() -> str:
        return plug.lab.ns_run("ip", "-6", "-o", "addr", "show", "tentative").stdout.strip()

    assert until(lambda: not tentative(), 15), tentative()
    seen = [kernel_state(plug)]

    def same_twice() -> bool:
        time.sleep(0.5)
        seen.append(kernel_state(plug))
        return seen[-1] == seen[-2]

    assert until(same_twice, 15), seen[-1]
    return seen[-1]


def test_reconcile_dry_run_previews_a_stricter_policy(
    plug: PluginLab, setup: PluginDaemon, clients: dict[str, Client], tmp_path: Path
) -> None:
    a4, a6 = "198.51.100.150", "2001:db8:a0::150"  # ihtpa, table 100: refused by STRICT
    b4_in, b4_out = "198.51.100.57", "198.51.100.62"  # ihtpb: inside, outside STRICT's /30
    launch(plug, "pr1", PROJECT_A, nic(a4, "100", a6))
    launch(plug, "pr2", PROJECT_B, nic(b4_in, "200"))
    launch(plug, "pr3", PROJECT_B, nic(b4_out, "200"))
    assert plug.tables(a4) == plug.tables(a6) == {"100"}
    assert plug.tables(b4_in) == plug.tables(b4_out) == {"200"}
    # The daemon (with the module's policy) would undo the real run at once.
    setup.stop()
    plug.defer(setup.start)
    strict = tmp_path / "strict.yaml"
    strict.write_text(STRICT)
    ours = {a: plug.lab.route_entries(a) for a in (a4, a6, b4_in, b4_out)}

    before = settled_kernel_state(plug)
    preview = plug.cli("reconcile", "--all-projects", "--dry-run", "--policy", str(strict))
    print(preview.stdout, preview.stderr, sep="\n")
    assert kernel_state(plug) == before  # nothing changed, byte for byte
    assert preview.returncode == 1, preview
    refused_a = (
        "device eth0 user.ipv{}.host_tables='100': table 100 not allowed: project "
        f"'{PROJECT_A}' may use only projects.{PROJECT_A}.tables [150] ({strict})"
    )
    assert preview.stderr.splitlines() == [
        f"error: {PROJECT_A}/pr1: policy violation: {refused_a.format(4)}; {refused_a.format(6)}",
        f"error: {PROJECT_B}/pr3: policy violation: device eth0 ipv4.address='{b4_out}': "
        f"{b4_out} outside projects.{PROJECT_B}.ipv4 [198.51.100.56/30] of project "
        f"'{PROJECT_B}' ({strict})",
    ], preview.stderr
    isolated = [line for line in preview.stdout.splitlines() if ": isolate: " in line]
    assert {line.split(":")[0] for line in isolated} == {
        f"{PROJECT_A}/pr1 eth0",
        f"{PROJECT_B}/pr3 eth0",
    }, preview.stdout
    # One line per route the real run removes: every table, reverse path included.
    expected = {(a, e["table"]) for a in (a4, a6, b4_out) for e in ours[a]}
    assert {t for _, t in expected} == {"100", "200", plug.RP_TABLE}, expected
    # pr1 is the only instance with IPv6: its reverse-path rule goes with it.
    rules = [line for line in isolated if ": isolate: - rule " in line]
    assert rules == [f"{PROJECT_A}/pr1 eth0: isolate: - rule -6 pref 1100 iif lo lookup 1158"]
    assert len(isolated) == len(expected) + len(rules), preview.stdout
    for addr, table in expected:
        assert any(f" {addr}/" in line and f"table {table}" in line for line in isolated), (
            addr,
            table,
            preview.stdout,
        )
    assert clients["t100"].ping(a4) and clients["t200"].ping(b4_out)

    # The same without --dry-run does it.
    out = plug.cli("reconcile", "--all-projects", "--policy", str(strict))
    print(out.stdout, out.stderr, sep="\n")
    assert out.returncode == 1, out
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == (
        preview.stderr.splitlines()
    ), out.stderr
    # It lists what it removed, line for line as the preview did.
    assert [line for line in out.stdout.splitlines() if ": isolate: " in line] == isolated
    for addr in (a4, a6, b4_out):
        assert plug.lab.route_entries(addr) == [], plug.lab.route_entries(addr)
    assert plug.lab.route_entries(b4_in) == ours[b4_in]
    assert plug.rules() == {("4", plug.RP_TABLE, -1)}
    assert not clients["t100"].ping(a4) and not clients["t200"].ping(b4_out)
    assert clients["t200"].ping_within(b4_in, 5)
    # Nothing else changed: the preview's lines were the whole story.
    after = plug.cli("reconcile", "--all-projects", "--dry-run", "--policy", str(strict))
    assert ": isolate: " not in after.stdout, after.stdout
