"""Every fault ends in one line and the documented exit code, never a
traceback: bad interface names, closed stdout or stderr, a missing hook
environment, an unusable run directory, an unreachable Incus socket, no
permission, and numbers that are not plain ASCII decimals. The real CLI, run
as a process (inside a namespace where it touches the kernel)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

import pytest

import incus_host_tables

from .helpers import PYTHON, NetNS, cli_argv, incus_routes, run_cli

pytestmark = pytest.mark.kernel

V4 = "198.51.100.10"
CONFIG = {"ipv4.address": V4, "user.ipv4.host_tables": "100"}
NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def cli(
    *args: str, env: Mapping[str, str] | None = None, prefix: tuple[str, ...] = ()
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, PYTHON, "-m", "incus_host_tables", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


def apply_in(
    ns: NetNS, env: Mapping[str, str], as_user: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`device apply` of CONFIG on vh0 inside ``ns``, with ``env`` added."""
    argv = ["ip", "netns", "exec", ns.name, *(as_user or []), *cli_argv("apply", "vh0", CONFIG)]
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=60, env={**os.environ, **env}
    )


def one_line(text: str) -> str:
    lines = text.splitlines()
    assert len(lines) == 1, text
    assert "Traceback" not in text
    return lines[0]


@pytest.mark.parametrize(
    "name",
    ["vethABCDEFGHIJKLMNOP", "a/b", "a b", "a:b", "", ".", "\u00e9" * 8],
    ids=["16-bytes", "slash", "space", "colon", "empty", "dot", "16-utf8-bytes"],
)
def test_bad_interface_names_are_usage_errors(host: NetNS, name: str) -> None:
    before = host.state()
    for action in ("plan", "apply", "cleanup"):
        proc = run_cli(host, action, name, CONFIG)
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert "--host-name" in line and repr(name) in line
    assert host.state() == before


def run_with_closed(
    ns: NetNS, which: str, config: Mapping[str, str]
) -> subprocess.CompletedProcess[bytes]:
    """`device apply` whose stdout or stderr is a pipe nobody reads (closed
    before the CLI writes), or a descriptor closed outright."""
    argv = ["ip", "netns", "exec", ns.name, *cli_argv("apply", "vh0", config)]
    if which == "fd-closed-stdout":
        return subprocess.run(["sh", "-c", 'exec "$@" >&-', "sh", *argv], timeout=60)
    if which == "fd-closed-stderr":
        return subprocess.run(["sh", "-c", 'exec "$@" 2>&-', "sh", *argv], timeout=60)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone: every write gets EPIPE
    try:
        if which == "pipe-stdout":
            return subprocess.run(argv, stdout=write_end, stderr=subprocess.PIPE, timeout=60)
        return subprocess.run(argv, stdout=subprocess.PIPE, stderr=write_end, timeout=60)
    finally:
        os.close(write_end)


@pytest.mark.parametrize(
    "which", ["pipe-stdout", "pipe-stderr", "fd-closed-stdout", "fd-closed-stderr"]
)
def test_closed_output_keeps_the_exit_code_and_the_work(host: NetNS, which: str) -> None:
    """A successful apply that prints a change (stdout) and a warning
    (stderr) exits 0 however its output is lost; a traceback would exit 1."""
    incus_routes(host, "vh0", [V4], [], table=None)
    config = {**CONFIG, "user.ipv4.host-tables": "200"}  # a near-miss key: a warning

    proc = run_with_closed(host, which, config)

    assert proc.returncode == 0, proc.stderr
    for stream in (proc.stdout, proc.stderr):
        assert b"Traceback" not in (stream or b"")
    assert sorted(line for line in host.route_lines() if V4 in line) == [
        f"{V4} dev vh0 table {t} proto 158 scope link" for t in (100, 1158)
    ]


def test_hook_with_unknown_type_is_a_usage_error() -> None:
    env = {k: "" for k in ("LXC_NAME", "LXC_HOOK_TYPE", "LXC_CONFIG_FILE")}
    proc = cli("hook", "bogus", env=env)
    assert proc.returncode == 2
    assert "unsupported hook type 'bogus'" in one_line(proc.stderr)


@pytest.mark.parametrize(
    ("lxc_name", "message"),
    [("", "LXC_NAME is not set"), ("p1_", "malformed LXC container name"), ("_c1", "malformed")],
)
def test_hook_without_a_usable_lxc_name_is_an_environment_error(
    lxc_name: str, message: str
) -> None:
    for hook in ("start-host", "post-stop"):
        proc = cli("hook", hook, env={"LXC_NAME": lxc_name, "LXC_CONFIG_FILE": ""})
        assert proc.returncode == 5
        assert message in one_line(proc.stderr)


