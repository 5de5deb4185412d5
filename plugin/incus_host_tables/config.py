"""NIC device keys -> intent. Pure: no I/O, no logging side effects.

The rules are documented in docs/configuration.md; every error names the key
and the offending value, because operators see these messages in
`incus info --show-log` and the system log.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, TypeVar

from .model import LOCAL_TABLE, MAIN_TABLE

Family = Literal["ipv4", "ipv6"]
T = TypeVar("T")
FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")

MAX_TABLE = 255  # upstream Incus validates host_tables in 0-255

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
# Linux interface names: 1-15 bytes, no '/', ':' or whitespace, not "." or "..".
_IFNAME = re.compile(r"[^/:\s]{1,15}")


class ConfigError(ValueError):
    """An invalid device configuration. ``problems`` lists every message."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class FamilyIntent:
    """What the operator asked for one address family of one NIC."""

    family: Family
    tables: tuple[int, ...]  # first is the primary table
    addresses: tuple[IPAddress, ...] = ()
    routes: tuple[IPNetwork, ...] = ()  # extra routes, via addresses[0]


@dataclass(frozen=True)
class DeviceIntent:
    ipv4: FamilyIntent
    ipv6: FamilyIntent
    vrf: str | None = None
    warnings: tuple[str, ...] = field(default=(), compare=False)

    def families(self) -> tuple[FamilyIntent, FamilyIntent]:
        return (self.ipv4, self.ipv6)


def _keys(family: Family) -> tuple[str, str, str]:
    return f"{family}.host_tables", f"user.{family}.host_tables", f"{family}.host_table"


def _value(device: Mapping[str, str], key: str) -> str | None:
    # Incus removes a key set to "", so an empty value means "unset".
    value = device.get(key)
    return None if value is None or value == "" else value


def _parse_table(key: str, raw: str, item: str) -> int:
    if not _DECIMAL.fullmatch(item):
        raise ConfigError(f"{key}={raw!r}: {item!r} is not a decimal table ID")
    # Range first (without int() on a huge string), so that a leading-zero
    # hint never suggests an invalid table.
    digits = item.lstrip("0") or "0"
    table = int(digits) if len(digits) <= 3 else MAX_TABLE + 1
    if table == 0:
        raise ConfigError(
            f"{key}={raw!r}: table 0 is not allowed: the kernel files table-0 routes "
            f"into main, which would defeat isolation; write {MAIN_TABLE} if main is meant"
        )
    if table == LOCAL_TABLE:
        raise ConfigError(f"{key}={raw!r}: table 255 is the kernel's local table")
    if table > MAX_TABLE:
        raise ConfigError(f"{key}={raw!r}: table {digits} is out of range 1-254")
    if item != digits:
        raise ConfigError(f"{key}={raw!r}: {item!r} has a leading zero; write {table}")
    return table


def parse_table_list(key: str, raw: str) -> tuple[int, ...]:
    """Parse a comma-separated list of table IDs, as written in ``key``."""
    tables: list[int] = []
    for item in raw.split(","):
        item = item.strip(" \t")
        if item == "":
            raise ConfigError(f"{key}={raw!r}: empty item in the list")
        table = _parse_table(key, raw, item)
        if table in tables:
            raise ConfigError(f"{key}={raw!r}: table {table} is listed twice")
        tables.append(table)
    return tuple(tables)


