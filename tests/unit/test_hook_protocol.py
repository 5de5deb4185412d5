"""The hook client (stdlib only, on every container start) and the daemon's
hook server speak one protocol; the client fails closed on anything but a
clear "ok" from the daemon, and runs the full hook when no daemon listens."""

from __future__ import annotations

import ast
import os
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from incus_host_tables import hookclient, hookserver
from incus_host_tables.hookserver import BadRequest, Request, RequestKind
from incus_host_tables.locking import DEFAULT_RUN_DIR


def test_client_imports_only_socket_os_and_sys() -> None:
    tree = ast.parse(Path(hookclient.__file__).read_text())
    imported = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    }
    assert imported == {"_socket", "os", "sys"}
    assert not [n for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]


@pytest.mark.parametrize(
    ("client", "server"),
    [
        (hookclient.PROTOCOL_VERSION, hookserver.PROTOCOL_VERSION),
        (hookclient.FIELD_SEPARATOR, hookserver.FIELD_SEPARATOR),
        (hookclient.SOCKET_NAME, hookserver.SOCKET_NAME),
        (hookclient.REPLY_OK, hookserver.REPLY_OK),
        (hookclient.REPLY_ERROR, hookserver.REPLY_ERROR),
        (hookclient.REQUEST_HOOK, hookserver.RequestKind.HOOK.value),
        (hookclient.DEFAULT_RUN_DIR, DEFAULT_RUN_DIR),
        (hookclient.RUN_DIR_ENV, "INCUS_HOST_TABLES_RUN_DIR"),
    ],
)
def test_both_ends_share_every_constant(client: str, server: str) -> None:
    assert client == server


def test_server_reads_the_clients_request() -> None:
    line = hookclient.request_line(["start-host", "p_c1", "/var/lib/incus/c1/lxc.conf"])
    assert hookserver.parse_request(line) == Request(
        RequestKind.HOOK, "start-host", "p_c1", "/var/lib/incus/c1/lxc.conf"
    )


@pytest.mark.parametrize(
    ("ok", "message", "expected"),
    [
        (True, "", (True, "")),
        (False, "invalid configuration: bad\ttable", (False, "invalid configuration: bad table")),
        (False, "two\nlines", (False, "two lines")),
        (False, "", (False, "refused")),
    ],
)
def test_client_reads_the_servers_reply(ok: bool, message: str, expected: object) -> None:
    assert hookclient.parse_reply(hookserver.encode_reply(ok, message)) == expected


@pytest.mark.parametrize(
    ("line", "error"),
    [
        (b"start-host\tc1\t/x\n", "protocol version"),  # a client from before versions
        (b"2\thook\tstart-host\tc1\t/x\n", "protocol version '2'"),
        (b"1\thook\tstart-host\tc1\n", "malformed hook request"),
        (b"1\tfrobnicate\n", "unknown request 'frobnicate'"),
        (b"1\tmetrics\textra\n", "malformed metrics request"),
    ],
)
def test_server_refuses_bad_requests(line: bytes, error: str) -> None:
    with pytest.raises(BadRequest, match=error):
        hookserver.parse_request(line)


# -- the client against a real unix socket -----------------------------------


@pytest.fixture
def run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("INCUS_HOST_TABLES_RUN_DIR", str(tmp_path))
    monkeypatch.setenv("LXC_HOOK_TYPE", "start-host")
    monkeypatch.setenv("LXC_NAME", "p1_c1")
    monkeypatch.setenv("LXC_CONFIG_FILE", "/var/lib/incus/containers/p1_c1/lxc.conf")
    monkeypatch.setattr(sys, "argv", ["hookclient.py", "c1", "lxc", "start-host"])
    return tmp_path


@pytest.fixture
def fake_daemon(
    run_dir: Path,
) -> Iterator[Callable[[Callable[[socket.socket], None]], list[bytes]]]:
    """Listen on the hook socket; each connection is handed to ``reply``."""
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(run_dir / hookclient.SOCKET_NAME))
    listener.listen()
    received: list[bytes] = []
    threads: list[threading.Thread] = []

    def start(reply: Callable[[socket.socket], None]) -> list[bytes]:
        def serve() -> None:
            conn, _ = listener.accept()
            with conn:
                received.append(conn.recv(65536))
                reply(conn)

        thread = threading.Thread(target=serve, daemon=True)
        thread.start()
        threads.append(thread)
        return received

    yield start
    listener.close()
    for thread in threads:
        thread.join(timeout=5)


