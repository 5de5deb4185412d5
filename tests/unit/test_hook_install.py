"""The hook line in raw.lxc, the files `install` writes, and the installed
hook itself answering LXC through a (stand-in) daemon socket."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from incus_host_tables import hostfiles, profiles, rawlxc
from incus_host_tables.cli import main

LEGACY = (
    "/usr/bin/python3.11 -I -S "
    "/usr/local/lib/python3.11/dist-packages/incus_host_tables/hookclient.py"
)
FOREIGN = "lxc.hook.start-host = /usr/local/bin/other-tool"


# ------------------------------------------------------------ the hook line


def test_hook_line_names_no_interpreter_and_no_packages_path() -> None:
    raw = rawlxc.add_hooks("", rawlxc.hook_command())
    assert raw == (
        "lxc.hook.start-host = /usr/libexec/incus-host-tables/hook\n"
        "lxc.hook.post-stop = /usr/libexec/incus-host-tables/hook\n"
    )
    assert not re.search(r"python\d|-packages", raw)


def test_non_default_run_dir_is_written_into_the_line() -> None:
    command = rawlxc.hook_command("/opt/x/incus-host-tables/hook", "/run/other dir")
    assert command == "/opt/x/incus-host-tables/hook --run-dir '/run/other dir'"
    assert rawlxc.hook_command(run_dir="/run/incus-host-tables") == rawlxc.DEFAULT_HOOK


def test_enable_replaces_legacy_lines_and_keeps_others() -> None:
    raw = f"lxc.environment = A=1\nlxc.hook.start-host = {LEGACY}\n{FOREIGN}\n"
    new = rawlxc.add_hooks(raw, rawlxc.hook_command())
    assert new.splitlines() == [
        "lxc.environment = A=1",
        FOREIGN,
        "lxc.hook.start-host = /usr/libexec/incus-host-tables/hook",
        "lxc.hook.post-stop = /usr/libexec/incus-host-tables/hook",
    ]
    assert rawlxc.add_hooks(new, rawlxc.hook_command()) == new


@pytest.mark.parametrize(
    "line",
    [
        f"lxc.hook.post-stop = {LEGACY}",
        "lxc.hook.start-host = /usr/libexec/incus-host-tables/hook",
        "lxc.hook.post-stop='/tmp/r oot/usr/libexec/incus-host-tables/hook' --run-dir /x",
    ],
)
def test_disable_removes_current_and_legacy_lines(line: str) -> None:
    assert rawlxc.remove_hooks(f"{FOREIGN}\n{line}\n") == f"{FOREIGN}\n"
    assert rawlxc.remove_hooks(line) == ""


def test_foreign_hooks_are_never_ours() -> None:
    raw = f"{FOREIGN}\nlxc.hook.post-stop = /usr/libexec/other/hook\n"
    assert not rawlxc.has_hooks(raw)
    assert rawlxc.remove_hooks(raw) == raw


# ---------------------------------------------------------- profiles layer


class FakeProfiles:
    """Profiles of three projects; p1 shares default's (features.profiles=false)."""

    def __init__(self) -> None:
        self.config = {
            ("default", "default"): {"raw.lxc": "lxc.environment = A=1\n"},
            ("default", "routed"): {},
            ("p2", "default"): {"raw.lxc": f"lxc.hook.start-host = {LEGACY}\n"},
        }
        self.writes: list[tuple[str, str, str]] = []

    def projects(self) -> list[str]:
        return ["default", "p1", "p2"]

    def profiles(self, project: str) -> list[tuple[str, str]]:
        owner = "p2" if project == "p2" else "default"
        return sorted(ref for ref in self.config if ref[0] == owner)

    def profile_config(self, name: str, project: str) -> dict[str, str]:
        return dict(self.config[(project, name)])

    def set_profile_config(self, name: str, key: str, value: str, project: str) -> None:
        self.writes.append((project, name, value))
        if value:
            self.config[(project, name)][key] = value
        else:
            self.config[(project, name)].pop(key, None)


