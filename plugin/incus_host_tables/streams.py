"""Standard streams that a closed reader cannot turn into a traceback.

`incus-host-tables device apply ... | head -1`, a closed stderr (`2>&-`) or
a log collector that went away must not abort the work half-way nor change
the exit code: the output is a report of the work, and the exit code already
tells its result. What cannot be written is dropped.
"""

from __future__ import annotations

import errno
import os
import sys
from typing import Any, TextIO, cast

_GONE = (errno.EPIPE, errno.EBADF, errno.ECONNRESET)


class _Tolerant:
    """A text stream whose writes to a closed pipe are dropped."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._gone = False

    def write(self, text: str) -> int:
        if not self._gone:
            try:
                self._stream.write(text)
            except OSError as err:
                self._lost(err)
        return len(text)

    def flush(self) -> None:
        if not self._gone:
            try:
                self._stream.flush()
            except OSError as err:
                self._lost(err)

    def _lost(self, err: OSError) -> None:
        if err.errno not in _GONE:
            raise err
        self._gone = True
        # The original stream still holds the unwritten text and Python
        # flushes it at exit: point its descriptor at /dev/null first.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, self._stream.fileno())
            os.close(devnull)
        except (OSError, ValueError):
            pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def _reopen_closed_descriptors() -> None:
    # A descriptor 0-2 closed by the caller would be taken by the next file
    # or socket opened; give it /dev/null first.
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            os.open(os.devnull, os.O_RDWR)  # lowest free descriptor: fd


def keep_quiet_when_closed() -> None:
    _reopen_closed_descriptors()
    for name in ("stdout", "stderr"):
        stream = getattr(sys, name)
        if stream is None:  # closed when Python started
            stream = open(os.devnull, "w", encoding="utf-8")  # noqa: SIM115
        if not isinstance(stream, _Tolerant):
            setattr(sys, name, cast(TextIO, _Tolerant(stream)))
