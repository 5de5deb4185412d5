"""Socket discovery, snapshot parsing and the hook-side file parsers."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pylxd.exceptions
import pytest

from incus_host_tables import incus, lxcconf
from incus_host_tables.incus import (
    IncusClient,
    IncusError,
    InstanceNotFoundError,
    SocketNotFoundError,
    find_socket,
    snapshot_from_api,
)

# ------------------------------------------------------------------ find_socket


@pytest.fixture
def sockets(tmp_path: Path) -> Iterator[Any]:
    """Makes real listening unix sockets; closes them afterwards."""
    made: list[socket.socket] = []

    def make(relpath: str) -> str:
        path = tmp_path / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        made.append(s)
        return str(path)

    yield make
    for s in made:
        s.close()


@pytest.fixture
def no_defaults(mocker: Any, tmp_path: Path) -> None:
    """Point the well-known socket paths into tmp_path (initially absent)."""
    mocker.patch.object(incus, "DEFAULT_INCUS_SOCKET", str(tmp_path / "var/lib/incus/unix.socket"))
    mocker.patch.object(
        incus,
        "DEFAULT_LXD_SOCKETS",
        (str(tmp_path / "snap/lxd/unix.socket"), str(tmp_path / "var/lib/lxd/unix.socket")),
    )


@pytest.mark.usefixtures("no_defaults")
class TestFindSocket:
    def test_explicit_wins(self, sockets: Any) -> None:
        explicit = sockets("explicit.socket")
        env = {"INCUS_SOCKET": sockets("env.socket"), "INCUS_DIR": str(Path(explicit).parent)}
        sockets("var/lib/incus/unix.socket")
        assert find_socket(explicit, env) == explicit

    def test_missing_explicit_is_an_error_not_a_fallback(self, sockets: Any) -> None:
        sockets("var/lib/incus/unix.socket")
        with pytest.raises(SocketNotFoundError, match=r"/nowhere.*--socket"):
            find_socket("/nowhere", {})

    def test_incus_socket_before_incus_dir(self, sockets: Any, tmp_path: Path) -> None:
        env_sock = sockets("env.socket")
        sockets("dir/unix.socket")
        env = {"INCUS_SOCKET": env_sock, "INCUS_DIR": str(tmp_path / "dir")}
        assert find_socket(None, env) == env_sock

    def test_incus_dir(self, sockets: Any, tmp_path: Path) -> None:
        path = sockets("dir/unix.socket")
        sockets("var/lib/incus/unix.socket")
        assert find_socket(None, {"INCUS_DIR": str(tmp_path / "dir")}) == path

    def test_incus_dir_without_socket_does_not_fall_back(
        self, sockets: Any, tmp_path: Path
    ) -> None:
        # A hook of a private incusd must never reach the system daemon.
        sockets("var/lib/incus/unix.socket")
        with pytest.raises(SocketNotFoundError, match="INCUS_DIR"):
            find_socket(None, {"INCUS_DIR": str(tmp_path / "empty")})

    def test_incus_default_before_lxd(self, sockets: Any, tmp_path: Path) -> None:
        incus_default = sockets("var/lib/incus/unix.socket")
        sockets("lxd/unix.socket")
        sockets("snap/lxd/unix.socket")
        assert find_socket(None, {"LXD_DIR": str(tmp_path / "lxd")}) == incus_default

    def test_lxd_dir(self, sockets: Any, tmp_path: Path) -> None:
        path = sockets("lxd/unix.socket")
        sockets("snap/lxd/unix.socket")
        assert find_socket(None, {"LXD_DIR": str(tmp_path / "lxd")}) == path

    def test_lxd_dir_without_socket_is_an_error(self, sockets: Any, tmp_path: Path) -> None:
        sockets("snap/lxd/unix.socket")
        with pytest.raises(SocketNotFoundError, match="LXD_DIR"):
            find_socket(None, {"LXD_DIR": str(tmp_path / "nolxd")})

    def test_snap_before_deb(self, sockets: Any) -> None:
        snap = sockets("snap/lxd/unix.socket")
        sockets("var/lib/lxd/unix.socket")
        assert find_socket(None, {}) == snap

    def test_deb_lxd(self, sockets: Any) -> None:
        deb = sockets("var/lib/lxd/unix.socket")
        assert find_socket(None, {}) == deb

    def test_empty_variables_are_unset(self, sockets: Any) -> None:
        path = sockets("var/lib/incus/unix.socket")
        env = {"INCUS_SOCKET": "", "INCUS_DIR": "", "LXD_DIR": ""}
        assert find_socket("", env) == path

    def test_nothing_found_names_what_was_tried(self) -> None:
        with pytest.raises(SocketNotFoundError) as exc:
            find_socket(None, {})
        msg = str(exc.value)
        assert "var/lib/incus/unix.socket" in msg and "var/lib/lxd/unix.socket" in msg
        assert "--socket" in msg
        assert isinstance(exc.value, FileNotFoundError)

    def test_a_plain_file_is_not_a_socket(self, tmp_path: Path) -> None:
        plain = tmp_path / "var/lib/incus/unix.socket"
        plain.parent.mkdir(parents=True)
        plain.write_text("")
        with pytest.raises(SocketNotFoundError):
            find_socket(None, {})
        with pytest.raises(SocketNotFoundError):
            find_socket(str(plain), {})


# ---------------------------------------------------------------- snapshots


def api_instance(**over: Any) -> dict[str, Any]:
    """An instance object as GET /1.0/instances?recursion=1 returns it (trimmed)."""
    data: dict[str, Any] = {
        "name": "c1",
        "project": "default",
        "type": "container",
        "status": "Running",
        "location": "none",
        "config": {"volatile.eth0.host_name": "vethbe658ed7"},
        "devices": {},  # eth0 comes from a profile
        "expanded_config": {
            "image.os": "busybox",
            "volatile.eth0.host_name": "vethbe658ed7",
            "volatile.eth0.hwaddr": "10:66:6a:0a:7e:c5",
            "volatile.eth0.name": "eth0",
            "volatile.p2p0.host_name": "veth8110d31c",
            "volatile.p2p0.hwaddr": "10:66:6a:83:c9:37",
        },
        "expanded_devices": {
            "eth0": {
                "ipv4.address": "198.51.100.10",
                "ipv4.host_table": "100",
                "ipv6.address": "2001:db8::10",
                "ipv6.host_table": "100",
                "nictype": "routed",
                "type": "nic",
            },
            "p2p0": {"name": "eth5", "nictype": "p2p", "type": "nic"},
            "root": {"path": "/", "pool": "default", "type": "disk"},
        },
    }
    data.update(over)
    return data


class TestSnapshotFromApi:
    def test_running_routed_nic_from_expanded_devices(self) -> None:
        snap = snapshot_from_api(api_instance())
        assert (snap.project, snap.name, snap.type, snap.status, snap.location) == (
            "default",
            "c1",
            "container",
            "Running",
            "none",
        )
        assert len(snap.nics) == 1
        nic = snap.nics[0]
        assert nic.device == "eth0"
        assert nic.host_name == "vethbe658ed7"
        assert nic.hwaddr == "10:66:6a:0a:7e:c5"
        assert nic.config["ipv4.host_table"] == "100"
        with pytest.raises(TypeError):
            nic.config["x"] = "y"  # type: ignore[index]

    def test_stopped_has_no_host_name(self) -> None:
        data = api_instance(status="Stopped")
        del data["expanded_config"]["volatile.eth0.host_name"]
        snap = snapshot_from_api(data)
        assert snap.status == "Stopped"
        assert snap.nics[0].host_name is None
        assert snap.nics[0].hwaddr == "10:66:6a:0a:7e:c5"

    def test_only_network_less_routed_nics(self) -> None:
        devices = {
            "b": {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.2"},
            "a": {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.1"},
            "br": {"type": "nic", "nictype": "bridged", "parent": "br0"},
            "managed": {"type": "nic", "network": "net0"},
            "odd": {"type": "nic", "nictype": "routed", "network": "net0"},
            "disk": {"type": "disk", "nictype": "routed"},
            "novalue": {"type": "nic"},
        }
        snap = snapshot_from_api(api_instance(expanded_devices=devices, expanded_config={}))
        assert [n.device for n in snap.nics] == ["a", "b"]  # sorted by device name
        assert all(n.host_name is None and n.hwaddr is None for n in snap.nics)

    def test_configured_hwaddr_when_no_volatile(self) -> None:
        devices = {"eth0": {"type": "nic", "nictype": "routed", "hwaddr": "00:16:3e:00:00:01"}}
        snap = snapshot_from_api(api_instance(expanded_devices=devices, expanded_config={}))
        assert snap.nics[0].hwaddr == "00:16:3e:00:00:01"

    def test_lxc_name(self) -> None:
        assert snapshot_from_api(api_instance()).lxc_name == "c1"
        assert snapshot_from_api(api_instance(project="p1")).lxc_name == "p1_c1"
        assert incus.lxc_name("my_proj", "web") == "my_proj_web"

    def test_missing_fields_get_defaults(self) -> None:
        data = api_instance()
        for key in ("project", "type", "location"):
            del data[key]
        snap = snapshot_from_api(data)
        assert (snap.project, snap.type, snap.location) == ("default", "container", "none")

    @pytest.mark.parametrize("drop", ["name", "expanded_devices", "expanded_config"])
    def test_malformed_data_is_a_clear_error(self, drop: str) -> None:
        data = api_instance()
        del data[drop]
        with pytest.raises(IncusError, match="unexpected instance data"):
            snapshot_from_api(data)

    def test_snapshots_are_hashable_values(self) -> None:
        a, b = snapshot_from_api(api_instance()), snapshot_from_api(api_instance())
        assert a == b and hash(a) == hash(b)
        assert len({a, b}) == 1


@pytest.mark.parametrize(
    ("lxc_name", "expected"),
    [
        ("c1", ("default", "c1")),
        ("p1_c1", ("p1", "c1")),
        ("my_proj_web", ("my_proj", "web")),  # instance names never hold "_"
    ],
)
def test_parse_lxc_name(lxc_name: str, expected: tuple[str, str]) -> None:
    assert incus.parse_lxc_name(lxc_name) == expected
    assert incus.lxc_name(*expected) == lxc_name


@pytest.mark.parametrize("bad", ["", "_c1", "p1_"])
def test_parse_lxc_name_rejects_malformed(bad: str) -> None:
    with pytest.raises(ValueError):
        incus.parse_lxc_name(bad)


# ------------------------------------------------------------- IncusClient


def _response(metadata: Any) -> Any:
    class R:
        status_code = 200

        def json(self) -> Any:
            return {"type": "sync", "metadata": metadata}

    return R()


@pytest.fixture
def sock(sockets: Any) -> str:
    path: str = sockets("unix.socket")
    return path


@pytest.fixture
def pylxd_client(mocker: Any) -> Any:
    """pylxd.Client replaced by a mock; its ``api`` tree records the requests."""
    fake = mocker.MagicMock()
    mocker.patch("pylxd.Client", return_value=fake)
    fake.api.get.return_value = _response({"environment": {"server_clustered": False}})
    return fake


class TestIncusClient:
    def test_instances_is_one_recursive_request(self, pylxd_client: Any, sock: str) -> None:
        items = [api_instance(name="c2"), api_instance(name="c1", project="p1")]
        pylxd_client.api.instances.get.return_value = _response(items)
        client = IncusClient(sock)
        snaps = client.instances(all_projects=True)
        assert [(s.project, s.name) for s in snaps] == [("default", "c2"), ("p1", "c1")]
        pylxd_client.api.instances.get.assert_called_once_with(
            params={"recursion": "1", "all-projects": "true"}
        )

    def test_instances_of_one_project(self, pylxd_client: Any, sock: str) -> None:
        pylxd_client.api.instances.get.return_value = _response([])
        client = IncusClient(sock)
        assert client.instances(project="p1") == []
        pylxd_client.api.instances.get.assert_called_with(
            params={"recursion": "1", "project": "p1"}
        )
        client.instances()
        pylxd_client.api.instances.get.assert_called_with(
            params={"recursion": "1", "project": "default"}
        )

    def test_cluster_member_sees_only_its_instances(self, pylxd_client: Any, sock: str) -> None:
        pylxd_client.api.get.return_value = _response(
            {"environment": {"server_clustered": True, "server_name": "m1"}}
        )
        items = [
            api_instance(name="a", location="m1"),
            api_instance(name="b", location="m2"),
        ]
        pylxd_client.api.instances.get.return_value = _response(items)
        client = IncusClient(sock)
        assert client.server_name() == "m1"
        assert [s.name for s in client.instances(all_projects=True)] == ["a"]

    def test_server_name_none_when_not_clustered(self, pylxd_client: Any, sock: str) -> None:
        pylxd_client.api.get.return_value = _response(
            {"environment": {"server_clustered": False, "server_name": "myhost"}}
        )
        assert IncusClient(sock).server_name() is None

    def test_instance_not_found(self, pylxd_client: Any, mocker: Any, sock: str) -> None:
        response = mocker.MagicMock(status_code=404)
        response.json.return_value = {"error": "Instance not found"}
        node = pylxd_client.api.instances.__getitem__.return_value
        node.get.side_effect = pylxd.exceptions.NotFound(response)
        client = IncusClient(sock)
        with pytest.raises(InstanceNotFoundError, match=r"'web'.*'p1'") as exc:
            client.instance("web", project="p1")
        assert (exc.value.name, exc.value.project) == ("web", "p1")
        pylxd_client.api.instances.__getitem__.assert_called_with("web")
        node.get.assert_called_with(params={"project": "p1"})

    def test_projects(self, pylxd_client: Any, sock: str) -> None:
        pylxd_client.api.projects.get.return_value = _response(
            ["/1.0/projects/p1", "/1.0/projects/default", "/1.0/projects/with%20space"]
        )
        assert IncusClient(sock).projects() == ["default", "p1", "with space"]

    def test_subscribe_asks_for_lifecycle_events_of_all_projects(
        self, pylxd_client: Any, mocker: Any, sock: str
    ) -> None:
        ws = mocker.MagicMock(sock=None)
        calls: list[str] = []
        ws.connect.side_effect = lambda: calls.append("connect")
        ws.run.side_effect = lambda: (calls.append("run"), ws.on_event({"type": "lifecycle"}))
        pylxd_client.events.return_value = ws
        got: list[dict[str, Any]] = []
        IncusClient(sock).subscribe(got.append, lambda: calls.append("connected"))
        assert calls == ["connect", "connected", "run"]  # resync before any event
        assert ws.resource == "/1.0/events?type=lifecycle&all-projects=true"
        assert got == [{"type": "lifecycle"}]
        ws.close_connection.assert_called()

    def test_subscribe_connect_failure(self, pylxd_client: Any, mocker: Any, sock: str) -> None:
        ws = mocker.MagicMock(sock=None)
        ws.connect.side_effect = ConnectionRefusedError("refused")
        pylxd_client.events.return_value = ws
        on_connected = mocker.MagicMock()
        with pytest.raises(IncusError, match="refused"):
            IncusClient(sock).subscribe(lambda e: None, on_connected)
        on_connected.assert_not_called()
        ws.run.assert_not_called()

    def test_subscribe_callback_error_closes_the_stream(
        self, pylxd_client: Any, mocker: Any, sock: str
    ) -> None:
        ws = mocker.MagicMock(sock=None)
        pylxd_client.events.return_value = ws

        def boom() -> None:
            raise RuntimeError("resync failed")

        with pytest.raises(RuntimeError, match="resync failed"):
            IncusClient(sock).subscribe(lambda e: None, boom)
        ws.close_connection.assert_called()

    def test_subscribe_after_close_is_a_no_op(
        self, pylxd_client: Any, mocker: Any, sock: str
    ) -> None:
        ws = mocker.MagicMock(sock=None)
        pylxd_client.events.return_value = ws
        client = IncusClient(sock)
        client.close()
        client.subscribe(lambda e: None, lambda: None)
        ws.connect.assert_not_called()

    def test_event_socket_decodes_json_and_skips_garbage(self) -> None:
        ws = incus._EventSocket("ws+unix:///nonexistent.socket")
        got: list[dict[str, Any]] = []
        ws.on_event = got.append

        class Msg:
            def __init__(self, data: bytes) -> None:
                self.data = data

        ws.received_message(Msg(b'{"type": "lifecycle", "metadata": {"action": "x"}}'))
        ws.received_message(Msg(b"not json"))
        ws.received_message(Msg(b"[1, 2]"))
        assert got == [{"type": "lifecycle", "metadata": {"action": "x"}}]
        assert "origin" in ws.exclude_headers
        ws.close_connection()

    def test_set_profile_config_is_an_etag_guarded_put(
        self, pylxd_client: Any, mocker: Any, sock: str
    ) -> None:
        node = pylxd_client.api.profiles.__getitem__.return_value
        profile = {
            "config": {"raw.lxc": "old", "user.keep": "1"},
            "description": "d",
            "devices": {"eth0": {"type": "nic"}},
        }
        node.get.return_value = mocker.MagicMock(
            headers={"ETag": '"abc"'}, **{"json.return_value": {"metadata": profile}}
        )
        client = IncusClient(sock)
        assert client.profile_config("routed", "p1") == {"raw.lxc": "old", "user.keep": "1"}
        node.get.assert_called_with(params={"project": "p1"})

        client.set_profile_config("routed", "raw.lxc", "new", "p1")
        node.put.assert_called_with(
            json={
                "config": {"raw.lxc": "new", "user.keep": "1"},
                "description": "d",
                "devices": {"eth0": {"type": "nic"}},
            },
            headers={"If-Match": '"abc"'},
            params={"project": "p1"},
        )
        client.set_profile_config("routed", "raw.lxc", "", "p1")
        assert node.put.call_args.kwargs["json"]["config"] == {"user.keep": "1"}

    def test_profile_not_found(self, pylxd_client: Any, mocker: Any, sock: str) -> None:
        node = pylxd_client.api.profiles.__getitem__.return_value
        node.get.side_effect = pylxd.exceptions.NotFound(mocker.MagicMock(status_code=404))
        with pytest.raises(incus.ProfileNotFoundError, match="'gone'"):
            IncusClient(sock).profile_config("gone")

    def test_connection_failure_is_an_incus_error(self, mocker: Any, sock: str) -> None:
        mocker.patch("pylxd.Client", side_effect=pylxd.exceptions.ClientConnectionFailed("refused"))
        with pytest.raises(IncusError, match="refused"):
            IncusClient(sock)


# ---------------------------------------------------------------- lxc.conf

# Verbatim from Incus 6.0.4 (lab), a container with two routed NICs and a p2p NIC.
LXC_CONF = """\
lxc.log.file = /tmp/x/incus/logs/c2/lxc.log
lxc.hook.pre-start = /proc/3002/exe callhook /tmp/x/incus "default" "c2" start
lxc.uts.name = c2
lxc.net.0.type = phys
lxc.net.0.name = eth1
lxc.net.0.flags = up
lxc.net.0.link = veth0f22c5fd
lxc.net.0.hwaddr = 10:66:6a:ca:1f:56
lxc.net.0.ipv4.gateway = 169.254.0.1
lxc.net.0.ipv4.address = 198.51.100.11/32 0.0.0.0
lxc.net.1.type = phys
lxc.net.1.name = eth5
lxc.net.1.flags = up
lxc.net.1.link = veth52ba891a
lxc.net.1.hwaddr = 10:66:6a:83:c9:37
lxc.net.2.type = phys
lxc.net.2.name = eth0
lxc.net.2.flags = up
lxc.net.2.link = veth07ef64f5
lxc.net.2.hwaddr = 10:66:6a:0a:7e:c5
lxc.net.2.ipv4.address = 198.51.100.10/32 0.0.0.0
lxc.net.2.ipv4.address = 198.51.100.12/32 0.0.0.0
lxc.net.2.ipv6.gateway = fe80::1
lxc.net.2.ipv6.address = 2001:db8::10/128
lxc.rootfs.path = dir:/tmp/x/incus/storage-pools/default/containers/c2/rootfs
"""

BACKUP_YAML = """\
container:
  architecture: x86_64
  config:
    raw.lxc: |-
      lxc.hook.start-host = /opt/hook
      lxc.hook.post-stop = /opt/hook
    volatile.idmap.current: '[{"Isuid":true,"Hostid":1000000}]'
  devices:
    net1:
      ipv4.address: 198.51.100.11
      name: eth1
      nictype: routed
      type: nic
  ephemeral: false
  profiles:
  - default
  - routed
  description: ""
  expanded_config:
    raw.lxc: |-
      lxc.hook.start-host = /opt/hook
      lxc.hook.post-stop = /opt/hook
    user.note: "it's \\"quoted\\"\\tand \\u00e9"
    user.single: 'it''s'
    volatile.eth0.host_name: vethbe658ed7
    volatile.eth0.hwaddr: 10:66:6A:0A:7E:C5
    volatile.idmap.base: "0"
    volatile.net1.host_name: veth49aa0ce9
    volatile.net1.hwaddr: 10:66:6a:ca:1f:56
    volatile.p2p0.host_name: veth8110d31c
    volatile.p2p0.hwaddr: 10:66:6a:83:c9:37
  expanded_devices:
    eth0:
      ipv4.address: 198.51.100.10,198.51.100.12
      ipv6.address: 2001:db8::10
      nictype: routed
      type: nic
    net1:
      ipv4.address: 198.51.100.11
      name: eth1
      nictype: routed
      type: nic
    p2p0:
      name: eth5
      nictype: p2p
      type: nic
    root:
      path: /
      pool: default
      type: disk
  name: c2
  status: Stopped
  location: none
  type: container
  project: default
