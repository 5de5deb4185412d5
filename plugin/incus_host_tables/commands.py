"""The instance-level commands: they read Incus (pylxd) and act through the
lifecycle, exactly as the daemon and the hooks do."""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from enum import Enum
from types import MappingProxyType

from . import problems
from .config import ConfigError, DeviceIntent, TableSettings, check_device, parse_device
from .desired import FAMILY_OF
from .engine import FULL, Engine
from .exitcodes import ExitCode
from .formats import Format, render
from .incus import IncusClient, InstanceSnapshot
from .lifecycle import Lifecycle, Outcome
from .model import LOCAL_TABLE, KernelRoute, Rule
from .policy import Policy, device_violations
from .rttables import SystemTableNames
from .rulecheck import PolicyRule, intent_warnings

# The kernel's policy rules per family (doctor.kernel_policy_rules), for the
# main-domain warnings; empty when they could not be read.
KernelRules = Mapping[int, Sequence[PolicyRule]]
NO_RULES: KernelRules = MappingProxyType({})

EXIT_OK = ExitCode.OK
EXIT_PROBLEM = ExitCode.INVALID

# One line of what a list command found: a change, a warning, an error, or a
# change that isolating a failed instance would make.
RECORD_FIELDS = ("instance", "device", "kind", "text")


class RecordKind(Enum):
    CHANGE = "change"
    WARNING = "warning"
    ERROR = "error"
    ISOLATION = "isolation"


@dataclass(frozen=True)
class Record:
    instance: str  # PROJECT/NAME; "" for host-wide lines (rules)
    device: str
    kind: RecordKind
    text: str

    def as_dict(self) -> dict[str, str]:
        return {
            "instance": self.instance,
            "device": self.device,
            "kind": self.kind.value,
            "text": self.text,
        }


def select(
    client: IncusClient, names: Sequence[str], project: str, all_projects: bool
) -> list[InstanceSnapshot]:
    """The named instances of ``project``; none named: every local instance
    of the project (or of all projects)."""
    if names:
        return [client.instance(name, project) for name in dict.fromkeys(names)]
    return client.instances(project=project, all_projects=all_projects)


def _emit(records: list[Record], fmt: Format, table_lines: Callable[[], None]) -> None:
    if fmt is Format.TABLE:
        table_lines()
    else:
        sys.stdout.write(render([r.as_dict() for r in records], fmt, RECORD_FIELDS))


def validate(
    snapshots: list[InstanceSnapshot],
    tables: TableSettings,
    fmt: Format,
    policy: Policy | None = None,
    rules: KernelRules = NO_RULES,
) -> int:
    """Every problem (config, tenant policy) and warning (config, policy
    rules that let main-domain traffic into a chosen table) of the
    instances' NICs."""
    records: list[Record] = []
    for snap in snapshots:
        for nic in snap.nics:
            found, warnings = check_device(nic.config, tables)
            if not found:
                intent = parse_device(nic.config, tables)
                found = device_violations(policy, snap.project, nic.device, nic.config, intent)
                warnings = [*warnings, *intent_warnings(rules, intent)]
            who = f"{snap.project}/{snap.name}"
            records += [Record(who, nic.device, RecordKind.ERROR, p) for p in found]
            records += [Record(who, nic.device, RecordKind.WARNING, w) for w in warnings]
    errors = sum(r.kind is RecordKind.ERROR for r in records)

    def table() -> None:
        for r in records:
            prefix = "warning: " if r.kind is RecordKind.WARNING else ""
            print(f"{prefix}{r.instance} device {r.device}: {r.text}", file=sys.stderr)
        if not errors:
            print(f"{len(snapshots)} instance(s) valid")

    _emit(records, fmt, table)
    return EXIT_PROBLEM if errors else EXIT_OK


def _outcome_records(out: Outcome) -> list[Record]:
    who = f"{out.project}/{out.name}"
    records: list[Record] = []
    for result in out.nics:
        records += [Record(who, result.device, RecordKind.CHANGE, c) for c in result.changes]
        records += [Record(who, result.device, RecordKind.WARNING, w) for w in result.warnings]
    if out.error:
        records.append(Record(who, "", RecordKind.ERROR, out.error))
    for result in out.nics:  # after the error line, as a dry run shows them
        records += [Record(who, result.device, RecordKind.ISOLATION, c) for c in result.isolated]
    return records


