"""`enable` and `disable`: the plugin's hook lines in profiles' raw.lxc,
for one profile or every profile of every project."""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

from . import rawlxc
from .exitcodes import ExitCode
from .incus import IncusClient, IncusError

HOOK_ENV = "INCUS_HOST_TABLES_HOOK"

ProfileRef = tuple[str, str]  # (project, profile)


class HookMissingError(Exception):
    """The hook executable `enable` would write into raw.lxc is not there."""


@dataclass(frozen=True)
class ProfileChange:
    project: str
    profile: str
    changed: bool

    def line(self, enabled: bool) -> str:
        state = "attached to" if enabled else "removed from"
        where = "" if self.project == "default" else f" in project {self.project}"
        return f"hooks {state} profile {self.profile}{where}" + (
            "" if self.changed else " (unchanged)"
        )


def hook_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(HOOK_ENV) or rawlxc.DEFAULT_HOOK


def all_profiles(client: IncusClient) -> list[ProfileRef]:
    """Every profile of every project, once: a project without its own
    profiles uses default's, listed under the project that owns them."""
    refs: set[ProfileRef] = set()
    for project in client.projects():
        refs.update(client.profiles(project))
    return sorted(refs)


def set_hooks(client: IncusClient, ref: ProfileRef, command: str | None) -> ProfileChange:
    """Attach the hook lines running ``command`` (None: remove them)."""
    project, name = ref
    raw = client.profile_config(name, project).get("raw.lxc", "")
    new = rawlxc.add_hooks(raw, command) if command is not None else rawlxc.remove_hooks(raw)
    if new != raw:
        client.set_profile_config(name, "raw.lxc", new, project)
    return ProfileChange(project, name, new != raw)


def apply(client: IncusClient, refs: list[ProfileRef], command: str | None) -> int:
    """Profile by profile, printing each result. Every profile is consistent
    on its own, so an error stops the run with the ones done reported."""
    for ref in refs:
        try:
            change = set_hooks(client, ref, command)
        except IncusError as err:
            print(f"error: profile {ref[1]} in project {ref[0]}: {err}", file=sys.stderr)
            return ExitCode.ENVIRONMENT
        print(change.line(command is not None))
    return ExitCode.OK


def enable_command(hook: str, run_dir: str, *, rp_table: int, rule_priority: int) -> str:
    """The hook command for raw.lxc, with the host settings in use (a hook
    without the daemon must act as the daemon would); the hook must exist,
    or every container start with this profile would fail."""
    if not os.access(hook, os.X_OK) or not os.path.isfile(hook):
        raise HookMissingError(
            f"hook {hook} is missing or not executable: install the package "
            "or run `incus-host-tables install` first"
        )
    return rawlxc.hook_command(hook, run_dir, rp_table=rp_table, rule_priority=rule_priority)
