"""The instance-level commands: they read Incus (pylxd) and act through the
lifecycle, exactly as the daemon and the hooks do."""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import MappingProxyType

from . import problems
from .config import ConfigError, DeviceIntent, parse_device, validate_device
from .desired import FAMILY_OF
from .engine import Engine
from .exitcodes import ExitCode
from .incus import IncusClient, InstanceSnapshot
from .lifecycle import Lifecycle, Outcome
from .model import LOCAL_TABLE, Rule
from .policy import Policy, device_violations
from .rulecheck import PolicyRule, intent_warnings

# The kernel's policy rules per family (doctor.kernel_policy_rules), for the
# main-domain warnings; empty when they could not be read.
KernelRules = Mapping[int, Sequence[PolicyRule]]
NO_RULES: KernelRules = MappingProxyType({})

EXIT_OK = ExitCode.OK
EXIT_PROBLEM = ExitCode.INVALID


def select(
    client: IncusClient, instance: str | None, project: str, all_projects: bool
) -> list[InstanceSnapshot]:
    if instance is not None:
        return [client.instance(instance, project)]
    return client.instances(project=project, all_projects=all_projects)


def validate(
    snapshots: list[InstanceSnapshot], policy: Policy | None = None, rules: KernelRules = NO_RULES
) -> int:
    """Every problem (config, tenant policy) and warning (policy rules that
    let main-domain traffic into a chosen table) of the instances' NICs."""
    found = 0
    for snap in snapshots:
        for nic in snap.nics:
            problems = validate_device(nic.config)
            warnings: list[str] = []
            if not problems:
                intent = parse_device(nic.config)
                problems = device_violations(policy, snap.project, nic.device, nic.config, intent)
                warnings = intent_warnings(rules, intent)
            for problem in problems:
                print(f"{snap.project}/{snap.name} device {nic.device}: {problem}", file=sys.stderr)
                found += 1
            for warning in warnings:
                print(
                    f"warning: {snap.project}/{snap.name} device {nic.device}: {warning}",
                    file=sys.stderr,
                )
    if not found:
        print(f"{len(snapshots)} instance(s) valid")
    return EXIT_PROBLEM if found else EXIT_OK


def print_outcome(out: Outcome) -> None:
    for result in out.nics:
        for line in result.changes:
            print(f"{out.project}/{out.name} {result.device}: {line}")
        for warning in result.warnings:
            print(f"warning: {out.project}/{out.name} {result.device}: {warning}", file=sys.stderr)
    if out.error:
        print(f"error: {out.project}/{out.name}: {out.error}", file=sys.stderr)


def act(engine: Engine, snapshots: list[InstanceSnapshot], action: str) -> int:
    """plan | apply | cleanup | reconcile, instance by instance."""
    lifecycle = Lifecycle(engine, source=f"cli {action}")
    rc = EXIT_OK
    changed = 0
    for snap in snapshots:
        nics = snap.nics
        if action == "cleanup" or snap.status != "Running":
            out = lifecycle.stop(snap.project, snap.name, nics, dry_run=action == "plan")
        else:
            out = lifecycle.start(snap.project, snap.name, nics, dry_run=action == "plan")
        print_outcome(out)
        changed += sum(len(r.changes) for r in out.nics)
        if not out.ok:
            rc = EXIT_PROBLEM
    if action == "reconcile":
        dp = engine.resync_rules()
        for line in dp.lines():
            print(line)
    if action == "plan" and not changed:
        print("no changes")
    return rc


@dataclass
class FamilyStatus:
    family: str
    addresses: list[str]
    tables: list[int] | None  # chosen; None when the config is invalid
    actual_tables: list[int]  # where the instance's routes really are
    rules: str  # ok | missing | n/a


@dataclass
class DeviceStatus:
    project: str
    instance: str
    device: str
    host_name: str | None
    state: str  # ok | drift | error | stopped
    families: list[FamilyStatus] = field(default_factory=list)
    detail: str = ""
    warnings: list[str] = field(default_factory=list)


