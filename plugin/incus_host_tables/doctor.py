"""`incus-host-tables doctor`: is this host set up so that host tables isolate?

``gather`` reads the host (sysctls, Incus, the daemon's socket, the kernel's
policy rules and a route lookup per instance, routing managers, the policy
file) into ``HostFacts``; the ``check_*`` functions judge those facts without
I/O, one ``Check`` per line: ok, warn or fail, and what to do about it.
"""

from __future__ import annotations

import configparser
import glob
import json
import os
import socket
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum, IntEnum
from typing import Any

from . import rawlxc
from .config import BUILTIN_NAMES_ONLY, ConfigError, DeviceIntent, TableSettings, parse_device
from .desired import DEFAULT_RP_TABLE, FAMILY_OF
from .incus import IncusClient, IncusError, InstanceSnapshot
from .locking import run_dir
from .model import AF_INET, AF_INET6, MAIN_TABLE
from .policy import ActivePolicy, Policy, PolicyError, device_violations
from .rttables import host_table_settings
from .rulecheck import (
    FAMILY_NAME,
    MAIN_RULE_PRIORITY,
    PolicyRule,
    analyze_table,
    main_priority,
    parse_ip_rules,
    reverse_path_rule,
)

NATIVE_KEYS_EXTENSION = "instance_nic_routed_host_tables"  # Incus >= 6.13
HOOK_SOCKET = "hook.sock"
FORWARDING_SYSCTLS = {
    AF_INET: "/proc/sys/net/ipv4/ip_forward",
    AF_INET6: "/proc/sys/net/ipv6/conf/all/forwarding",
}
NETWORKD_CONF = (
    "/etc/systemd/networkd.conf",
    "/usr/lib/systemd/networkd.conf.d/*.conf",
    "/run/systemd/networkd.conf.d/*.conf",
    "/etc/systemd/networkd.conf.d/*.conf",
)


