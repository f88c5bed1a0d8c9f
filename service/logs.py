"""Logging: structlog, JSON lines (or a console rendering in a terminal), with the request id of
the current request bound to every line through contextvars.

`SLOTLOG_LOG_FORMAT` = json | console (default: console on a terminal, json otherwise);
`SLOTLOG_LOG_LEVEL` = debug | info | warning | error (default info).
"""

from __future__ import annotations

import logging
import os
import sys

import structlog


def configure_logging() -> None:
    level_name = os.environ.get("SLOTLOG_LOG_LEVEL", "info").upper()
    level = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    fmt = os.environ.get("SLOTLOG_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    renderer: structlog.typing.Processor = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )


log = structlog.get_logger("slotlog")