@pytest.mark.parametrize("kind", ["a-file", "not-creatable", "not-writable"])
def test_unusable_run_directory_is_an_environment_error(
    host: NetNS, tmp_path: Path, kind: str
) -> None:
    incus_routes(host, "vh0", [V4], [], table=None)
    before = host.state()
    if kind == "a-file":
        run_dir = tmp_path / "run"
        run_dir.write_text("")
    elif kind == "not-creatable":
        run_dir = tmp_path / "file" / "run"
        (tmp_path / "file").write_text("")
    else:
        run_dir = tmp_path / "ro"
        run_dir.mkdir(mode=0o500)
        (run_dir / "lock").mkdir()  # even root cannot open a directory for writing
    proc = apply_in(host, {"INCUS_HOST_TABLES_RUN_DIR": str(run_dir)})
    assert proc.returncode == 5, proc.stderr
    assert one_line(proc.stderr).startswith("error: ")
    assert host.state() == before


def test_unreachable_incus_socket_is_an_environment_error(tmp_path: Path) -> None:
    dead = tmp_path / "dead.sock"
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(dead))
    sock.close()  # the file stays, nobody listens
    for path in (dead, tmp_path / "missing.sock"):
        for command in (["status"], ["validate"], ["reconcile", "--dry-run"], ["plan", "c1"]):
            proc = cli(*command, "--socket", str(path))
            assert proc.returncode == 5, proc.stderr
            assert str(path) in one_line(proc.stderr)


def test_permission_denied_is_an_environment_error(
    host: NetNS, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Without CAP_NET_ADMIN the kernel refuses the change (exit 5); a run
    directory the user may not enter is refused before that (exit 5)."""
    incus_routes(host, "vh0", [V4], [], table=None)
    before = host.state()
    os.chmod(tmp_path, 0o755)
    # The checkout may lie where the unprivileged user cannot read it (a
    # clone under /root): that user runs a readable copy of the package.
    # (pytest's own temporary directory is private to root as well.)
    readable = Path(tempfile.mkdtemp(prefix="iht-pkg-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(readable, ignore_errors=True))
    shutil.copytree(Path(incus_host_tables.__file__).parent, readable / "incus_host_tables")
    for path in [readable, *readable.rglob("*")]:
        os.chmod(path, 0o755 if path.is_dir() else 0o644)
    env = {"PYTHONPATH": str(readable)}
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    os.chown(run_dir, 65534, 65534)
    proc = apply_in(host, {**env, "INCUS_HOST_TABLES_RUN_DIR": str(run_dir)}, NOBODY)
    assert proc.returncode == 5, proc.stderr
    assert one_line(proc.stderr).startswith("error: ")
    assert host.state() == before

    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    proc = apply_in(host, {**env, "INCUS_HOST_TABLES_RUN_DIR": str(private / "run")}, NOBODY)
    assert proc.returncode == 5, proc.stderr
    assert "Permission denied" in one_line(proc.stderr)
    assert host.state() == before


# -- strict numbers --------------------------------------------------------

NOT_DECIMAL = ["\u0661\u0661\u0660\u0660", "\uff11\uff11\uff10\uff10", "+1100", "1_1_0_0", " 1100"]


@pytest.mark.parametrize("value", NOT_DECIMAL)
@pytest.mark.parametrize(
    ("option", "env"),
    [
        ("--rule-priority", "INCUS_HOST_TABLES_RULE_PRIORITY"),
        ("--rp-table", "INCUS_HOST_TABLES_RP_TABLE"),
    ],
)
def test_numbers_are_ascii_decimal_only(host: NetNS, option: str, env: str, value: str) -> None:
    before = host.state()

    by_option = run_cli(host, "apply", "vh0", CONFIG, option, value)
    by_env = apply_in(host, {env: value})

    for proc, name in ((by_option, option), (by_env, f"${env}")):
        assert proc.returncode == 2, proc.stderr
        line = one_line(proc.stderr)
        assert f"{name} {value!r} is not a decimal number" in line
    assert host.state() == before


@pytest.mark.parametrize("value", NOT_DECIMAL[:4])  # spaces around list items are allowed
def test_table_ids_share_the_number_messages(host: NetNS, value: str) -> None:
    proc = run_cli(host, "plan", "vh0", {"ipv4.address": V4, "user.ipv4.host_tables": value})
    assert proc.returncode == 1
    line = one_line(proc.stderr)
    assert f"table {value!r} is not a decimal number" in line
