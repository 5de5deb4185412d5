"""IncusClient and the hook-side file parsers against a real incusd."""

from __future__ import annotations

import os
import queue
import shlex
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from incus_host_tables import lxcconf
from incus_host_tables.incus import IncusClient, InstanceNotFoundError, ProfileNotFoundError
from lab import IncusLab

pytestmark = pytest.mark.integration

PROFILE = "snaprouted"
PROFILE_NIC = {
    "type": "nic",
    "nictype": "routed",
    "ipv4.address": "198.51.100.20",
    "ipv4.host_table": "100",
    "ipv6.address": "2001:db8::20",
    "ipv6.host_table": "100",
}
P1_NIC = {"type": "nic", "nictype": "routed", "ipv4.address": "198.51.100.21"}


@pytest.fixture(scope="module")
def client(lab: IncusLab) -> Iterator[IncusClient]:
    c = IncusClient(lab.socket_path)
    yield c
    c.close()


@pytest.fixture(scope="module")
def world(lab: IncusLab) -> Iterator[None]:
    """snap1 (default project) gets its routed NIC from a profile, plus a p2p
    NIC that is no routed NIC; c1 lives in project p1."""
    lab.incus("profile", "create", PROFILE)
    lab.incus(
        "profile",
        "device",
        "add",
        PROFILE,
        "eth0",
        "nic",
        *(f"{k}={v}" for k, v in PROFILE_NIC.items() if k != "type"),
    )
    lab.launch(
        "snap1",
        profiles=["default", PROFILE],
        devices={"p2p0": {"type": "nic", "nictype": "p2p", "name": "eth9"}},
    )
    lab.create_project("p1")
    lab.launch("c1", project="p1", devices={"eth0": P1_NIC})
    try:
        yield
    finally:
        lab.delete("c1", project="p1")
        lab.incus("project", "delete", "p1")
        lab.delete("snap1")
        lab.incus("profile", "delete", PROFILE)


def _volatile(lab: IncusLab, name: str, project: str = "default") -> dict[str, Any]:
    cfg: dict[str, Any] = lab.query(f"/1.0/instances/{name}?project={project}")["config"]
    return cfg


def test_routed_nic_from_profile_is_expanded(
    lab: IncusLab, client: IncusClient, world: None
) -> None:
    snap = client.instance("snap1")
    assert (snap.project, snap.name, snap.type, snap.status) == (
        "default",
        "snap1",
        "container",
        "Running",
    )
    assert snap.location == "none"
    assert [n.device for n in snap.nics] == ["eth0"]  # the p2p NIC is left out
    nic = snap.nics[0]
    assert dict(nic.config) == PROFILE_NIC
    host_name = _volatile(lab, "snap1")["volatile.eth0.host_name"]
    assert nic.host_name == host_name
    assert nic.hwaddr == _volatile(lab, "snap1")["volatile.eth0.hwaddr"]
    # It really is the host-side veth in H.
    lab.ns_run("ip", "link", "show", "dev", host_name)


def test_host_name_is_none_while_stopped(lab: IncusLab, client: IncusClient, world: None) -> None:
    lab.incus("stop", "--force", "snap1")
    try:
        snap = client.instance("snap1")
        assert snap.status == "Stopped"
        assert [(n.device, n.host_name) for n in snap.nics] == [("eth0", None)]
    finally:
        lab.incus("start", "snap1")
    assert client.instance("snap1").nics[0].host_name is not None


def test_projects_and_lxc_names(client: IncusClient, world: None) -> None:
    assert {"default", "p1"} <= set(client.projects())

    everything = {(s.project, s.name): s for s in client.instances(all_projects=True)}
    assert {("default", "snap1"), ("p1", "c1")} <= set(everything)
    c1 = everything[("p1", "c1")]
    assert c1.lxc_name == "p1_c1"
    assert everything[("default", "snap1")].lxc_name == "snap1"
    assert [(n.device, n.config["ipv4.address"]) for n in c1.nics] == [("eth0", "198.51.100.21")]

    assert [s.name for s in client.instances(project="p1")] == ["c1"]
    assert "c1" not in {s.name for s in client.instances()}  # default project only
    assert client.instance("c1", project="p1") == c1


def test_lxc_name_matches_lxc_run_dir(lab: IncusLab, client: IncusClient, world: None) -> None:
    c1 = client.instance("c1", project="p1")
    assert os.path.exists(os.path.join(lab.incus_dir, "run", c1.lxc_name, "lxc.conf"))
    assert lab.lxc_conf_path("c1", "p1").endswith("/run/p1_c1/lxc.conf")
    assert lxcconf.parse_lxc_name(c1.lxc_name) == ("p1", "c1")


def test_missing_instance_raises(client: IncusClient, world: None) -> None:
    with pytest.raises(InstanceNotFoundError, match="nope"):
        client.instance("nope")
    with pytest.raises(InstanceNotFoundError):
        client.instance("c1")  # it lives in p1


