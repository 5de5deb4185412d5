"""The wheel a user installs: the host files as package data, no test lab."""

from __future__ import annotations

import email
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def clean_copy(dest: Path) -> Path:
    """The checkout's files as git sees them (tracked and new, not ignored):
    an in-tree build/ or egg-info must not decide what the wheel holds."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        if (ROOT / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, dest / rel)
    return dest


def test_wheel_ships_the_host_files_and_no_lab(tmp_path: Path) -> None:
    src = clean_copy(tmp_path / "src")
    out = tmp_path / "dist"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(src)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (wheel,) = out.glob("incus_host_tables-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (metadata,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(metadata))
        unit = zf.read("incus_host_tables/data/incus-host-tables.service").decode()
    for data in ("incus-host-tables.service", "rt_protos.conf", "rt_tables.conf"):
        assert f"incus_host_tables/data/{data}" in names
    assert "incus_host_tables/hookclient.py" in names
    assert "Type=notify" in unit
    # The test lab (it starts incusd and kills processes) never ships.
    assert not [n for n in names if n.startswith(("lab/", "incus_host_tables/lab"))], names
    requires = {
        r.split(">")[0].split(";")[0].strip().lower() for r in meta.get_all("Requires-Dist")
    }
    assert {"pylxd", "pyyaml", "requests", "ws4py", "prometheus-client"} <= requires
    assert meta["License"] == "Apache-2.0"