class Level(Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


class DoctorExit(IntEnum):
    """doctor's own exit codes (docs/cli.md)."""

    OK = 0
    WARNINGS = 1
    FAILURES = 2


@dataclass(frozen=True)
class Check:
    check: str  # what was checked: "forwarding ipv4", "table 100 (ipv4)", ...
    level: Level
    message: str
    action: str = ""  # what to do; empty when nothing


def exit_code(checks: Iterable[Check]) -> DoctorExit:
    levels = {c.level for c in checks}
    if Level.FAIL in levels:
        return DoctorExit.FAILURES
    return DoctorExit.WARNINGS if Level.WARN in levels else DoctorExit.OK


# ------------------------------------------------------------------ facts


@dataclass(frozen=True)
class InstanceFacts:
    snapshot: InstanceSnapshot
    own_raw_lxc: str
    expanded_raw_lxc: str


@dataclass(frozen=True)
class RouteLookup:
    """Where the host's own lookup (input interface lo) sends an instance address."""

    family: int
    address: str
    want_dev: str  # the instance's host interface
    got_dev: str | None  # None: no route / unreachable
    instance: str  # "project/name device"


@dataclass(frozen=True)
class RoutingManager:
    name: str
    flushes: bool  # would remove routes and rules it did not configure
    detail: str


@dataclass
class HostFacts:
    forwarding: dict[int, str | None] = field(default_factory=dict)
    server: dict[str, Any] | None = None
    incus_error: str | None = None
    instances: list[InstanceFacts] = field(default_factory=list)
    daemon_error: str | None = None  # None: the daemon answered
    rules: dict[int, list[PolicyRule]] = field(default_factory=dict)
    rules_error: str | None = None
    lookups: list[RouteLookup] = field(default_factory=list)
    managers: list[RoutingManager] = field(default_factory=list)
    policy_path: str = ""
    policy: Policy | None = None
    policy_error: str | None = None
    policy_loose_mode: str | None = None  # why others could change the file
    rp_table: int = DEFAULT_RP_TABLE
    # What table values mean on this host (its iproute2 names, the RP table).
    tables: TableSettings = BUILTIN_NAMES_ONLY


def kernel_policy_rules() -> dict[int, list[PolicyRule]]:
    """The kernel's policy rules per family (iproute2's JSON, numeric).
    Raises OSError when they cannot be read."""
    out: dict[int, list[PolicyRule]] = {}
    for family, flag in ((AF_INET, "-4"), (AF_INET6, "-6")):
        try:
            proc = subprocess.run(
                ["ip", "-N", "-j", flag, "rule", "show"],
                capture_output=True,
                text=True,
                timeout=10,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            raise OSError(f"`ip rule show` failed: {err}") from None
        if proc.returncode != 0:
            raise OSError(f"`ip {flag} rule show` failed: {proc.stderr.strip()}")
        try:
            out[family] = parse_ip_rules(family, json.loads(proc.stdout or "[]"))
        except (ValueError, KeyError, TypeError) as err:
            raise OSError(f"`ip {flag} rule show`: unexpected output ({err})") from None
    return out


def _route_dev(family: int, address: str) -> str | None:
    """The output interface of the host's own lookup for ``address``."""
    flag = "-4" if family == AF_INET else "-6"
    try:
        proc = subprocess.run(
            ["ip", "-j", flag, "route", "get", address],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        found = json.loads(proc.stdout or "[]") if proc.returncode == 0 else []
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return None
    if not found or found[0].get("type", "unicast") != "unicast":
        return None
    dev = found[0].get("dev")
    return str(dev) if dev else None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError:
        return None


def _daemon_error(path: str) -> str | None:
    """None when the daemon answers on its hook socket (a malformed request
    is answered with an error line, and changes nothing)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(2.0)
    try:
        sock.connect(path)
        sock.sendall(b"\n")
        answer = sock.recv(4096)
    except OSError as err:
        return f"{path}: {err.strerror or err}"
    finally:
        sock.close()
    return None if answer else f"{path}: no answer"


def _processes() -> set[str]:
    names = set()
    for path in glob.glob("/proc/[0-9]*/comm"):
        name = _read(path)
        if name:
            names.add(name)
    return names


def _networkd_settings() -> dict[str, str]:
    """[Network] keys of networkd.conf and its drop-ins, later files winning."""
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are CamelCase
    for pattern in NETWORKD_CONF:
        for path in sorted(glob.glob(pattern)):
            try:
                parser.read(path, encoding="utf-8")
            except (configparser.Error, OSError, UnicodeDecodeError):
                continue
    return dict(parser["Network"]) if parser.has_section("Network") else {}


def _false(value: str | None) -> bool:
    return (value or "").strip().lower() in ("no", "false", "0", "off")


def routing_managers(processes: set[str], networkd: Mapping[str, str]) -> list[RoutingManager]:
    """Routing managers that run, and whether they would flush our routes. Pure."""
    out = []
    # /proc/PID/comm holds 15 characters: "systemd-network".
    if any(p.startswith("systemd-network") for p in processes):
        routes = networkd.get("ManageForeignRoutes")
        rules = networkd.get("ManageForeignRoutingPolicyRules")
        flushes = not (_false(routes) and _false(rules))
        detail = (
            f"ManageForeignRoutes={routes or 'yes (default)'}, "
            f"ManageForeignRoutingPolicyRules={rules or 'yes (default)'}"
        )
        out.append(RoutingManager("systemd-networkd", flushes, detail))
    if "NetworkManager" in processes:
        out.append(
            RoutingManager(
                "NetworkManager",
                True,
                "it may remove routes on interfaces it manages",
            )
        )
    return out


def _policy_mode_problem(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if st.st_uid != 0:
        return f"owned by uid {st.st_uid}, not root"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def gather(
    active: ActivePolicy,
    *,
    socket_path: str | None = None,
    rp_table: int = DEFAULT_RP_TABLE,
    connect: Callable[[str | None], IncusClient] = IncusClient,
) -> HostFacts:
    facts = HostFacts(rp_table=rp_table, tables=host_table_settings(rp_table))
    facts.forwarding = {fam: _read(path) for fam, path in FORWARDING_SYSCTLS.items()}
    try:
        client = connect(socket_path)
        try:
            facts.server = client.server_info()
            facts.instances = [
                InstanceFacts(snap, own.get("raw.lxc", ""), expanded.get("raw.lxc", ""))
                for snap, own, expanded in client.instance_configs()
            ]
        finally:
            client.close()
    except IncusError as err:
        facts.incus_error = str(err)
    facts.daemon_error = _daemon_error(os.path.join(run_dir(), HOOK_SOCKET))
    try:
        facts.rules = kernel_policy_rules()
    except OSError as err:
        facts.rules_error = str(err)
    for inst in facts.instances:
        snap = inst.snapshot
        if snap.status != "Running":
            continue
        for nic in snap.nics:
            intent = _intent(nic.config, facts.tables)
            if intent is None or nic.host_name is None:
                continue
            for fam in intent.families():
                if fam.addresses and any(t != MAIN_TABLE for t in fam.tables):
                    family = FAMILY_OF[fam.family]
                    address = str(fam.addresses[0])
                    facts.lookups.append(
                        RouteLookup(
                            family,
                            address,
                            nic.host_name,
                            _route_dev(family, address),
                            f"{snap.project}/{snap.name} {nic.device}",
                        )
                    )
    facts.managers = routing_managers(_processes(), _networkd_settings())
    facts.policy_path = active.path
    try:
        facts.policy = active.load()
    except PolicyError as err:
        facts.policy_error = str(err)
    facts.policy_loose_mode = _policy_mode_problem(active.path)
    return facts


def _intent(config: Mapping[str, str], tables: TableSettings) -> DeviceIntent | None:
    try:
        return parse_device(config, tables)
    except ConfigError:
        return None


# ------------------------------------------------------------------ judging


def _running(facts: HostFacts) -> list[InstanceFacts]:
    return [i for i in facts.instances if i.snapshot.status == "Running" and i.snapshot.nics]


def chosen_tables(facts: HostFacts) -> dict[int, set[int]]:
    """family -> the non-main tables running routed NICs ask for."""
    out: dict[int, set[int]] = {AF_INET: set(), AF_INET6: set()}
    for inst in _running(facts):
        for nic in inst.snapshot.nics:
            intent = _intent(nic.config, facts.tables)
            if intent is None:
                continue
            for fam in intent.families():
                if fam.addresses:
                    out[FAMILY_OF[fam.family]] |= {t for t in fam.tables if t != MAIN_TABLE}
    return out


def check_forwarding(facts: HostFacts) -> list[Check]:
    used = {
        FAMILY_OF[fam.family]
        for inst in _running(facts)
        for nic in inst.snapshot.nics
        if (intent := _intent(nic.config, facts.tables)) is not None
        for fam in intent.families()
        if fam.addresses
    }
    out = []
    for family, path in FORWARDING_SYSCTLS.items():
        name = f"forwarding {FAMILY_NAME[family]}"
        sysctl = path.removeprefix("/proc/sys/").replace("/", ".")
        value = facts.forwarding.get(family)
        if value == "1":
            out.append(Check(name, Level.OK, f"{sysctl}=1"))
            continue
        level = Level.FAIL if family in used else Level.WARN
        shown = "unreadable" if value is None else f"{sysctl}={value}"
        out.append(
            Check(
                name,
                level,
                f"{shown}: routed NICs get no traffic of this family",
                f"sysctl -w {sysctl}=1 (and persist it in /etc/sysctl.d)",
            )
        )
    return out


def check_incus(facts: HostFacts) -> list[Check]:
    if facts.server is None:
        return [
            Check(
                "incus",
                Level.FAIL,
                f"Incus/LXD unreachable: {facts.incus_error}",
                "start incus (or lxd), or pass --socket",
            )
        ]
    env = facts.server.get("environment") or {}
    product = str(env.get("server") or "incus")
    version = str(env.get("server_version") or "unknown version")
    extensions = facts.server.get("api_extensions") or []
    if NATIVE_KEYS_EXTENSION in extensions:
        keys = "native ipv4/ipv6.host_tables supported (IDs 0-255 only)"
    else:
        keys = "no native ipv4/ipv6.host_tables: use user.ipv4/ipv6.host_tables"
    return [Check("incus", Level.OK, f"{product} {version}; {keys}")]


def check_daemon(facts: HostFacts) -> list[Check]:
    if facts.daemon_error is None:
        return [Check("daemon", Level.OK, "incus-host-tables watch answers on its hook socket")]
    return [
        Check(
            "daemon",
            Level.WARN,
            f"no daemon answers ({facts.daemon_error}): VMs, live device changes and "
            "instances without hooks are not handled",
            "incus-host-tables install, then systemctl enable --now incus-host-tables",
        )
    ]


def check_hooks(facts: HostFacts) -> list[Check]:
    daemon = facts.daemon_error is None
    out = []
    for inst in _running(facts):
        snap = inst.snapshot
        name = f"hooks {snap.project}/{snap.name}"
        if snap.type != "container":
            level = Level.OK if daemon else Level.FAIL
            covered = "the daemon covers it" if daemon else "and no daemon covers it"
            out.append(
                Check(
                    name,
                    level,
                    f"a {snap.type} has no LXC hooks; {covered}",
                    "" if daemon else "run the daemon: incus-host-tables watch",
                )
            )
            continue
        if rawlxc.has_hooks(inst.expanded_raw_lxc):
            out.append(_hook_line_check(name, inst.expanded_raw_lxc, facts.rp_table))
            continue
        why = (
            "its own raw.lxc replaces its profiles' raw.lxc, which drops the hooks"
            if inst.own_raw_lxc
            else "no profile of it carries the hooks"
        )
        fix = (
            "add the hook lines to the instance's own raw.lxc "
            "(incus config get NAME raw.lxc; see docs/operator-guide.md)"
            if inst.own_raw_lxc
            else "incus-host-tables enable --profile PROFILE"
        )
        level, covered = (
            (Level.WARN, "the daemon converges it only after each start")
            if daemon
            else (Level.FAIL, "and no daemon covers it")
        )
        out.append(Check(name, level, f"no hooks: {why}; {covered}", fix))
    return out


def _hook_line_check(name: str, raw: str, rp_table: int) -> Check:
    """Attached hooks; a hook that runs without the daemon takes its
    reverse-path table from its line (`enable` writes it), so it must be
    this host's."""
    written = rawlxc.hook_options(raw).get("--rp-table", str(DEFAULT_RP_TABLE))
    if written == str(rp_table):
        return Check(name, Level.OK, "start-host and post-stop hooks attached")
    return Check(
        name,
        Level.WARN,
        f"hooks attached, but their line names reverse-path table {written} and this host "
        f"uses {rp_table}: a start without the daemon puts its copies in table {written}",
        f"incus-host-tables --rp-table {rp_table} enable --profile PROFILE (or --all-profiles)",
    )


def check_tables(facts: HostFacts) -> list[Check]:
    """Per chosen table: the rules that lead into it, and main-domain reach."""
    if facts.rules_error is not None:
        return [Check("policy rules", Level.FAIL, facts.rules_error, "install iproute2")]
    out = []
    for family, tables in chosen_tables(facts).items():
        rules = facts.rules.get(family, [])
        for table in sorted(tables):
            reach = analyze_table(rules, table)
            main = main_priority(rules) or MAIN_RULE_PRIORITY
            for rule in reach.main_domain:
                out.append(
                    Check(
                        reach.name,
                        Level.WARN,
                        f"main-domain traffic reaches it through `{rule.describe()}` (no "
                        f"iif/from selector, before main's rule {main}): its instances are "
                        "reachable as if their routes were in main",
                        f"give that rule an iif or from selector, or move it after {main}",
                    )
                )
            if reach.main_domain:
                continue
            if not reach.entries:
                out.append(
                    Check(
                        reach.name,
                        Level.WARN,
                        "no policy rule leads into it: only the host itself reaches its instances",
                        f"ip {'-4' if family == AF_INET else '-6'} rule add iif IFACE "
                        f"lookup {table} (or put IFACE in a VRF)",
                    )
                )
                continue
            entered = ", ".join(f"`{r.describe()}`" for r in reach.entries)
            out.append(
                Check(reach.name, Level.OK, f"entered by {entered}; not from the main domain")
            )
    return out


def check_reverse_path(facts: HostFacts) -> list[Check]:
    """The `iif lo lookup RP-TABLE` rule per family that has isolated
    instances, and the host's own lookup of each such instance's address."""
    if facts.rules_error is not None:
        return []
    out = []
    for family, tables in chosen_tables(facts).items():
        if not tables:
            continue
        name = f"reverse path {FAMILY_NAME[family]}"
        flag = "-4" if family == AF_INET else "-6"
        rules = facts.rules.get(family, [])
        rule = reverse_path_rule(rules, facts.rp_table)
        lookups = [lk for lk in facts.lookups if lk.family == family]
        lost = [lk for lk in lookups if lk.got_dev != lk.want_dev]
        if rule is not None and not lost:
            out.append(
                Check(
                    name,
                    Level.OK,
                    f"`{rule.describe()}` present; the host finds all "
                    f"{len(lookups)} isolated instance address(es) on their interfaces",
                )
            )
            continue
        main = main_priority(rules)
        missing = (
            f"no `iif lo lookup {facts.rp_table}` rule before main's rule ({main})"
            if rule is None
            else f"`{rule.describe()}` present"
        )
        wrong = "; ".join(
            f"{lk.address} ({lk.instance}) goes to {lk.got_dev or 'no route'}, not {lk.want_dev}"
            for lk in lost[:5]
        )
        level = Level.FAIL if lost or rule is None else Level.OK
        text = missing + (f"; {wrong}" if wrong else "")
        if lost:
            text += ": Incus's reverse-path filter drops these instances' replies"
        elif rule is None:
            text += (
                f"; the host still finds the {len(lookups)} isolated instance address(es) "
                "through rules the plugin does not own"
            )
        out.append(
            Check(
                name,
                level,
                text,
                f"incus-host-tables reconcile (restores the rule); check with: ip {flag} rule show",
            )
        )
    return out


def check_routing_managers(facts: HostFacts) -> list[Check]:
    if not facts.managers:
        return [Check("routing manager", Level.OK, "no systemd-networkd or NetworkManager runs")]
    out = []
    for m in facts.managers:
        if not m.flushes:
            out.append(Check(f"routing manager {m.name}", Level.OK, f"{m.detail}: leaves ours"))
            continue
        fix = (
            "set ManageForeignRoutes=no and ManageForeignRoutingPolicyRules=no in "
            "/etc/systemd/networkd.conf.d/incus-host-tables.conf ([Network] section)"
            if m.name == "systemd-networkd"
            else "mark the instances' host interfaces (veth*) unmanaged in NetworkManager"
        )
        out.append(
            Check(
                f"routing manager {m.name}",
                Level.WARN,
                f"{m.detail}: it may flush protocol-158 routes and rules",
                fix,
            )
        )
    return out


def check_policy(facts: HostFacts) -> list[Check]:
    path = facts.policy_path
    if facts.policy_error is not None:
        return [
            Check(
                "policy",
                Level.FAIL,
                f"{facts.policy_error} (a running daemon keeps its last good policy; "
                "hooks without the daemon refuse every start)",
                f"fix the file; check it with: incus-host-tables validate --policy {path}",
            )
        ]
    out = []
    if facts.policy is None:
        out.append(
            Check(
                "policy",
                Level.OK,
                f"no policy file at {path}: every project may use any table and prefix",
                "",
            )
        )
    else:
        violations = []
        for inst in _running(facts):
            snap = inst.snapshot
            for nic in snap.nics:
                intent = _intent(nic.config, facts.tables)
                if intent is not None:
                    violations += [
                        f"{snap.project}/{snap.name}: {v}"
                        for v in device_violations(
                            facts.policy, snap.project, nic.device, nic.config, intent
                        )
                    ]
        projects = len(facts.policy.projects)
        if violations:
            out.append(
                Check(
                    "policy",
                    Level.FAIL,
                    f"{path}: {len(violations)} violation(s): " + "; ".join(violations[:3]),
                    "incus-host-tables reconcile isolates them; see incus-host-tables status",
                )
            )
        else:
            out.append(
                Check("policy", Level.OK, f"{path}: {projects} project(s); no running violation")
            )
    if facts.policy_loose_mode is not None:
        out.append(
            Check(
                "policy file mode",
                Level.WARN,
                f"{path} is {facts.policy_loose_mode}: whoever can write it sets the policy",
                f"chown root: {path} && chmod 644 {path}",
            )
        )
    return out


CHECKS: tuple[Callable[[HostFacts], list[Check]], ...] = (
    check_forwarding,
    check_incus,
    check_daemon,
    check_hooks,
    check_tables,
    check_reverse_path,
    check_routing_managers,
    check_policy,
)


def judge(facts: HostFacts) -> list[Check]:
    return [c for check in CHECKS for c in check(facts)]


def render(checks: Sequence[Check], fmt: str) -> str:
    if fmt == "json":
        return json.dumps([asdict(c) | {"level": c.level.value} for c in checks], indent=2)
    width = max((len(c.check) for c in checks), default=0)
    lines = []
    for c in checks:
        line = f"{c.level.value:<4}  {c.check:<{width}}  {c.message}"
        if c.action:
            line += f" -> {c.action}"
        lines.append(line)
    return "\n".join(lines)
