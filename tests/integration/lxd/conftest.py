"""The LXD suite: one real LXD per session (Debian's lxd 5.0, own LXD_DIR,
own network namespace) under the same fixtures as the Incus tests.

Overriding ``lab`` is all it takes: ``plug``, ``daemon`` and ``run_dir``
(tests/integration/conftest.py) then drive LXD through ``lxc`` and the
plugin reaches it through ``LXD_DIR``. Every test here is marked ``lxd`` and
runs only when asked for (``scripts/test -m lxd``; docs/testing.md says
where LXD may be installed).
"""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from lab.lxd import LxdLab


def _interrupt_on_sigterm(signum: int, frame: object) -> None:
    # As for the Incus lab: like ^C, so every teardown runs and LXD is removed.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def lab() -> Iterator[LxdLab]:
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt_on_sigterm)
    with LxdLab("ihl") as the_lab:
        yield the_lab
