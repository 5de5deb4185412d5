"""LXD from the snap: why `enable` refuses to attach hooks there.

The LXD snap runs LXC, and so every ``raw.lxc`` hook, inside the snap's own
mount namespace. Its root is the snap's base, not the host's: the hook
command's interpreter and the plugin's hook client do not exist at their
host paths, and storage pools (btrfs, zfs, loop files) are mounted only in
that namespace, so the instance's backup.yaml is not readable from the
host's. A hook that cannot run fails every container start (fail closed).
Until that path is proven on a snap host, `enable` refuses there and the
operator runs the daemon, which needs neither (docs/lxd.md#the-lxd-snap).
"""

from __future__ import annotations

import os

from .incus import find_socket

SNAP_LXD_DIR = "/var/snap/lxd/"


def is_snap_socket(socket_path: str) -> bool:
    """True for the socket of an LXD installed from the snap."""
    return os.path.realpath(socket_path).startswith(SNAP_LXD_DIR)


def enable_refusal(socket: str | None) -> str | None:
    """Why hooks must not be attached through ``socket`` (found as every
    command finds it), or None when they may."""
    path = find_socket(socket)
    if not is_snap_socket(path):
        return None
    return (
        f"LXD runs from the snap (socket {path}): LXC runs hooks inside the snap's mount "
        "namespace, where the hook command and the instance's files are not reachable, "
        "so every start would be refused; hooks not attached. Run the daemon instead "
        "(incus-host-tables watch), see docs/lxd.md"
    )