def test_ok_reply_lets_the_start_go_on(fake_daemon, capsys) -> None:
    received = fake_daemon(lambda conn: conn.sendall(b"ok\n"))
    assert hookclient.main() == 0
    assert received == [b"1\thook\tstart-host\tp1_c1\t/var/lib/incus/containers/p1_c1/lxc.conf\n"]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (b"error\tinvalid configuration: bad table\n", "invalid configuration: bad table"),
        (b"OK\n", "unintelligible answer from the daemon: 'OK'"),
        (b"\x00\xff garbage\n", "unintelligible answer from the daemon"),
        (b"ok", "no answer from the daemon (connection closed)"),  # no end of line
        (b"", "no answer from the daemon (connection closed)"),
    ],
    ids=["refused", "wrong-case", "garbled", "cut-short", "closed"],
)
def test_anything_but_ok_refuses_the_start(fake_daemon, capsys, reply, message) -> None:
    fake_daemon(lambda conn: conn.sendall(reply))
    assert hookclient.main() == 1
    err = capsys.readouterr().err
    assert err.startswith("incus-host-tables: ")
    assert message in err


def test_a_daemon_that_never_answers_refuses_the_start(fake_daemon, capsys, monkeypatch) -> None:
    monkeypatch.setattr(hookclient, "TIMEOUT", 0.2)
    answered = threading.Event()
    fake_daemon(lambda conn: answered.wait(5))
    try:
        assert hookclient.main() == 1
    finally:
        answered.set()
    assert "no answer from the daemon: timed out" in capsys.readouterr().err


class Exec(Exception):
    pass


def fake_execv(path: str, argv: list[str]) -> None:
    raise Exec(path, argv)


def test_no_daemon_runs_the_full_hook(run_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Exec) as exc:
        hookclient.main()
    assert exc.value.args == (
        sys.executable,
        [sys.executable, "-I", "-m", "incus_host_tables", "hook", "start-host"],
    )


def test_a_dead_daemons_socket_runs_the_full_hook(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A socket file nobody listens on (the daemon was killed): connection refused.
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(run_dir / hookclient.SOCKET_NAME))
    dead.close()
    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Exec) as exc:
        hookclient.main()
    assert exc.value.args[1][-2:] == ["hook", "start-host"]


def test_the_run_dir_argument_reaches_the_full_hook(
    tmp_path: Path, run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "other"
    monkeypatch.setattr(sys, "argv", ["hookclient.py", "--run-dir", str(other), "c1", "lxc", "x"])
    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Exec):
        hookclient.main()
    assert os.environ["INCUS_HOST_TABLES_RUN_DIR"] == str(other)


def test_a_separator_in_a_field_runs_the_full_hook(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LXC_NAME", "odd\tname")
    monkeypatch.setattr(os, "execv", fake_execv)
    with pytest.raises(Exec):
        hookclient.main()


# -- the server --------------------------------------------------------------


def test_server_answers_the_client_and_a_second_server_keeps_off(
    run_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[str, str, str]] = []

    def handle(hook: str, lxc_name: str, config_file: str) -> tuple[bool, str]:
        calls.append((hook, lxc_name, config_file))
        return False, "refused for a reason"

    first = hookserver.HookServer(handle, lambda: b"# metrics\n")
    first.start()
    try:
        second = hookserver.HookServer(handle, lambda: b"")
        with pytest.raises(hookserver.AlreadyRunning, match=f"pid {os.getpid()}.*{run_dir}"):
            second.start()
        # The first still serves, on its own socket.
        assert hookclient.main() == 1
        assert calls == [("start-host", "p1_c1", "/var/lib/incus/containers/p1_c1/lxc.conf")]
        assert hookserver.ask_metrics() == b"# metrics\n"
    finally:
        first.close()


def test_server_fails_closed_when_the_handler_raises(run_dir: Path) -> None:
    def handle(hook: str, lxc_name: str, config_file: str) -> tuple[bool, str]:
        raise RuntimeError("boom")

    server = hookserver.HookServer(handle, lambda: b"")
    reply = server.answer(hookclient.request_line(["start-host", "c1", "/x"]))
    assert hookclient.parse_reply(reply) == (False, "internal error: boom")
