"""Adding and removing the plugin's hook lines in a profile's raw.lxc. Pure."""

from __future__ import annotations

import shlex

from .desired import DEFAULT_RULE_PRIORITY
from .locking import DEFAULT_RUN_DIR
from .model import DEFAULT_RP_TABLE

HOOK_KEYS = ("lxc.hook.start-host", "lxc.hook.post-stop")
# The executable LXC runs: the stdlib-only hook client, installed by the
# Debian package or by `incus-host-tables install`. Its path names no Python
# version and no site-packages, so upgrading either never breaks a start.
DEFAULT_HOOK = "/usr/libexec/incus-host-tables/hook"
HOOK_SUFFIX = "/incus-host-tables/hook"
# Hook lines of versions that named the interpreter and the module file.
LEGACY_MARK = "incus_host_tables"


def hook_command(
    hook: str = DEFAULT_HOOK,
    run_dir: str | None = None,
    *,
    rp_table: int = DEFAULT_RP_TABLE,
    rule_priority: int = DEFAULT_RULE_PRIORITY,
) -> str:
    """The command written into raw.lxc. LXC does not pass its daemon's
    environment on, so a non-default run directory, reverse-path table or
    rule priority is written into it: a hook that runs without the daemon
    must use the same table and preference as the daemon does."""
    command = shlex.quote(hook)
    if run_dir is not None and run_dir != DEFAULT_RUN_DIR:
        command += f" --run-dir {shlex.quote(run_dir)}"
    if rp_table != DEFAULT_RP_TABLE:
        command += f" --rp-table {rp_table}"
    if rule_priority != DEFAULT_RULE_PRIORITY:
        command += f" --rule-priority {rule_priority}"
    return command


def _words(value: str) -> list[str]:
    try:
        return shlex.split(value)
    except ValueError:  # unbalanced quotes: not a line we wrote
        return value.split()


def _is_ours(line: str) -> bool:
    key, sep, value = line.partition("=")
    if not sep or key.strip() not in HOOK_KEYS:
        return False
    words = _words(value)
    return LEGACY_MARK in value or bool(words and words[0].endswith(HOOK_SUFFIX))


def hook_options(raw: str) -> dict[str, str]:
    """The options (``--run-dir``, ``--rp-table``, ``--rule-priority``) the
    plugin's first hook line in ``raw`` carries; {} when none."""
    for line in raw.splitlines():
        if _is_ours(line):
            words = _words(line.partition("=")[2])
            return dict(zip(words[1::2], words[2::2], strict=False))
    return {}


def remove_hooks(raw: str) -> str:
    lines = [line for line in raw.splitlines() if not _is_ours(line)]
    return "\n".join(lines) + ("\n" if lines else "")


def add_hooks(raw: str, command: str) -> str:
    """``raw`` with exactly one copy of the plugin's hook lines; every other
    line kept as it was (hook lines of older versions are replaced)."""
    kept = remove_hooks(raw)
    return kept + "".join(f"{key} = {command}\n" for key in HOOK_KEYS)


def has_hooks(raw: str) -> bool:
    return any(_is_ours(line) for line in raw.splitlines())
