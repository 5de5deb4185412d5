"""Incus (or LXD) access over the local unix socket, through pylxd.

Everything handed out is plain immutable data: the rest of the plugin never
sees a pylxd object.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket as _socket
import stat
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlencode, urlsplit

import pylxd
import pylxd.exceptions
import requests
from ws4py.client import WebSocketBaseClient

from .lxcconf import is_routed_nic, parse_lxc_name

__all__ = [
    "DEFAULT_INCUS_SOCKET",
    "DEFAULT_LXD_SOCKETS",
    "IncusClient",
    "IncusError",
    "InstanceNotFoundError",
    "InstanceSnapshot",
    "NicSnapshot",
    "ProfileNotFoundError",
    "SocketNotFoundError",
    "find_socket",
    "lxc_name",
    "parse_lxc_name",
    "routed_nics",
    "snapshot_from_api",
]

DEFAULT_INCUS_SOCKET = "/var/lib/incus/unix.socket"
DEFAULT_LXD_SOCKETS = ("/var/snap/lxd/common/lxd/unix.socket", "/var/lib/lxd/unix.socket")


class IncusError(Exception):
    """Talking to Incus failed or it answered something unexpected."""


class SocketNotFoundError(IncusError, FileNotFoundError):
    """No Incus/LXD unix socket where one was expected."""


class InstanceNotFoundError(IncusError, LookupError):
    def __init__(self, name: str, project: str) -> None:
        super().__init__(f"instance {name!r} not found in project {project!r}")
        self.name = name
        self.project = project


class ProfileNotFoundError(IncusError, LookupError):
    def __init__(self, name: str, project: str) -> None:
        super().__init__(f"profile {name!r} not found in project {project!r}")
        self.name = name
        self.project = project


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def find_socket(explicit: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    """The unix socket of the local Incus (or LXD) daemon.

    Order: ``explicit``, ``INCUS_SOCKET``, ``$INCUS_DIR/unix.socket``, the Incus
    default, ``$LXD_DIR/unix.socket``, the LXD defaults (snap, deb).

    A socket named explicitly or by an environment variable is authoritative:
    if it is missing that is an error, never a reason to fall back to another
    daemon (a hook run by a private incusd must not talk to the system one).
    """
    named: list[tuple[str, str]] = []
    if explicit:
        named.append(("--socket", explicit))
    if environ.get("INCUS_SOCKET"):
        named.append(("INCUS_SOCKET", environ["INCUS_SOCKET"]))
    if environ.get("INCUS_DIR"):
        named.append(("INCUS_DIR", os.path.join(environ["INCUS_DIR"], "unix.socket")))
    if named:
        source, path = named[0]
        if _is_socket(path):
            return path
        raise SocketNotFoundError(f"no Incus socket at {path} (from {source})")
    if _is_socket(DEFAULT_INCUS_SOCKET):
        return DEFAULT_INCUS_SOCKET
    if environ.get("LXD_DIR"):
        path = os.path.join(environ["LXD_DIR"], "unix.socket")
        if _is_socket(path):
            return path
        raise SocketNotFoundError(f"no LXD socket at {path} (from LXD_DIR)")
    for path in DEFAULT_LXD_SOCKETS:
        if _is_socket(path):
            return path
    tried = ", ".join((DEFAULT_INCUS_SOCKET, *DEFAULT_LXD_SOCKETS))
    raise SocketNotFoundError(
        f"no Incus or LXD socket found (tried {tried}); "
        "pass --socket or set INCUS_SOCKET / INCUS_DIR"
    )


# ------------------------------------------------------------------ snapshots


@dataclass(frozen=True)
class NicSnapshot:
    device: str
    config: Mapping[str, str] = field(hash=False)  # expanded device config
    host_name: str | None  # host-side veth; None while the instance is stopped
    hwaddr: str | None = None  # volatile.<device>.hwaddr, or the configured hwaddr


@dataclass(frozen=True)
class InstanceSnapshot:
    project: str
    name: str
    type: str  # "container" | "virtual-machine"
    status: str  # "Running", "Stopped", ...
    location: str  # cluster member, "none" when not clustered
    nics: tuple[NicSnapshot, ...]  # routed NICs only, by device name

    @property
    def lxc_name(self) -> str:
        return lxc_name(self.project, self.name)


def lxc_name(project: str, name: str) -> str:
    """The LXC container name Incus uses (``LXC_NAME`` in hooks)."""
    return name if project == "default" else f"{project}_{name}"


def routed_nics(
    devices: Mapping[str, Mapping[str, Any]], config: Mapping[str, Any]
) -> tuple[NicSnapshot, ...]:
    """Routed NICs from an instance's expanded devices and expanded config."""
    out = []
    for dev in sorted(devices):
        cfg = {str(k): str(v) for k, v in devices[dev].items()}
        if not is_routed_nic(cfg):
            continue
        out.append(
            NicSnapshot(
                device=dev,
                config=MappingProxyType(cfg),
                host_name=config.get(f"volatile.{dev}.host_name") or None,
                hwaddr=config.get(f"volatile.{dev}.hwaddr") or cfg.get("hwaddr") or None,
            )
        )
    return tuple(out)


