"""The LXD suite: one real LXD per session (Debian's lxd 5.0, own LXD_DIR,
own network namespace) under the same fixtures as the Incus tests.

Overriding ``lab`` is all it takes: ``plug``, ``daemon`` and ``run_dir``
(tests/integration/conftest.py) then drive LXD through ``lxc`` and the
plugin reaches it through ``LXD_DIR``. Every test here is marked ``lxd`` and
runs only when asked for (``scripts/test -m lxd``; docs/testing.md says
where LXD may be installed).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from plugin_checks import serve_lab

from lab.lxd import LxdLab


@pytest.fixture(scope="session")
def lab() -> Iterator[LxdLab]:
    # As for the Incus lab: a SIGTERM ends the session like ^C, so every
    # teardown runs and LXD is removed.
    yield from serve_lab(lambda: LxdLab("ihl"))
