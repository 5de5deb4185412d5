"""What a container start hook can learn about its routed NICs from files alone.

The hook path reads these files instead of asking Incus: no pylxd import and
no API round trip while a container is starting (the daemon runs this code
for the stdlib-only hook client; without a daemon the hook runs it itself).

Observed on Incus 6.0.4: ``LXC_CONFIG_FILE`` (``<INCUS_DIR>/run/<LXC_NAME>/lxc.conf``)
holds, for a routed NIC, a ``phys`` entry whose ``link`` is the *container-side*
veth (as it was named on the host before LXC moved it in)::

    lxc.net.0.type = phys
    lxc.net.0.name = eth0
    lxc.net.0.flags = up
    lxc.net.0.link = veth07ef64f5
    lxc.net.0.hwaddr = 10:66:6a:0a:7e:c5
    lxc.net.0.ipv4.gateway = 169.254.0.1
    lxc.net.0.ipv4.address = 198.51.100.10/32 0.0.0.0
    lxc.net.0.ipv6.gateway = fe80::1
    lxc.net.0.ipv6.address = 2001:db8::10/128

The host-side veth name and the Incus device name are not in it. Incus rewrites
``<INCUS_DIR>/containers/<LXC_NAME>/backup.yaml`` before the start-host hook runs;
its ``expanded_config`` has ``volatile.<device>.host_name`` and
``volatile.<device>.hwaddr``, and the hwaddr ties each device to its lxc.conf entry.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import yaml

__all__ = [
    "BackupInstance",
    "HookNic",
    "LxcConfError",
    "LxcNic",
    "backup_yaml_path",
    "is_routed_nic",
    "lxc_log_path",
    "parse_backup_yaml",
    "parse_lxc_conf",
    "parse_lxc_name",
    "read_backup_yaml",
    "read_lxc_conf",
    "routed_nics_for_hook",
]


class LxcConfError(ValueError):
    """A file Incus/LXC wrote could not be understood."""


def parse_lxc_name(lxc_name: str) -> tuple[str, str]:
    """``"c1"`` -> ``("default", "c1")``; ``"p1_c1"`` -> ``("p1", "c1")``.

    Instance names cannot contain ``_``, so the last one separates the project.
    """
    if not lxc_name:
        raise LxcConfError("empty LXC container name")
    project, sep, name = lxc_name.rpartition("_")
    if not sep:
        return "default", lxc_name
    if not project or not name:
        raise LxcConfError(f"malformed LXC container name {lxc_name!r}")
    return project, name


def is_routed_nic(config: Mapping[str, str]) -> bool:
    """A device config of a routed NIC (routed NICs never have a managed network)."""
    return (
        config.get("type") == "nic"
        and config.get("nictype") == "routed"
        and not config.get("network")
    )


# --------------------------------------------------------------------------- lxc.conf

_NET_KEY = re.compile(r"^lxc\.net\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class LxcNic:
    """One ``lxc.net.<index>.*`` block of an LXC config."""

    index: int
    type: str | None
    name: str | None  # interface name inside the container
    link: str | None  # phys: the container-side veth, by its name on the host
    veth_pair: str | None  # veth created by LXC itself: the host-side name
    hwaddr: str | None
    ipv4_addresses: tuple[str, ...]  # "198.51.100.10/32" (broadcast dropped)
    ipv6_addresses: tuple[str, ...]
    ipv4_gateway: str | None
    ipv6_gateway: str | None
    options: Mapping[str, str] = field(hash=False, compare=False, repr=False)


def parse_lxc_conf(text: str) -> tuple[LxcNic, ...]:
    """The NICs of an LXC config, in index order."""
    single: dict[int, dict[str, str]] = {}
    addrs: dict[int, dict[str, list[str]]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise LxcConfError(f"line {lineno}: no '=' in {raw!r}")
        m = _NET_KEY.match(key.strip())
        if m is None:
            continue
        idx, sub, value = int(m.group(1)), m.group(2), value.strip()
        opts = single.setdefault(idx, {})
        if sub in ("ipv4.address", "ipv6.address"):
            # Repeated keys; an empty value resets the list (LXC semantics).
            lst = addrs.setdefault(idx, {}).setdefault(sub, [])
            if value:
                lst.append(value.split()[0])
            else:
                lst.clear()
        opts[sub] = value
    nics = []
    for idx in sorted(single):
        opts = single[idx]
        a = addrs.get(idx, {})
        nics.append(
            LxcNic(
                index=idx,
                type=opts.get("type") or None,
                name=opts.get("name") or None,
                link=opts.get("link") or None,
                veth_pair=opts.get("veth.pair") or None,
                hwaddr=opts.get("hwaddr") or None,
                ipv4_addresses=tuple(a.get("ipv4.address", ())),
                ipv6_addresses=tuple(a.get("ipv6.address", ())),
                ipv4_gateway=opts.get("ipv4.gateway") or None,
                ipv6_gateway=opts.get("ipv6.gateway") or None,
                options=MappingProxyType(dict(opts)),
            )
        )
    return tuple(nics)


def read_lxc_conf(path: str) -> tuple[LxcNic, ...]:
    with open(path, encoding="utf-8") as f:
        return parse_lxc_conf(f.read())


# --------------------------------------------------------------------- backup.yaml

# BaseLoader keeps every scalar a string, as Incus means its config values.
_YAML_LOADER = getattr(yaml, "CBaseLoader", yaml.BaseLoader)


@dataclass(frozen=True)
class BackupInstance:
    """The parts of backup.yaml the hook needs (expanded: profiles included)."""

    project: str
    name: str
    config: Mapping[str, str] = field(hash=False)
    devices: Mapping[str, Mapping[str, str]] = field(hash=False)


def _str_map(value: Any, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise LxcConfError(f"backup.yaml: {what} is not a mapping")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


def parse_backup_yaml(text: str) -> BackupInstance:
    try:
        doc = yaml.load(text, Loader=_YAML_LOADER)  # BaseLoader: plain data only
    except yaml.YAMLError as e:
        raise LxcConfError(f"backup.yaml: {e}") from None
    inst = doc.get("container") if isinstance(doc, dict) else None
    if not isinstance(inst, dict):
        raise LxcConfError("backup.yaml: no 'container' section")
    devices_raw = inst.get("expanded_devices") or {}
    if not isinstance(devices_raw, dict):
        raise LxcConfError("backup.yaml: expanded_devices is not a mapping")
    devices = {
        str(name): MappingProxyType(_str_map(cfg, f"device {name}"))
        for name, cfg in devices_raw.items()
    }
    return BackupInstance(
        project=str(inst.get("project") or "default"),
        name=str(inst.get("name") or ""),
        config=MappingProxyType(_str_map(inst.get("expanded_config"), "expanded_config")),
        devices=MappingProxyType(devices),
    )


def read_backup_yaml(path: str) -> BackupInstance:
    with open(path, encoding="utf-8") as f:
        return parse_backup_yaml(f.read())


# Incus and LXD put their own hooks in lxc.conf with the daemon's var dir:
#   lxc.hook.pre-start = /proc/123/exe callhook /var/lib/incus "p1" "c1" start
_CALLHOOK = re.compile(r"^lxc\.hook\.[a-z-]+\s*=.*\scallhook\s+(\S+)\s")
_LOG_FILE = re.compile(r"^lxc\.log\.file\s*=\s*(\S.*?)\s*$")


def _lxc_conf_value(lxc_config_file: str, pattern: re.Pattern[str]) -> str | None:
    with open(lxc_config_file, encoding="utf-8") as f:
        for line in f:
            m = pattern.match(line)
            if m:
                return m.group(1)
    return None


def backup_yaml_path(lxc_config_file: str) -> str:
    """``<VAR_DIR>/containers/<LXC_NAME>/backup.yaml`` of the container whose
    LXC config this is. The var dir comes from Incus's own callhook lines
    (``/var/lib/incus``, a private ``INCUS_DIR``, LXD's dirs); without them,
    from the config's location (``<INCUS_DIR>/run/<LXC_NAME>/lxc.conf``)."""
    run_dir = os.path.dirname(os.path.abspath(lxc_config_file))
    lxc_name = os.path.basename(run_dir)
    var_dir = (
        _lxc_conf_value(lxc_config_file, _CALLHOOK) if os.path.exists(lxc_config_file) else None
    )
    base = var_dir or os.path.dirname(os.path.dirname(run_dir))
    return os.path.join(base, "containers", lxc_name, "backup.yaml")


def lxc_log_path(lxc_config_file: str) -> str | None:
    """The container's lxc.log (what `incus info --show-log` prints)."""
    return _lxc_conf_value(lxc_config_file, _LOG_FILE)


# ---------------------------------------------------------------- both together


@dataclass(frozen=True)
class HookNic:
    """A routed NIC as seen from a start hook."""

    device: str  # Incus device name ("eth0", or whatever the profile calls it)
    host_name: str | None  # host-side veth (volatile.<device>.host_name)
    config: Mapping[str, str] = field(hash=False)  # expanded device config
    lxc: LxcNic | None = None  # its lxc.conf entry (addresses Incus gave LXC)


def routed_nics_for_hook(
    lxc_config_file: str, backup_file: str | None = None
) -> tuple[HookNic, ...]:
    """The routed NICs of the container whose hook got ``LXC_CONFIG_FILE``.

    Devices come from backup.yaml; each is tied to its lxc.conf entry by MAC
    address (``volatile.<dev>.hwaddr`` or a configured ``hwaddr``), falling back
    to the interface name.
    """
    lxc_nics = read_lxc_conf(lxc_config_file)
    backup = read_backup_yaml(backup_file or backup_yaml_path(lxc_config_file))
    by_mac = {n.hwaddr.lower(): n for n in lxc_nics if n.hwaddr}
    by_name = {n.name: n for n in lxc_nics if n.name}
    out = []
    for dev in sorted(backup.devices):
        cfg = backup.devices[dev]
        if not is_routed_nic(cfg):
            continue
        mac = backup.config.get(f"volatile.{dev}.hwaddr") or cfg.get("hwaddr") or ""
        ifname = cfg.get("name") or backup.config.get(f"volatile.{dev}.name") or dev
        lxc = by_mac.get(mac.lower()) if mac else None
        if lxc is None:
            lxc = by_name.get(ifname)
        out.append(
            HookNic(
                device=dev,
                host_name=backup.config.get(f"volatile.{dev}.host_name") or None,
                config=cfg,
                lxc=lxc,
            )
        )
    return tuple(out)
