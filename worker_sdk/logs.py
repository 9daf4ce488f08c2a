"""Logging for a worker started as a program (``Worker.run()``, ``cairn worker``)."""

from __future__ import annotations

import logging


def configure_default_logging(level: str = "INFO") -> None:
    """Timestamped lines on stderr, unless the program has configured logging itself."""
    if logging.getLogger().handlers:
        return
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if level != "DEBUG":  # httpx logs every request at INFO
        logging.getLogger("httpx").setLevel(logging.WARNING)
