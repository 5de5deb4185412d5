"""Adding and removing the plugin's hook lines in a profile's raw.lxc. Pure."""

from __future__ import annotations

import os
import shlex
import sys

from .locking import DEFAULT_RUN_DIR

HOOK_KEYS = ("lxc.hook.start-host", "lxc.hook.post-stop")


def hook_command(python: str | None = None, run_dir: str | None = None) -> str:
    """The command LXC runs: this installation's interpreter on the stdlib-only
    hook client, so LXC's plain PATH and no virtualenv activation suffice.
    LXC does not pass its daemon's environment on, so a non-default run
    directory is written into the command."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "hookclient.py")
    command = f"{shlex.quote(python or sys.executable)} -I -S {shlex.quote(script)}"
    if run_dir is not None and run_dir != DEFAULT_RUN_DIR:
        command += f" --run-dir {shlex.quote(run_dir)}"
    return command


def _is_ours(line: str) -> bool:
    key, sep, value = line.partition("=")
    return bool(sep) and key.strip() in HOOK_KEYS and "incus_host_tables" in value


def remove_hooks(raw: str) -> str:
    lines = [line for line in raw.splitlines() if not _is_ours(line)]
    return "\n".join(lines) + ("\n" if lines else "")


def add_hooks(raw: str, command: str) -> str:
    """``raw`` with exactly one copy of the plugin's hook lines; every other
    line kept as it was."""
    kept = remove_hooks(raw)
    return kept + "".join(f"{key} = {command}\n" for key in HOOK_KEYS)


def has_hooks(raw: str) -> bool:
    return any(_is_ours(line) for line in raw.splitlines())
