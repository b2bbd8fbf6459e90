"""How every flowenricher process logs: one format, level and stream, set up by `main` in
the service and again by each spawned worker (a spawned process starts with no logging
configured, and Python's last-resort handler would print bare messages without time or
level)."""

from __future__ import annotations

import logging
import sys
from typing import TextIO

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(level: int | str, stream: TextIO | None = None) -> None:
    """Log records at `level` and above to `stream` (default: stderr) in LOG_FORMAT.

    `level` is a number or a name in either case ("debug", "INFO")."""
    logging.basicConfig(level=level.upper() if isinstance(level, str) else level, format=LOG_FORMAT,
                        stream=stream if stream is not None else sys.stderr, force=True)