pool:
  config:
    source: /tmp/x/incus/storage-pools/default
  name: default
  used_by: []
  locations:
  - none
profiles:
- config: {}
  description: Default Incus profile
  devices:
    root:
      path: /
      type: disk
  name: default
volume:
  config: {}
  name: c2
"""


class TestLxcConf:
    def test_parse_routed_nics(self) -> None:
        nics = lxcconf.parse_lxc_conf(LXC_CONF)
        assert [n.index for n in nics] == [0, 1, 2]
        n0, n1, n2 = nics
        assert (n0.type, n0.name, n0.link, n0.hwaddr) == (
            "phys",
            "eth1",
            "veth0f22c5fd",
            "10:66:6a:ca:1f:56",
        )
        assert n0.ipv4_addresses == ("198.51.100.11/32",)
        assert n0.ipv4_gateway == "169.254.0.1" and n0.ipv6_gateway is None
        assert n1.ipv4_addresses == () and n1.ipv6_addresses == ()
        assert n2.ipv4_addresses == ("198.51.100.10/32", "198.51.100.12/32")
        assert n2.ipv6_addresses == ("2001:db8::10/128",)
        assert n2.veth_pair is None
        assert n2.options["flags"] == "up"

    def test_veth_pair_and_address_reset(self) -> None:
        text = (
            "# comment\n\n"
            "lxc.net.0.type = veth\n"
            "lxc.net.0.veth.pair = vethHOST\n"
            "lxc.net.0.ipv4.address = 203.0.113.1/24\n"
            "lxc.net.0.ipv4.address =\n"
            "lxc.net.0.ipv4.address = 203.0.113.2/24\n"
        )
        (nic,) = lxcconf.parse_lxc_conf(text)
        assert nic.veth_pair == "vethHOST"
        assert nic.ipv4_addresses == ("203.0.113.2/24",)

    def test_garbage_line(self) -> None:
        with pytest.raises(lxcconf.LxcConfError, match="line 2"):
            lxcconf.parse_lxc_conf("lxc.uts.name = a\nnonsense\n")

    def test_no_nics(self) -> None:
        assert lxcconf.parse_lxc_conf("lxc.uts.name = a\n") == ()


class TestBackupYaml:
    def test_expanded_config_and_devices(self) -> None:
        b = lxcconf.parse_backup_yaml(BACKUP_YAML)
        assert (b.project, b.name) == ("default", "c2")
        assert b.config["raw.lxc"] == (
            "lxc.hook.start-host = /opt/hook\nlxc.hook.post-stop = /opt/hook"
        )
        assert b.config["user.note"] == 'it\'s "quoted"\tand \u00e9'
        assert b.config["user.single"] == "it's"
        assert b.config["volatile.idmap.base"] == "0"
        assert set(b.devices) == {"eth0", "net1", "p2p0", "root"}
        assert b.devices["net1"]["name"] == "eth1"

    @pytest.mark.parametrize("bad", ["a: 'open\n", "a: b\n   c: d\n  e: f\n", "a:\n\tb: c\n"])
    def test_malformed(self, bad: str) -> None:
        with pytest.raises(lxcconf.LxcConfError):
            lxcconf.parse_backup_yaml(bad)

    def test_not_a_backup_file(self) -> None:
        with pytest.raises(lxcconf.LxcConfError, match="container"):
            lxcconf.parse_backup_yaml("pool:\n  name: x\n")


class TestRoutedNicsForHook:
    def _files(self, tmp_path: Path, lxc_name: str = "c2") -> str:
        run = tmp_path / "incus/run" / lxc_name
        run.mkdir(parents=True)
        (run / "lxc.conf").write_text(LXC_CONF.replace("/tmp/x/incus", str(tmp_path / "incus")))
        cont = tmp_path / "incus/containers" / lxc_name
        cont.mkdir(parents=True)
        (cont / "backup.yaml").write_text(BACKUP_YAML)
        return str(run / "lxc.conf")

    def test_backup_path_from_lxc_config_file(self) -> None:
        assert (
            lxcconf.backup_yaml_path("/var/lib/incus/run/p1_c1/lxc.conf")
            == "/var/lib/incus/containers/p1_c1/backup.yaml"
        )

    def test_matches_devices_to_lxc_entries(self, tmp_path: Path) -> None:
        nics = lxcconf.routed_nics_for_hook(self._files(tmp_path))
        # p2p0 is no routed NIC; eth0 (from a profile) matches by MAC despite case.
        assert [(n.device, n.host_name) for n in nics] == [
            ("eth0", "vethbe658ed7"),
            ("net1", "veth49aa0ce9"),
        ]
        eth0, net1 = nics
        assert eth0.lxc is not None and eth0.lxc.index == 2
        assert eth0.lxc.ipv4_addresses == ("198.51.100.10/32", "198.51.100.12/32")
        assert net1.lxc is not None and net1.lxc.name == "eth1"
        assert eth0.config["ipv6.address"] == "2001:db8::10"

    def test_falls_back_to_interface_name(self, tmp_path: Path) -> None:
        conf = self._files(tmp_path)
        backup = lxcconf.backup_yaml_path(conf)
        text = Path(backup).read_text().replace("10:66:6A:0A:7E:C5", "00:00:00:00:00:01")
        Path(backup).write_text(text)
        nics = lxcconf.routed_nics_for_hook(conf)
        assert nics[0].device == "eth0" and nics[0].lxc is not None
        assert nics[0].lxc.name == "eth0"

    def test_explicit_backup_file(self, tmp_path: Path) -> None:
        conf = self._files(tmp_path)
        other = tmp_path / "copy.yaml"
        other.write_text(BACKUP_YAML.replace("vethbe658ed7", "vethcopy"))
        nics = lxcconf.routed_nics_for_hook(conf, str(other))
        assert nics[0].host_name == "vethcopy"

    def test_var_dir_from_incus_callhook_line(self, tmp_path: Path) -> None:
        # A real host: lxc.conf under /run/incus, state under /var/lib/incus.
        conf = tmp_path / "run/incus/c9/lxc.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text(
            "lxc.log.file = /var/log/incus/c9/lxc.log\n"
            'lxc.hook.pre-start = /proc/1/exe callhook /var/lib/incus "default" "c9" start\n'
        )
        assert lxcconf.backup_yaml_path(str(conf)) == "/var/lib/incus/containers/c9/backup.yaml"
        assert lxcconf.lxc_log_path(str(conf)) == "/var/log/incus/c9/lxc.log"
