"""A throwaway real LXD for tests: the Incus lab with LXD's parts.

Debian 12's LXD 5.0 behaves like Incus 6.0 for routed NICs (``host_table``
puts the route in that table *and* main, ``user.*`` device keys are accepted,
``raw.lxc`` start-host hooks fire). So the LXD lab is :class:`IncusLab` with
four things swapped, and nothing else copied: the daemon (``/usr/bin/lxd``),
the client (``lxc``; ``incus admin X`` is ``lxd X``), the directory variable
(``LXD_DIR``, socket ``$LXD_DIR/unix.socket``) and where LXD keeps a running
container's LXC config (``$LXD_DIR/logs/<name>/lxc.conf``). Namespace, image,
clients, subreaper and teardown are the Incus lab's.

Needs root, iproute2, busybox-static, Debian's ``lxd`` and ``nftables`` (LXD
sets up its reverse-path filter with nft; without it a routed NIC fails to
start). ``scripts/install-lxd`` installs them; see docs/testing.md for why
installing Debian's ``lxd`` next to Incus needs care.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

from .incus import IncusLab

__all__ = ["LXD", "LXD_CLIENT", "LxdLab"]

LXD = "/usr/bin/lxd"
LXD_CLIENT = "lxc"


class LxdLab(IncusLab):
    """A private LXD (own ``LXD_DIR``) in its own network namespace.

    Offers the Incus lab's interface: :meth:`incus` runs ``lxc`` (so the
    plugin fixtures and helpers built for Incus drive LXD unchanged), and
    :meth:`lxc` says the same thing by LXD's name.
    """

    def __init__(self, prefix: str = "ihl", *, lxd: str = LXD, ready_timeout: float = 30.0) -> None:
        super().__init__(prefix, incusd=lxd, ready_timeout=ready_timeout)

    def missing(self) -> list[str]:
        """The Incus lab's needs, with LXD's daemon, client and nftables in
        place of incusd and the ``incus`` client."""
        problems = [
            p
            for p in super().missing()
            if not p.startswith((self.incusd, "`incus`", "must run as root"))
        ]
        if os.geteuid() != 0:
            problems.insert(0, "must run as root (network namespaces, lxd)")
        if not os.access(self.incusd, os.X_OK) or shutil.which(LXD_CLIENT) is None:
            problems.append(f"{self.incusd} or `{LXD_CLIENT}` missing (scripts/install-lxd)")
        if shutil.which("nft") is None:
            problems.append("`nft` missing: LXD needs nftables for routed NICs")
        return problems

    def env(self) -> dict[str, str]:
        """Environment for tools talking to this LXD (``LXD_DIR``, ``LXD_CONF``).

        Every Incus variable is dropped: the plugin prefers them, and a test
        of LXD must never reach an Incus by accident.
        """
        env = dict(os.environ)
        for var in ("INCUS_DIR", "INCUS_SOCKET", "INCUS_CONF"):
            env.pop(var, None)
        env["LXD_DIR"] = self.incus_dir
        # Keep the client's config (remotes, certificates) out of $HOME.
        env["LXD_CONF"] = os.path.join(self.workdir, "client")
        return env

    def incus(self, *args: str, **kwargs: Any) -> subprocess.CompletedProcess[str]:
        """``lxc ARGS`` inside H; ``admin X`` (waitready, shutdown, init) runs ``lxd X``."""
        if args[:1] == ("admin",):
            return self.ns_run(self.incusd, *args[1:], **kwargs)
        return self.ns_run(LXD_CLIENT, *args, **kwargs)

    lxc = incus

    def lxc_conf_path(self, name: str, project: str = "default") -> str:
        """LXD writes a running container's LXC config beside its lxc.log."""
        lxc_name = name if project == "default" else f"{project}_{name}"
        return os.path.join(self.incus_dir, "logs", lxc_name, "lxc.conf")