def snapshot_from_api(data: Mapping[str, Any]) -> InstanceSnapshot:
    """An InstanceSnapshot from one instance object of the REST API."""
    try:
        name = data["name"]
        devices = data.get("expanded_devices")
        config = data.get("expanded_config")
        if devices is None or config is None:
            # Older servers / recursion=0 answers lack the expanded view.
            raise KeyError("expanded_devices/expanded_config")
        return InstanceSnapshot(
            project=data.get("project") or "default",
            name=name,
            type=data.get("type") or "container",
            status=data.get("status") or "",
            location=data.get("location") or "none",
            nics=routed_nics(devices, config),
        )
    except (KeyError, TypeError, AttributeError) as e:
        raise IncusError(f"unexpected instance data from the API ({e})") from e


# ------------------------------------------------------------------- events


class _EventSocket(WebSocketBaseClient):  # type: ignore[misc]
    """ws4py client that hands each event to a callback as it arrives."""

    def __init__(self, url: str, ssl_options: Any = None) -> None:
        # gorilla/websocket rejects ws4py's made-up Origin for unix sockets.
        super().__init__(url, ssl_options=ssl_options, exclude_headers=["origin"])
        self.on_event: Callable[[dict[str, Any]], None] | None = None

    def received_message(self, message: Any) -> None:
        try:
            event = json.loads(bytes(message.data).decode("utf-8"))
        except ValueError:  # not JSON: nothing an event consumer could use
            return
        if self.on_event is not None and isinstance(event, dict):
            self.on_event(event)


