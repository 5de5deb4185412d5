"""The quick reading of `device` and `hook` command lines gives exactly what
argparse gives, or leaves the command line to argparse."""

from __future__ import annotations

import contextlib
import io
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from incus_host_tables.cli import build_parser, quick_args


def _argparse(argv: list[str]) -> dict[str, object] | str:
    try:
        with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
            return vars(build_parser().parse_args(argv))
    except SystemExit as exit_:
        return f"exit {exit_.code}"


@pytest.mark.parametrize(
    "line",
    [
        "device apply --host-name vh0 ipv4.address=198.51.100.1 user.ipv4.host_tables=100",
        "device plan --host-name=vh0",
        "device cleanup --host-name vh0 --full --format json a=",
        "device apply --format yaml --host-name vh0 a=b=c",
        "device apply --host-name vh0 --host-name vh1",
        "--rule-priority 1200 device apply --host-name vh0 x=y",
        "--rule-priority=1200 --rp-table 900 device cleanup --host-name vh0",
        "hook start-host",
        "--rp-table 300 hook post-stop",
    ],
)
def test_the_hot_command_lines_are_read_quickly_and_alike(line: str) -> None:
    argv = line.split()
    quick = quick_args(argv)
    assert quick is not None
    assert vars(quick) == _argparse(argv)


@pytest.mark.parametrize(
    "line",
    [
        "--rp-table 255 device apply --host-name vh0",  # a bad value: argparse reports it
        "--rule-priority 0 device apply --host-name vh0",
        "--rule-priority -1 device apply --host-name vh0",
        "device apply --host vh0",  # an abbreviation
        "device apply --host-name vh0 --format xml",
        "device apply",
        "device apply --host-name a/b",
        "device apply --host-name vh0 =x",
        "device apply --host-name vh0 x",
        "device apply --host-name vh0 a=1 --full",  # an option after the config
        "device apply --host-name vh0 -- a=1",
        "device apply --help",
        "--version",
        "hook",
        "hook start-host stop",
        "status --all-projects",
        "",
    ],
)
def test_anything_else_goes_to_argparse(line: str) -> None:
    assert quick_args(line.split()) is None


_TOKENS = st.sampled_from(
    [
        "device", "apply", "plan", "cleanup", "hook", "start-host", "--host-name", "vh0",
        "--host-name=vh1", "a/b", "--full", "--format", "json", "xml", "--rule-priority",
        "--rule-priority=900", "1100", "0", "-3", "--rp-table", "1158", "255", "ipv4.address=x",
        "=y", "k=", "--", "-h", "--host", "plain",
    ]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(st.lists(_TOKENS, max_size=8))
def test_any_command_line_reads_as_argparse_reads_it(argv: list[str]) -> None:
    quick = quick_args(argv)
    if quick is not None:
        assert vars(quick) == _argparse(argv)


def test_a_device_command_imports_neither_argparse_nor_dataclasses() -> None:
    """What keeps `device apply` as a process cheaper than `ip -batch`."""
    code = (
        "import sys\n"
        "from incus_host_tables import cli\n"
        "cli.quick_args(['device', 'apply', '--host-name', 'vh0', 'ipv4.address=198.51.100.1'])\n"
        "from incus_host_tables import engine, config, desired\n"
        "print(' '.join(sorted(sys.modules)))\n"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.split()
    for heavy in ("argparse", "dataclasses", "inspect", "shutil", "pylxd", "yaml", "logging"):
        assert heavy not in loaded
