"""Instance start / stop / change -> engine calls. One code path for the
hooks, the daemon and the CLI.

Policy for instances (unlike the low-level `device apply`): an instance whose
config is invalid, or whose apply failed, is isolated -- its host routes are
removed from every table -- so it can never be reachable from main by
accident. Work on one instance is serialized by a per-instance lock that also
holds across processes.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from . import problems
from .config import ConfigError, DeviceIntent, TableSettings, parse_device
from .engine import Engine, InterfaceMissing
from .facts import FAMILIES
from .locking import instance_lock
from .model import AF_INET
from .netlink.kernel import ApplyError, NetlinkError
from .policy import ACTIVE as ACTIVE_POLICY
from .rttables import host_table_settings

log = logging.getLogger("incus-host-tables")
FAMILY_NAMES = {family: "ipv4" if family == AF_INET else "ipv6" for family in FAMILIES}


class Nic(Protocol):
    """A routed NIC as lifecycle needs it, wherever it was read from: a
    pylxd snapshot (incus.NicSnapshot) or the hook's files (lxcconf.HookNic)."""

    @property
    def device(self) -> str: ...
    @property
    def config(self) -> Mapping[str, str]: ...
    @property
    def host_name(self) -> str | None: ...


@dataclass
class NicResult:
    device: str
    host_name: str | None
    changes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None
    # What isolating the instance removed from this NIC (``- route ...``):
    # a real run reports it as its dry run previewed it.
    isolated: list[str] = field(default_factory=list)


class Action(StrEnum):
    """What a lifecycle call did (or, dry, would do)."""

    PLAN = "plan"
    APPLY = "apply"
    PLAN_CLEANUP = "plan-cleanup"
    CLEANUP = "cleanup"


# What one NIC's engine call may fail with: a kernel refusal (rolled back or
# not), a vanished interface, any other netlink or OS error. Never let one
# NIC's failure stop the others.
NIC_FAILURES = (NetlinkError, OSError, InterfaceMissing, ApplyError, ConfigError)


