"""What a container start hook can learn about its routed NICs from files alone.

Stdlib only: the LXC hooks run this with the system Python and must not pull in
pylxd (or anything else that may be missing or slow to import).

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

__all__ = [
    "BackupInstance",
    "HookNic",
    "LxcConfError",
    "LxcNic",
    "backup_yaml_path",
    "is_routed_nic",
    "parse_backup_yaml",
    "parse_lxc_conf",
    "parse_lxc_name",
    "parse_simple_yaml",
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
#
# Incus writes backup.yaml with Go's YAML emitter: block style, 2-space indents,
# sequences at their key's indent, quoted or block (|-) scalars where needed.
# This parser reads that subset into dicts, lists and strings (no type
# conversion: Incus config values are strings anyway).

_Line = tuple[int, str, int]  # indent, content, line number


_YAML_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "0": "\0",
    "a": "\a",
    "b": "\b",
    "e": "\x1b",
    "f": "\f",
    "v": "\v",
    '"': '"',
    "\\": "\\",
    "/": "/",
    " ": " ",
    "N": "\x85",
    "_": "\xa0",
    "L": "\u2028",
    "P": "\u2029",
}
_YAML_HEX_WIDTHS = {"x": 2, "u": 4, "U": 8}


def _unquote_double(s: str, lineno: int) -> str:
    out: list[str] = []
    i = 0
    while i < len(s):
        c = s[i]
        if c != "\\":
            out.append(c)
            i += 1
            continue
        if i + 1 >= len(s):
            raise LxcConfError(f"line {lineno}: dangling backslash")
        e = s[i + 1]
        if e in _YAML_ESCAPES:
            out.append(_YAML_ESCAPES[e])
            i += 2
        elif e in _YAML_HEX_WIDTHS:
            digits = s[i + 2 : i + 2 + _YAML_HEX_WIDTHS[e]]
            try:
                out.append(chr(int(digits, 16)))
            except ValueError:
                raise LxcConfError(f"line {lineno}: bad escape \\{e}{digits}") from None
            i += 2 + _YAML_HEX_WIDTHS[e]
        else:
            raise LxcConfError(f"line {lineno}: unknown escape \\{e}")
    return "".join(out)


def _scan_quoted(text: str, quote: str, lineno: int) -> tuple[str, str]:
    """Split ``text`` (starting after the opening quote) into the raw quoted body
    and what follows the closing quote."""
    i = 0
    while i < len(text):
        c = text[i]
        if quote == "'" and c == "'":
            if text[i + 1 : i + 2] == "'":
                i += 2
                continue
            return text[:i], text[i + 1 :]
        if quote == '"' and c == "\\":
            i += 2
            continue
        if quote == '"' and c == '"':
            return text[:i], text[i + 1 :]
        i += 1
    raise LxcConfError(f"line {lineno}: unterminated {quote} string")


def _decode_quoted(body: str, quote: str, lineno: int) -> str:
    if quote == "'":
        return body.replace("''", "'")
    return _unquote_double(body, lineno)


def _fold(parts: list[str]) -> str:
    # Flow scalars continued over several lines: line breaks become spaces.
    return " ".join(p.strip() for p in parts if p.strip())


class _YamlReader:
    def __init__(self, text: str) -> None:
        self.raw = text.splitlines()
        self.lines: list[_Line] = []
        for n, line in enumerate(self.raw, 1):
            stripped = line.strip()
            if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
                continue
            # Tabs may appear inside block scalars (read from self.raw); as
            # structural indentation they are invalid: -1 makes any use fail.
            lead = line[: len(line) - len(line.lstrip())]
            self.lines.append((-1 if "\t" in lead else len(lead), stripped, n))
        self.pos = 0

    def peek(self) -> _Line | None:
        return self.lines[self.pos] if self.pos < len(self.lines) else None

    def parse_document(self) -> Any:
        first = self.peek()
        if first is None:
            return None
        value = self.parse_node(first[0])
        rest = self.peek()
        if rest is not None:
            raise LxcConfError(f"line {rest[2]}: unexpected content")
        return value

    def parse_node(self, indent: int) -> Any:
        line = self.peek()
        assert line is not None
        if line[1] == "-" or line[1].startswith("- "):
            return self.parse_seq(indent)
        return self.parse_map(indent)

    def parse_seq(self, indent: int) -> list[Any]:
        items: list[Any] = []
        while (line := self.peek()) is not None and line[0] == indent:
            _, content, n = line
            if not (content == "-" or content.startswith("- ")):
                break
            rest = content[1:].lstrip()
            if not rest:
                self.pos += 1
                nxt = self.peek()
                items.append(self.parse_node(nxt[0]) if nxt and nxt[0] > indent else None)
                continue
            # "- key: value" opens a mapping whose keys sit where "key" starts.
            inner = indent + (len(content) - len(rest))
            if _split_key(rest, n) is not None:
                self.lines[self.pos] = (inner, rest, n)
                items.append(self.parse_map(inner))
            else:
                self.lines[self.pos] = (inner, rest, n)
                items.append(self.parse_scalar(rest, indent, n))
        return items

    def parse_map(self, indent: int) -> dict[str, Any]:
        out: dict[str, Any] = {}
        while (line := self.peek()) is not None and line[0] == indent:
            _, content, n = line
            if content == "-" or content.startswith("- "):
                break
            kv = _split_key(content, n)
            if kv is None:
                raise LxcConfError(f"line {n}: expected 'key: value', got {content!r}")
            key, rest = kv
            if not rest:
                self.pos += 1
                nxt = self.peek()
                if nxt is not None and (
                    nxt[0] > indent
                    or (nxt[0] == indent and (nxt[1] == "-" or nxt[1].startswith("- ")))
                ):
                    out[key] = self.parse_node(nxt[0])
                else:
                    out[key] = None
            else:
                out[key] = self.parse_scalar(rest, indent, n)
        line = self.peek()
        if line is not None and line[0] > indent:
            raise LxcConfError(f"line {line[2]}: bad indentation")
        return out

    def parse_scalar(self, rest: str, indent: int, lineno: int) -> Any:
        """The value on the current line (consumed), with any continuation lines."""
        self.pos += 1
        if rest in ("{}", "[]"):
            return {} if rest == "{}" else []
        if rest[0] in "|>":
            return self.parse_block_scalar(rest, indent, lineno)
        if rest[0] in "'\"":
            quote = rest[0]
            text = rest[1:]
            while True:
                try:
                    body, after = _scan_quoted(text, quote, lineno)
                    break
                except LxcConfError:
                    nxt = self.peek()
                    if nxt is None or nxt[0] <= indent:
                        raise
                    text = text + "\n" + nxt[1]
                    self.pos += 1
            if after.strip() and not after.strip().startswith("#"):
                raise LxcConfError(f"line {lineno}: text after closing quote")
            # Line breaks inside a flow scalar fold into spaces.
            return _decode_quoted(_fold_quoted(body), quote, lineno)
        parts = [rest]
        while (nxt := self.peek()) is not None and nxt[0] > indent:
            if _split_key(nxt[1], nxt[2]) is not None:
                # A nested "key: value" under a scalar: wrong indentation.
                raise LxcConfError(f"line {nxt[2]}: mapping not allowed here")
            parts.append(nxt[1])
            self.pos += 1
        return _fold(parts)

    def parse_block_scalar(self, header: str, indent: int, lineno: int) -> str:
        style, chomp = header[0], ""
        for ch in header[1:].strip():
            if ch in "+-":
                chomp = ch
            elif ch.isdigit():
                continue
            else:
                raise LxcConfError(f"line {lineno}: unsupported block header {header!r}")
        # Block scalars may hold blank lines, so read the raw text, not self.lines.
        first_raw = lineno  # 1-based number of the header line = index of next raw line
        body: list[str] = []
        content_indent: int | None = None
        i = first_raw
        while i < len(self.raw):
            line = self.raw[i]
            if not line.strip():
                body.append("")
                i += 1
                continue
            ind = len(line) - len(line.lstrip(" "))
            if ind <= indent:
                break
            if content_indent is None:
                content_indent = ind
            if ind < content_indent:
                break
            body.append(line[content_indent:])
            i += 1
        # Skip the structural lines the block consumed.
        while (nxt := self.peek()) is not None and nxt[2] <= i:
            self.pos += 1
        while body and body[-1] == "":
            body.pop()
        text = "\n".join(body) if style == "|" else _fold_block(body)
        if chomp == "-" or not body:
            return text
        return text + "\n"


def _fold_quoted(body: str) -> str:
    if "\n" not in body:
        return body
    return " ".join(part.strip() for part in body.split("\n"))


def _fold_block(lines: list[str]) -> str:
    out: list[str] = []
    for line in lines:
        if out and line and out[-1] and not out[-1].endswith("\n"):
            out[-1] += " " + line
        else:
            out.append(line)
    return "\n".join(out)


def _split_key(content: str, lineno: int) -> tuple[str, str] | None:
    """``'key: rest'`` -> ``(key, rest)``; None when the line is no mapping entry."""
    if content[0] in "'\"":
        quote = content[0]
        try:
            body, after = _scan_quoted(content[1:], quote, lineno)
        except LxcConfError:
            return None
        if after == ":" or after.startswith(": "):
            return _decode_quoted(body, quote, lineno), after[1:].strip()
        return None
    if content.endswith(":"):
        return content[:-1], ""
    key, sep, rest = content.partition(": ")
    if not sep:
        return None
    return key, rest.strip()


def parse_simple_yaml(text: str) -> Any:
    """Parse the block-style YAML subset that Go's emitter writes (backup.yaml)."""
    return _YamlReader(text).parse_document()


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
    doc = parse_simple_yaml(text)
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


def backup_yaml_path(lxc_config_file: str) -> str:
    """``<DIR>/run/<LXC_NAME>/lxc.conf`` -> ``<DIR>/containers/<LXC_NAME>/backup.yaml``."""
    run_dir = os.path.dirname(os.path.abspath(lxc_config_file))
    lxc_name = os.path.basename(run_dir)
    base = os.path.dirname(os.path.dirname(run_dir))
    return os.path.join(base, "containers", lxc_name, "backup.yaml")


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
