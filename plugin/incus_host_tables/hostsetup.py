"""`install` and `uninstall` for installs without the Debian package.

Order matters so that no container start ever breaks: `install` writes the
hook before anything can point at it; `uninstall` first removes the hook
lines from every profile, and deletes the hook only when that worked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

from . import hostfiles
from .exitcodes import ExitCode

UNIT_NAME = "incus-host-tables.service"


def _systemd_running(root: str) -> bool:
    # Only on the real root: a scratch root has no service manager.
    return (
        os.path.realpath(root) == "/"
        and os.path.isdir("/run/systemd/system")
        and shutil.which("systemctl") is not None
    )


def _systemctl(*args: str) -> None:
    proc = subprocess.run(["systemctl", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        print(f"warning: systemctl {' '.join(args)}: {proc.stderr.strip()}", file=sys.stderr)


def _report(verb: str, paths: list[str], root: str) -> None:
    for path in paths:
        print(f"{verb} {path}")
    if _systemd_running(root):
        _systemctl("daemon-reload")


def install(root: str, executable: str | None, python: str | None) -> int:
    try:
        written = hostfiles.install(
            root, executable or hostfiles.default_executable(), python or sys.executable
        )
    except (hostfiles.InstallError, OSError) as err:
        print(f"error: install: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    _report("installed", written, root)
    print("next: systemctl enable --now incus-host-tables; incus-host-tables enable --all-profiles")
    return ExitCode.OK


def remove_all_hooks(socket: str | None) -> int:
    """Hook lines out of every profile of every project. No Incus/LXD socket
    at all means no profile to clean; an unreachable daemon is an error."""
    # Only here: `install` needs neither pylxd nor requests.
    from . import profiles
    from .incus import IncusClient, IncusError, SocketNotFoundError

    try:
        client = IncusClient(socket)
    except SocketNotFoundError as err:
        named = socket or any(os.environ.get(v) for v in ("INCUS_SOCKET", "INCUS_DIR", "LXD_DIR"))
        if not named:  # nothing at any default place: no daemon, no profiles
            print(f"no Incus or LXD found, no profiles to clean ({err})")
            return ExitCode.OK
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    except IncusError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    try:
        return profiles.apply(client, profiles.all_profiles(client), None)
    except IncusError as err:
        print(f"error: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    finally:
        client.close()


def uninstall(root: str, socket: str | None, hooks_only: bool) -> int:
    rc = remove_all_hooks(socket)
    if rc != ExitCode.OK:
        print(
            "error: uninstall: hooks may remain in profiles, so the hook stays installed; "
            "start Incus (or pass --socket) and run uninstall again",
            file=sys.stderr,
        )
        return rc
    if hooks_only:
        return ExitCode.OK
    if _systemd_running(root):
        _systemctl("disable", "--now", UNIT_NAME)
    try:
        removed = hostfiles.uninstall(root)
    except (hostfiles.InstallError, OSError) as err:
        print(f"error: uninstall: {err}", file=sys.stderr)
        return ExitCode.ENVIRONMENT
    _report("removed", removed, root)
    return ExitCode.OK
