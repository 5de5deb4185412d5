"""NIC device keys -> intent. Pure: no I/O, no logging side effects.

The rules are documented in docs/configuration.md; every error names the key
and the offending value, because operators see these messages in
`incus info --show-log` and the system log.
"""

from __future__ import annotations

import _socket  # not `socket`: see netlink/kernel.py
import ipaddress
import struct
from collections.abc import Callable, Mapping
from enum import Enum
from itertools import repeat
from typing import Literal, NamedTuple, Protocol, TypeVar

from .model import DEFAULT_RP_TABLE, DEFAULT_TABLE, LOCAL_TABLE, MAIN_TABLE, Value
from .numbers import NumberError, is_decimal, parse_decimal

Family = Literal["ipv4", "ipv6"]
T = TypeVar("T")
FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")

MAX_NATIVE_TABLE = 255  # Incus validates ipv4.host_tables as a list of 0-255
MAX_TABLE = 4294967295  # the kernel's table IDs are u32; Incus's host_table too

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _number_like(text: str) -> bool:
    """What an operator meant as a number (a sign, then digits of any
    script and "_"): reported as a bad number, never looked up as a table
    name. (String methods, not a pattern compiled at every start-up.)"""
    body = text[1:] if text[:1] in ("+", "-") else text
    return body != "" and body.replace("_", "0").isdecimal()


class ConfigError(ValueError):
    """An invalid device configuration. ``problems`` lists every message."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("; ".join(self.problems))


class TableNameLookup(Protocol):
    def id_of(self, name: str) -> int | None: ...


class _NoNames:
    def id_of(self, name: str) -> int | None:
        return {"default": DEFAULT_TABLE, "main": MAIN_TABLE, "local": LOCAL_TABLE}.get(name)


# The value types below are NamedTuples and plain classes, not dataclasses:
# `dataclasses` imports `inspect` (and with it `ast`, `dis`, `tokenize`),
# which costs a `device` command a quarter of its start-up.


class TableSettings(NamedTuple):
    """What table values mean on this host: iproute2's names (looked up only
    when a key holds a name) and the plugin's RP table (refused)."""

    names: TableNameLookup = _NoNames()
    rp_table: int = DEFAULT_RP_TABLE


BUILTIN_NAMES_ONLY = TableSettings()


class KeyKind(Enum):
    NATIVE = "native"  # ipv4.host_tables: what Incus >= 6.13 validates, 0-255
    USER = "user"  # user.ipv4.host_tables: IDs 1-4294967295 and iproute2 names
    LEGACY = "legacy"  # ipv4.host_table: one uint32, as Incus/LXD accept it


class FamilyIntent(Value):
    """What the operator asked for one address family of one NIC. Equal when
    the same is asked: where Incus copies the routes is not compared."""

    __slots__ = ("addresses", "family", "incus_tables", "routes", "tables")

    def __init__(
        self,
        family: Family,
        tables: tuple[int, ...],  # first is the primary table
        addresses: tuple[IPAddress, ...] = (),
        routes: tuple[IPNetwork, ...] = (),  # extra routes, via addresses[0]
        incus_tables: tuple[int, ...] = (),
    ) -> None:
        self.family = family
        self.tables = tables
        self.addresses = addresses
        self.routes = routes
        # The table Incus itself copies the routes into (its ipv4.host_table),
        # chosen or not: where the plugin looks for those copies (facts.py).
        self.incus_tables = incus_tables

    def _key(self) -> tuple[object, ...]:
        return (self.family, self.tables, self.addresses, self.routes)

    def __repr__(self) -> str:
        return (
            f"FamilyIntent({self.family!r}, {self.tables!r}, {self.addresses!r}, "
            f"{self.routes!r}, incus_tables={self.incus_tables!r})"
        )


class DeviceIntent(Value):
    """One NIC's intent. Two intents are equal when they route alike: the
    warnings met while parsing are not compared."""

    __slots__ = ("ipv4", "ipv6", "vrf", "warnings")

    def __init__(
        self,
        ipv4: FamilyIntent,
        ipv6: FamilyIntent,
        vrf: str | None = None,
        warnings: tuple[str, ...] = (),
    ) -> None:
        self.ipv4, self.ipv6, self.vrf, self.warnings = ipv4, ipv6, vrf, warnings

    def families(self) -> tuple[FamilyIntent, FamilyIntent]:
        return (self.ipv4, self.ipv6)

    def _key(self) -> tuple[object, ...]:
        return (self.ipv4, self.ipv6, self.vrf)

    def __repr__(self) -> str:
        return (
            f"DeviceIntent(ipv4={self.ipv4!r}, ipv6={self.ipv6!r}, vrf={self.vrf!r}, "
            f"warnings={self.warnings!r})"
        )


