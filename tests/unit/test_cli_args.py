"""CLI argument handling that must never reach the kernel."""

from __future__ import annotations

from unittest.mock import MagicMock

import pytest
from pytest_mock import MockerFixture

from incus_host_tables.cli import main

DEVICE = ["device", "plan", "--host-name", "veth0"]


@pytest.fixture
def engine(mocker: MockerFixture, monkeypatch: pytest.MonkeyPatch) -> MagicMock:
    monkeypatch.delenv("INCUS_HOST_TABLES_RULE_PRIORITY", raising=False)
    mock = mocker.patch("incus_host_tables.engine.Engine")
    mock.return_value.converge.return_value.lines.return_value = []
    mock.return_value.cleanup.return_value.lines.return_value = []
    mock.return_value.converge.return_value.summary.return_value = []
    mock.return_value.cleanup.return_value.summary.return_value = []
    return mock


@pytest.mark.parametrize("action", ["plan", "apply", "cleanup"])
@pytest.mark.parametrize(
    ("config", "expected", "count"),
    [
        pytest.param(["ipv4.host_tables=0"], [("ipv4.host_tables", "0")], 1, id="one"),
        pytest.param(
            [
                "ipv4.host_tables=0",
                "ipv6.host_table=255",
                "ipv4.address=bogus",
                "ipv6.address=2001:db8::1",
                "ipv6.routes=2001:db8:1::1/48",
                "vrf=a/b",
            ],
            [
                ("ipv4.host_tables", "0"),
                ("ipv6.host_table", "255"),
                ("ipv4.address", "bogus"),
                ("ipv6.routes", "2001:db8:1::1/48"),
                ("vrf", "a/b"),
            ],
            5,
            id="many",
        ),
        pytest.param(
            ["ipv4.host_tables=100", "user.ipv4.host_tables=200"],
            [("ipv4.host_tables", "100"), ("user.ipv4.host_tables", "200")],
            1,
            id="disagree",
        ),
    ],
)
def test_invalid_config_lists_every_problem_and_touches_nothing(
    engine: MagicMock,
    capsys: pytest.CaptureFixture[str],
    action: str,
    config: list[str],
    expected: list[tuple[str, str]],
    count: int,
) -> None:
    assert main(["device", action, "--host-name", "veth0", *config]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == count
    assert all(line.startswith("error: ") for line in lines)
    for key, value in expected:
        assert any(key in line and value in line for line in lines), (key, value, err)
    engine.assert_not_called()


def test_valid_config_reaches_the_engine(
    engine: MagicMock, capsys: pytest.CaptureFixture[str]
) -> None:
    """Shows the patch is effective, so `assert_not_called` above means something."""
    assert main(["--rule-priority", "1", *DEVICE, "ipv4.address=203.0.113.1", "mtu=9000"]) == 0
    engine.assert_called_once_with(rule_priority=1, rp_table=1158)
    ifname, intent = engine.return_value.converge.call_args.args
    assert ifname == "veth0"
    assert intent.ipv4.tables == (254,)
    assert engine.return_value.converge.call_args.kwargs == {"dry_run": True}
    assert capsys.readouterr().out == "no changes\n"


def test_deprecated_key_warns_and_proceeds(
    engine: MagicMock, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*DEVICE, "ipv6.host_tables=100", "ipv6.host_table=200"]) == 0
    err = capsys.readouterr().err
    assert "warning" in err and "ipv6.host_table" in err and "200" in err
    assert engine.return_value.converge.call_args.args[1].ipv6.tables == (100,)


def test_empty_value_means_unset(engine: MagicMock) -> None:
    assert main([*DEVICE, "ipv4.host_tables=", "ipv4.host_table=100"]) == 0
    assert engine.return_value.converge.call_args.args[1].ipv4.tables == (100,)