def _resolve(
    device: Mapping[str, str], family: Family, strict: bool
) -> tuple[tuple[int, ...], list[str]]:
    """Tables for ``family`` and warnings. ``strict`` turns the
    new-and-deprecated-key combination into an error (validation) instead of
    a warning (run time)."""
    native_key, user_key, legacy_key = _keys(family)
    native_raw = _value(device, native_key)
    user_raw = _value(device, user_key)
    legacy_raw = _value(device, legacy_key)

    # Parse every key before judging, so that all their problems are listed.
    problems: list[str] = []

    def parse(key: str, raw: str | None, single: bool) -> tuple[int, ...] | None:
        if raw is None:
            return None
        try:
            if single:
                return (_parse_table(key, raw, raw.strip(" \t")),)
            return parse_table_list(key, raw)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    native = parse(native_key, native_raw, single=False)
    user = parse(user_key, user_raw, single=False)
    before_legacy = len(problems)
    legacy = parse(legacy_key, legacy_raw, single=True)
    warnings: list[str] = []
    if not strict and (native_raw is not None or user_raw is not None):
        # The new key wins at run time: a broken deprecated key only warns.
        warnings = [f"{p} (ignored: the new key wins)" for p in problems[before_legacy:]]
        del problems[before_legacy:]
    if problems:
        raise ConfigError(problems)

    if native is not None and user is not None and native != user:
        raise ConfigError(
            f"{native_key}={native_raw!r} and {user_key}={user_raw!r} disagree; "
            "set one of them, or both to the same list"
        )
    chosen = native if native is not None else user
    if chosen is not None:
        if legacy_raw is not None:
            new_key = native_key if native is not None else user_key
            message = (
                f"{legacy_key}={legacy_raw!r} is deprecated and ignored because "
                f"{new_key} is set; remove {legacy_key}"
            )
            if strict:
                raise ConfigError(
                    f"{legacy_key}={legacy_raw!r} and {new_key} are mutually exclusive; "
                    f"remove {legacy_key}"
                )
            warnings.append(message)
        return chosen, warnings
    if legacy is not None:
        return legacy, warnings
    return (MAIN_TABLE,), warnings


