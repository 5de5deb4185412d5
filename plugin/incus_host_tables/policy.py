"""The tenant policy: which routing tables and prefixes each Incus project may use.

Device keys (``user.*`` above all) are free-form in Incus and LXD, so whoever
may set a NIC key in a project could name another tenant's table or a wide
prefix. The operator's policy file binds projects to their tables and
prefixes (docs/policy.md):

    projects:
      tenant-a:
        tables: [100, tenant-a]        # IDs or rt_tables names
        ipv4: [198.51.100.0/25]        # addresses and ipv4.routes must lie inside
        ipv6: [2001:db8:a::/48]

No file: no restriction. With a file, a project not listed may use only main
(254); a family without a prefix list is not restricted. Tables are compared
as IDs, after name resolution, so an alias of another tenant's table is still
that tenant's table.

Parsing and checking are pure; ``load_policy`` and ``ActivePolicy`` read the file.
"""

from __future__ import annotations

import ipaddress
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from .config import FAMILIES, DeviceIntent, Family, FamilyIntent, IPNetwork
from .model import MAIN_TABLE
from .numbers import NumberError, parse_decimal

DEFAULT_POLICY_PATH = "/etc/incus-host-tables/policy.yaml"
POLICY_ENV = "INCUS_HOST_TABLES_POLICY"
MAX_TABLE_ID = 4294967295
PROJECT_KEYS = ("tables", "ipv4", "ipv6")

# Table name -> ID (None: unknown). The rt_tables reader plugs in here.
TableNames = Callable[[str], int | None]


class PolicyError(ValueError):
    """The policy file cannot be used; ``problems`` lists every reason."""

    def __init__(self, source: str, problems: Sequence[str]) -> None:
        self.source = source
        self.problems = list(problems)
        super().__init__(f"policy {source}: " + "; ".join(self.problems))


@dataclass(frozen=True)
class TableEntry:
    written: str  # as in the file: "100" or "tenant-a"
    table: int

    def __str__(self) -> str:
        return self.written if self.written == str(self.table) else f"{self.written}={self.table}"


@dataclass(frozen=True)
class ProjectPolicy:
    project: str
    tables: tuple[TableEntry, ...]
    prefixes: Mapping[Family, tuple[IPNetwork, ...] | None]  # None: not restricted

    @property
    def table_ids(self) -> frozenset[int]:
        return frozenset(t.table for t in self.tables)

    def describe_tables(self) -> str:
        """The policy entry, as a reader finds it in the file."""
        return f"projects.{self.project}.tables [{', '.join(map(str, self.tables))}]"

    def describe_prefixes(self, family: Family) -> str:
        nets = self.prefixes.get(family) or ()
        return f"projects.{self.project}.{family} [{', '.join(map(str, nets))}]"


@dataclass(frozen=True)
class Policy:
    source: str  # the file it came from
    projects: Mapping[str, ProjectPolicy]

    def allowed_tables(self, project: str) -> frozenset[int]:
        entry = self.projects.get(project)
        return entry.table_ids if entry is not None else frozenset({MAIN_TABLE})


# ------------------------------------------------------------------ parsing


class _UniqueKeyLoader(yaml.SafeLoader):  # type: ignore[misc]  # PyYAML has no types
    """PyYAML keeps the last of two equal keys: a project listed twice would
    silently lose its first entry. Refuse that instead."""


def _construct_unique_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"{key!r} appears twice", key_node.start_mark
            )
        seen.add(key)
    return dict(loader.construct_mapping(node))


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_unique_mapping
)


def no_table_names(name: str) -> int | None:
    """No name source: only IDs are understood."""
    return None


def parse_policy(text: str, source: str, names: TableNames = no_table_names) -> Policy:
    """The policy in ``text`` (YAML), or PolicyError listing every problem. Pure
    apart from ``names``."""
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader
    except yaml.YAMLError as err:
        raise PolicyError(source, [f"not valid YAML{_yaml_problem(err)}"]) from None
    if not isinstance(data, dict) or set(data) != {"projects"}:
        raise PolicyError(source, ["the file must hold one mapping `projects:`"])
    projects = data["projects"]
    if projects is None:
        projects = {}
    if not isinstance(projects, dict):
        raise PolicyError(source, ["`projects` must map project names to entries"])
    problems: list[str] = []
    parsed: dict[str, ProjectPolicy] = {}
    for name, entry in projects.items():
        if not isinstance(name, str) or not name:
            problems.append(f"project name {name!r} must be a non-empty string (quote it)")
            continue
        found = _parse_project(name, entry, names)
        if isinstance(found, ProjectPolicy):
            parsed[name] = found
        else:
            problems.extend(found)
    if problems:
        raise PolicyError(source, problems)
    return Policy(source, parsed)