def test_all_profiles_lists_each_profile_once() -> None:
    client = FakeProfiles()
    assert profiles.all_profiles(client) == [  # type: ignore[arg-type]
        ("default", "default"),
        ("default", "routed"),
        ("p2", "default"),
    ]


def test_enable_then_disable_everywhere(capsys: pytest.CaptureFixture[str]) -> None:
    client = FakeProfiles()
    refs = profiles.all_profiles(client)  # type: ignore[arg-type]
    assert profiles.apply(client, refs, rawlxc.hook_command()) == 0  # type: ignore[arg-type]
    assert capsys.readouterr().out.splitlines() == [
        "hooks attached to profile default",
        "hooks attached to profile routed",
        "hooks attached to profile default in project p2",
    ]
    for config in client.config.values():
        assert rawlxc.has_hooks(config["raw.lxc"])
        assert LEGACY not in config["raw.lxc"]
    assert profiles.apply(client, refs, None) == 0  # type: ignore[arg-type]
    assert client.config == {
        ("default", "default"): {"raw.lxc": "lxc.environment = A=1\n"},
        ("default", "routed"): {},
        ("p2", "default"): {},
    }
    writes = len(client.writes)
    assert profiles.apply(client, refs, None) == 0  # type: ignore[arg-type]
    assert len(client.writes) == writes
    assert capsys.readouterr().out.count("(unchanged)") == 3


def test_enable_refuses_a_missing_hook(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket nobody answers on: the refusal comes before any request.
    never_asked = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    never_asked.bind(str(tmp_path / "never-asked"))
    monkeypatch.setenv("INCUS_SOCKET", str(tmp_path / "never-asked"))
    missing = tmp_path / "usr/libexec/incus-host-tables/hook"
    try:
        assert main(["enable", "--all-profiles", "--hook", str(missing)]) == 5
    finally:
        never_asked.close()
    err = capsys.readouterr().err
    assert err.startswith(f"error: hook {missing} is missing") and "install" in err


def test_enable_needs_a_profile_or_all(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["enable"])
    assert exc.value.code == 2
    assert "--profile" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["disable", "--profile", "default", "--all-profiles"])
    assert exc.value.code == 2


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from incus_host_tables import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"incus-host-tables {__version__}\n"


# -------------------------------------------------------------- host files


def test_install_writes_every_file_and_uninstall_removes_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    rc = main(
        [
            *("install", "--root", str(root)),
            *("--executable", "/opt/iht/bin/incus-host-tables", "--python", "/opt/iht/bin/python"),
        ]
    )
    assert rc == 0
    unit = (root / hostfiles.UNIT).read_text()
    assert "\nExecStart=/opt/iht/bin/incus-host-tables watch\n" in unit
    assert "Type=notify" in unit and "WatchdogSec=" in unit
    assert "ProtectHome=read-only" in unit
    hook = root / hostfiles.HOOK
    assert hook.read_text().startswith("#!/opt/iht/bin/python -IS\n")
    assert os.stat(hook).st_mode & 0o777 == 0o755
    assert (root / hostfiles.RT_PROTOS).read_text().splitlines()[-1] == "158\tincus-host-tables"
    assert (root / hostfiles.RT_TABLES).read_text().splitlines()[-1] == "1158\tincus-host-tables"
    out = capsys.readouterr().out
    assert out.count("installed ") == 4