@dataclass
class Outcome:
    project: str
    name: str
    action: str  # an Action, or the hook that failed before lifecycle ran
    nics: list[NicResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


class Lifecycle:
    def __init__(
        self, engine: Engine, *, source: str = "cli", tables: TableSettings | None = None
    ) -> None:
        self.engine = engine
        self.source = source
        # Names are resolved when applied: a fresh lookup per Lifecycle.
        self.tables = tables if tables is not None else host_table_settings(engine.rp_table)

    def parse(self, config: Mapping[str, str]) -> DeviceIntent:
        return parse_device(config, self.tables)

    def _intent_or_none(self, config: Mapping[str, str]) -> DeviceIntent | None:
        try:
            return self.parse(config)
        except ConfigError:
            return None

    def start(
        self,
        project: str,
        name: str,
        nics: Sequence[Nic],
        *,
        previous: Sequence[Nic] = (),
        dry_run: bool = False,
    ) -> Outcome:
        """Converge every routed NIC of a running instance. ``previous`` are
        the NICs as last applied: a host interface that changed (Incus
        re-created the device) is cleaned up first."""
        with instance_lock(project, name):
            return self._start(project, name, nics, previous, dry_run)

    def _start(
        self,
        project: str,
        name: str,
        nics: Sequence[Nic],
        previous: Sequence[Nic],
        dry_run: bool,
    ) -> Outcome:
        out = Outcome(project, name, Action.PLAN if dry_run else Action.APPLY)
        intents: dict[str, DeviceIntent] = {}
        problems_found: list[str] = []
        denied: list[str] = []  # tenant policy (policy.py): refused like an invalid config
        for nic in nics:
            result = NicResult(nic.device, nic.host_name)
            out.nics.append(result)
            try:
                intent = self.parse(nic.config)
            except ConfigError as err:
                result.error = str(err)
                problems_found.extend(f"device {nic.device}: {p}" for p in err.problems)
                continue
            refused = self.engine.intent_problems(intent)
            if refused:
                result.error = "; ".join(refused)
                problems_found.extend(f"device {nic.device}: {p}" for p in refused)
                continue
            violations = ACTIVE_POLICY.violations(project, nic.device, nic.config, intent)
            if violations:
                result.error = "; ".join(violations)
                denied.extend(violations)
                continue
            result.warnings.extend(intent.warnings)
            for warning in intent.warnings:
                log.warning("%s/%s device %s: %s", project, name, nic.device, warning)
            intents[nic.device] = intent
            if nic.host_name is None:
                result.error = "no host interface (volatile host_name unset)"
                problems_found.append(f"device {nic.device}: {result.error}")
        if problems_found or denied:
            reasons = (
                ["invalid configuration: " + "; ".join(problems_found)] if problems_found else []
            )
            reasons += ["policy violation: " + "; ".join(denied)] if denied else []
            return self._fail(out, nics, "; ".join(reasons), dry_run)

        nic_results = list(out.nics)
        current = {nic.host_name for nic in nics}
        for old in previous:
            if old.host_name is not None and old.host_name not in current:
                dp = (
                    self.engine.plan_cleanup(old.host_name, self._intent_or_none(old.config))
                    if dry_run
                    else self.engine.cleanup(old.host_name, self._intent_or_none(old.config))
                )
                out.nics.append(NicResult(old.device, old.host_name, dp.lines()))

        for nic, result in zip(nics, nic_results, strict=True):
            assert nic.host_name is not None
            try:
                dp = self.engine.converge(nic.host_name, intents[nic.device], dry_run=dry_run)
            except NIC_FAILURES as err:
                result.error = str(err)
                return self._fail(out, nics, f"device {nic.device}: {err}", dry_run)
            result.changes = dp.lines()
        if not dry_run:
            problems.clear(project, name)
        return out

    def _fail(self, out: Outcome, nics: Sequence[Nic], message: str, dry_run: bool) -> Outcome:
        """Fail closed: remove every host route of the instance, everywhere."""
        out.error = message
        if dry_run:
            return out
        log.error("%s/%s: %s; isolating the instance", out.project, out.name, message)
        problems.record(out.project, out.name, message, self.source)
        failed = False
        # The current NICs' results (an earlier host interface's come after).
        results = {(r.device, r.host_name): r for r in reversed(out.nics)}
        for nic in nics:
            removed, errors = self._cleanup_nic(nic, dry_run=False)
            result = results.get((nic.device, nic.host_name))
            if result is not None:
                result.isolated = removed
            for error in errors:  # the other NICs are isolated all the same
                failed = True
                log.error(
                    "%s/%s device %s: isolation failed: %s",
                    out.project,
                    out.name,
                    nic.device,
                    error,
                )
                out.error += f"; isolation of device {nic.device} failed: {error}"
        if failed or any(self._intent_or_none(n.config) is None for n in nics):
            out.error = _joined(out.error, self._resync())
        return out

    def _cleanup_nic(self, nic: Nic, *, dry_run: bool) -> tuple[list[str], list[str]]:
        """(changes, errors) of removing one NIC's routes. A failure of the
        whole is retried family by family, so that one family's trouble
        never keeps the other's routes in place."""
        intent = self._intent_or_none(nic.config)
        try:
            if dry_run:
                return self.engine.plan_cleanup(nic.host_name, intent).lines(), []
            return self.engine.cleanup(nic.host_name, intent).lines(), []
        except NIC_FAILURES as err:
            if dry_run:
                return [], [str(err)]
            first = str(err)
        changes: list[str] = []
        errors: list[str] = []
        for family in FAMILIES:
            try:
                changes += self.engine.cleanup(nic.host_name, intent, families=(family,)).lines()
            except NIC_FAILURES as err:
                errors.append(f"{FAMILY_NAMES[family]}: {err}")
        if errors and not any(first in e for e in errors):
            errors.insert(0, first)
        return changes, errors

    def _resync(self) -> str | None:
        """Resync the shared rules; the error, if that fails too."""
        try:
            self.engine.resync_rules()
        except NIC_FAILURES as err:
            log.error("rules resync failed: %s", err)
            return f"rules resync failed: {err}"
        return None

    def stop(
        self,
        project: str,
        name: str,
        nics: Sequence[Nic],
        *,
        dry_run: bool = False,
        forget: bool = False,
    ) -> Outcome:
        """Remove the NICs' routes (if their interfaces still exist) and the
        rules only they needed. ``forget``: the instance is gone (deleted).
        Every NIC and family is processed whatever fails; the errors are
        collected in the outcome, and the shared rules are resynced after
        any failure (or a NIC whose config is unreadable)."""
        with instance_lock(project, name):
            out = Outcome(project, name, Action.PLAN_CLEANUP if dry_run else Action.CLEANUP)
            errors: list[str] = []
            for nic in nics:
                result = NicResult(nic.device, nic.host_name)
                out.nics.append(result)
                result.changes, nic_errors = self._cleanup_nic(nic, dry_run=dry_run)
                if nic_errors:
                    result.error = "; ".join(nic_errors)
                    errors.append(f"device {nic.device}: {result.error}")
            out.error = "; ".join(errors) or None
            unknown = any(self._intent_or_none(n.config) is None for n in nics)
            if not dry_run and (errors or unknown):
                # Which rules the failed or unreadable NICs needed is not
                # known for sure: resync them all.
                out.error = _joined(out.error, self._resync())
            if not dry_run and forget:
                # A recorded refusal stays until a successful start, so that
                # `status` still explains a stopped instance; a deleted one
                # has nothing left to explain.
                problems.clear(project, name)
            return out


def _joined(first: str | None, second: str | None) -> str | None:
    parts = [p for p in (first, second) if p]
    return "; ".join(parts) or None
