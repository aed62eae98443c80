"""Reporting a problem once: a failure per point or per request would drown the training log.

Each part of the exporter that reports (the mapper, the writer, the sender, the exporter) holds one
:class:`ReportOnce`, so what one of them said does not silence another, and a new exporter speaks again.
"""

from __future__ import annotations

import logging


class ReportOnce:
    """Logs a message the first time its key is seen; :meth:`again` lets a key speak once more."""

    def __init__(self, logger: logging.Logger, level: int = logging.WARNING) -> None:
        self._logger = logger
        self._level = level
        self._seen: set[str] = set()

    def __call__(self, key: str, message: str, *args: object, exc_info: BaseException | None = None) -> bool:
        """Logs ``message % args`` unless ``key`` was reported already; returns whether it logged.

        ``exc_info``: an exception whose traceback goes with the message (one of no known kind).
        """
        if key in self._seen:
            return False
        self._seen.add(key)
        self._logger.log(self._level, message, *args, exc_info=exc_info)
        return True

    def again(self, key: str) -> None:
        """The next report of ``key`` is logged (a condition that ended, such as an outage)."""
        self._seen.discard(key)