class IncusClient:
    """The local daemon, over its unix socket."""

    def __init__(self, socket: str | None = None, *, timeout: float = 30.0) -> None:
        self.socket_path = find_socket(socket)
        # The URL form, not the path: pylxd 2.2 (Debian 12) takes a path for a
        # unix socket only if os.path.isfile() holds, which a socket never does.
        endpoint = "http+unix://" + quote(self.socket_path, safe="")
        try:
            self._client = pylxd.Client(endpoint=endpoint, timeout=timeout)
        except pylxd.exceptions.ClientConnectionFailed as e:
            raise IncusError(f"cannot connect to {self.socket_path}: {e}") from e
        self._lock = threading.Lock()
        self._ws: _EventSocket | None = None
        self._closing = False

    # -- plain requests

    def _get(self, node: Any, params: Mapping[str, str] | None = None) -> Any:
        try:
            response = node.get(params=dict(params or {}))
            return response.json()["metadata"]
        except pylxd.exceptions.NotFound:
            raise
        except pylxd.exceptions.LXDAPIException as e:
            raise IncusError(f"Incus API error: {e}") from e
        except (requests.RequestException, OSError, ValueError, KeyError) as e:
            raise IncusError(f"Incus API request failed: {e}") from e

    def server_name(self) -> str | None:
        """This cluster member's name; None when the server is not clustered."""
        env = self._get(self._client.api).get("environment", {})
        if not env.get("server_clustered"):
            return None
        name = env.get("server_name")
        return str(name) if name else None

    def instances(
        self, project: str | None = None, all_projects: bool = False
    ) -> list[InstanceSnapshot]:
        """Instances with their expanded devices, in one request (recursion=1).

        On a cluster only the instances located on this member are returned.
        """
        params = {"recursion": "1"}
        if all_projects:
            params["all-projects"] = "true"
        else:
            params["project"] = project or "default"
        data = self._get(self._client.api.instances, params)
        if not isinstance(data, list):
            raise IncusError("unexpected instance list from the API")
        member = self.server_name()
        snaps = [snapshot_from_api(item) for item in data]
        if member is not None:
            snaps = [s for s in snaps if s.location == member]
        return sorted(snaps, key=lambda s: (s.project, s.name))

    def instance(self, name: str, project: str = "default") -> InstanceSnapshot:
        try:
            data = self._get(self._client.api.instances[name], {"project": project})
        except pylxd.exceptions.NotFound:
            raise InstanceNotFoundError(name, project) from None
        return snapshot_from_api(data)

    def projects(self) -> list[str]:
        urls = self._get(self._client.api.projects)
        return sorted(_last_segment(u) for u in _as_str_list(urls))

    def profiles(self, project: str = "default") -> list[tuple[str, str]]:
        """(project, profile) pairs usable in ``project``: a project without
        its own profiles (features.profiles=false) lists default's."""
        urls = self._get(self._client.api.profiles, {"project": project})
        return sorted(_profile_ref(u) for u in _as_str_list(urls))

    def profile_config(self, name: str, project: str = "default") -> dict[str, str]:
        """A profile's own config (``raw.lxc`` and friends)."""
        data, _ = self._profile(name, project)
        return {str(k): str(v) for k, v in (data.get("config") or {}).items()}

    def set_profile_config(self, name: str, key: str, value: str, project: str = "default") -> None:
        """Set one profile config key; an empty value removes it.

        Read-modify-write guarded by the profile's ETag, so a concurrent change
        by someone else makes this fail instead of being overwritten.
        """
        data, etag = self._profile(name, project)
        config = {str(k): str(v) for k, v in (data.get("config") or {}).items()}
        if value:
            config[key] = value
        else:
            config.pop(key, None)
        body = {
            "config": config,
            "description": data.get("description", ""),
            "devices": data.get("devices") or {},
        }
        headers = {"If-Match": etag} if etag else {}
        try:
            self._client.api.profiles[name].put(
                json=body, headers=headers, params={"project": project}
            )
        except pylxd.exceptions.NotFound:
            raise ProfileNotFoundError(name, project) from None
        except pylxd.exceptions.LXDAPIException as e:
            raise IncusError(f"cannot update profile {name!r}: {e}") from e
        except (requests.RequestException, OSError) as e:
            raise IncusError(f"Incus API request failed: {e}") from e

    def _profile(self, name: str, project: str) -> tuple[dict[str, Any], str]:
        try:
            response = self._client.api.profiles[name].get(params={"project": project})
            data = response.json()["metadata"]
        except pylxd.exceptions.NotFound:
            raise ProfileNotFoundError(name, project) from None
        except pylxd.exceptions.LXDAPIException as e:
            raise IncusError(f"Incus API error: {e}") from e
        except (requests.RequestException, OSError, ValueError, KeyError) as e:
            raise IncusError(f"Incus API request failed: {e}") from e
        if not isinstance(data, dict):
            raise IncusError(f"unexpected profile data for {name!r}")
        return data, str(response.headers.get("ETag") or "")

    # -- host checks (doctor)

    def server_info(self) -> dict[str, Any]:
        """``GET /1.0``: server name and version, API extensions."""
        data = self._get(self._client.api)
        if not isinstance(data, dict):
            raise IncusError("unexpected server data from the API")
        return data

    def instance_configs(self) -> list[tuple[InstanceSnapshot, dict[str, str], dict[str, str]]]:
        """Every instance of every project with its own and its expanded
        config (``raw.lxc`` of the instance itself vs. the one it runs with)."""
        params = {"recursion": "1", "all-projects": "true"}
        data = self._get(self._client.api.instances, params)
        if not isinstance(data, list):
            raise IncusError("unexpected instance list from the API")
        out = []
        for item in data:
            own = {str(k): str(v) for k, v in (item.get("config") or {}).items()}
            expanded = {str(k): str(v) for k, v in (item.get("expanded_config") or {}).items()}
            out.append((snapshot_from_api(item), own, expanded))
        return out

    # -- events

    def subscribe(
        self,
        on_event: Callable[[dict[str, Any]], None],
        on_connected: Callable[[], None],
    ) -> None:
        """Deliver lifecycle events of all projects until the connection ends.

        ``on_connected`` runs once the stream is established, before any event
        is delivered: a caller that resyncs there misses nothing. Returns when
        the daemon closes the connection or :meth:`close` is called; raises
        :class:`IncusError` when it cannot connect, and lets exceptions from
        the callbacks through. Reconnecting is the caller's business.
        """
        ws: _EventSocket = self._client.events(websocket_client=_EventSocket)
        # pylxd builds the resource without all-projects; events of every
        # project are needed (instances of all projects get host routes).
        ws.resource = "/1.0/events?" + urlencode({"type": "lifecycle", "all-projects": "true"})
        ws.on_event = on_event
        with self._lock:
            if self._closing:
                return
            self._ws = ws
        try:
            try:
                ws.connect()
            except Exception as e:  # socket errors, ws4py HandshakeError
                raise IncusError(f"cannot subscribe to Incus events: {e}") from e
            with self._lock:
                if self._closing:  # close() raced with connect()
                    return
            on_connected()
            ws.run()
        finally:
            ws.close_connection()  # no-op once run() has closed it
            self._forget(ws)

    def _forget(self, ws: _EventSocket | None) -> None:
        with self._lock:
            if ws is not None and self._ws is ws:
                self._ws = None

    def close(self) -> None:
        """Release the connection; ends a running :meth:`subscribe` (any thread)."""
        with self._lock:
            self._closing = True
            ws = self._ws
        if ws is not None:
            sock = ws.sock
            if sock is not None:
                # shutdown wakes the blocked recv() in run(); ws4py then closes.
                with contextlib.suppress(OSError):
                    sock.shutdown(_socket.SHUT_RDWR)
        with contextlib.suppress(Exception):  # closing must not fail
            self._client.api.session.close()

    def __enter__(self) -> IncusClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _as_str_list(value: Any) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise IncusError("unexpected list from the API")
    return list(value)


def _profile_ref(url: str) -> tuple[str, str]:
    """``/1.0/profiles/NAME?project=P`` -> (P, NAME); no project means default."""
    project = (parse_qs(urlsplit(url).query).get("project") or ["default"])[0]
    return project, _last_segment(url)


def _last_segment(url: str) -> str:
    path = url.split("?", 1)[0].rstrip("/")
    return unquote(path.rsplit("/", 1)[-1])