def _isolation_records(
    out: Outcome,
    snap: InstanceSnapshot,
    engine: Engine,
    lifecycle: Lifecycle,
    gone: list[KernelRoute],
) -> list[Record]:
    """What isolating a failed instance would remove (a dry run does not);
    the routes go to ``gone``."""
    who = f"{out.project}/{out.name}"
    records: list[Record] = []
    for nic in snap.nics:
        if nic.host_name is None:
            continue
        try:
            intent: DeviceIntent | None = lifecycle.parse(nic.config)
        except ConfigError:
            intent = None
        dp = engine.plan_cleanup(nic.host_name, intent)
        gone += dp.plan.route_delete
        records += [Record(who, nic.device, RecordKind.ISOLATION, line) for line in dp.lines()]
    return records


def act(
    engine: Engine,
    snapshots: list[InstanceSnapshot],
    action: str,
    *,
    tables: TableSettings,
    dry_run: bool = False,
    fmt: Format = Format.TABLE,
) -> int:
    """plan | apply | cleanup | reconcile, instance by instance. ``plan`` is
    a dry run of ``apply``; ``reconcile --dry-run`` of ``reconcile``: both
    change nothing and print what would change, isolations included."""
    dry_run = dry_run or action == "plan"
    lifecycle = Lifecycle(engine, source=f"cli {action}", tables=tables)
    rc = EXIT_OK
    records: list[Record] = []
    added_rules: set[str] = set()
    gone: list[KernelRoute] = []  # a dry run's isolations: what they would remove
    for snap in snapshots:
        nics = snap.nics
        if action == "cleanup" or snap.status != "Running":
            out = lifecycle.stop(snap.project, snap.name, nics, dry_run=dry_run)
        else:
            out = lifecycle.start(snap.project, snap.name, nics, dry_run=dry_run)
        found = _outcome_records(out)
        if dry_run and not out.ok:
            found += _isolation_records(out, snap, engine, lifecycle, gone)
        if dry_run:
            # Each instance is planned against the unchanged kernel, so a
            # rule that several need shows in each plan; the real run adds
            # it once, for the first.
            found = [r for r in found if not _repeated_rule(r, added_rules)]
        if fmt is Format.TABLE:
            _print_records(found)  # as it happens: a long run shows progress
        records += found
        if not out.ok:
            rc = EXIT_PROBLEM
    if action == "reconcile":
        # Each isolation is planned against the unchanged kernel: a rule that
        # only isolated instances held shows here, once they count as gone.
        dp = engine.plan_rules_resync(gone) if dry_run else engine.resync_rules()
        shown = {r.text for r in records}
        rules = [
            Record("", "", RecordKind.CHANGE, line) for line in dp.lines() if line not in shown
        ]
        if fmt is Format.TABLE:
            _print_records(rules)
        records += rules
    if fmt is Format.TABLE:
        acting = (RecordKind.CHANGE, RecordKind.ISOLATION)
        if dry_run and not any(r.kind in acting for r in records):
            print("no changes")
    else:
        _emit(records, fmt, lambda: None)
    return rc


def _repeated_rule(record: Record, added: set[str]) -> bool:
    if record.kind is not RecordKind.CHANGE or not record.text.startswith("+ rule "):
        return False
    if record.text in added:
        return True
    added.add(record.text)
    return False


def _print_records(records: list[Record]) -> None:
    for r in records:
        where = f"{r.instance} {r.device}".strip()
        if r.kind is RecordKind.CHANGE:
            print(f"{where}: {r.text}" if where else r.text)
        elif r.kind is RecordKind.ISOLATION:
            print(f"{where}: isolate: {r.text}")
        elif r.kind is RecordKind.WARNING:
            print(f"warning: {where}: {r.text}", file=sys.stderr)
        else:
            print(f"error: {r.instance}: {r.text}", file=sys.stderr)


@dataclass
class FamilyStatus:
    family: str
    addresses: list[str]
    tables: list[int] | None  # chosen; None when the config is invalid
    actual_tables: list[int]  # where the instance's routes really are
    rules: str  # ok | missing | n/a
    table_names: dict[str, str] = field(default_factory=dict)  # ID -> iproute2 name


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

    @property
    def fine(self) -> bool:
        """What ``status --check`` accepts: nothing to fix, nothing to read."""
        return self.state in ("ok", "stopped") and not self.warnings