def _parse_project(name: str, entry: Any, names: TableNames) -> ProjectPolicy | list[str]:
    where = f"projects.{name}"
    if entry is None:
        entry = {}
    if not isinstance(entry, dict):
        return [f"{where} must be a mapping with tables, ipv4, ipv6"]
    problems = [
        f"{where}.{key}: unknown key (known: {', '.join(PROJECT_KEYS)})"
        for key in entry
        if key not in PROJECT_KEYS
    ]
    tables = _parse_tables(where, entry.get("tables", [MAIN_TABLE]), names, problems)
    prefixes: dict[Family, tuple[IPNetwork, ...] | None] = {}
    for family in FAMILIES:
        prefixes[family] = (
            _parse_prefixes(f"{where}.{family}", family, entry[family], problems)
            if family in entry
            else None
        )
    if problems:
        return problems
    return ProjectPolicy(name, tables, prefixes)


def _parse_tables(
    where: str, raw: Any, names: TableNames, problems: list[str]
) -> tuple[TableEntry, ...]:
    key = f"{where}.tables"
    if not isinstance(raw, list):
        problems.append(f"{key} must be a list of table IDs or names, not {raw!r}")
        return ()
    out: list[TableEntry] = []
    for item in raw:
        # bool is an int in Python; YAML's yes/no must not become table 1/0.
        if isinstance(item, bool) or not isinstance(item, int | str):
            problems.append(f"{key}: {item!r} is not a table ID or name")
            continue
        written = str(item)
        if written[:1].isascii() and written[:1].isdigit():
            try:
                table = parse_decimal(f"{key}: table", written, 1, MAX_TABLE_ID)
            except NumberError as err:
                problems.append(str(err))
                continue
        else:
            found = names(written)
            if found is None:
                problems.append(
                    f"{key}: table name {written!r} is not defined in iproute2's rt_tables"
                )
                continue
            table = found
        if any(t.table == table for t in out):
            problems.append(f"{key}: table {written} ({table}) is listed twice")
            continue
        out.append(TableEntry(written, table))
    return tuple(out)


def _parse_prefixes(
    key: str, family: Family, raw: Any, problems: list[str]
) -> tuple[IPNetwork, ...]:
    if not isinstance(raw, list):
        problems.append(f"{key} must be a list of prefixes, not {raw!r}")
        return ()
    version = 4 if family == "ipv4" else 6
    out: list[IPNetwork] = []
    for item in raw:
        if not isinstance(item, str):
            problems.append(f"{key}: {item!r} is not a prefix like ADDRESS/LENGTH")
            continue
        try:
            net = ipaddress.ip_network(item, strict=True)
        except ValueError as err:
            problems.append(f"{key}: {item!r} is not a prefix ({err})")
            continue
        if net.version != version:
            problems.append(f"{key}: {item!r} is not an {family.upper()} prefix")
            continue
        out.append(net)
    return tuple(out)