def test_uninstall_keeps_the_hook_while_profiles_cannot_be_cleaned(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    hostfiles.install(str(root), "/usr/bin/incus-host-tables", "/usr/bin/python3")
    # A named socket that is missing: profiles may still hold the hook lines.
    assert main(["uninstall", "--root", str(root), "--socket", str(tmp_path / "no.sock")]) == 5
    assert "hooks may remain" in capsys.readouterr().err
    for rel in (hostfiles.UNIT, hostfiles.HOOK, hostfiles.RT_PROTOS, hostfiles.RT_TABLES):
        assert (root / rel).exists(), rel


def test_uninstall_without_any_incus_removes_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "root"
    hostfiles.install(str(root), "/usr/bin/incus-host-tables", "/usr/bin/python3")
    for var in ("INCUS_SOCKET", "INCUS_DIR", "LXD_DIR"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr("incus_host_tables.incus.DEFAULT_INCUS_SOCKET", str(tmp_path / "i.sock"))
    monkeypatch.setattr("incus_host_tables.incus.DEFAULT_LXD_SOCKETS", (str(tmp_path / "l"),))
    assert main(["uninstall", "--root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "no profiles to clean" in out and out.count("removed ") == 4
    assert sorted(p.name for p in root.rglob("*") if p.is_file()) == []
    assert not (root / hostfiles.HOOK).parent.exists()


def test_install_refuses_over_the_debian_package(tmp_path: Path) -> None:
    (tmp_path / hostfiles.DPKG_LIST).parent.mkdir(parents=True)
    (tmp_path / hostfiles.DPKG_LIST).write_text("/usr/libexec/incus-host-tables/hook\n")
    with pytest.raises(hostfiles.InstallError, match="Debian package"):
        hostfiles.install(str(tmp_path), "/usr/bin/incus-host-tables", "/usr/bin/python3")
    assert not (tmp_path / hostfiles.HOOK).exists()


@pytest.mark.parametrize(
    "executable", ["incus-host-tables", "/opt/it's/iht", "/x;reboot", "/x -m 'a b'"]
)
def test_unit_refuses_paths_systemd_would_misread(executable: str) -> None:
    with pytest.raises(hostfiles.InstallError):
        hostfiles.unit_text(executable)


# ------------------------------------------- the installed hook, for real


@pytest.fixture
def daemon_socket(tmp_path: Path) -> Iterator[tuple[Path, list[str]]]:
    """A stand-in for the daemon's hook socket: records requests, says ok."""
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(run_dir / "hook.sock"))
    server.listen(4)
    server.settimeout(10)
    requests: list[str] = []

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                requests.append(conn.makefile("rb").readline().decode())
                conn.sendall(b"ok\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield run_dir, requests
    finally:
        server.close()
        thread.join(timeout=5)


def run_hook(hook: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/usr/bin:/bin",
        "LXC_HOOK_TYPE": "start-host",
        "LXC_NAME": "c1",
        "LXC_CONFIG_FILE": "/nonexistent/lxc.conf",
    }
    return subprocess.run(
        [str(hook), "--run-dir", str(run_dir), "c1", "lxc", "start-host"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_reinstalled_with_another_interpreter_the_same_hook_line_works(
    tmp_path: Path, daemon_socket: tuple[Path, list[str]]
) -> None:
    run_dir, requests = daemon_socket
    root = tmp_path / "root"
    line = rawlxc.add_hooks("", rawlxc.hook_command(str(root / hostfiles.HOOK), str(run_dir)))
    hook = root / hostfiles.HOOK

    hostfiles.install(str(root), "/usr/bin/incus-host-tables", sys.executable)
    first = run_hook(hook, run_dir)
    assert first.returncode == 0, first.stderr

    # "Upgrade": another interpreter (the hook client needs only the
    # standard library), install runs again.
    newer = os.path.realpath(sys.executable)
    assert newer != sys.executable
    hostfiles.install(str(root), "/usr/bin/incus-host-tables", newer)
    assert hook.read_text().startswith(f"#!{newer} -IS\n")
    second = run_hook(hook, run_dir)
    assert second.returncode == 0, second.stderr
    assert requests == ["1\thook\tstart-host\tc1\t/nonexistent/lxc.conf\n"] * 2
    # raw.lxc never had to change.
    assert line == rawlxc.add_hooks("", rawlxc.hook_command(str(hook), str(run_dir)))
