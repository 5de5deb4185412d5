"""A real two-member Incus cluster on one machine, for tests.

Each member is an :class:`IncusLab` of its own: a private ``INCUS_DIR``, an
incusd under the lab's subreaper, in a network namespace of its own; so every
host-side veth and host route of a member's instances lives in that member's
namespace. The two namespaces are joined by one veth (``198.18.0.1/24`` and
``198.18.0.2/24``) that carries the cluster traffic.

Member 1 initialises the cluster (``server_name`` m1, a dir pool ``default``
and the root disk in the default profile); member 2 joins it with a token. The
joining client runs inside member 2's namespace, as every command of a member
does (outside it the join fails with a misleading "Certificate fingerprint
mismatch"). The busybox image is imported once, on m1.

A member offers the interface the plugin helpers expect of a lab (``netns``,
``workdir``, ``env()``, ``ns_run``, ``incus``, ``route_entries``), so
:class:`~lab.plugin.PluginDaemon` and ``run_cli`` take one.
"""

from __future__ import annotations

import atexit
import json
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from typing import Any

from .incus import IncusLab
from .processes import LabError

__all__ = ["ClusterMember", "IncusCluster"]

LINK_PREFIX = 24
LINK_ADDRESSES = ("198.18.0.1", "198.18.0.2")  # inside 198.18.0.0/15 only
PORT = 8443


class ClusterMember(IncusLab):
    """One member: an incusd in its own namespace, clustered by IncusCluster.

    Unlike a plain lab, starting a member only brings incusd up: the storage
    pool, profile and image come with the cluster (``standalone=False``).
    """

    def __init__(self, member: str, address: str, prefix: str, **kwargs: Any) -> None:
        super().__init__(prefix, standalone=False, **kwargs)
        self.member = member
        self.address = address

    def __repr__(self) -> str:
        return f"ClusterMember({self.member!r}, netns={self.netns!r}, address={self.address!r})"


class IncusCluster:
    """Two clustered incusd (m1, m2), each in its own namespace.

    Use as a context manager, or ``start()`` / ``stop()`` (idempotent; a
    failed start tears down whatever it had set up).
    """

    def __init__(self, prefix: str = "ihc", *, ready_timeout: float = 30.0) -> None:
        self.members: dict[str, ClusterMember] = {}
        for i, addr in enumerate(LINK_ADDRESSES, start=1):
            name = f"m{i}"
            self.members[name] = ClusterMember(
                name, addr, f"{prefix}{i}x", ready_timeout=ready_timeout
            )
        self.image = "busybox"
        self.timings: dict[str, float] = {}
        self._started = False
        self._stopped = False

    def __enter__(self) -> IncusCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __getitem__(self, member: str) -> ClusterMember:
        return self.members[member]

    # ------------------------------------------------------------- lifecycle

    def start(self) -> None:
        if self._started:
            raise LabError("cluster already started")
        self._started = True
        atexit.register(self.stop)
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        t0 = time.monotonic()
        m1, m2 = self.members["m1"], self.members["m2"]
        for m in (m1, m2):
            m.start()
        self.timings["incusd_ready"] = time.monotonic() - t0

        # The cluster link: one veth between the two namespaces.
        m1.host.add_veth("cl0", "cl0", m2.host, settle=False)
        for m in (m1, m2):
            m.host.ip("addr", "add", f"{m.address}/{LINK_PREFIX}", "dev", "cl0")

        m1.incus("admin", "init", "--preseed", input=json.dumps(self._bootstrap_preseed(m1)))
        self.timings["bootstrap"] = time.monotonic() - t0
        out = m1.incus("cluster", "add", m2.member, "--quiet").stdout
        token = [line for line in out.split() if line.strip()][-1]
        # m2's client runs in m2's namespace (ns_run): that is where the join
        # must be made from.
        m2.incus(
            "admin",
            "init",
            "--preseed",
            input=json.dumps(self._join_preseed(m2, token)),
            timeout=120,
        )
        self.timings["join"] = time.monotonic() - t0

        m1.import_image()
        self.timings["start"] = time.monotonic() - t0

    @staticmethod
    def _bootstrap_preseed(m: ClusterMember) -> dict[str, Any]:
        return {
            "config": {"core.https_address": f"{m.address}:{PORT}"},
            "cluster": {"server_name": m.member, "enabled": True},
            "storage_pools": [{"name": "default", "driver": "dir"}],
            "profiles": [
                {
                    "name": "default",
                    "devices": {"root": {"type": "disk", "path": "/", "pool": "default"}},
                }
            ],
        }

    @staticmethod
    def _join_preseed(m: ClusterMember, token: str) -> dict[str, Any]:
        return {
            "cluster": {
                "enabled": True,
                "server_name": m.member,
                "server_address": f"{m.address}:{PORT}",
                "cluster_token": token,
                "member_config": [
                    {"entity": "storage-pool", "name": "default", "key": "source", "value": ""}
                ],
            }
        }

    def stop(self) -> None:
        """Stop every instance, then each member (joiner first); idempotent."""
        if self._stopped:
            return
        self._stopped = True
        try:
            m1 = self.members["m1"]
            if m1.running:
                # Stopping through m1 covers the instances of both members.
                for project in m1.projects():
                    m1.incus(
                        "stop", "--all", "--force", "--project", project, check=False, timeout=120
                    )
        except Exception as err:  # keep tearing down
            print(f"cluster: stopping instances failed: {err}", file=sys.stderr)
        finally:
            # SIGTERM both incusd at once: a member left alone waits ~15 s for
            # its lost peer before exiting.
            for m in self.members.values():
                m.signal_incusd(signal.SIGTERM)
            for m in reversed(list(self.members.values())):
                m.stop()  # kills only what runs in its own namespace; removes its dirs
            atexit.unregister(self.stop)

    # --------------------------------------------------------------- commands

    def incus(
        self,
        member: str,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """The ``incus`` client against ``member``, run in its namespace."""
        return self.members[member].incus(*args, check=check, input=input, timeout=timeout)

    def ns_run(
        self,
        member: str,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """A command inside ``member``'s namespace, with its environment."""
        return self.members[member].ns_run(
            *argv, check=check, input=input, timeout=timeout, env=env
        )

    def cluster_members(self) -> dict[str, str]:
        """``incus cluster list`` as {server name: status}."""
        data = json.loads(self.incus("m1", "cluster", "list", "--format", "json").stdout)
        return {str(m["server_name"]): str(m["status"]) for m in data}

    def launch(
        self,
        name: str,
        target: str,
        *,
        devices: Mapping[str, Mapping[str, str]] | None = None,
        config: Mapping[str, str] | None = None,
        profiles: Sequence[str] = ("default",),
        start: bool = True,
    ) -> None:
        """Create (and start) a container from the image on member ``target``."""
        self.members[target].launch(
            name, devices=devices, config=config, profiles=profiles, start=start, target=target
        )

    def location(self, name: str, project: str = "default") -> str:
        data = json.loads(
            self.incus("m1", "query", f"/1.0/instances/{name}?project={project}").stdout
        )
        return str(data["location"])