def _keys(family: Family) -> tuple[str, str, str]:
    return f"{family}.host_tables", f"user.{family}.host_tables", f"{family}.host_table"


def _value(device: Mapping[str, str], key: str) -> str | None:
    # Incus removes a key set to "", so an empty value means "unset".
    value = device.get(key)
    return None if value is None or value == "" else value


def _reserved(table: int, rp_table: int) -> str | None:
    """Why ``table`` can never be a chosen table, or None."""
    if table == 0:
        return (
            "the kernel files table-0 routes into main, which would defeat isolation; "
            f"write {MAIN_TABLE} if main is meant"
        )
    if table == LOCAL_TABLE:
        return "it is the kernel's local table"
    if table == rp_table:
        return "it is the plugin's reverse-path table (host setting --rp-table)"
    return None


def _parse_table(key: str, raw: str, item: str, kind: KeyKind, settings: TableSettings) -> int:
    shown = item
    if kind is KeyKind.USER and not _number_like(item):
        found = settings.names.id_of(item)
        if found is None:
            raise ConfigError(
                f"{key}={raw!r}: {item!r} is neither a table ID (1-{MAX_TABLE}) nor a table "
                "name in iproute2's rt_tables files"
            )
        table, shown = found, f"{item!r} ({found})"
    else:
        hi = MAX_NATIVE_TABLE if kind is KeyKind.NATIVE else MAX_TABLE
        if kind is not KeyKind.USER and is_decimal(item):
            # Incus parses its own keys with strconv.ParseUint: leading zeros
            # are accepted there, so they are here (with a warning).
            item = item.lstrip("0") or "0"
        try:
            table = parse_decimal("table", item, 0, hi)
        except NumberError as err:
            # A leading zero in front of a reserved ID: say why it is
            # reserved rather than suggest writing it without the zero.
            digits = item.lstrip("0") or "0"
            if is_decimal(item) and len(digits) <= 10:
                reason = _reserved(int(digits), settings.rp_table)
                if reason is not None:
                    raise ConfigError(
                        f"{key}={raw!r}: table {digits} is not allowed: {reason}"
                    ) from None
            raise ConfigError(f"{key}={raw!r}: {err}") from None
    reason = _reserved(table, settings.rp_table)
    if reason is not None:
        raise ConfigError(f"{key}={raw!r}: table {shown} is not allowed: {reason}")
    return table


def _default_needs_main(key: str, raw: str, tables: tuple[int, ...]) -> None:
    if DEFAULT_TABLE in tables and MAIN_TABLE not in tables:
        raise ConfigError(
            f"{key}={raw!r}: table {DEFAULT_TABLE} (default) is not allowed without "
            f"{MAIN_TABLE} (main): main-domain traffic consults it through the kernel's "
            f"standard rule 32767, so its routes are as reachable as main's; list {MAIN_TABLE} "
            "too if that is meant"
        )


def parse_table_list(
    key: str,
    raw: str,
    kind: KeyKind = KeyKind.USER,
    settings: TableSettings = BUILTIN_NAMES_ONLY,
) -> tuple[int, ...]:
    """Parse a comma-separated list of tables, as written in ``key``."""
    tables: list[int] = []
    for item in raw.split(","):
        item = item.strip(" \t")
        if item == "":
            raise ConfigError(f"{key}={raw!r}: empty item in the list")
        table = _parse_table(key, raw, item, kind, settings)
        if table in tables:
            raise ConfigError(f"{key}={raw!r}: table {table} is listed twice")
        tables.append(table)
    _default_needs_main(key, raw, tuple(tables))
    return tuple(tables)


def _parse_legacy(
    key: str, raw: str, settings: TableSettings
) -> tuple[tuple[int, ...], str | None]:
    """The deprecated single table and a warning. Incus and LXD accept any
    uint32 here and also put the route into main; table 0 is main to the
    kernel, so an instance with 0 works today with its route in main: it
    keeps it there (with a warning) instead of being refused at its next
    start."""
    item = raw.strip(" \t")
    if is_decimal(item) and not item.strip("0"):
        return (MAIN_TABLE,), (
            f"{key}={raw!r}: table 0 is main to the kernel, so the routes stay in main "
            f"({MAIN_TABLE}); write {MAIN_TABLE}, or the table meant"
        )
    tables = (_parse_table(key, raw, item, KeyKind.LEGACY, settings),)
    _default_needs_main(key, raw, tables)
    return tables, None


