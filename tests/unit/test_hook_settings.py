"""A non-default reverse-path table or rule priority travels in the hook
line `enable` writes, so that a hook run without the daemon uses the same
table and preference as the daemon."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import pytest

from incus_host_tables import hookclient, profiles, rawlxc
from incus_host_tables.cli import build_parser

HOOK = "/usr/libexec/incus-host-tables/hook"


def test_defaults_write_no_option() -> None:
    assert rawlxc.hook_command(HOOK, None, rp_table=1158, rule_priority=1100) == HOOK


def test_non_defaults_are_written() -> None:
    assert rawlxc.hook_command(HOOK, None, rp_table=2158) == f"{HOOK} --rp-table 2158"
    assert rawlxc.hook_command(HOOK, None, rule_priority=900) == f"{HOOK} --rule-priority 900"
    assert (
        rawlxc.hook_command(HOOK, "/run/x", rp_table=2158, rule_priority=900)
        == f"{HOOK} --run-dir /run/x --rp-table 2158 --rule-priority 900"
    )


def test_enable_command_carries_them(tmp_path: Path) -> None:
    hook = tmp_path / "incus-host-tables" / "hook"
    hook.parent.mkdir()
    hook.write_text("#!/bin/sh\n")
    hook.chmod(0o755)
    command = profiles.enable_command(
        str(hook), "/run/incus-host-tables", rp_table=2158, rule_priority=1100
    )
    raw = rawlxc.add_hooks("lxc.environment = KEEP=1\n", command)
    assert raw == (
        "lxc.environment = KEEP=1\n"
        f"lxc.hook.start-host = {hook} --rp-table 2158\n"
        f"lxc.hook.post-stop = {hook} --rp-table 2158\n"
    )


def test_re_enable_is_idempotent_and_replaces_other_settings() -> None:
    with_2158 = rawlxc.add_hooks("", rawlxc.hook_command(HOOK, rp_table=2158))
    assert rawlxc.add_hooks(with_2158, rawlxc.hook_command(HOOK, rp_table=2158)) == with_2158
    # Enabled again with other settings: one copy of each line, the new one.
    back = rawlxc.add_hooks(with_2158, rawlxc.hook_command(HOOK))
    assert back == f"lxc.hook.start-host = {HOOK}\nlxc.hook.post-stop = {HOOK}\n"
    # disable removes the lines whatever options they carry.
    assert rawlxc.has_hooks(with_2158)
    assert rawlxc.remove_hooks(with_2158) == ""


class Exec(Exception):
    pass


def fake_execv(path: str, argv: list[str]) -> None:
    raise Exec(path, argv)


def test_the_hook_client_hands_them_to_the_full_hook(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """No daemon: the full hook runs with the line's settings as the
    command's global options (the values the daemon would use)."""
    command = rawlxc.hook_command(HOOK, str(tmp_path), rp_table=2158, rule_priority=900)
    words = shlex.split(command)
    monkeypatch.setenv("LXC_HOOK_TYPE", "start-host")
    monkeypatch.setenv("LXC_NAME", "c1")
    monkeypatch.setenv("LXC_CONFIG_FILE", "/nonexistent/lxc.conf")
    monkeypatch.delenv("INCUS_HOST_TABLES_RUN_DIR", raising=False)
    # As LXC runs it: the line's words, then name, section, hook type.
    monkeypatch.setattr(sys, "argv", [*words, "c1", "lxc", "start-host"])
    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Exec) as exc:
        hookclient.main()
    argv = exc.value.args[1]
    settings = ["--rp-table", "2158", "--rule-priority", "900"]
    assert argv == [
        sys.executable,
        "-I",
        "-m",
        "incus_host_tables",
        *settings,
        "hook",
        "start-host",
    ]
    assert os.environ["INCUS_HOST_TABLES_RUN_DIR"] == str(tmp_path)
    args = build_parser().parse_args(argv[4:])
    assert (args.command, args.type, args.rp_table, args.rule_priority) == (
        "hook",
        "start-host",
        2158,
        900,
    )


def test_hook_options_read_back() -> None:
    raw = rawlxc.add_hooks("lxc.environment = X=1\n", rawlxc.hook_command(HOOK, "/r x", rp_table=7))
    assert rawlxc.hook_options(raw) == {"--run-dir": "/r x", "--rp-table": "7"}
    assert rawlxc.hook_options(rawlxc.add_hooks("", rawlxc.hook_command(HOOK))) == {}
    assert rawlxc.hook_options("lxc.environment = X=1\n") == {}
