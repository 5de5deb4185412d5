"""A throwaway real Incus for tests, demos and benchmarks.

``IncusLab`` runs a private incusd (own ``INCUS_DIR``) inside a network
namespace it creates ("H"), so every host-side veth and host route of its
instances lives in H and never in the machine's own routing tables. Clients
are further namespaces joined to H by veths, optionally routed into one of H's
tables like a VRF would. Everything is torn down on ``stop()``, on leaving the
``with`` block and, as a last resort, at interpreter exit.

Needs root, iproute2, ``incus-base`` (incusd + client) and busybox-static:
``scripts/install-deps`` installs them.
"""

from __future__ import annotations

import atexit
import contextlib
import ipaddress
import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import IO, Any

from .image import ImageError, build_busybox_image, find_static_busybox

__all__ = [
    "INCUSD",
    "Client",
    "ImageError",
    "IncusLab",
    "LabCommandError",
    "LabError",
    "build_busybox_image",
    "until",
]

INCUSD = "/usr/libexec/incus/incusd"
_REAPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_reaper.py")
# "unreachable default" with the highest metric a VRF table gets: lookups that
# find nothing else in the table stop there instead of falling through to main.
STRICT_TABLE_METRIC = 4278198272

_instances = itertools.count()
_NAME = re.compile(r"^[a-z][a-z0-9]{0,9}$")


class LabError(RuntimeError):
    """The lab could not be set up (missing prerequisite, daemon failure...)."""


class LabCommandError(subprocess.CalledProcessError):
    """A command run by the lab failed; the message carries its stderr."""

    def __str__(self) -> str:
        argv = self.cmd if isinstance(self.cmd, str) else " ".join(map(str, self.cmd))
        err = (self.stderr or "").strip() or (self.output or "").strip()
        return f"`{argv}` exited with {self.returncode}" + (f": {err}" if err else "")


