"""Per-instance problems that must outlive the process that found them.

A start hook that refuses a start exits right after; `status` (another
process, maybe much later) must still be able to say why.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from typing import Any

from .locking import run_dir


def _path(project: str, name: str) -> str:
    return os.path.join(run_dir(), "problems", project, f"{name}.json")


def record(project: str, name: str, message: str, source: str) -> None:
    path = _path(project, name)
    os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump({"message": message, "source": source, "time": time.time()}, f)
    os.replace(tmp, path)


def clear(project: str, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(_path(project, name))


def read(project: str, name: str) -> dict[str, Any] | None:
    try:
        with open(_path(project, name), encoding="utf-8") as f:
            data = json.load(f)
    except (FileNotFoundError, ValueError):
        return None
    return data if isinstance(data, dict) else None