@pytest.mark.parametrize(
    "item",
    [
        pytest.param("ipv4.host_tables", id="no-equals"),
        pytest.param("=100", id="empty-key"),
        pytest.param("", id="empty"),
    ],
)
def test_malformed_key_value_is_a_usage_error(
    engine: MagicMock, capsys: pytest.CaptureFixture[str], item: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main([*DEVICE, item])
    assert info.value.code == 2
    assert "KEY=VALUE" in capsys.readouterr().err
    engine.assert_not_called()


def test_value_may_contain_equals(engine: MagicMock) -> None:
    assert main([*DEVICE, "user.note=a=b", "ipv4.host_table=7"]) == 0
    assert engine.return_value.converge.call_args.args[1].ipv4.tables == (7,)


@pytest.mark.parametrize(
    "items",
    [
        pytest.param(["ipv4.host_tables=100", "ipv4.host_tables=100"], id="same-value"),
        pytest.param(["ipv4.host_tables=100", "ipv4.host_tables=200"], id="other-value"),
        pytest.param(["mtu=1500", "ipv4.address=203.0.113.1", "mtu="], id="ignored-key"),
    ],
)
def test_duplicate_key_is_a_usage_error(
    engine: MagicMock, capsys: pytest.CaptureFixture[str], items: list[str]
) -> None:
    assert main([*DEVICE, *items]) == 2
    key = items[0].partition("=")[0]
    assert key in capsys.readouterr().err
    engine.assert_not_called()


@pytest.mark.parametrize("value", ["0", "-1", "32766", "99999", "abc", "", "1.5"])
def test_rule_priority_out_of_range(
    engine: MagicMock, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--rule-priority", value, *DEVICE])
    assert info.value.code == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "--rule-priority" in line and repr(value) in line
    engine.assert_not_called()


@pytest.mark.parametrize("value", ["1", "32765"])
def test_rule_priority_bounds(engine: MagicMock, value: str) -> None:
    assert main(["--rule-priority", value, *DEVICE]) == 0
    engine.assert_called_once_with(rule_priority=int(value), rp_table=1158)


def test_rule_priority_from_environment(engine: MagicMock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RULE_PRIORITY", "2000")
    assert main(DEVICE) == 0
    engine.assert_called_once_with(rule_priority=2000, rp_table=1158)


@pytest.mark.parametrize("value", ["0", "abc"])
def test_invalid_rule_priority_in_environment_is_a_usage_error(
    engine: MagicMock,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    value: str,
) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RULE_PRIORITY", value)
    assert main(DEVICE) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert "$INCUS_HOST_TABLES_RULE_PRIORITY" in line and repr(value) in line
    engine.assert_not_called()


@pytest.mark.parametrize("value", ["1", "252", "256", "1158", "4294967295"])
def test_rp_table_bounds(engine: MagicMock, value: str) -> None:
    assert main(["--rp-table", value, *DEVICE]) == 0
    engine.assert_called_once_with(rule_priority=1100, rp_table=int(value))


def test_rp_table_from_environment(engine: MagicMock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("INCUS_HOST_TABLES_RP_TABLE", "2000")
    assert main(DEVICE) == 0
    engine.assert_called_once_with(rule_priority=1100, rp_table=2000)


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("0", "out of range"),
        ("253", "kernel's own tables"),
        ("254", "kernel's own tables"),
        ("255", "kernel's own tables"),
        ("4294967296", "out of range"),
        ("+1158", "not a decimal number"),
        ("\uff11\uff11\uff15\uff18", "not a decimal number"),
        ("01158", "leading zero"),
        ("main", "not a decimal number"),
    ],
)
def test_bad_rp_table_is_a_usage_error(
    engine: MagicMock, capsys: pytest.CaptureFixture[str], value: str, reason: str
) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--rp-table", value, *DEVICE])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"--rp-table {value!r}" in err and reason in err
    engine.assert_not_called()


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param([], id="no-command"),
        pytest.param(["device"], id="no-action"),
        pytest.param(["device", "plan"], id="no-host-name"),
        pytest.param(["device", "frobnicate", "--host-name", "veth0"], id="unknown-action"),
    ],
)
def test_incomplete_command_line(engine: MagicMock, argv: list[str]) -> None:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    engine.assert_not_called()
