"""How every long-running part of the plugin logs: to stderr, in a form
journald understands when it runs under systemd (<N> priority prefixes)."""

from __future__ import annotations

import logging
import os
from typing import ClassVar

LOGGER_NAME = "incus-host-tables"


def setup_logging(verbose: bool = False) -> None:
    handler = logging.StreamHandler()
    if os.environ.get("JOURNAL_STREAM"):
        handler.setFormatter(JournalFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%dT%H:%M:%S")
        )
    root = logging.getLogger(LOGGER_NAME)
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    root.propagate = False


class JournalFormatter(logging.Formatter):
    """Each line prefixed with its syslog priority, as sd-daemon(3) describes."""

    LEVELS: ClassVar[dict[int, int]] = {
        logging.DEBUG: 7,
        logging.INFO: 6,
        logging.WARNING: 4,
        logging.ERROR: 3,
    }

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        prefix = f"<{self.LEVELS.get(record.levelno, 2)}>"
        return "\n".join(prefix + line for line in text.splitlines())
