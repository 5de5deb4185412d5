"""Plan equals apply: whatever the parser and `plan` accept on an empty
namespace, `apply` installs, and a second plan is empty. Every conflict the
configuration alone shows must be found before the kernel is asked.

Hypothesis draws device configs from the documentation ranges, with the
overlaps that used to pass the plan and fail at the kernel (an extra route
equal to an address, one prefix in two keys, tables above 255, main listed
next to others)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from incus_host_tables.config import ConfigError, parse_device
from incus_host_tables.engine import Engine

from .helpers import NetNS

pytestmark = pytest.mark.kernel

V4_HOSTS = [f"198.51.100.{i}" for i in (10, 11, 12)] + ["203.0.113.5"]
V6_HOSTS = ["2001:db8::10", "2001:db8::11", "2001:db8:1::5"]
V4_NETS = ["203.0.113.0/28", "203.0.113.0/24", "198.18.0.0/15", "198.51.100.0/24",
           "198.51.100.11/32", "203.0.113.5/32"]  # fmt: skip
V6_NETS = ["2001:db8:99::/48", "2001:db8::/32", "2001:db8::11/128", "2001:db8:1::5/128"]
# Valid tables only: the refused ones are the parser's (tests/unit), and
# drawing them would leave few configs for the kernel to judge.
TABLES = ["1", "100", "200", "254", "1001", "4294967295", "253,254"]


def comma_list(items: list[str]) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from(items), min_size=1, max_size=3, unique=True).map(",".join)


@st.composite
def device_configs(draw: st.DrawFn) -> dict[str, str]:
    config: dict[str, str] = {}
    for family, hosts, nets in (("ipv4", V4_HOSTS, V4_NETS), ("ipv6", V6_HOSTS, V6_NETS)):
        if draw(st.integers(0, 3)):
            config[f"{family}.address"] = draw(comma_list(hosts))
            if draw(st.booleans()):
                config[f"{family}.routes"] = draw(comma_list(nets))
        key = draw(
            st.sampled_from(
                [
                    None,
                    f"user.{family}.host_tables",
                    f"{family}.host_tables",
                    f"{family}.host_table",
                ]
            )
        )
        if key is not None:
            single = key.endswith("host_table")
            tables = [t for t in TABLES if "," not in t] if single else TABLES
            config[key] = draw(st.sampled_from(tables) if single else comma_list(tables))
    return config


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(config=device_configs())
def test_what_plan_accepts_apply_installs(
    host: NetNS, make_engine: Callable[..., Engine], config: dict[str, str]
) -> None:
    try:
        intent = parse_device(config)
    except ConfigError:
        event("refused by the parser")
        return  # refused before the kernel: `validate`/`plan` exit 1 naming the keys
    event("accepted")
    engine = make_engine(host)
    baseline = host.state()
    try:
        engine.plan_device("vh0", intent)
        engine.converge("vh0", intent)  # raises ApplyError if the kernel refuses
        assert not engine.plan_device("vh0", intent).plan, config
    finally:
        engine.cleanup("vh0", intent)
    assert host.state() == baseline, config
