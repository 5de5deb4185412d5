"""The files `incus-host-tables install` puts on a host that did not get them
from the Debian package: the systemd unit, the hook executable and the
iproute2 names (protocol 158, the reverse-path table 1158).

All paths are relative to a root directory ("/" on a real host), so tests
install into a scratch directory. Files are written atomically (temporary
file, then rename): a container start never runs a half-written hook.
"""

from __future__ import annotations

import os
import re
import sys
from dataclasses import dataclass
from importlib import resources

from . import rawlxc

UNIT = "etc/systemd/system/incus-host-tables.service"
HOOK = rawlxc.DEFAULT_HOOK.lstrip("/")
RT_PROTOS = "etc/iproute2/rt_protos.d/incus-host-tables.conf"
RT_TABLES = "etc/iproute2/rt_tables.d/incus-host-tables.conf"
# Present when the Debian package is installed: it owns these files.
DPKG_LIST = "var/lib/dpkg/info/incus-host-tables.list"
_SAFE_PATH = re.compile(r"^/[A-Za-z0-9._/+@-]*$")  # nothing systemd or a shebang would split
_SAFE_WORD = re.compile(r"^[A-Za-z0-9._/+@-]+$")


class InstallError(Exception):
    """The files cannot be installed or removed as asked."""


@dataclass(frozen=True)
class HostFile:
    path: str  # relative to the root
    text: str
    mode: int


def data_text(name: str) -> str:
    return (resources.files("incus_host_tables") / "data" / name).read_text(encoding="utf-8")


def default_executable() -> str:
    """How systemd should start this installation's command: the console
    script that is running (pipx's ~/.local/bin link survives reinstalls),
    else this interpreter with ``-m``."""
    argv0 = sys.argv[0] if sys.argv else ""
    if os.path.basename(argv0) == "incus-host-tables":
        return os.path.abspath(argv0)
    return f"{sys.executable} -m incus_host_tables"


def unit_text(executable: str) -> str:
    words = executable.split(" ")
    if not _SAFE_PATH.match(words[0]) or not all(_SAFE_WORD.match(w) for w in words):
        raise InstallError(
            f"executable {executable!r}: need an absolute path without spaces or quotes"
        )
    unit = data_text("incus-host-tables.service")
    text, count = re.subn(r"^ExecStart=.*$", f"ExecStart={executable} watch", unit, flags=re.M)
    if count != 1:  # pragma: no cover - the shipped unit has one
        raise InstallError("the shipped unit has no single ExecStart= line")
    return text


def hook_text(python: str) -> str:
    """The hook client as a script run by ``python -I -S``."""
    if not _SAFE_PATH.match(python):
        raise InstallError(f"python {python!r} is not a plain absolute path")
    source = resources.files("incus_host_tables") / "hookclient.py"
    return f"#!{python} -IS\n" + source.read_text(encoding="utf-8")


def host_files(executable: str, python: str) -> list[HostFile]:
    return [
        HostFile(UNIT, unit_text(executable), 0o644),
        HostFile(HOOK, hook_text(python), 0o755),
        HostFile(RT_PROTOS, data_text("rt_protos.conf"), 0o644),
        HostFile(RT_TABLES, data_text("rt_tables.conf"), 0o644),
    ]


def _check_not_packaged(root: str) -> None:
    if os.path.exists(os.path.join(root, DPKG_LIST)):
        raise InstallError(
            "the incus-host-tables Debian package is installed and owns these files; "
            "use apt to upgrade or remove it"
        )


def _write(path: str, text: str, mode: int) -> None:
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def install(root: str, executable: str, python: str) -> list[str]:
    """Write every file (replacing older versions); return their paths."""
    _check_not_packaged(root)
    files = host_files(executable, python)  # everything rendered before writing
    written = []
    for f in files:
        path = os.path.join(root, f.path)
        _write(path, f.text, f.mode)
        written.append(path)
    return written


def uninstall(root: str) -> list[str]:
    """Remove every file that exists; return the removed paths."""
    _check_not_packaged(root)
    removed = []
    for rel in (UNIT, HOOK, RT_PROTOS, RT_TABLES):
        path = os.path.join(root, rel)
        if os.path.lexists(path):
            os.unlink(path)
            removed.append(path)
    hook_dir = os.path.dirname(os.path.join(root, HOOK))
    if os.path.isdir(hook_dir) and not os.listdir(hook_dir):
        os.rmdir(hook_dir)
    return removed