def _yaml_problem(err: Exception) -> str:
    """' at line L, column C: PROBLEM (CONTEXT)', from PyYAML's marked errors."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None)
    if mark is None or problem is None:
        return f": {_one_line(err)}"
    context = getattr(err, "context", None)
    where = f" at line {mark.line + 1}, column {mark.column + 1}"
    return f"{where}: {problem}" + (f" ({context})" if context else "")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


# ----------------------------------------------------------------- checking


def _table_key(config: Mapping[str, str], family: Family) -> tuple[str, str] | None:
    """The key (and its value) that chose ``family``'s tables, in the order
    the config parser honours them; None when no key is set (main)."""
    for key in (f"{family}.host_tables", f"user.{family}.host_tables", f"{family}.host_table"):
        value = config.get(key)
        if value:
            return key, value
    return None


def device_violations(
    policy: Policy | None,
    project: str,
    device: str,
    config: Mapping[str, str],
    intent: DeviceIntent,
) -> list[str]:
    """Every way ``intent`` (parsed from ``config``) breaks ``policy`` for
    ``project``; [] when it keeps to it or there is no policy. Pure."""
    if policy is None:
        return []
    entry = policy.projects.get(project)
    allowed = policy.allowed_tables(project)
    if entry is None:
        where = (
            f"project {project!r} is not listed in policy {policy.source}, "
            f"so it may use only table {MAIN_TABLE} (main)"
        )
    else:
        where = f"project {project!r} may use only {entry.describe_tables()} ({policy.source})"
    out: list[str] = []
    if intent.vrf is not None:
        # Which table a VRF device routes into is the kernel's business, so
        # the policy cannot vouch for it: fail closed.
        out.append(
            f"device {device} vrf={intent.vrf!r}: a VRF's table cannot be checked against "
            f"the policy; {where}"
        )
    for fam in intent.families():
        if not fam.addresses:
            continue  # no routes in this family, whatever its tables
        # With a VRF the routes go to the VRF's table, refused above.
        denied = [t for t in fam.tables if t not in allowed] if intent.vrf is None else []
        if denied:
            chosen = _table_key(config, fam.family)
            what = (
                f"{chosen[0]}={chosen[1]!r}"
                if chosen
                else f"no {fam.family} table key (routes go to main)"
            )
            tables = ", ".join(map(str, denied))
            out.append(f"device {device} {what}: table {tables} not allowed: {where}")
        if entry is not None:
            out += _prefix_violations(entry, policy.source, device, config, fam)
    return out


def _prefix_violations(
    entry: ProjectPolicy, source: str, device: str, config: Mapping[str, str], fam: FamilyIntent
) -> list[str]:
    prefixes = entry.prefixes.get(fam.family)
    if prefixes is None:
        return []
    outside: list[tuple[str, list[str]]] = [
        (
            f"{fam.family}.address",
            [str(a) for a in fam.addresses if not any(a in net for net in prefixes)],
        ),
        (
            f"{fam.family}.routes",
            [str(r) for r in fam.routes if not any(_inside(r, net) for net in prefixes)],
        ),
    ]
    return [
        f"device {device} {key}={config.get(key, '')!r}: {', '.join(bad)} outside "
        f"{entry.describe_prefixes(fam.family)} of project {entry.project!r} ({source})"
        for key, bad in outside
        if bad
    ]


def _inside(inner: IPNetwork, outer: IPNetwork) -> bool:
    return (
        inner.version == outer.version
        and inner.prefixlen >= outer.prefixlen
        and inner.supernet(new_prefix=outer.prefixlen) == outer
    )


# ---------------------------------------------------------------- the file


def policy_path(explicit: str | None = None) -> str:
    return explicit or os.environ.get(POLICY_ENV) or DEFAULT_POLICY_PATH


def load_policy(path: str, names: TableNames | None = None) -> Policy | None:
    """The policy in ``path``; None when there is no such file (no
    restriction). Any other trouble is a PolicyError: fail closed."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as err:
        raise PolicyError(path, [f"cannot read it: {_one_line(err)}"]) from None
    return parse_policy(text, path, names or table_names())


def table_names() -> TableNames:
    """The host's iproute2 table names (rttables.py), so a policy may name
    its tables as a device config may."""
    from .rttables import SystemTableNames

    return SystemTableNames().id_of


class ActivePolicy:
    """The policy in force in this process: loaded on first use, replaced
    only by a good file (the daemon's reloads), so a bad edit never lifts or
    scrambles the restriction in force."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._path: str | None = None
        self._policy: Policy | None = None
        self._loaded = False
        self.error: str | None = None  # why the file on disk is not in force
        self.loaded_at: float | None = None  # Unix time of the last good load

    @property
    def path(self) -> str:
        return policy_path(self._path)

    def use(self, path: str | None) -> None:
        """Take the policy from ``path`` (None: $INCUS_HOST_TABLES_POLICY or
        the default) from now on."""
        with self._lock:
            self._path, self._policy, self._loaded, self.error = path, None, False, None
            self.loaded_at = None

    def load(self) -> Policy | None:
        """Read the file now and put it in force; PolicyError keeps the last
        good policy in force and is remembered in ``error``."""
        path = self.path
        try:
            policy = load_policy(path)
        except PolicyError as err:
            with self._lock:
                self.error = str(err)
            raise
        with self._lock:
            self._policy, self._loaded, self.error = policy, True, None
            self.loaded_at = time.time()
        return policy

    @property
    def rejected(self) -> bool:
        """The file on disk was refused and the last good policy (or, before
        any good one, a refusal of everything) is in force."""
        return self.error is not None

    def current(self) -> Policy | None:
        """The policy in force; loads it on first use. PolicyError when no
        good policy was ever loaded and the file is bad."""
        with self._lock:
            if self._loaded:
                return self._policy
        return self.load()

    def violations(
        self, project: str, device: str, config: Mapping[str, str], intent: DeviceIntent
    ) -> list[str]:
        """``device_violations`` against the policy in force; a policy that
        cannot be read refuses everything (fail closed)."""
        try:
            policy = self.current()
        except PolicyError as err:
            return [f"{err}; refusing every routed NIC until it is fixed"]
        return device_violations(policy, project, device, config, intent)


ACTIVE = ActivePolicy()
