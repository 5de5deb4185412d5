"""Properties of the config parser over arbitrary input."""

from __future__ import annotations

from hypothesis import example, given
from hypothesis import strategies as st

from incus_host_tables.config import (
    MAX_TABLE,
    ConfigError,
    DeviceIntent,
    Family,
    check_device,
    parse_device,
    resolve_tables,
    validate_device,
)
from incus_host_tables.model import DEFAULT_RP_TABLE

FAMILIES: tuple[Family, Family] = ("ipv4", "ipv6")


def table_keys(family: Family) -> list[str]:
    return [f"{family}.host_tables", f"user.{family}.host_tables", f"{family}.host_table"]


TABLE_KEYS = [key for family in FAMILIES for key in table_keys(family)]
OTHER_KEYS = ["ipv4.address", "ipv6.address", "ipv4.routes", "ipv6.routes", "vrf"]

whitespace = st.text(alphabet=" \t", max_size=3)


@st.composite
def int_lists(draw: st.DrawFn) -> str:
    """Comma lists of integers near and beyond the valid range, spaced randomly."""
    items = draw(st.lists(st.integers(-3, 300) | st.integers(), min_size=1, max_size=6))
    return ",".join(f"{draw(whitespace)}{i}{draw(whitespace)}" for i in items)


values = st.one_of(
    st.text(),
    st.text(alphabet="0123456789, \t+-x_.\n", max_size=20),
    int_lists(),
    st.just(""),
)


def device_of(
    keys: list[str], value_strategy: st.SearchStrategy[str] = values
) -> st.SearchStrategy:
    return st.fixed_dictionaries({}, optional={key: value_strategy for key in keys})


def assert_tables(tables: object) -> None:
    assert isinstance(tables, tuple) and tables
    assert all(type(t) is int and 1 <= t <= MAX_TABLE for t in tables)
    assert 255 not in tables and DEFAULT_RP_TABLE not in tables
    assert 253 not in tables or 254 in tables
    assert len(set(tables)) == len(tables)


@given(family=st.sampled_from(FAMILIES), device=device_of(TABLE_KEYS))
@example(family="ipv4", device={"ipv4.host_tables": "1" + "0" * 5000})
@example(family="ipv6", device={"ipv6.host_table": "9" * 5000})
def test_resolve_tables_returns_valid_tables_or_config_error(
    family: Family, device: dict[str, str]
) -> None:
    try:
        tables = resolve_tables(device, family)
    except ConfigError as err:
        assert err.problems and all(isinstance(p, str) and p for p in err.problems)
        return
    assert_tables(tables)


@given(family=st.sampled_from(FAMILIES), device=device_of(TABLE_KEYS))
def test_resolve_tables_precedence(family: Family, device: dict[str, str]) -> None:
    """A set host_tables key decides alone; else host_table; else main."""
    try:
        tables = resolve_tables(device, family)
    except ConfigError:
        return
    native, user, legacy = table_keys(family)
    set_keys = [k for k in (native, user, legacy) if device.get(k, "").strip()]
    if not set_keys:
        assert tables == (254,)
        return
    deciding = set_keys[0]
    assert resolve_tables({deciding: device[deciding]}, family) == tables
    if native in set_keys and user in set_keys:
        assert resolve_tables({user: device[user]}, family) == tables


@given(
    family=st.sampled_from(FAMILIES),
    key_index=st.sampled_from([0, 1]),
    tables=st.lists(st.integers(1, 254), min_size=1, max_size=30, unique=True).filter(
        lambda ts: 253 not in ts or 254 in ts
    ),
    data=st.data(),
)
def test_valid_lists_round_trip(
    family: Family, key_index: int, tables: list[int], data: st.DataObject
) -> None:
    text = ",".join(f"{data.draw(whitespace)}{t}{data.draw(whitespace)}" for t in tables)
    key = table_keys(family)[key_index]
    assert resolve_tables({key: text}, family) == tuple(tables)


@given(
    family=st.sampled_from(FAMILIES),
    table=st.integers(1, MAX_TABLE).filter(lambda t: t not in (253, 255, DEFAULT_RP_TABLE)),
    pad=st.tuples(whitespace, whitespace),
)
def test_legacy_table_round_trips(family: Family, table: int, pad: tuple[str, str]) -> None:
    key = table_keys(family)[2]
    assert resolve_tables({key: f"{pad[0]}{table}{pad[1]}"}, family) == (table,)


addresses = st.one_of(
    st.text(max_size=30),
    st.lists(st.ip_addresses().map(str), min_size=1, max_size=3).map(",".join),
)
routes = st.one_of(
    st.text(max_size=30),
    st.builds(lambda a, n: f"{a}/{n}", st.ip_addresses(), st.integers(0, 130)),
)
any_value = st.one_of(values, addresses, routes)


@given(device=device_of(TABLE_KEYS + OTHER_KEYS, any_value))
@example(device={"ipv4.host_tables": "1" + "0" * 5000})
def test_parse_device_raises_only_config_error(device: dict[str, str]) -> None:
    problems = validate_device(device)
    assert isinstance(problems, list) and all(isinstance(p, str) for p in problems)
    try:
        intent = parse_device(device)
    except ConfigError as err:
        assert err.problems
        assert problems, "validate_device must report what parse_device rejects"
        return
    assert isinstance(intent, DeviceIntent)
    for fam in intent.families():
        assert_tables(fam.tables)
        if intent.vrf is None:
            assert fam.tables == resolve_tables(device, fam.family)
        assert len(set(fam.addresses)) == len(fam.addresses)
        assert all(a.version == (4 if fam.family == "ipv4" else 6) for a in fam.addresses)
        assert not fam.routes or fam.addresses


@given(device=device_of(TABLE_KEYS, int_lists()))
def test_valid_by_validation_means_parsable_with_the_same_warnings(
    device: dict[str, str],
) -> None:
    problems, warnings = check_device(device)
    if problems == []:
        assert list(parse_device(device).warnings) == warnings
