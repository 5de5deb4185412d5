"""Instance start / stop / change -> engine calls. One code path for the
hooks, the daemon and the CLI.

Policy for instances (unlike the low-level `device apply`): an instance whose
config is invalid, or whose apply failed, is isolated -- its host routes are
removed from every table -- so it can never be reachable from main by
accident. Work on one instance is serialized by a per-instance lock that also
holds across processes.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from . import problems
from .config import ConfigError, DeviceIntent, parse_device
from .engine import Engine, InterfaceMissing
from .locking import run_dir
from .netlink.kernel import ApplyError
from .policy import ACTIVE as ACTIVE_POLICY

log = logging.getLogger("incus-host-tables")


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


@dataclass
class Outcome:
    project: str
    name: str
    action: str
    nics: list[NicResult] = field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@contextmanager
def instance_lock(project: str, name: str) -> Iterator[None]:
    directory = os.path.join(run_dir(), "instances", project)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    fd = os.open(
        os.path.join(directory, f"{name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
    )
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _intent_or_none(config: Mapping[str, str]) -> DeviceIntent | None:
    try:
        return parse_device(config)
    except ConfigError:
        return None


class Lifecycle:
    def __init__(self, engine: Engine, *, source: str = "cli") -> None:
        self.engine = engine
        self.source = source

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
        out = Outcome(project, name, "plan" if dry_run else "apply")
        intents: dict[str, DeviceIntent] = {}
        problems_found: list[str] = []
        denied: list[str] = []  # tenant policy (policy.py): refused like an invalid config
        for nic in nics:
            result = NicResult(nic.device, nic.host_name)
            out.nics.append(result)
            try:
                intent = parse_device(nic.config)
            except ConfigError as err:
                result.error = str(err)
                problems_found.extend(f"device {nic.device}: {p}" for p in err.problems)
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
                    self.engine.plan_cleanup(old.host_name, _intent_or_none(old.config))
                    if dry_run
                    else self.engine.cleanup(old.host_name, _intent_or_none(old.config))
                )
                out.nics.append(NicResult(old.device, old.host_name, dp.lines()))

        for nic, result in zip(nics, nic_results, strict=True):
            assert nic.host_name is not None
            try:
                dp = self.engine.converge(nic.host_name, intents[nic.device], dry_run=dry_run)
            except (ApplyError, InterfaceMissing) as err:
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
        for nic in nics:
            try:
                self.engine.cleanup(nic.host_name, _intent_or_none(nic.config))
            except (ApplyError, OSError) as err:  # keep isolating the others
                log.error(
                    "%s/%s device %s: isolation failed: %s", out.project, out.name, nic.device, err
                )
                out.error += f"; isolation of device {nic.device} failed: {err}"
        return out

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
        rules only they needed. ``forget``: the instance is gone (deleted)."""
        with instance_lock(project, name):
            out = Outcome(project, name, "plan-cleanup" if dry_run else "cleanup")
            for nic in nics:
                result = NicResult(nic.device, nic.host_name)
                out.nics.append(result)
                try:
                    if dry_run:
                        dp = self.engine.plan_cleanup(nic.host_name, _intent_or_none(nic.config))
                    else:
                        dp = self.engine.cleanup(nic.host_name, _intent_or_none(nic.config))
                    result.changes = dp.lines()
                except ApplyError as err:
                    result.error = str(err)
                    out.error = f"device {nic.device}: {err}"
            if not dry_run and any(_intent_or_none(n.config) is None for n in nics):
                # Which rules such a NIC needed is unknown: resync them all.
                self.engine.resync_rules()
            if not dry_run and forget:
                # A recorded refusal stays until a successful start, so that
                # `status` still explains a stopped instance; a deleted one
                # has nothing left to explain.
                problems.clear(project, name)
            return out