def _run(
    argv: Sequence[str],
    *,
    check: bool = True,
    input: str | None = None,
    timeout: float = 60.0,
    env: Mapping[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        list(argv),
        input=input,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=None if env is None else dict(env),
        stdin=None if input is not None else subprocess.DEVNULL,
    )
    if check and proc.returncode != 0:
        raise LabCommandError(proc.returncode, list(argv), proc.stdout, proc.stderr)
    return proc


def _split_iface(value: str, default_prefix: int) -> tuple[str, str, int]:
    """``"203.0.113.2/24"`` -> (client address, gateway address, prefix length).

    The gateway is the network's first host address that is not the client's.
    """
    iface = ipaddress.ip_interface(value if "/" in value else f"{value}/{default_prefix}")
    if iface.network.prefixlen >= iface.max_prefixlen - 1:
        raise ValueError(f"{value}: need a network with room for a gateway")
    for host in iface.network.hosts():
        if host != iface.ip:
            return str(iface.ip), str(host), iface.network.prefixlen
    raise ValueError(f"{value}: no gateway address available")  # pragma: no cover


def _wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until ``pids`` left the process table. Normally the reaper wrapper
    has reaped everything already; if it had to be killed, orphans fall to
    PID 1, and some inits (this sandbox's included) take seconds to reap."""
    deadline = time.monotonic() + timeout
    pending = [p for p in pids if p != os.getpid()]
    while pending and time.monotonic() < deadline:
        pending = [p for p in pending if os.path.exists(f"/proc/{p}")]
        if pending:
            time.sleep(0.1)


def until(check: Callable[[], bool], timeout: float = 5.0, interval: float = 0.05) -> bool:
    """Poll ``check`` until it is true or ``timeout`` seconds pass (bounded)."""
    end = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= end:
            return False
        time.sleep(interval)


class Client:
    """A network namespace standing for a host that talks to H's instances."""

    def __init__(
        self,
        *,
        name: str,
        netns: str,
        host_ifname: str,
        table: int | None,
        address4: str,
        gateway4: str,
        address6: str,
        gateway6: str,
        busybox: str,
    ) -> None:
        self.name = name
        self.netns = netns
        self.host_ifname = host_ifname  # its uplink's end in H
        self.ifname = "eth0"
        self.table = table
        self.address4 = address4
        self.gateway4 = gateway4
        self.address6 = address6
        self.gateway6 = gateway6
        self._busybox = busybox

    def __repr__(self) -> str:
        return f"Client({self.name!r}, netns={self.netns!r}, table={self.table})"

    def run(
        self, *argv: str, check: bool = True, timeout: float = 30.0
    ) -> subprocess.CompletedProcess[str]:
        return _run(["ip", "netns", "exec", self.netns, *argv], check=check, timeout=timeout)

    def ping(self, addr: str, count: int = 1, timeout: int = 1) -> bool:
        """One bounded ping run (busybox ping: iputils may be absent)."""
        family = "-6" if ":" in addr else "-4"
        deadline = max(count - 1, 0) + timeout
        argv = [self._busybox, "ping", family, "-q", "-c", str(count)]
        argv += ["-W", str(timeout), "-w", str(deadline), addr]
        try:
            return self.run(*argv, check=False, timeout=deadline + 10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def ping_within(self, addr: str, seconds: float = 5.0) -> bool:
        """Ping until one answer or ``seconds`` pass (IPv6 DAD, neighbour setup)."""
        return until(lambda: self.ping(addr), seconds, interval=0)


class IncusLab:
    """A private incusd in its own network namespace. See the module docstring.

    Use as a context manager, or call ``start()`` and ``stop()`` (idempotent).
    """

    def __init__(
        self,
        prefix: str = "iht",
        *,
        incusd: str = INCUSD,
        ready_timeout: float = 30.0,
    ) -> None:
        n = next(_instances)
        # Unique per process and per lab; short enough for namespace-derived names.
        self.name = f"{prefix}{os.getpid()}" + (f"n{n}" if n else "")
        self.netns = self.name
        self.image = "busybox"
        self.incusd = incusd
        self.ready_timeout = ready_timeout
        self.workdir = ""
        self.incus_dir = ""
        self.socket_path = ""
        self.log_path = ""
        self.timings: dict[str, float] = {}
        self.clients: dict[str, Client] = {}
        self._busybox = ""
        self._proc: subprocess.Popen[bytes] | None = None  # the reaper wrapping incusd
        self.incusd_pid = 0
        self._log: IO[bytes] | None = None
        self._netns_created: list[str] = []
        self._started = False
        self._stopped = False
        self._lock = threading.Lock()

    # ------------------------------------------------------------- lifecycle

    def __enter__(self) -> IncusLab:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _check_prerequisites(self) -> None:
        problems = []
        if os.geteuid() != 0:
            problems.append("must run as root (network namespaces, incusd)")
        if not os.access(self.incusd, os.X_OK):
            problems.append(f"{self.incusd} missing (install incus-base: scripts/install-deps)")
        for tool in ("incus", "ip"):
            if shutil.which(tool) is None:
                problems.append(f"`{tool}` not on PATH (scripts/install-deps)")
        try:
            self._busybox = find_static_busybox()
        except ImageError as e:
            problems.append(str(e))
        if problems:
            raise LabError("Incus lab prerequisites missing: " + "; ".join(problems))

    def start(self) -> None:
        """Namespace, incusd, storage pool, root disk and image. Fails loudly."""
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
        self._check_prerequisites()
        atexit.register(self.stop)
        self.workdir = tempfile.mkdtemp(prefix=f"{self.name}-")
        # The container's root (a shifted uid) must traverse down to its rootfs.
        os.chmod(self.workdir, 0o711)
        self.incus_dir = os.path.join(self.workdir, "incus")
        os.mkdir(self.incus_dir, 0o711)
        os.mkdir(os.path.join(self.workdir, "client"), 0o700)
        self.socket_path = os.path.join(self.incus_dir, "unix.socket")
        self.log_path = os.path.join(self.workdir, "incusd.log")

        self._add_netns(self.netns)
        # Instances' host routes only work if H forwards.
        self.ns_run(
            "sh",
            "-c",
            "echo 1 > /proc/sys/net/ipv4/ip_forward"
            " && echo 1 > /proc/sys/net/ipv6/conf/all/forwarding",
        )

        self._log = open(self.log_path, "wb")  # noqa: SIM115 (closed in stop)
        pidfile = os.path.join(self.workdir, "incusd.pid")
        # incusd runs under a subreaper that reaps the LXC monitors it orphans
        # (see _reaper.py); the wrapper reports incusd's own PID.
        self._proc = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                self.netns,
                sys.executable,
                "-I",
                _REAPER,
                pidfile,
                self.incusd,
                "--group",
                "root",
            ],
            env=self.env(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # a ^C in the terminal must not hit incusd first
        )
        self.incusd_pid = self._read_pidfile(pidfile)
        self._wait_ready()
        self.timings["incusd_ready"] = time.monotonic() - t0
        self._initialize()
        self.timings["start"] = time.monotonic() - t0

    def _initialize(self) -> None:
        """What a fresh standalone incusd needs: pool, root disk, image."""
        self.incus("storage", "create", "default", "dir")
        self.incus("profile", "device", "add", "default", "root", "disk", "path=/", "pool=default")
        tarball = build_busybox_image(self.workdir, busybox=self._busybox)
        self.incus("image", "import", tarball, "--alias", self.image, timeout=120)

    def _read_pidfile(self, path: str) -> int:
        assert self._proc is not None
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with contextlib.suppress(FileNotFoundError, ValueError), open(path) as f:
                return int(f.read())
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        raise LabError(f"incusd did not start:\n{self.log_tail()}")

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

    def stop(self) -> None:
        """Tear everything down; safe to call twice and after a failed start."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        started = self._pids_in_netns()
        try:
            self._stop_incusd()
        finally:
            self._kill_leftovers()
            for ns in reversed(self._netns_created):
                _run(["ip", "netns", "del", ns], check=False)
            self._netns_created.clear()
            if self._log is not None:
                self._log.close()
            self._remove_workdir()
            atexit.unregister(self.stop)
            _wait_gone(started, timeout=10.0)

    def _stop_incusd(self) -> None:
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            # Force-stop instances first: busybox init ignores the SIGPWR of a
            # clean shutdown and incusd would wait for it.
            with contextlib.suppress(Exception):
                for project in self.projects():
                    self.incus(
                        "stop", "--all", "--force", "--project", project, check=False, timeout=120
                    )
            with contextlib.suppress(Exception):
                self.incus("admin", "shutdown", "--timeout", "30", check=False, timeout=40)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                # incusd (by its own PID) first; then whatever else still runs in
                # H; the wrapper exits once nothing is left to reap.
                if self.incusd_pid > 0:  # never 0: that would signal our own group
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.incusd_pid, signal.SIGTERM)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=10)
                if proc.poll() is None:
                    for pid in self._pids_in_netns():
                        if pid != proc.pid:
                            with contextlib.suppress(ProcessLookupError):
                                os.kill(pid, signal.SIGKILL)
                    try:
                        proc.wait(timeout=10)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait(timeout=10)
        self._proc = None

    def _pids_in_netns(self) -> list[int]:
        if self.netns not in self._netns_created:
            return []
        out = _run(["ip", "netns", "pids", self.netns], check=False).stdout
        return [int(p) for p in out.split() if p.isdigit()]

    def _kill_leftovers(self) -> None:
        """SIGKILL whatever still runs in H (LXC monitors of instances incusd
        failed to stop): only our incusd put processes in this namespace."""
        for pid in self._pids_in_netns():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

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
            _run(["umount", "-l", point], check=False)
        _run(["rm", "-rf", "--one-file-system", self.workdir], check=False, timeout=120)

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
        return _run(
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
    ) -> None:
        """Create (and start) a container from the lab image in one request."""
        body: dict[str, Any] = {
            "devices": {k: dict(v) for k, v in (devices or {}).items()},
            "config": dict(config or {}),
        }
        args = ["init", self.image, name, "--project", project, "--quiet"]
        for profile in profiles if profiles is not None else ["default"]:
            args += ["--profile", profile]
        # `incus init` takes the instance config as YAML on stdin; JSON is YAML.
        self.incus(*args, input=json.dumps(body))
        if start:
            self.incus("start", name, "--project", project)

    def delete(self, name: str, project: str = "default") -> None:
        self.incus("delete", "--force", name, "--project", project)

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
        if self._proc is None:
            raise LabError("start the lab first")
        if not _NAME.match(name):
            raise ValueError(f"client name {name!r}: 1-10 of [a-z0-9], starting with a letter")
        if name in self.clients:
            raise ValueError(f"client {name!r} exists")
        a4, gw4, len4 = _split_iface(v4, 24)
        a6, gw6, len6 = _split_iface(v6, 64)
        if ":" in a4 or ":" not in a6:
            raise ValueError("v4 must be IPv4 and v6 IPv6")
        netns, hif = f"{self.netns}-{name}", f"v-{name}"
        self._add_netns(netns)
        h = ["ip", "-n", self.netns]
        c = ["ip", "-n", netns]
        steps: list[list[str]] = [
            [*h, "link", "add", hif, "type", "veth", "peer", "name", "eth0", "netns", netns],
            [*h, "link", "set", hif, "up"],
            [*c, "link", "set", "eth0", "up"],
            [*h, "addr", "add", f"{gw4}/{len4}", "dev", hif],
            [*h, "addr", "add", f"{gw6}/{len6}", "dev", hif, "nodad"],
            [*c, "addr", "add", f"{a4}/{len4}", "dev", "eth0"],
            [*c, "addr", "add", f"{a6}/{len6}", "dev", "eth0", "nodad"],
            [*c, "route", "add", "default", "via", gw4],
            [*c, "-6", "route", "add", "default", "via", gw6],
        ]
        if table is not None:
            for fam in ("-4", "-6"):
                steps.append([*h, fam, "rule", "add", "iif", hif, "lookup", str(table)])
                steps.append(
                    [
                        *h,
                        fam,
                        "route",
                        "replace",
                        "unreachable",
                        "default",
                        "table",
                        str(table),
                        "metric",
                        str(STRICT_TABLE_METRIC),
                    ]
                )
        for argv in steps:
            _run(argv)
        client = Client(
            name=name,
            netns=netns,
            host_ifname=hif,
            table=table,
            address4=a4,
            gateway4=gw4,
            address6=a6,
            gateway6=gw6,
            busybox=self._busybox,
        )
        self.clients[name] = client
        return client

    def remove_client(self, client: Client | str) -> None:
        """Delete a client namespace (its veth goes with it) and its rules."""
        c = self.clients.pop(client if isinstance(client, str) else client.name)
        if c.table is not None:
            for fam in ("-4", "-6"):
                _run(
                    [
                        "ip",
                        "-n",
                        self.netns,
                        fam,
                        "rule",
                        "del",
                        "iif",
                        c.host_ifname,
                        "lookup",
                        str(c.table),
                    ],
                    check=False,
                )
        _run(["ip", "netns", "del", c.netns], check=False)
        if c.netns in self._netns_created:
            self._netns_created.remove(c.netns)

    def _add_netns(self, name: str) -> None:
        _run(["ip", "netns", "add", name])
        self._netns_created.append(name)
        _run(["ip", "-n", name, "link", "set", "lo", "up"])
