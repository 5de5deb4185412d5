"""The instance-level commands: they read Incus (pylxd) and act through the
lifecycle, exactly as the daemon and the hooks do."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field

from . import problems
from .config import ConfigError, parse_device, validate_device
from .daemon import nics_of
from .desired import FAMILY_OF, desired_routes, instance_prefixes, rules_for_routes
from .engine import Engine
from .incus import IncusClient, InstanceSnapshot
from .lifecycle import Lifecycle, Outcome

EXIT_OK = 0
EXIT_PROBLEM = 1


def select(
    client: IncusClient, instance: str | None, project: str, all_projects: bool
) -> list[InstanceSnapshot]:
    if instance is not None:
        return [client.instance(instance, project)]
    return client.instances(project=project, all_projects=all_projects)


def validate(snapshots: list[InstanceSnapshot]) -> int:
    found = 0
    for snap in snapshots:
        for nic in snap.nics:
            for problem in validate_device(nic.config):
                print(f"{snap.project}/{snap.name} device {nic.device}: {problem}", file=sys.stderr)
                found += 1
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
        nics = nics_of(snap)
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


def status(engine: Engine, snapshots: list[InstanceSnapshot]) -> list[DeviceStatus]:
    out: list[DeviceStatus] = []
    rules = {kr.rule for kr in engine.plugin_rules()}
    for snap in snapshots:
        problem = problems.read(snap.project, snap.name)
        for nic in snap.nics:
            ds = DeviceStatus(snap.project, snap.name, nic.device, nic.host_name, "ok")
            out.append(ds)
            try:
                intent = parse_device(nic.config)
            except ConfigError as err:
                intent = None
                ds.state, ds.detail = "error", str(err)
            present = []
            ifindex = engine.nl.ifindex(nic.host_name) if nic.host_name else None
            if ifindex is not None:
                present = engine.link_routes(ifindex)
            owned = instance_prefixes(intent) if intent is not None else set()
            for name, family in FAMILY_OF.items():
                fam = getattr(intent, name) if intent is not None else None
                addrs = [str(a) for a in fam.addresses] if fam is not None else []
                actual = sorted(
                    {
                        kr.route.table
                        for kr in present
                        if kr.route.family == family
                        and (kr.route.family, kr.route.dst, kr.route.prefixlen) in owned
                    }
                )
                rule_state = "n/a"
                if intent is not None and fam is not None and addrs:
                    need = rules_for_routes(
                        [r for r in desired_routes(intent) if r.family == family],
                        engine.rule_priority,
                    )
                    if need:
                        rule_state = "ok" if need <= rules else "missing"
                out_fam = FamilyStatus(
                    name, addrs, list(fam.tables) if fam else None, actual, rule_state
                )
                if addrs or actual:
                    ds.families.append(out_fam)
            if snap.status != "Running" or ifindex is None:
                if ds.state == "ok":
                    ds.state = "stopped"
            elif intent is not None and engine.plan_device(nic.host_name or "", intent).plan:
                ds.state = "drift"
            if problem:
                # The last refusal or isolation, as the hook or daemon saw it.
                ds.detail = ds.detail or str(problem.get("message"))
                if ds.state in ("ok", "stopped"):
                    ds.state = "error" if ds.state == "stopped" else ds.state
    return out


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
