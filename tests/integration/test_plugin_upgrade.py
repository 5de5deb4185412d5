"""Hooks survive an upgrade: the raw.lxc line names the installed hook, not
an interpreter, so replacing the interpreter (and re-running `install`)
never breaks a container start; and `enable`/`disable --all-profiles` reach
every profile of every project."""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from incus_host_tables import hostfiles

if TYPE_CHECKING:
    from conftest import PluginLab

pytestmark = pytest.mark.integration

PROFILE = "ihtupgrade"


def moved_interpreter(where: Path) -> str:
    """This virtualenv's interpreter under a new path, as after an upgrade
    that recreated the virtualenv elsewhere: pyvenv.cfg and lib/ beside a
    new bin/python."""
    venv = Path(sys.prefix)
    (where / "bin").mkdir(parents=True)
    (where / "pyvenv.cfg").write_text((venv / "pyvenv.cfg").read_text())
    (where / "lib").symlink_to(venv / "lib")
    os.symlink(os.path.realpath(sys.executable), where / "bin" / "python")
    return str(where / "bin" / "python")


def nic(n: int) -> dict[str, str]:
    return {
        "type": "nic",
        "nictype": "routed",
        "name": "eth0",
        "ipv4.address": f"198.51.100.{n}",
        "user.ipv4.host_tables": "100,200",
    }


def raw_lxc(plug: PluginLab, profile: str, project: str = "default") -> str:
    data = plug.lab.query(f"/1.0/profiles/{profile}?project={project}")
    return str(data["config"].get("raw.lxc", ""))


def test_new_interpreter_after_enable_still_starts_containers(
    plug: PluginLab, tmp_path: Path
) -> None:
    lab = plug.lab
    lab.incus("profile", "create", PROFILE)
    plug.defer(lambda: lab.incus("profile", "delete", PROFILE, check=False))
    lab.incus("profile", "device", "add", PROFILE, "root", "disk", "path=/", "pool=default")
    os.chmod(tmp_path, 0o711)
    root = tmp_path / "root"
    old_python = moved_interpreter(tmp_path / "old")
    out = plug.cli(
        *("install", "--root", str(root), "--python", old_python),
        *("--executable", f"{old_python} -m incus_host_tables"),
    )
    assert out.returncode == 0, out.stderr
    hook = str(root / hostfiles.HOOK)
    out = plug.cli("enable", "--profile", PROFILE, "--hook", hook)
    assert out.returncode == 0, out.stderr
    line = raw_lxc(plug, PROFILE)
    assert hook in line and not re.search(r"python\d|-packages", line), line

    # No daemon: the hook's own full path runs on the installed interpreter.
    name, addr = "hupg", "198.51.100.171"
    plug.launch(name, profiles=[PROFILE], devices={"eth0": nic(171)})
    assert plug.tables(addr) == {"100", "200"}
    lab.incus("stop", "--force", name)
    assert plug.until(lambda: plug.tables(addr) == set(), 3.0)

    # The upgrade: the old interpreter is gone, install runs again.
    new_python = moved_interpreter(tmp_path / "new")
    shutil.rmtree(tmp_path / "old")
    out = plug.cli("install", "--root", str(root), "--python", new_python)
    assert out.returncode == 0, out.stderr
    assert Path(hook).read_text().startswith(f"#!{new_python} -IS\n")
    assert raw_lxc(plug, PROFILE) == line  # profiles untouched

    lab.incus("start", name)
    assert plug.tables(addr) == {"100", "200"}
    lab.incus("stop", "--force", name)
    assert plug.until(lambda: plug.tables(addr) == set(), 3.0)

    # uninstall: the hooks leave the profile before the hook file goes, and
    # the container starts again (Incus alone: the route is back in main).
    out = plug.cli("uninstall", "--root", str(root))
    assert out.returncode == 0, out.stderr
    assert "hooks removed from profile ihtupgrade" in out.stdout.splitlines()
    assert "incus-host-tables/hook" not in raw_lxc(plug, PROFILE)
    assert [p for p in root.rglob("*") if p.is_file()] == []
    lab.incus("start", name)
    assert plug.tables(addr) == {"main"}


def test_all_profiles_of_all_projects(plug: PluginLab) -> None:
    lab = plug.lab
    lab.create_project("ihtallp", features_profiles="true")
    plug.defer(lambda: lab.incus("project", "delete", "ihtallp", check=False))
    lab.incus("profile", "create", "second", "--project", "ihtallp")
    plug.defer(
        lambda: lab.incus("profile", "delete", "second", "--project", "ihtallp", check=False)
    )
    lab.incus(
        "profile", "set", "second", "raw.lxc", "lxc.environment = KEEP=1", "--project", "ihtallp"
    )
    plug.defer(lambda: plug.cli("disable", "--all-profiles"))

    out = plug.cli("enable", "--all-profiles")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "hooks attached to profile default in project ihtallp" in lines
    assert "hooks attached to profile second in project ihtallp" in lines
    refs = [("default", "default"), ("ihtallp", "default"), ("ihtallp", "second")]
    for project, profile in refs:
        assert raw_lxc(plug, profile, project).count("incus-host-tables/hook") == 2

    out = plug.cli("disable", "--all-profiles")
    assert out.returncode == 0, out.stderr
    for project, profile in refs:
        assert "incus-host-tables/hook" not in raw_lxc(plug, profile, project)
    assert raw_lxc(plug, "second", "ihtallp").rstrip("\n") == "lxc.environment = KEEP=1"