def status(
    engine: Engine,
    snapshots: list[InstanceSnapshot],
    policy: Policy | None = None,
    rules: KernelRules = NO_RULES,
) -> list[DeviceStatus]:
    """What each routed NIC asks for against what the kernel holds.

    state: ok | drift (apply would change something) | stopped |
    error (invalid config, or a refusal/isolation recorded by a hook, the
    daemon or the CLI and not yet cleared by a successful apply).
    """
    plugin_rules = {kr.rule for kr in engine.plugin_rules()}
    rows: list[DeviceStatus] = []
    for snap in snapshots:
        problem = problems.read(snap.project, snap.name)
        for nic in snap.nics:
            row = _device_status(engine, snap, nic.device, nic.config, nic.host_name, plugin_rules)
            _judge_policy(row, policy, rules, snap.project, nic.config)
            if problem is not None:
                row.state = "error"
                row.detail = row.detail or str(problem.get("message"))
            rows.append(row)
    return rows


def _judge_policy(
    row: DeviceStatus,
    policy: Policy | None,
    rules: KernelRules,
    project: str,
    config: Mapping[str, str],
) -> None:
    """Tenant-policy violations make the row an error; policy rules that let
    main-domain traffic into a chosen table are warnings."""
    try:
        intent = parse_device(config)
    except ConfigError:
        return  # already an error
    violations = device_violations(policy, project, row.device, config, intent)
    if violations:
        row.state = "error"
        row.detail = "policy violation: " + "; ".join(violations)
    row.warnings = intent_warnings(rules, intent)


def _device_status(
    engine: Engine,
    snap: InstanceSnapshot,
    device: str,
    config: Mapping[str, str],
    host_name: str | None,
    rules: set[Rule],
) -> DeviceStatus:
    row = DeviceStatus(snap.project, snap.name, device, host_name, "ok")
    try:
        intent: DeviceIntent | None = parse_device(config)
    except ConfigError as err:
        intent = None
        row.state, row.detail = "error", str(err)
    if intent is not None and engine.intent_problems(intent):
        row.state, row.detail = "error", "; ".join(engine.intent_problems(intent))
        intent = None
    ifindex, present = engine.interface_routes(host_name) if host_name else (None, [])
    for name, family in FAMILY_OF.items():
        fam = getattr(intent, name) if intent is not None else None
        addresses = [str(a) for a in fam.addresses] if fam is not None else []
        # The instance's routes as the ownership policy sees them (ours, or
        # Incus's): what isolation removes. The reverse-path table is the
        # plugin's own (RULES tells about it; a missing copy is drift).
        actual = sorted(
            {
                kr.route.table
                for kr in present
                if kr.route.family == family
                and kr.route.table not in (LOCAL_TABLE, engine.rp_table)
                and engine.policy.instance_route(kr)
            }
        )
        need = engine.rules_needed(intent, family) if intent is not None else set()
        rule_state = (
            "n/a" if not need or ifindex is None else ("ok" if need <= rules else "missing")
        )
        if addresses or actual:
            tables = list(fam.tables) if fam is not None else None
            row.families.append(FamilyStatus(name, addresses, tables, actual, rule_state))
    if snap.status != "Running" or ifindex is None:
        if row.state == "ok":
            row.state = "stopped"
    elif intent is not None and host_name and engine.plan_device(host_name, intent).plan:
        row.state = "drift"
    return row


def print_status(rows: list[DeviceStatus], fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([asdict(r) for r in rows], indent=2))
        return
    header = (
        "INSTANCE",
        "DEVICE",
        "HOST IF",
        "FAMILY",
        "ADDRESSES",
        "TABLES",
        "ACTUAL",
        "RULES",
        "STATE",
    )
    table: list[tuple[str, ...]] = [header]
    for r in rows:
        fams = r.families or [FamilyStatus("-", [], None, [], "n/a")]
        for f in fams:
            table.append(
                (
                    f"{r.project}/{r.instance}",
                    r.device,
                    r.host_name or "-",
                    f.family,
                    ",".join(f.addresses) or "-",
                    ",".join(map(str, f.tables)) if f.tables is not None else "invalid",
                    ",".join(map(str, f.actual_tables)) or "-",
                    f.rules,
                    r.state,
                )
            )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for r in rows:
        if r.detail:
            print(f"{r.project}/{r.instance} {r.device}: {r.detail}")
        for warning in r.warnings:
            print(f"warning: {r.project}/{r.instance} {r.device}: {warning}")
