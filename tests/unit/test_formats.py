"""The list formats and the status rows they print: table names next to
IDs, and what `status --check` counts as fine."""

from __future__ import annotations

import csv
import io
import json

import pytest
import yaml

from incus_host_tables.commands import DeviceStatus, FamilyStatus, _flat_status, print_status
from incus_host_tables.formats import Format, render

RECORDS = [
    {"instance": "default/c1", "device": "eth0", "kind": "change", "text": "+ route x"},
    {"instance": "p/c2", "device": "eth1", "kind": "warning", "text": 'a "quoted", text'},
]
FIELDS = ("instance", "device", "kind", "text")


@pytest.mark.parametrize(
    ("fmt", "load"),
    [
        (Format.JSON, json.loads),
        (Format.YAML, yaml.safe_load),
        (Format.CSV, lambda text: list(csv.DictReader(io.StringIO(text)))),
    ],
)
def test_every_format_round_trips(fmt: Format, load: object) -> None:
    text = render(RECORDS, fmt, FIELDS)
    assert text.endswith("\n")
    assert load(text) == RECORDS  # type: ignore[operator]


def test_empty_list() -> None:
    assert json.loads(render([], Format.JSON, FIELDS)) == []
    assert render([], Format.CSV, FIELDS) == "instance,device,kind,text\n"


def row(state: str, warnings: list[str] | None = None) -> DeviceStatus:
    fam = FamilyStatus("ipv4", ["198.51.100.10"], [1001, 100], [1001], "ok", {"1001": "blue"})
    return DeviceStatus("default", "c1", "eth0", "veth1", state, [fam], "", warnings or [])


def test_status_shows_name_and_id() -> None:
    (flat,) = _flat_status([row("ok")])
    assert flat["tables"] == "1001(blue),100"
    assert flat["actual_tables"] == "1001(blue)"


@pytest.mark.parametrize(
    ("state", "warnings", "fine"),
    [
        ("ok", [], True),
        ("stopped", [], True),
        ("drift", [], False),
        ("error", [], False),
        ("ok", ["user.IPv4.host_tables looks like ours"], False),
    ],
)
def test_check_counts_drift_errors_and_warnings(
    state: str, warnings: list[str], fine: bool
) -> None:
    assert row(state, warnings).fine is fine


def test_status_table_lists_warnings(capsys: pytest.CaptureFixture[str]) -> None:
    print_status([row("ok", ["w1"])], Format.TABLE)
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == [
        "INSTANCE", "DEVICE", "HOST", "IF", "FAMILY", "ADDRESSES", "TABLES", "ACTUAL", "RULES",
        "STATE",
    ]  # fmt: skip
    assert lines[1].split() == [
        "default/c1", "eth0", "veth1", "ipv4", "198.51.100.10", "1001(blue),100", "1001(blue)",
        "ok", "ok",
    ]  # fmt: skip
    assert lines[2] == "default/c1 eth0: warning: w1"