def _leading_zeros(key: str, raw: str | None) -> list[str]:
    """A warning for IDs with leading zeros in a key Incus validates (it
    reads them as decimal; the plugin follows, but asks for the plain form)."""
    if raw is None:
        return []
    items = [item.strip(" \t") for item in raw.split(",")]
    odd = [i for i in items if is_decimal(i) and len(i) > 1 and i.startswith("0")]
    if not odd:
        return []
    plain = ",".join(i.lstrip("0") or "0" if i in odd else i for i in items)
    return [f"{key}={raw!r}: leading zeros are read as Incus reads them; write {plain!r}"]


def _resolve(
    device: Mapping[str, str], family: Family, strict: bool, settings: TableSettings
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

    def parse(key: str, raw: str | None, kind: KeyKind) -> tuple[int, ...] | None:
        if raw is None:
            return None
        try:
            return parse_table_list(key, raw, kind, settings)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    native = parse(native_key, native_raw, KeyKind.NATIVE)
    user = parse(user_key, user_raw, KeyKind.USER)
    before_legacy = len(problems)
    legacy: tuple[int, ...] | None = None
    legacy_warning: str | None = None
    if legacy_raw is not None:
        try:
            legacy, legacy_warning = _parse_legacy(legacy_key, legacy_raw, settings)
        except ConfigError as err:
            problems.extend(err.problems)
    warnings: list[str] = []
    if not strict and (native_raw is not None or user_raw is not None):
        # The new key wins at run time: a broken deprecated key only warns.
        warnings = [f"{p} (ignored: the new key wins)" for p in problems[before_legacy:]]
        del problems[before_legacy:]
    if problems:
        raise ConfigError(problems)
    warnings += _leading_zeros(native_key, native_raw) if native is not None else []
    if legacy is not None and native_raw is None and user_raw is None:
        warnings += _leading_zeros(legacy_key, legacy_raw)

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
        return legacy, warnings + ([legacy_warning] if legacy_warning else [])
    return (MAIN_TABLE,), warnings


def resolve_tables(
    device: Mapping[str, str], family: Family, settings: TableSettings = BUILTIN_NAMES_ONLY
) -> tuple[int, ...]:
    """The routing tables that the host routes of ``family`` belong in.

    Order is as written; the first is the primary table. Raises ConfigError
    naming the key and the value. A deprecated ``host_table`` next to a
    ``host_tables`` key is tolerated here (the new key wins); use
    ``validate_device`` to report it.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be 'ipv4' or 'ipv6', not {family!r}")
    return _resolve(device, family, False, settings)[0]


# -- keys that look like ours ----------------------------------------------

_OUR_KEYS = frozenset(k for family in FAMILIES for k in _keys(family))


def _near_form(key: str) -> str:
    """``key`` without what a typo changes: case, ``-``/``_``, a plural ``s``."""
    form = key.lower().replace("-", "").replace("_", "")
    return form[:-1] if form.endswith("s") else form


_NEAR_FORMS: dict[str, str] = {}
for _family in FAMILIES:
    for _form in (f"{_family}.host_tables", f"user.{_family}.host_tables"):
        _NEAR_FORMS[_near_form(_form)] = f"user.{_family}.host_tables"


def near_miss_keys(device: Mapping[str, str]) -> list[str]:
    """Warnings for keys that look like one of the plugin's table keys but
    are not: they are ignored, so the routes stay where they would be
    without them."""
    warnings: list[str] = []
    for key in device:
        if key in _OUR_KEYS:
            continue
        meant = _NEAR_FORMS.get(_near_form(key))
        if meant is not None:
            warnings.append(
                f"{key}={device[key]!r} is not a key incus-host-tables reads and is ignored; "
                f"did you mean {meant}?"
            )
    return warnings


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


def _plain_ipv4_hosts(raw: str) -> tuple[IPAddress, ...] | None:
    """The addresses of ``raw`` when every item is a dotted quad of a host
    address (first octet not in the ranges above) and none is listed twice:
    the list of a big instance, read in bulk in C. None for anything else,
    which the item-by-item path below reads and, if need be, reports."""
    items = list(map(str.strip, raw.split(","), repeat(" \t")))
    try:
        packed = b"".join(map(_socket.inet_pton, repeat(_socket.AF_INET), items))
    except (OSError, ValueError):
        return None
    if not _V4_FIRST_OCTETS_TO_CHECK.isdisjoint(packed[::4]):
        return None
    numbers = struct.unpack(f">{len(items)}I", packed)
    if len(set(numbers)) != len(numbers):
        return None
    return tuple(map(ipaddress.IPv4Address, numbers))


def _parse_addresses(device: Mapping[str, str], family: Family) -> tuple[IPAddress, ...]:
    key = f"{family}.address"
    raw = _value(device, key)
    if raw is None:
        return ()
    if family == "ipv4":
        plain = _plain_ipv4_hosts(raw)
        if plain is not None:
            return plain
    version = 4 if family == "ipv4" else 6
    result: list[IPAddress] = []
    seen: set[bytes] = set()  # packed: hashing an ipaddress object is slow
    pton, v4 = _socket.inet_pton, _socket.AF_INET
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
        if not slash or not is_decimal(length):
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


def is_interface_name(name: str) -> bool:
    """A name Linux accepts for an interface: 1-15 bytes, no ``/``, ``:`` or
    whitespace, not ``.`` or ``..``."""
    return (
        0 < len(name.encode()) <= 15
        and not any(ch in "/:\0" or ch.isspace() for ch in name)
        and name not in (".", "..")
    )


def _parse_vrf(device: Mapping[str, str]) -> str | None:
    raw = _value(device, "vrf")
    if raw is None:
        return None
    if not is_interface_name(raw):
        raise ConfigError(f"vrf={raw!r}: not a valid interface name")
    return raw


def _routes_clash_with_addresses(
    device: Mapping[str, str],
    family: Family,
    addresses: tuple[IPAddress, ...],
    routes: tuple[IPNetwork, ...],
) -> None:
    """An extra route equal to an address's host route would be the same
    route twice in every chosen table: the kernel refuses the second."""
    if not routes:
        return  # the common case: thousands of addresses, no extra route
    host = 32 if family == "ipv4" else 128
    own = {a.packed for a in addresses}
    for net in routes:
        if net.prefixlen == host and net.network_address.packed in own:
            raise ConfigError(
                f"{family}.routes={device[f'{family}.routes']!r}: {str(net)!r} is the host "
                f"route of {net.network_address} in {family}.address; list it in one key only"
            )


def _incus_table(raw: str | None) -> tuple[int, ...]:
    """The table Incus copies a NIC's routes into for its deprecated key
    (any uint32, 0 being main to the kernel), whether the plugin uses the
    key or not; () when unset or not a number Incus would take."""
    item = (raw or "").strip(" \t")
    if not is_decimal(item) or int(item) > MAX_TABLE:
        return ()
    return (int(item) or MAIN_TABLE,)


def _collect(
    device: Mapping[str, str], strict: bool, settings: TableSettings
) -> tuple[DeviceIntent | None, list[str], list[str]]:
    """Parse every key, collecting all problems instead of stopping at the
    first. Returns (intent or None, problems, warnings)."""
    problems: list[str] = []
    warnings: list[str] = near_miss_keys(device)

    def attempt(fn: Callable[..., T], *args: object) -> T | None:
        try:
            return fn(*args)
        except ConfigError as err:
            problems.extend(err.problems)
            return None

    vrf = attempt(_parse_vrf, device)
    intents: dict[Family, FamilyIntent] = {}
    for family in FAMILIES:
        resolved = attempt(_resolve, device, family, strict, settings)
        addresses = attempt(_parse_addresses, device, family)
        routes = attempt(_parse_routes, device, family, bool(addresses) or addresses is None)
        if addresses is not None and routes is not None:
            attempt(_routes_clash_with_addresses, device, family, addresses, routes)
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
        incus = _incus_table(_value(device, _keys(family)[2]))
        intents[family] = FamilyIntent(family, tables, addresses, routes, incus)
    if problems:
        return None, problems, warnings
    return DeviceIntent(intents["ipv4"], intents["ipv6"], vrf, tuple(warnings)), [], warnings


def parse_device(
    device: Mapping[str, str], settings: TableSettings = BUILTIN_NAMES_ONLY
) -> DeviceIntent:
    """Run-time parse: raise ConfigError listing every problem; deprecated-key
    conflicts and keys that look like ours become ``warnings`` on the result."""
    intent, problems, _ = _collect(device, False, settings)
    if intent is None:
        raise ConfigError(problems)
    return intent


def check_device(
    device: Mapping[str, str], settings: TableSettings = BUILTIN_NAMES_ONLY
) -> tuple[list[str], list[str]]:
    """(problems, warnings) of a device config, strictest reading."""
    _, problems, warnings = _collect(device, True, settings)
    return problems, warnings


def validate_device(
    device: Mapping[str, str], settings: TableSettings = BUILTIN_NAMES_ONLY
) -> list[str]:
    """Every problem with a device config, strictest reading; [] when valid."""
    return check_device(device, settings)[0]