def resolve_tables(device: Mapping[str, str], family: Family) -> tuple[int, ...]:
    """The routing tables that the host routes of ``family`` belong in.

    Order is as written; the first is the primary table. Raises ConfigError
    naming the key and the value. A deprecated ``host_table`` next to a
    ``host_tables`` key is tolerated here (the new key wins); use
    ``validate_device`` to report it.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be 'ipv4' or 'ipv6', not {family!r}")
    return _resolve(device, family, strict=False)[0]


_THIS_NETWORK = ipaddress.ip_network("0.0.0.0/8")


def _is_host_address(addr: IPAddress) -> bool:
    """Unicast, routable to an instance: not unspecified, multicast, loopback,
    link-local (the routed NIC's own gateway addresses live there), broadcast,
    "this network", or scoped."""
    if addr.is_unspecified or addr.is_multicast or addr.is_loopback or addr.is_link_local:
        return False
    if isinstance(addr, ipaddress.IPv4Address):
        return addr not in _THIS_NETWORK and addr != ipaddress.IPv4Address("255.255.255.255")
    return addr.scope_id is None and addr.ipv4_mapped is None


# First octets of every IPv4 range _is_host_address refuses (0/8, 127/8,
# 169.254/16, 224/4 and up to 255.255.255.255): an address outside them is a
# host address without asking. Keep in step with _is_host_address.
_V4_FIRST_OCTETS_TO_CHECK = frozenset({0, 127, 169, *range(224, 256)})


def _parse_addresses(device: Mapping[str, str], family: Family) -> tuple[IPAddress, ...]:
    key = f"{family}.address"
    raw = _value(device, key)
    if raw is None:
        return ()
    version = 4 if family == "ipv4" else 6
    result: list[IPAddress] = []
    seen: set[bytes] = set()  # packed: hashing an ipaddress object is slow
    pton, v4 = socket.inet_pton, socket.AF_INET
    for item in raw.split(","):
        item = item.strip(" \t")
        if item == "":
            raise ConfigError(f"{key}={raw!r}: empty item in the list")
        # Fast path for the thousands of IPv4 addresses a big instance has:
        # inet_pton accepts exactly the dotted quads ipaddress accepts (four
        # decimal octets up to 255, no leading zeros), in C. Anything else
        # takes the ipaddress path below, with its own error messages.
        try:
            packed = pton(v4, item) if version == 4 else b""
        except (OSError, ValueError):
            packed = b""
        if packed and packed[0] not in _V4_FIRST_OCTETS_TO_CHECK:
            addr: IPAddress = ipaddress.IPv4Address(packed)
        else:
            try:
                addr = ipaddress.ip_address(item)
            except ValueError:
                raise ConfigError(f"{key}={raw!r}: {item!r} is not an IP address") from None
            if addr.version != version:
                raise ConfigError(f"{key}={raw!r}: {item!r} is not an {family.upper()} address")
            if not _is_host_address(addr):
                raise ConfigError(f"{key}={raw!r}: {item!r} is not a unicast host address")
            packed = addr.packed
        if packed in seen:
            raise ConfigError(f"{key}={raw!r}: {item!r} is listed twice")
        seen.add(packed)
        result.append(addr)
    return tuple(result)


def _parse_routes(
    device: Mapping[str, str], family: Family, have_address: bool
) -> tuple[IPNetwork, ...]:
    key = f"{family}.routes"
    raw = _value(device, key)
    if raw is None:
        return ()
    if not have_address:
        raise ConfigError(f"{key}={raw!r} needs {family}.address: routes go via its first address")
    version = 4 if family == "ipv4" else 6
    result: list[IPNetwork] = []
    for item in raw.split(","):
        item = item.strip(" \t")
        if item == "":
            raise ConfigError(f"{key}={raw!r}: empty item in the list")
        address, slash, length = item.partition("/")
        if not slash or not _DECIMAL.fullmatch(length):
            raise ConfigError(f"{key}={raw!r}: {item!r} is not a prefix like ADDRESS/LENGTH")
        try:
            iface = ipaddress.ip_interface(item)
        except ValueError:
            raise ConfigError(f"{key}={raw!r}: {item!r} is not a prefix") from None
        if "%" in address:
            raise ConfigError(f"{key}={raw!r}: {item!r} is not a prefix") from None
        net = iface.network
        if net.version != version:
            raise ConfigError(f"{key}={raw!r}: {item!r} is not an {family.upper()} prefix")
        if iface.ip != net.network_address:
            raise ConfigError(f"{key}={raw!r}: {item!r} has host bits set; write {net}")
        if net in result:
            raise ConfigError(f"{key}={raw!r}: {item!r} is listed twice")
        result.append(net)
    return tuple(result)


def _parse_vrf(device: Mapping[str, str]) -> str | None:
    raw = _value(device, "vrf")
    if raw is None:
        return None
    if not _IFNAME.fullmatch(raw) or raw in (".", "..") or len(raw.encode()) > 15:
        raise ConfigError(f"vrf={raw!r}: not a valid interface name")
    return raw


def _collect(device: Mapping[str, str], strict: bool) -> tuple[DeviceIntent | None, list[str]]:
    """Parse every key, collecting all problems instead of stopping at the first."""
    problems: list[str] = []
    warnings: list[str] = []

    def attempt(fn: Callable[..., T], *args: object) -> T | None:
        try:
            return fn(*args)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    vrf = attempt(_parse_vrf, device)
    intents: dict[Family, FamilyIntent] = {}
    for family in FAMILIES:
        resolved = attempt(_resolve, device, family, strict)
        addresses = attempt(_parse_addresses, device, family)
        routes = attempt(_parse_routes, device, family, bool(addresses) or addresses is None)
        set_keys = [key for key in _keys(family) if _value(device, key) is not None]
        if vrf is not None and set_keys:
            problems.append(
                f"vrf={vrf!r} and {set_keys[0]}={device[set_keys[0]]!r} are mutually "
                "exclusive: with a VRF the routes belong in the VRF's table"
            )
            continue
        if resolved is None or addresses is None or routes is None:
            continue
        tables, family_warnings = resolved
        warnings.extend(family_warnings)
        intents[family] = FamilyIntent(family, tables, addresses, routes)
    if problems:
        return None, problems
    return DeviceIntent(intents["ipv4"], intents["ipv6"], vrf, tuple(warnings)), []


def parse_device(device: Mapping[str, str]) -> DeviceIntent:
    """Run-time parse: raise ConfigError listing every problem; deprecated-key
    conflicts become ``warnings`` on the result."""
    intent, problems = _collect(device, strict=False)
    if intent is None:
        raise ConfigError(problems)
    return intent


def validate_device(device: Mapping[str, str]) -> list[str]:
    """Every problem with a device config, strictest reading; [] when valid."""
    return _collect(device, strict=True)[1]
