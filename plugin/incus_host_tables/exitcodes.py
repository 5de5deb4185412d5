"""The process exit codes of every command, in one place (docs/cli.md)."""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    INVALID = 1  # invalid configuration or an instance problem; nothing changed by `device`
    USAGE = 2  # bad option or argument
    APPLY_FAILED = 3  # the kernel refused a change; everything was rolled back
    UNDO_FAILED = 4  # ... and not everything could be undone
    ENVIRONMENT = 5  # interface missing, no permission, Incus unreachable