def status(
    engine: Engine,
    snapshots: list[InstanceSnapshot],
    tables: TableSettings,
    names: SystemTableNames | None = None,
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
            row = _device_status(
                engine, snap, nic.device, nic.config, nic.host_name, plugin_rules, tables
            )
            _judge_policy(row, policy, rules, snap.project, nic.config, tables)
            if problem is not None:
                row.state = "error"
                row.detail = row.detail or str(problem.get("message"))
            if names is not None:
                for fam in row.families:
                    for table in {*(fam.tables or []), *fam.actual_tables}:
                        name = names.name_of(table)
                        if name is not None and name != str(table):
                            fam.table_names[str(table)] = name
            rows.append(row)
    return rows


def _judge_policy(
    row: DeviceStatus,
    policy: Policy | None,
    rules: KernelRules,
    project: str,
    config: Mapping[str, str],
    tables: TableSettings,
) -> None:
    """Tenant-policy violations make the row an error; policy rules that let
    main-domain traffic into a chosen table are warnings."""
    try:
        intent = parse_device(config, tables)
    except ConfigError:
        return  # already an error
    violations = device_violations(policy, project, row.device, config, intent)
    if violations:
        row.state = "error"
        row.detail = "policy violation: " + "; ".join(violations)
    row.warnings += intent_warnings(rules, intent)


def _device_status(
    engine: Engine,
    snap: InstanceSnapshot,
    device: str,
    config: Mapping[str, str],
    host_name: str | None,
    rules: set[Rule],
    tables: TableSettings,
) -> DeviceStatus:
    row = DeviceStatus(snap.project, snap.name, device, host_name, "ok")
    try:
        intent: DeviceIntent | None = parse_device(config, tables)
    except ConfigError as err:
        intent = None
        row.state, row.detail = "error", str(err)
    if intent is not None:
        row.warnings = list(intent.warnings)
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
            chosen = list(fam.tables) if fam is not None else None
            row.families.append(FamilyStatus(name, addresses, chosen, actual, rule_state))
    if snap.status != "Running" or ifindex is None:
        if row.state == "ok":
            row.state = "stopped"
    elif intent is not None and host_name and engine.plan_device(host_name, intent, FULL).plan:
        row.state = "drift"
    return row


STATUS_FIELDS = (
    "instance",
    "device",
    "host_name",
    "family",
    "addresses",
    "tables",
    "actual_tables",
    "rules",
    "state",
    "warnings",
    "detail",
)


def _tables_cell(tables: list[int] | None, names: Mapping[str, str]) -> str:
    if tables is None:
        return "invalid"
    return ",".join(f"{t}({names[str(t)]})" if str(t) in names else str(t) for t in tables)


def _flat_status(rows: list[DeviceStatus]) -> list[dict[str, object]]:
    """One record per instance, device and family: the table's rows."""
    flat: list[dict[str, object]] = []
    for r in rows:
        for f in r.families or [FamilyStatus("-", [], None, [], "n/a")]:
            flat.append(
                {
                    "instance": f"{r.project}/{r.instance}",
                    "device": r.device,
                    "host_name": r.host_name or "-",
                    "family": f.family,
                    "addresses": ",".join(f.addresses) or "-",
                    "tables": _tables_cell(f.tables, f.table_names),
                    "actual_tables": _tables_cell(f.actual_tables, f.table_names) or "-",
                    "rules": f.rules,
                    "state": r.state,
                    "warnings": "; ".join(r.warnings),
                    "detail": r.detail,
                }
            )
    return flat


def print_status(rows: list[DeviceStatus], fmt: Format) -> None:
    if fmt in (Format.JSON, Format.YAML):
        sys.stdout.write(render([asdict(r) for r in rows], fmt, STATUS_FIELDS))
        return
    flat = _flat_status(rows)
    if fmt is Format.CSV:
        sys.stdout.write(render(flat, fmt, STATUS_FIELDS))
        return
    columns = STATUS_FIELDS[:9]
    header = ("INSTANCE", "DEVICE", "HOST IF", "FAMILY", "ADDRESSES", "TABLES", "ACTUAL", "RULES",
              "STATE")  # fmt: skip
    table: list[tuple[str, ...]] = [header]
    table += [tuple(str(record[c]) for c in columns) for record in flat]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]
    for r in rows:
        if r.detail:
            lines.append(f"{r.project}/{r.instance} {r.device}: {r.detail}")
        lines += [f"{r.project}/{r.instance} {r.device}: warning: {w}" for w in r.warnings]
    sys.stdout.write("\n".join(lines) + "\n")