def test_profile_config_round_trip(lab: IncusLab, client: IncusClient, world: None) -> None:
    assert client.profile_config(PROFILE) == {}
    client.set_profile_config(PROFILE, "user.iht-test", "a b\nc")
    client.set_profile_config(PROFILE, "user.other", "1")
    assert client.profile_config(PROFILE) == {"user.iht-test": "a b\nc", "user.other": "1"}
    # p1 has no profiles of its own: it sees default's.
    assert client.profile_config(PROFILE, project="p1")["user.other"] == "1"
    assert lab.query(f"/1.0/profiles/{PROFILE}")["devices"]["eth0"]["nictype"] == "routed"
    client.set_profile_config(PROFILE, "user.iht-test", "")
    client.set_profile_config(PROFILE, "user.other", "")
    assert client.profile_config(PROFILE) == {}
    with pytest.raises(ProfileNotFoundError, match="nope"):
        client.profile_config("nope")
    with pytest.raises(ProfileNotFoundError):
        client.set_profile_config("nope", "user.x", "1")


def test_subscribe_sees_instance_started_in_any_project(
    lab: IncusLab, client: IncusClient, world: None
) -> None:
    lab.incus("stop", "--force", "c1", "--project", "p1")
    events: queue.Queue[dict[str, Any]] = queue.Queue()
    connected = threading.Event()
    sub = IncusClient(lab.socket_path)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            sub.subscribe(events.put, connected.set)
        except BaseException as e:  # surfaced by the assertion below
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        assert connected.wait(10), errors
        lab.incus("start", "c1", "--project", "p1")
        deadline = time.monotonic() + 10
        seen = []
        while time.monotonic() < deadline:
            try:
                event = events.get(timeout=0.5)
            except queue.Empty:
                continue
            seen.append(event)
            meta = event.get("metadata", {})
            if meta.get("action") == "instance-started" and event.get("project") == "p1":
                assert meta.get("source") == "/1.0/instances/c1?project=p1"
                assert event.get("type") == "lifecycle"
                break
        else:
            pytest.fail(f"no instance-started event for p1/c1; got {seen}")
    finally:
        sub.close()
        thread.join(10)
    assert not thread.is_alive(), "subscribe() did not return after close()"
    assert not errors


def test_start_host_hook_files_name_the_host_veth(
    lab: IncusLab, client: IncusClient, world: None, tmp_path: Any
) -> None:
    """What a start-host hook can read: copies taken inside a real hook agree
    with the API on every start (a new veth each time)."""
    out = tmp_path / "hook"
    out.mkdir()
    hook = tmp_path / "grab.sh"
    hook.write_text(
        "#!/bin/sh\n"
        f"d={shlex.quote(str(out))}/$LXC_NAME.$(date +%s%N)\n"
        'mkdir -p "$d" && cp "$LXC_CONFIG_FILE" "$d/lxc.conf"\n'
        'cp "$INCUS_DIR/containers/$LXC_NAME/backup.yaml" "$d/backup.yaml"\n'
    )
    hook.chmod(0o755)
    lab.incus("stop", "--force", "c1", "--project", "p1")
    lab.incus("config", "set", "c1", "raw.lxc", f"lxc.hook.start-host = {hook}", "--project", "p1")
    try:
        host_names = []
        for _ in range(2):
            lab.incus("start", "c1", "--project", "p1")
            snap = client.instance("c1", project="p1")
            copies = sorted(out.iterdir())
            assert copies and copies[-1].name.startswith("p1_c1.")
            nics = lxcconf.routed_nics_for_hook(
                str(copies[-1] / "lxc.conf"), str(copies[-1] / "backup.yaml")
            )
            assert [(n.device, n.host_name) for n in nics] == [
                (nic.device, nic.host_name) for nic in snap.nics
            ]
            assert nics[0].lxc is not None
            assert nics[0].lxc.ipv4_addresses == ("198.51.100.21/32",)
            assert nics[0].lxc.hwaddr == snap.nics[0].hwaddr
            host_names.append(nics[0].host_name)
            lab.incus("stop", "--force", "c1", "--project", "p1")
        assert host_names[0] != host_names[1]
    finally:
        lab.incus("config", "unset", "c1", "raw.lxc", "--project", "p1")
        lab.incus("start", "c1", "--project", "p1")

    # The live files give the same answer while the container runs.
    live = lab.lxc_conf_path("c1", project="p1")
    nics = lxcconf.routed_nics_for_hook(live)
    assert [n.host_name for n in nics] == [client.instance("c1", "p1").nics[0].host_name]


def test_subscribe_returns_when_the_daemon_goes_away() -> None:
    with IncusLab("ihte") as other:
        sub = IncusClient(other.socket_path)
        connected = threading.Event()
        done = threading.Event()
        thread = threading.Thread(
            target=lambda: (sub.subscribe(lambda e: None, connected.set), done.set()),
            daemon=True,
        )
        thread.start()
        assert connected.wait(10)
        other.stop()
        thread.join(15)
        sub.close()
    assert done.is_set(), "subscribe() must return when the connection drops"
