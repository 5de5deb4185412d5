"""A tiny container image built from the machine's static busybox (no network)."""

from __future__ import annotations

import io
import os
import platform
import shutil
import struct
import tarfile
import time

__all__ = ["BUSYBOX_APPLETS", "ImageError", "build_busybox_image", "find_static_busybox"]

# Applets the tests use inside containers (symlinks to /bin/busybox).
BUSYBOX_APPLETS = ("sh", "ip", "ping", "sleep", "mount", "cat", "ls", "ps", "sysctl")

_INITTAB = """\
::sysinit:/bin/mount -t proc proc /proc
::respawn:/bin/sleep 2000000000
"""

# uname machine -> Incus architecture name
_ARCHES = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}


class ImageError(RuntimeError):
    pass


def _is_static_elf(path: str) -> bool:
    """True for an ELF executable without a PT_INTERP (dynamic loader) header."""
    with open(path, "rb") as f:
        ident = f.read(16)
        if ident[:4] != b"\x7fELF":
            return False
        is64, little = ident[4] == 2, ident[5] == 1
        end = "<" if little else ">"
        if is64:
            f.seek(0x20)
            (phoff,) = struct.unpack(end + "Q", f.read(8))
            f.seek(0x36)
        else:
            f.seek(0x1C)
            (phoff,) = struct.unpack(end + "I", f.read(4))
            f.seek(0x2A)
        phentsize, phnum = struct.unpack(end + "HH", f.read(4))
        for i in range(phnum):
            f.seek(phoff + i * phentsize)
            (p_type,) = struct.unpack(end + "I", f.read(4))
            if p_type == 3:  # PT_INTERP
                return False
    return True


def find_static_busybox() -> str:
    """Path of a statically linked busybox (Debian: busybox-static)."""
    candidates = [p for p in ("/usr/bin/busybox", "/bin/busybox") if os.path.exists(p)]
    found = shutil.which("busybox")
    if found and found not in candidates:
        candidates.append(found)
    for path in candidates:
        if _is_static_elf(path):
            return path
    raise ImageError(
        "no statically linked busybox found (tried "
        + (", ".join(candidates) or "PATH")
        + "); install the busybox-static package (scripts/install-deps)"
    )


def _entry(name: str, kind: bytes, mode: int, **kw: object) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.mtime = int(time.time())
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def build_busybox_image(dest_dir: str, *, busybox: str | None = None) -> str:
    """Write ``<dest_dir>/busybox-image.tar.gz`` and return its path.

    A unified Incus image: ``metadata.yaml`` plus ``rootfs/`` with a static
    busybox as ``/sbin/init``, whose inittab mounts /proc and keeps a sleep
    running. About 1 MB; imports and starts in a fraction of a second.
    """
    busybox = busybox or find_static_busybox()
    machine = platform.machine()
    arch = _ARCHES.get(machine, machine)
    metadata = (
        f"architecture: {arch}\n"
        f"creation_date: {int(time.time())}\n"
        "properties:\n"
        "  os: busybox\n"
        "  release: static\n"
        "  description: incus-host-tables lab image (static busybox)\n"
    ).encode()
    path = os.path.join(dest_dir, "busybox-image.tar.gz")
    with tarfile.open(path, "w:gz", compresslevel=1) as tar:
        tar.addfile(
            _entry("metadata.yaml", tarfile.REGTYPE, 0o644, size=len(metadata)),
            io.BytesIO(metadata),
        )
        for d in ("", "bin", "sbin", "etc", "proc", "sys", "dev", "tmp", "run", "root"):
            tar.addfile(
                _entry(f"rootfs/{d}".rstrip("/"), tarfile.DIRTYPE, 0o1777 if d == "tmp" else 0o755)
            )
        with open(busybox, "rb") as f:
            data = f.read()
        tar.addfile(
            _entry("rootfs/bin/busybox", tarfile.REGTYPE, 0o755, size=len(data)), io.BytesIO(data)
        )
        for applet in BUSYBOX_APPLETS:
            tar.addfile(_entry(f"rootfs/bin/{applet}", tarfile.SYMTYPE, 0o777, linkname="busybox"))
        tar.addfile(_entry("rootfs/sbin/init", tarfile.SYMTYPE, 0o777, linkname="../bin/busybox"))
        inittab = _INITTAB.encode()
        tar.addfile(
            _entry("rootfs/etc/inittab", tarfile.REGTYPE, 0o644, size=len(inittab)),
            io.BytesIO(inittab),
        )
    return path
