"""A throwaway real Incus for tests, demos and benchmarks.

``IncusLab`` runs a private incusd (own ``INCUS_DIR``) inside a network
namespace it creates ("H"), so every host-side veth and host route of its
instances lives in H and never in the machine's own routing tables. Clients
are further namespaces joined to H by veths, optionally routed into one of H's
tables like a VRF would (see clients.py). Everything is torn down on
``stop()``, on leaving the ``with`` block and, as a last resort, at
interpreter exit.

Needs root, iproute2, ``incus-base`` (incusd + client) and busybox-static:
``scripts/install-deps`` installs them.
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import IO, Any

from .clients import Client, connect_client, disconnect_client
from .image import ImageError, build_busybox_image, find_static_busybox
from .netns import Namespaces, NetNS
from .processes import (
    LabError,
    kill_pids,
    read_pidfile,
    reaped,
    run,
    terminate,
    wait_gone,
)

__all__ = ["INCUSD", "IncusLab"]

INCUSD = "/usr/libexec/incus/incusd"

_instances = itertools.count()


class IncusLab:
    """A private incusd in its own network namespace. See the module docstring.

    Use as a context manager, or call ``start()`` and ``stop()`` (idempotent).
    ``standalone=False`` makes a cluster member (see cluster.py): starting it
    only brings incusd up (pool, profile and image come with the cluster),
    and stopping it ends incusd with SIGTERM at once, because ``incus admin
    shutdown`` of a member waits ~30 s for a handover and the cluster has
    stopped the instances already.
    """

    def __init__(
        self,
        prefix: str = "iht",
        *,
        incusd: str = INCUSD,
        ready_timeout: float = 30.0,
        standalone: bool = True,
    ) -> None:
        n = next(_instances)
        # Unique per process and per lab; short enough for namespace-derived names.
        self.name = f"{prefix}{os.getpid()}" + (f"n{n}" if n else "")
        self.netns = self.name
        self.image = "busybox"
        self.incusd = incusd
        self.ready_timeout = ready_timeout
        self.standalone = standalone
        self.workdir = ""
        self.incus_dir = ""
        self.socket_path = ""
        self.log_path = ""
        self.busybox = ""  # the static busybox the image and the clients use
        self.timings: dict[str, float] = {}
        self.clients: dict[str, Client] = {}
        self.incusd_pid = 0
        self._proc: subprocess.Popen[bytes] | None = None  # the reaper wrapping incusd
        # Reapers of killed incusds: each keeps the LXC monitors that incusd
        # orphaned (its running containers) until they exit.
        self._orphan_reapers: list[subprocess.Popen[bytes]] = []
        self._incusd_runs = 0
        self._log: IO[bytes] | None = None
        self._namespaces = Namespaces()
        self.host = NetNS(self.netns)  # H; exists between start() and stop()
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------- lifecycle

    def __enter__(self) -> IncusLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        """True while incusd (its reaper wrapper) runs."""
        return self._proc is not None and self._proc.poll() is None

    def missing(self) -> list[str]:
        """What this machine lacks for the lab, one problem each (empty when
        it can start). A lab for another daemon overrides this."""
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root (network namespaces, incusd)")
        if not os.access(self.incusd, os.X_OK):
            problems.append(f"{self.incusd} missing (install incus-base: scripts/install-deps)")
        for tool in ("incus", "ip"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` not on PATH (scripts/install-deps)")
        try:
            find_static_busybox()
        except ImageError as e:
            problems.append(str(e))
        return problems

    def start(self) -> None:
        """Namespace, incusd, and for a standalone lab the storage pool, root
        disk and image. Fails loudly, leaving nothing behind."""
        with self._lock:
            if self._started:
                raise LabError("lab already started")
            self._started = True
        try:
            self._start()
        except BaseException:
            self.stop()
            raise

    def _start(self) -> None:
        t0 = time.monotonic()
        problems = self.missing()
        if problems:
            raise LabError(f"{type(self).__name__} prerequisites missing: " + "; ".join(problems))
        self.busybox = find_static_busybox()
        atexit.register(self.stop)
        self.workdir = tempfile.mkdtemp(prefix=f"{self.name}-")
        # The container's root (a shifted uid) must traverse down to its rootfs.
        os.chmod(self.workdir, 0o711)
        self.incus_dir = os.path.join(self.workdir, "incus")
        os.mkdir(self.incus_dir, 0o711)
        os.mkdir(os.path.join(self.workdir, "client"), 0o700)
        self.socket_path = os.path.join(self.incus_dir, "unix.socket")
        self.log_path = os.path.join(self.workdir, "incusd.log")

        self._namespaces.add(self.netns)
        # Instances' host routes only work if H forwards.
        self.ns_run(
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward"
            " && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        )

        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        self._spawn_incusd()
        self._wait_ready()
        self.timings["incusd_ready"] = time.monotonic() - t0
        if self.standalone:
            self._initialize()
        self.timings["start"] = time.monotonic() - t0

    def _spawn_incusd(self) -> None:
        """Start incusd in H on the lab's INCUS_DIR; sets ``incusd_pid``."""
        assert self._log is not None
        self._incusd_runs += 1
        pidfile = os.path.join(self.workdir, f"incusd-{self._incusd_runs}.pid")
        # incusd runs under a subreaper that reaps the LXC monitors it orphans
        # (see reaper.py); the wrapper reports incusd's own PID.
        self._proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *reaped(pidfile, self.incusd, "--group", "root")],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a ^C in the terminal must not hit incusd first
        )
        try:
            self.incusd_pid = read_pidfile(pidfile, self._proc)
        except LabError as err:
            raise LabError(f"incusd did not start ({err}):\n{self.log_tail()}") from None

    # ------------------------------------------------------- crash and restart

    def kill_incusd(self, timeout: float = 10.0) -> None:
        """SIGKILL incusd (by its PID), as a crash would end it, and wait
        until it is gone. Its containers keep running: their LXC monitors
        are not incusd's children, and the reaper that adopted them stays
        until they exit (then stop() ends it)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            raise LabError("incusd is not running")
        kill_pids([self.incusd_pid], signal.SIGKILL)
        wait_gone([self.incusd_pid], timeout)
        if os.path.exists(f"/proc/{self.incusd_pid}"):
            raise LabError(
                f"incusd (PID {self.incusd_pid}) still there {timeout:.0f}s after SIGKILL"
            )
        self._orphan_reapers.append(proc)
        self._proc = None

    def restart_incusd(self) -> float:
        """Start incusd again on the same INCUS_DIR in the same namespace
        (after :meth:`kill_incusd`, or a crash); returns the seconds until it
        answered ``admin waitready``."""
        if self.running:
            raise LabError("incusd is still running: kill_incusd() first")
        if self._proc is not None:  # it died on its own: keep its reaper
            self._orphan_reapers.append(self._proc)
            self._proc = None
        t0 = time.monotonic()
        self._spawn_incusd()
        self._wait_ready()
        return time.monotonic() - t0

    def _end_orphan_reapers(self) -> None:
        """Each ends by itself once its orphans exited; those left get
        SIGKILL, the orphans they hold included (everything in H is ours)."""
        for proc in self._orphan_reapers:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            terminate(proc, grace=5.0, leftovers=self.pids)
        self._orphan_reapers.clear()

    def _initialize(self) -> None:
        """What a fresh standalone incusd needs: pool, root disk, image."""
        self.incus("storage", "create", "default", "dir")
        self.incus("profile", "device", "add", "default", "root", "disk", "path=/", "pool=default")
        self.import_image()

    def import_image(self) -> None:
        """Build the busybox image and import it as :attr:`image`."""
        tarball = build_busybox_image(self.workdir, busybox=self.busybox)
        self.incus("image", "import", tarball, "--alias", self.image, timeout=120)

    def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.ready_timeout
        while True:
            if self._proc.poll() is not None:
                raise LabError(
                    f"incusd exited with {self._proc.returncode} while starting:\n{self.log_tail()}"
                )
            if os.path.exists(self.socket_path):
                with contextlib.suppress(subprocess.TimeoutExpired):
                    if self.incus("info", check=False, timeout=5).returncode == 0:
                        break
            if time.monotonic() > deadline:
                raise LabError(
                    f"incusd not ready after {self.ready_timeout:.0f}s:\n{self.log_tail()}"
                )
            time.sleep(0.1)
        self.incus("admin", "waitready", "--timeout", str(int(self.ready_timeout)))

    def log_tail(self, lines: int = 30) -> str:
        try:
            with open(self.log_path, encoding="utf-8", errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no incusd log)"

    def signal_incusd(self, sig: signal.Signals) -> None:
        """Send ``sig`` to incusd itself (by its PID) while it runs."""
        if self.running:
            kill_pids([self.incusd_pid], sig)

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        started = self.pids()
        if self._orphan_reapers and self._proc is None and self.standalone:
            # incusd was killed and not restarted: only an incusd can stop
            # the containers it left running (killing their monitors would not).
            with contextlib.suppress(Exception):
                self.restart_incusd()
        try:
            self._stop_incusd()
            self._end_orphan_reapers()
        finally:
            # LXC monitors of instances incusd failed to stop: only our incusd
            # put processes in H.
            kill_pids(self.pids())
            self._namespaces.close()
            if self._log is not None:
                self._log.close()
            self._remove_workdir()
            atexit.unregister(self.stop)
            wait_gone(started, timeout=10.0)

    def _stop_incusd(self) -> None:
        proc = self._proc
        if proc is None:
            return
        grace = 15.0
        if self.standalone and proc.poll() is None:
            # Force-stop instances first: busybox init ignores the SIGPWR of a
            # clean shutdown and incusd would wait for it.
            with contextlib.suppress(Exception):
                for project in self.projects():
                    self.incus(
                        "stop", "--all", "--force", "--project", project, check=False, timeout=120
                    )
            with contextlib.suppress(Exception):
                self.incus("admin", "shutdown", "--timeout", "30", check=False, timeout=40)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=15)
            grace = 10.0
        # incusd by its own PID first; then whatever else still runs in H;
        # the wrapper exits once nothing is left to reap.
        terminate(proc, target=self.incusd_pid, grace=grace, leftovers=self.pids)
        self._proc = None

    def pids(self) -> list[int]:
        """The processes running in H (incusd, its LXC monitors, ...)."""
        if self.netns not in self._namespaces.made:
            return []
        return self.host.pids()

    def _remove_workdir(self) -> None:
        if not self.workdir or not os.path.isdir(self.workdir):
            return
        # Never recurse through a mount (e.g. a bind mount left by a crash).
        root = os.path.realpath(self.workdir) + "/"
        mounts = []
        with open("/proc/self/mountinfo", encoding="utf-8") as f:
            for line in f:
                point = line.split()[4].replace("\\040", " ")
                if point.startswith(root):
                    mounts.append(point)
        for point in sorted(mounts, key=len, reverse=True):
            run(["umount", "-l", point], check=False)
        run(["rm", "-rf", "--one-file-system", self.workdir], check=False, timeout=120)

    # --------------------------------------------------------------- commands

    def env(self) -> dict[str, str]:
        """Environment for tools talking to this incusd (INCUS_DIR, INCUS_SOCKET)."""
        env = dict(os.environ)
        env.pop("LXD_DIR", None)
        env["INCUS_DIR"] = self.incus_dir
        env["INCUS_SOCKET"] = self.socket_path
        # Keep the client's config (remotes, certificates) out of $HOME.
        env["INCUS_CONF"] = os.path.join(self.workdir, "client")
        return env

    def ns_run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
        env: Mapping[str, str] | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a command inside H, with :meth:`env` unless ``env`` is given."""
        return run(
            ["ip", "netns", "exec", self.netns, *argv],
            check=check,
            input=input,
            timeout=timeout,
            env=self.env() if env is None else env,
        )

    def incus(
        self,
        *args: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """The ``incus`` client against this daemon, run inside H."""
        return self.ns_run("incus", *args, check=check, input=input, timeout=timeout)

    def query(self, path: str) -> Any:
        """``incus query PATH`` decoded (raw REST access)."""
        return json.loads(self.incus("query", path).stdout)

    def projects(self) -> list[str]:
        return [u.rsplit("/", 1)[-1] for u in self.query("/1.0/projects")]

    def routes(self) -> str:
        """All IPv4 and IPv6 routes of H, every table."""
        v4 = self.ns_run("ip", "-4", "route", "show", "table", "all").stdout
        v6 = self.ns_run("ip", "-6", "route", "show", "table", "all").stdout
        return v4 + v6

    def host_routes(self, addr: str) -> list[str]:
        """H's routes (any table, either family) whose destination is ``addr``."""
        dests = {addr, f"{addr}/32", f"{addr}/128"}
        return [
            line.strip()
            for line in self.routes().splitlines()
            if line.split() and line.split()[0] in dests
        ]

    def route_entries(self, addr: str) -> list[dict[str, Any]]:
        """H's routes to exactly ``addr`` in every table, as ``ip -j`` objects
        whose ``table`` is always set (``"main"`` included)."""
        family = "-6" if ":" in addr else "-4"
        out = self.ns_run("ip", "-j", family, "route", "show", "table", "all").stdout
        want = {addr, f"{addr}/32", f"{addr}/128"}
        entries = [dict(r) for r in json.loads(out or "[]") if r.get("dst") in want]
        for r in entries:
            r.setdefault("table", "main")
        return entries

    # ------------------------------------------------------------- instances

    def create_project(self, name: str, **config: str) -> None:
        """A project sharing default's images and profiles unless told otherwise."""
        settings = {"features.images": "false", "features.profiles": "false"}
        settings.update({k.replace("_", "."): v for k, v in config.items()})
        args = ["project", "create", name]
        for key, value in settings.items():
            args += ["-c", f"{key}={value}"]
        self.incus(*args)

    def launch(
        self,
        name: str,
        *,
        devices: Mapping[str, Mapping[str, str]] | None = None,
        config: Mapping[str, str] | None = None,
        profiles: Sequence[str] | None = None,
        project: str = "default",
        start: bool = True,
        target: str | None = None,
    ) -> None:
        """Create (and start) a container from the lab image in one request;
        ``target`` places it on that cluster member."""
        body: dict[str, Any] = {
            "devices": {k: dict(v) for k, v in (devices or {}).items()},
            "config": dict(config or {}),
        }
        args = ["init", self.image, name, "--project", project, "--quiet"]
        if target is not None:
            args += ["--target", target]
        for profile in profiles if profiles is not None else ["default"]:
            args += ["--profile", profile]
        # `incus init` takes the instance config as YAML on stdin; JSON is YAML.
        self.incus(*args, input=json.dumps(body))
        if start:
            self.incus("start", name, "--project", project)

    def delete(self, name: str, project: str = "default") -> None:
        self.incus("delete", "--force", name, "--project", project)

    # Many instances at once: `incus` clients run side by side, a bounded
    # number at a time (incusd serialises much of the work anyway, and the
    # lab machine may have two cores).
    FLEET_WORKERS = 8

    def launch_many(
        self,
        devices: Mapping[str, Mapping[str, Mapping[str, str]]],
        *,
        start: bool = True,
        workers: int = FLEET_WORKERS,
    ) -> None:
        """:meth:`launch` for each name of ``devices`` (name -> its devices),
        ``workers`` at a time; the first failure is raised once all ended."""
        self._fleet(
            lambda name: self.launch(name, devices=devices[name], start=start),
            list(devices),
            workers,
        )

    def start_many(self, names: Sequence[str], *, workers: int = FLEET_WORKERS) -> None:
        """`incus start` of ``names``, ``workers`` at a time."""
        self._fleet(lambda name: self.incus("start", name, timeout=120), names, workers)

    def delete_many(self, names: Sequence[str], *, workers: int = FLEET_WORKERS) -> None:
        """`incus delete --force` of ``names`` (those that exist), ``workers``
        at a time; never raises (it is for cleanups)."""
        self._fleet(
            lambda name: self.incus("delete", "--force", name, check=False, timeout=120),
            names,
            workers,
            check=False,
        )

    @staticmethod
    def _fleet(
        action: Callable[[str], object], names: Sequence[str], workers: int, check: bool = True
    ) -> None:
        with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = [pool.submit(action, name) for name in names]
        errors = [f.exception() for f in futures if f.exception() is not None]
        if check and errors:
            raise errors[0]  # type: ignore[misc]

    def lxc_conf_path(self, name: str, project: str = "default") -> str:
        """The LXC config of a running container (``LXC_CONFIG_FILE`` in hooks)."""
        lxc_name = name if project == "default" else f"{project}_{name}"
        return os.path.join(self.incus_dir, "run", lxc_name, "lxc.conf")

    # --------------------------------------------------------------- clients

    def add_client(self, name: str, *, table: int | None, v4: str, v6: str) -> Client:
        """A client namespace with a veth to H and default routes via H.

        ``v4``/``v6``: the client's address with prefix (``203.0.113.2/24``,
        ``2001:db8:100::2/64``); H takes the network's first other address as
        gateway. ``table=None`` puts the client in H's main routing domain;
        ``table=T`` routes everything arriving from it through table T, which
        is made strict (unreachable default) so lookups never fall through to
        main, as in a VRF.
        """
        if not self.running:
            raise LabError("start the lab first")
        if name in self.clients:
            raise ValueError(f"client {name!r} exists")
        client = connect_client(
            self._namespaces, self.host, name, table=table, v4=v4, v6=v6, busybox=self.busybox
        )
        self.clients[name] = client
        return client

    def remove_client(self, client: Client | str) -> None:
        """Delete a client namespace (its veth goes with it) and its rules."""
        c = self.clients.pop(client if isinstance(client, str) else client.name)
        disconnect_client(self._namespaces, self.host, c)
