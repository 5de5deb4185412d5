"""`validate --policy FILE` checks a policy file alone (no Incus needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from incus_host_tables.cli import main


@pytest.mark.parametrize(
    ("text", "code", "out", "err"),
    [
        ("projects:\n  a: {tables: [100]}\n  b: {}\n", 0, "valid, 2 project(s)", ""),
        (None, 0, "no such file: no restriction", ""),
        (
            "projects:\n  a: {tables: [100\n",
            1,
            "",
            "not valid YAML at line 3, column 1: expected ',' or ']', but got '<stream end>' "
            "(while parsing a flow sequence)",
        ),
        (
            "projects:\n  a: {tables: [0], ipv6: [198.51.100.0/24]}\n",
            1,
            "",
            "projects.a.tables: table '0' is out of range 1-4294967295",
        ),
    ],
    ids=["good", "absent", "yaml", "entries"],
)
def test_validate_policy_file(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    text: str | None,
    code: int,
    out: str,
    err: str,
) -> None:
    path = tmp_path / "policy.yaml"
    if text is not None:
        path.write_text(text)
    assert main(["validate", "--policy", str(path)]) == code
    captured = capsys.readouterr()
    if out:
        assert captured.out == f"policy {path}: {out}\n"
    else:
        assert captured.out == ""
        lines = captured.err.splitlines()
        assert all(line.startswith(f"error: policy {path}: ") for line in lines), lines
        assert any(line.endswith(err) for line in lines), lines


def test_every_problem_on_its_own_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "policy.yaml"
    path.write_text("projects:\n  a: {tables: [0], ipv6: [198.51.100.0/24], colour: red}\n")
    assert main(["validate", "--policy", str(path)]) == 1
    assert len(capsys.readouterr().err.splitlines()) == 3


def test_validate_without_policy_asks_incus(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # No instance named and no --policy: every instance of the project, so
    # Incus is asked (here: a socket that does not exist, exit 5).
    missing = tmp_path / "no.sock"
    assert main(["validate", "--socket", str(missing)]) == 5
    captured = capsys.readouterr()
    assert captured.out == ""
    assert str(missing) in captured.err
